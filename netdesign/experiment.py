"""The netdesign run function: config -> instance -> IP -> solver -> checked network + drawings."""

from __future__ import annotations

import hashlib
import json
import os
import sys

import numpy as np
from absl import logging
from scipy.sparse import csgraph, coo_matrix

from common import checks, io
from common.errors import ConfigError
from common.registry import Registry
from netdesign import checker, draw, model, solvers
from netdesign import spec as spec_lib
from netdesign import templates

MODES: Registry = Registry("netdesign mode")


def validate(config) -> None:
  """Rejects bad config values with a message naming the field."""
  checks.one_of(config, "family", ["netdesign"])
  templates.TEMPLATES.get(checks.get_field(config, "template.kind"), field="template.kind")
  for f in ("template.nx", "template.ny"):
    checks.integer(config, f, low=2)
  checks.positive(config, "template.spacing")
  checks.integer(config, "template.length_scale", low=1)
  if len(checks.get_field(config, "sinks.points")) == 0:
    raise ConfigError("sinks.points is empty: give at least one sink [x, y]")
  checks.positive(config, "spec.coverage.range", allow_zero=True)
  spec_lib.COVERAGE_METRICS.get(checks.get_field(config, "spec.coverage.metric"),
                                field="spec.coverage.metric")
  checks.one_of(config, "spec.coverage.locations", spec_lib.COVERAGE_LOCATIONS)
  for name in spec_lib.FEATURE_NAMES:
    checks.one_of(config, f"spec.features.{name}.mode", spec_lib.FEATURE_MODES)
    checks.positive(config, f"spec.features.{name}.weight", allow_zero=True)
    checks.integer(config, f"spec.features.{name}.count", low=0)
  checks.positive(config, "spec.traffic.weight", allow_zero=True)
  detour = checks.get_field(config, "spec.traffic.max_detour")
  if detour != 0 and detour < 1:
    raise ConfigError(f"spec.traffic.max_detour={detour!r} is invalid: expected 0 (off) or >= 1")
  _validate_model_and_solver(config)


def _validate_model_and_solver(config) -> None:
  model.CONNECTIVITY.get(checks.get_field(config, "model.connectivity"),
                         field="model.connectivity")
  for flag in ("model.ball_cuts", "model.coverage_cuts", "model.forest_cuts"):
    value = checks.get_field(config, flag)
    if not isinstance(value, bool):
      raise ConfigError(f"{flag}={value!r} is invalid: expected True/False")
  checks.positive(config, "model.length_weight", allow_zero=True)
  checks.positive(config, "model.travel_weight", allow_zero=True)
  term = checks.get_field(config, "model.travel_term")
  model.TRAVEL.get(term, field="model.travel_term")
  if config.model.connectivity == "flow" and config.model.travel_weight > 0:
    raise ConfigError("model.travel_weight must be 0 with model.connectivity='flow' (the travel "
                      "terms need distance labels)")
  if (term == "proxy" and config.model.connectivity != "labels"
      and config.model.travel_weight > 0):
    raise ConfigError(f"model.travel_term='proxy' needs model.connectivity='labels' (half-edge "
                      f"labels), not {config.model.connectivity!r}; use 'mean_trip' or travel 0")
  solvers.SOLVERS.get(checks.get_field(config, "solver.name"), field="solver.name")
  checks.positive(config, "solver.time_limit")
  checks.integer(config, "solver.threads", low=1)
  checks.integer(config, "solver.seed", low=0)
  checks.in_range(config, "solver.cpsat_fraction", 0.0, 1.0)
  checks.in_range(config, "solver.rel_gap", 0.0, 1.0)
  try:
    solvers.cpsat_parameters(str(checks.get_field(config, "solver.cpsat_params")))
  except ValueError as err:
    raise ConfigError(f"solver.cpsat_params={config.solver.cpsat_params!r} is not valid CP-SAT "
                      f"SatParameters text: {err}") from None
  checks.integer(config, "alternatives.count", low=0)
  checks.integer(config, "alternatives.min_hamming", low=1)
  for fmt in checks.get_field(config, "output.formats"):
    if fmt not in ("png", "svg"):
      raise ConfigError(f"output.formats contains {fmt!r}: expected 'png' and/or 'svg'")


def options(config) -> solvers.Options:
  s = config.solver
  return solvers.Options(float(s.time_limit), int(s.threads), int(s.seed),
                         float(s.cpsat_fraction), float(s.rel_gap), str(s.cpsat_params))


def network_json(inst: spec_lib.Instance, built: model.Built, res: solvers.Result) -> dict:
  """network.json in the schema of issue 5."""
  tpl = inst.template
  selected = model.selected_edges(built, res.values) if res.values is not None else []
  spec = inst.to_json()
  spec["obstacles"] = [np.asarray(h).tolist() for h in tpl.holes]
  return {"vertices": tpl.vertices.tolist(), "edges": tpl.edges.tolist(), "selected": selected,
          "sinks": [int(s) for s in inst.sinks], "spec": spec,
          "objective": res.objective, "bound": res.bound, "status": res.status}


def diagnose_infeasible(inst: spec_lib.Instance) -> str:
  """A graph-search reason for infeasibility where one is visible, else a generic line."""
  tpl = inst.template
  n = tpl.num_vertices
  adj = coo_matrix((np.ones(len(tpl.edges)), (tpl.edges[:, 0], tpl.edges[:, 1])), shape=(n, n))
  _, comp = csgraph.connected_components(adj, directed=False)
  reachable = np.isin(comp, comp[inst.sinks])  # [V] vertex shares a component with a sink
  cut_off = [int(v) for v in inst.required if not reachable[v]]
  cut_off += [int(a) for a, b in inst.traffic if not reachable[a] or comp[a] != comp[b]]
  if inst.coverage_range is not None:
    dist = spec_lib.COVERAGE_METRICS.get(inst.coverage_metric)(tpl)
    coverable = ((dist <= inst.coverage_range + 1e-9) & reachable[None, :]).any(axis=1)
    cut_off += np.flatnonzero(~coverable).tolist()
  if cut_off:
    return (f"obstacles separate vertices {sorted(set(cut_off))[:8]} (needed by the required "
            "points, traffic or coverage) from every sink")
  return "the solver proved that no network meets the specification"


def _solve_all(config, inst, built):
  """Main solve plus diverse alternatives by no-good cuts (paper notes: "Diverse networks")."""
  opt = options(config)
  res = solvers.solve(config.solver.name, built.lm, opt)
  nets = [(network_json(inst, built, res), res)]
  for k in range(int(config.alternatives.count)):
    if nets[-1][1].status not in ("optimal", "feasible"):
      break
    model.add_nogood(built, nets[-1][0]["selected"], int(config.alternatives.min_hamming))
    alt = solvers.solve(config.solver.name, built.lm, opt)
    logging.info("alternative %d: %s", k + 1, alt.summary())
    if alt.status not in ("optimal", "feasible"):
      break
    nets.append((network_json(inst, built, alt), alt))
  return nets


def _write(workdir, stem, net, res, config, built) -> dict:
  report = checker.check(net)
  io.atomic_write_json(os.path.join(workdir, f"{stem}.json"), net)
  if config.output.draw:
    draw.save(net, os.path.join(workdir, stem), draw.title_of(net, report.metrics),
              tuple(config.output.formats))
  return {"name": stem, **res.summary(), "stages": res.stages, "valid": report.ok,
          "violations": report.violations, "metrics": report.metrics,
          "travel_model": model.travel_value(built, res.values)}


def config_digest(config) -> str:
  """SHA-256 of the resolved config: a rerun with the same config finds its results."""
  return hashlib.sha256(config.to_json_best_effort(sort_keys=True).encode()).hexdigest()


def _previous(config, workdir) -> dict | None:
  path = os.path.join(workdir, "results.json")
  try:
    with open(path) as f:
      summary = json.load(f)
  except (OSError, ValueError):
    return None
  return summary if summary.get("config_digest") == config_digest(config) else None


@MODES.register("solve")
def solve(config, workdir) -> dict:
  previous = _previous(config, workdir)
  if previous is not None:
    logging.info("Already solved: %s holds this config's result; delete it to solve again.",
                 os.path.join(workdir, "results.json"))
    _report(previous)
    return previous
  inst = spec_lib.from_config(config)
  built = model.build(inst)
  logging.info("IP: %d variables, %d rows, %d indicator rows", built.lm.num_vars,
               len(built.lm.rows), len(built.lm.indicators))
  nets = _solve_all(config, inst, built)
  records = [_write(workdir, "network" if k == 0 else f"alternative_{k}", net, res, config, built)
             for k, (net, res) in enumerate(nets)]
  main = records[0]
  summary = {**main, "alternatives": records[1:],
             "ip": {"variables": built.lm.num_vars, "rows": len(built.lm.rows),
                    "indicators": len(built.lm.indicators)},
             "template": {"kind": inst.template.kind, "vertices": inst.template.num_vertices,
                          "edges": len(inst.template.edges)},
             "config_digest": config_digest(config)}
  if main["status"] == "infeasible":
    summary["reason"] = diagnose_infeasible(inst)
    print(f"netdesign: specification is INFEASIBLE: {summary['reason']}", file=sys.stderr)
  io.atomic_write_json(os.path.join(workdir, "results.json"), summary)
  _report(summary)
  bad = [r["name"] for r in records if not r["valid"]]
  if bad:
    raise RuntimeError(f"the independent validator rejected {bad}: see results.json")
  return summary


def _report(summary: dict) -> None:
  m = summary["metrics"]
  gap = summary["gap"]
  print(f"netdesign: status={summary['status']} objective={summary['objective']} "
        f"bound={summary['bound']} gap={'-' if gap is None else f'{gap:.4f}'} "
        f"time={summary['seconds']:.2f}s edges={m.get('num_edges')} "
        f"length={m.get('length', 0):.2f} loops={m.get('loops')} "
        f"alternatives={len(summary['alternatives'])}")


@MODES.register("eval")
def evaluate(config, workdir) -> dict:
  """Re-checks an existing workdir/network.json with the independent validator."""
  path = os.path.join(workdir, "network.json")
  if not os.path.exists(path):
    raise ConfigError(f"--mode=eval needs {path}: run with --mode=solve first")
  with open(path) as f:
    net = json.load(f)
  report = checker.check(net)
  out = {"valid": report.ok, "violations": report.violations, "metrics": report.metrics}
  io.atomic_write_json(os.path.join(workdir, "check.json"), out)
  print(f"netdesign: valid={report.ok} violations={report.violations}")
  return out


MODES.add("train", solve)  # main.py's default mode


def run(config, workdir: str, mode: str = "solve") -> dict:
  mode_fn = MODES.get(mode, field="--mode")
  os.makedirs(workdir, exist_ok=True)
  return mode_fn(config, workdir)
