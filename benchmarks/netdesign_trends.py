"""The paper's trends on small street blocks: travel-weight sweep, coverage range, dead ends, and
diverse alternatives. Prints markdown tables and writes small PNGs to netdesign/figures/.

  PYTHONPATH=. python benchmarks/netdesign_trends.py --time-limit 30 --workdir /tmp/nd_trends

Every solve runs `netdesign.run` (so each network passes the independent validator) on a config
derived from configs/netdesign/sweep.py; the sweep itself is that file's get_sweep().
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import netdesign  # noqa: E402
from common import io  # noqa: E402
from common.sweep import apply_overrides  # noqa: E402
from netdesign import checker, draw  # noqa: E402

FIGURES = os.path.join(ROOT, "netdesign", "figures")


def _sweep_module():
  path = os.path.join(ROOT, "configs", "netdesign", "sweep.py")
  spec = importlib.util.spec_from_file_location("nd_sweep", path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


def solve(name, overrides, args):
  config = apply_overrides(_sweep_module().get_config(args.variant or None),
                           {"solver.time_limit": args.time_limit, "solver.name": args.solver,
                            "output.draw": False, **overrides,
                            **({"solver.threads": args.threads} if args.threads else {}),
                            **({"model.connectivity": args.connectivity}
                               if args.connectivity else {})})
  netdesign.validate(config)
  workdir = os.path.join(args.workdir, name)
  if args.reuse and os.path.exists(os.path.join(workdir, "results.json")):
    with open(os.path.join(workdir, "results.json")) as f:
      summary = json.load(f)  # re-check the saved networks (metrics may have been added since)
    for rec in [summary] + summary["alternatives"]:
      with open(os.path.join(workdir, rec["name"] + ".json")) as f:
        rec["metrics"] = checker.check(json.load(f)).metrics
  else:
    summary = netdesign.run(config, workdir, "solve")
  nets = []
  for stem in ["network"] + [a["name"] for a in summary["alternatives"]]:
    with open(os.path.join(workdir, stem + ".json")) as f:
      nets.append(json.load(f))
  return summary, nets


def _row(label, s):
  m = s["metrics"]
  gap = "-" if s["gap"] is None else f"{s['gap']:.3f}"
  return (f"| {label} | {s['status']} | {s['objective']:.2f} | {gap} | {m['length']:.0f} | "
          f"{m['mean_distance_to_sink']:.2f} | {m['mean_travel_distance']:.2f} | {m['loops']} | "
          f"{m['dead_end']} | "
          f"{s['seconds']:.1f} |")


HEADER = ("| setting | status | objective | gap | length | mean network dist. to exit | "
          "mean trip from any vertex | loops | dead ends | time s |\n"
          "|---|---|---|---|---|---|---|---|---|---|")


def _panels(path, items, suptitle=""):
  fig, axes = plt.subplots(1, len(items), figsize=(2.0 * len(items), 2.45))
  for ax, (net, title) in zip(list(axes) if len(items) > 1 else [axes], items):
    draw.draw_on(ax, net, title)
  if suptitle:
    fig.suptitle(suptitle, fontsize=8)
  fig.tight_layout(pad=0.3)
  io.atomic_save_figure(fig, path, dpi=72)
  plt.close(fig)


def travel_sweep(args):
  out = []
  for override in _sweep_module().get_sweep(args.variant or None):
    w = override["model.travel_weight"]
    tag = args.variant or "mean_trip"
    tag += f"_{args.connectivity}" if args.connectivity else ""
    out.append((w, *solve(f"travel_{tag}_{w}", override, args)))
  print(f"\n### Travel weight sweep (sweep.py:{args.variant}, get_sweep())\n" + HEADER)
  for w, s, _ in out:
    print(_row(f"travel_weight={w}", s))
  fig, ax = plt.subplots(figsize=(3.2, 2.4))
  xs = [s["metrics"]["length"] for _, s, _ in out]
  ys = [s["metrics"]["mean_travel_distance"] for _, s, _ in out]
  ax.plot(xs, ys, "o-")
  for (w, _, _), x, y in zip(out, xs, ys):
    ax.annotate(f"{w}", (x, y), fontsize=7)
  ax.set_xlabel("network length")
  ax.set_ylabel("mean trip to an exit")
  fig.tight_layout()
  suffix = f"_{args.variant}" if args.variant else ""
  io.atomic_save_figure(fig, os.path.join(FIGURES, f"sweep_tradeoff{suffix}.png"), dpi=80)
  plt.close(fig)
  pick = [out[0], out[len(out) // 2], out[-1]]
  _panels(os.path.join(FIGURES, f"sweep_networks{suffix}.png"),
          [(n[0], f"w_travel={w}") for w, _, n in pick])


def coverage(args):
  out = [(r, *solve(f"coverage_{r}", {"model.travel_weight": 0.0, "spec.coverage.range": r},
                    args)) for r in args.ranges]
  print("\n### Coverage range (sweep.py, travel_weight=0)\n" + HEADER)
  for r, s, _ in out:
    print(_row(f"range={r}", s))
  _panels(os.path.join(FIGURES, "coverage.png"), [(n[0], f"range={r}") for r, _, n in out])


def dead_ends(args):
  # One exit: with two, a path from exit to exit has no dead end and needs no loop.
  out = [(mode, *solve(f"dead_end_{mode}", {"model.travel_weight": 0.0, "sinks.points": [[0., 0.]],
                                            "spec.features.dead_end.mode": mode}, args))
         for mode in ("allow", "forbid")]
  print("\n### Dead ends allowed vs forbidden (sweep.py, one exit at (0, 0), travel_weight=0)\n"
        + HEADER)
  for mode, s, _ in out:
    print(_row(f"dead_end={mode}", s))
  _panels(os.path.join(FIGURES, "dead_ends.png"), [(n[0], f"dead ends: {m}") for m, _, n in out])


def alternatives(args):
  s, nets = solve("alternatives", {"model.travel_weight": 0.0, "alternatives.count": 3,
                                   "alternatives.min_hamming": 4}, args)
  print("\n### Diverse alternatives (sweep.py, travel 0, 3 no-good cuts, Hamming >= 4)\n"
        + HEADER)
  print(_row("best", s))
  for a in s["alternatives"]:
    print(_row(a["name"], a))
  _panels(os.path.join(FIGURES, "alternatives.png"),
          [(n, f"{k}: obj {n['objective']:.2f}") for k, n in enumerate(nets)])


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--time-limit", type=float, default=30.0)
  p.add_argument("--solver", default="cpsat")
  p.add_argument("--workdir", default="/tmp/nd_trends")
  p.add_argument("--ranges", default="1,2,3,4")
  p.add_argument("--only", default="sweep,coverage,dead_ends,alternatives")
  p.add_argument("--reuse", action="store_true", help="re-check saved runs instead of solving")
  p.add_argument("--threads", type=int, default=0, help="solver threads (0: the config's)")
  p.add_argument("--connectivity", default="", help="override model.connectivity")
  p.add_argument("--variant", default="", help="sweep.py variant: '' (mean_trip) or 'proxy'")
  args = p.parse_args(argv)
  args.ranges = [float(r) for r in args.ranges.split(",")]
  os.makedirs(FIGURES, exist_ok=True)
  steps = {"sweep": travel_sweep, "coverage": coverage, "dead_ends": dead_ends,
           "alternatives": alternatives}
  for name in args.only.split(","):
    steps[name](args)


if __name__ == "__main__":
  main()
