"""Solve time / objective / bound / gap of CP-SAT and HiGHS side by side on n x n grids.

Specification (a street layout on a square block): n x n grid of unit streets, exits at the four
boundary midpoints (sinks, required), every vertex within geodesic range `--range` of the network,
objective = length + travel_weight * travel term. Connectivity `tree` (ours: parent arcs and vertex
labels; `--connectivity labels` for the paper's distance labels), with the config's default cuts:
ball cuts, coverage cuts and forest dominance (netdesign/README.md, "Additions of ours").

  PYTHONPATH=. python benchmarks/netdesign_grid.py --sizes 6,8,10,12,14,16 --time-limit 60
  PYTHONPATH=. python benchmarks/netdesign_grid.py --sizes 6,8,10 --connectivity labels
  PYTHONPATH=. python benchmarks/netdesign_grid.py --sizes 10 --solvers cpsat \
      --no-forest-cuts --cpsat-params "symmetry_level:4"        (ablations and solver variants)

Each solver gets the full time limit on its own (CP-SAT with 8 workers, HiGHS with threads capped
at the core count); 'portfolio' rows (CP-SAT then HiGHS warm-started) with --portfolio. A size is
called hopeless when neither solver finds any network within the limit; larger sizes are skipped.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from common.sweep import apply_overrides  # noqa: E402
from configs.netdesign import base  # noqa: E402
from netdesign import checker, experiment, model, solvers  # noqa: E402
from netdesign import spec as spec_lib  # noqa: E402


def grid_config(n: int, time_limit: float, coverage: float, travel: float, ball_cuts: bool = True,
                **overrides):
  c = base.get_config()
  c.template.nx = c.template.ny = n
  m = (n - 1) / 2
  lo, hi = float(int(m)), float(int(m + 0.5))
  c.sinks.points = [[lo, 0.0], [n - 1.0, lo], [hi, n - 1.0], [0.0, hi]]
  c.spec.coverage.range = coverage
  c.model.travel_weight = travel
  c.solver.time_limit = time_limit
  c.model.ball_cuts = ball_cuts
  return apply_overrides(c, overrides)


def run_one(n, solver, args) -> dict:
  over = {"model.connectivity": args.connectivity, "model.travel_term": args.travel_term,
          "spec.coverage.locations": args.locations, "solver.cpsat_params": args.cpsat_params,
          "model.coverage_cuts": not args.no_coverage_cuts,
          "model.forest_cuts": not args.no_forest_cuts}
  if args.threads:
    over["solver.threads"] = args.threads
  config = grid_config(n, args.time_limit, args.range, args.travel_weight, not args.no_ball_cuts,
                       **over)
  experiment.validate(config)
  inst = spec_lib.from_config(config)
  built = model.build(inst)
  res = solvers.solve(solver, built.lm, experiment.options(config))
  net = experiment.network_json(inst, built, res)
  report = checker.check(net)
  return {"n": n, "edges": len(inst.template.edges), "solver": solver, **res.summary(),
          "valid": report.ok, "variables": built.lm.num_vars}


def _fmt(v, spec):
  return "-" if v is None else format(v, spec)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--sizes", default="6,7,8,9,10,11,12,13,14,15,16")
  p.add_argument("--time-limit", type=float, default=60.0)
  p.add_argument("--range", type=float, default=1.0, help="coverage range")
  p.add_argument("--travel-weight", type=float, default=0.0)
  p.add_argument("--portfolio", action="store_true")
  p.add_argument("--no-ball-cuts", action="store_true", help="ablation: the paper's rows only")
  p.add_argument("--no-coverage-cuts", action="store_true",
                 help="ablation: plain coverage rows (model.coverage_cuts=False)")
  p.add_argument("--no-forest-cuts", action="store_true",
                 help="ablation: no forest dominance rows (model.forest_cuts=False)")
  p.add_argument("--json", default="", help="also write the rows to this file")
  p.add_argument("--solvers", default="cpsat,highs")
  # tree, not the paper's labels: with the default cuts it proves 10 x 10 in seconds, labels not
  # in 60 s (netdesign/README.md, grid benchmark).
  p.add_argument("--connectivity", default="tree", help="tree | labels | flow")
  p.add_argument("--travel-term", default="proxy", help="proxy | mean_trip")
  p.add_argument("--locations", default="vertices", help="coverage at vertices | edges")
  p.add_argument("--cpsat-params", default="", help="extra CP-SAT parameters (text format)")
  p.add_argument("--threads", type=int, default=0, help="solver threads (0: the config's 8)")
  args = p.parse_args(argv)
  names = args.solvers.split(",") + (["portfolio"] if args.portfolio else [])
  print(f"{'n':>3} {'edges':>5} | " + " | ".join(
      f"{s:>9}: {'time':>6} {'obj':>7} {'bound':>7} {'gap':>6}" for s in names), flush=True)
  rows = []
  for n in [int(s) for s in args.sizes.split(",")]:
    got = [run_one(n, s, args) for s in names]
    rows += got
    assert all(r["valid"] for r in got), got
    print(f"{n:>3} {got[0]['edges']:>5} | " + " | ".join(
        f"{r['status']:>9}: {r['seconds']:6.1f} {_fmt(r['objective'], '7.2f')} "
        f"{_fmt(r['bound'], '7.2f')} {_fmt(r['gap'], '6.3f')}" for r in got), flush=True)
    if args.json:
      with open(args.json, "w") as f:
        json.dump(rows, f, indent=1)
    if all(r["objective"] is None for r in got):
      print(f"stopping: no solver found a network for n={n} within {args.time_limit} s")
      break
  return rows


if __name__ == "__main__":
  main()
