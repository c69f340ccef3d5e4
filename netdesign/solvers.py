"""Solvers behind one interface: solve(model, options, hint=None) -> Result.

- cpsat: OR-Tools CP-SAT, indicator rows as enforced constraints; strong incumbents.
- highs: HiGHS branch-and-cut on the big-M form; LP-based bounds; accepts a warm start.
- portfolio: CP-SAT for a share of the time, then HiGHS warm-started from CP-SAT's incumbent to
  prove or tighten the bound. Objective = best incumbent, bound = best proven bound.
"""

from __future__ import annotations

import dataclasses
import os
import time

import numpy as np

from common.registry import Registry
from netdesign.linear import LinearModel

SOLVERS: Registry = Registry("solver")
STATUSES = ("optimal", "feasible", "infeasible", "timeout")


@dataclasses.dataclass(frozen=True)
class Options:
  time_limit: float = 30.0
  threads: int = 8
  seed: int = 0
  cpsat_fraction: float = 0.5
  rel_gap: float = 1e-6
  cpsat_params: str = ""  # extra CP-SAT SatParameters in text format, e.g. "linearization_level:2"


@dataclasses.dataclass
class Result:
  """status in STATUSES; objective / bound in real units (None when absent); values [num_vars]."""
  status: str
  objective: float | None
  bound: float | None
  values: np.ndarray | None
  seconds: float
  solver: str
  stages: list = dataclasses.field(default_factory=list)

  @property
  def gap(self) -> float | None:
    if self.objective is None or self.bound is None:
      return None
    return max(0.0, self.objective - self.bound) / max(abs(self.objective), 1e-9)

  def summary(self) -> dict:
    return {"solver": self.solver, "status": self.status, "objective": self.objective,
            "bound": self.bound, "gap": self.gap, "seconds": round(self.seconds, 3)}


def _status_from(has_solution: bool, proven: bool, infeasible: bool) -> str:
  if infeasible:
    return "infeasible"
  if not has_solution:
    return "timeout"
  return "optimal" if proven else "feasible"


@SOLVERS.register("cpsat")
def solve_cpsat(lm: LinearModel, opt: Options, hint: np.ndarray | None = None) -> Result:
  from ortools.sat.python import cp_model
  start = time.perf_counter()
  m = cp_model.CpModel()
  xs = [m.new_bool_var("") if (lo, hi) == (0, 1) else m.new_int_var(lo, hi, "")
        for lo, hi in zip(lm.lb, lm.ub)]

  def expr(terms):
    return cp_model.LinearExpr.weighted_sum([xs[v] for v, _ in terms], [c for _, c in terms])

  for terms, lo, hi in lm.rows:
    if lo == hi:
      m.add(expr(terms) == int(lo))
    else:
      if lo > -np.inf:
        m.add(expr(terms) >= int(np.ceil(lo)))
      if hi < np.inf:
        m.add(expr(terms) <= int(np.floor(hi)))
  for ind in lm.indicators:
    m.add(expr(ind.terms) >= ind.lo).only_enforce_if(xs[ind.b])
  m.minimize(expr(list(lm.objective.items())))
  if hint is not None:
    for x, v in zip(xs, hint):
      m.add_hint(x, int(round(v)))
  solver = cp_model.CpSolver()
  solver.parameters.max_time_in_seconds = float(opt.time_limit)
  # Two workers stall on 2 cores (ENVIRONMENT.md); 8 workers interleave the portfolio usefully.
  solver.parameters.num_workers = int(opt.threads)
  solver.parameters.random_seed = int(opt.seed)
  solver.parameters.relative_gap_limit = float(opt.rel_gap)
  if opt.cpsat_params:
    cpsat_parameters(opt.cpsat_params)  # a clear error for a bad field, before merging the text
    solver.parameters.merge_text_format(opt.cpsat_params)
  code = solver.solve(m)
  has = code in (cp_model.OPTIMAL, cp_model.FEASIBLE)
  status = _status_from(has, code == cp_model.OPTIMAL, code == cp_model.INFEASIBLE)
  values = np.array([solver.value(x) for x in xs], np.int64) if has else None
  obj = solver.objective_value / lm.obj_scale if has else None
  bound = solver.best_objective_bound / lm.obj_scale if has else None
  if status == "optimal":
    bound = obj
  return Result(status, obj, bound, values, time.perf_counter() - start, "cpsat")


def cpsat_parameters(text: str):
  """Parses SatParameters text ("name:value name:value"); raises ValueError on a bad field."""
  from google.protobuf import text_format
  from ortools.sat import sat_parameters_pb2
  try:
    return text_format.Parse(text, sat_parameters_pb2.SatParameters())
  except text_format.ParseError as err:
    raise ValueError(str(err)) from None


def _highs_lp(lm: LinearModel):
  """Column-wise HighsLp of the big-M form of `lm`."""
  import highspy
  from scipy import sparse
  rows, lo, hi = [], [], []
  for terms, rlo, rhi in lm.rows:
    rows.append(terms)
    lo.append(rlo)
    hi.append(rhi)
  for ind in lm.indicators:  # sum >= lo - M (1 - b)  <=>  sum - M b >= lo - M
    rows.append(ind.terms + [(ind.b, -ind.big_m)])
    lo.append(ind.lo - ind.big_m)
    hi.append(np.inf)
  r = np.repeat(np.arange(len(rows)), [len(t) for t in rows])
  c = np.array([v for t in rows for v, _ in t], np.int64)
  a = np.array([w for t in rows for _, w in t], np.float64)
  mat = sparse.csc_matrix((a, (r, c)), shape=(len(rows), lm.num_vars))
  lp = highspy.HighsLp()
  lp.num_col_, lp.num_row_ = lm.num_vars, len(rows)
  cost = np.zeros(lm.num_vars)
  for v, w in lm.objective.items():
    cost[v] = w
  lp.col_cost_ = cost
  lp.col_lower_ = np.asarray(lm.lb, np.float64)
  lp.col_upper_ = np.asarray(lm.ub, np.float64)
  lp.row_lower_ = np.asarray(lo, np.float64)
  lp.row_upper_ = np.asarray(hi, np.float64)
  lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
  lp.a_matrix_.start_ = mat.indptr
  lp.a_matrix_.index_ = mat.indices
  lp.a_matrix_.value_ = mat.data
  lp.integrality_ = [highspy.HighsVarType.kContinuous if imp else highspy.HighsVarType.kInteger
                     for imp in lm.implied]
  return lp


@SOLVERS.register("highs")
def solve_highs(lm: LinearModel, opt: Options, hint: np.ndarray | None = None) -> Result:
  import highspy
  start = time.perf_counter()
  h = highspy.Highs()
  h.setOptionValue("output_flag", False)
  h.setOptionValue("time_limit", float(opt.time_limit))
  h.setOptionValue("threads", int(min(opt.threads, os.cpu_count() or 1)))
  h.setOptionValue("random_seed", int(opt.seed))
  h.setOptionValue("mip_rel_gap", float(opt.rel_gap))
  h.setOptionValue("mip_abs_gap", 0.999)  # the objective is integral: a gap below 1 is optimal
  h.passModel(_highs_lp(lm))
  if hint is not None:
    sol = highspy.HighsSolution()
    sol.col_value = [float(v) for v in hint]
    sol.value_valid = True
    h.setSolution(sol)
  h.run()
  ms = h.getModelStatus()
  info = h.getInfo()
  has = info.primal_solution_status == 2  # kSolutionStatusFeasible
  infeasible = ms == highspy.HighsModelStatus.kInfeasible
  proven = ms == highspy.HighsModelStatus.kOptimal
  status = _status_from(has and not infeasible, proven, infeasible)
  values = obj = bound = None
  if status in ("optimal", "feasible"):
    values = np.round(np.asarray(h.getSolution().col_value)).astype(np.int64)
    obj = lm.objective_value(values) / lm.obj_scale
    bound = min(info.mip_dual_bound / lm.obj_scale, obj)
    bound = obj if proven else bound
  elif np.isfinite(info.mip_dual_bound) and not infeasible:
    bound = info.mip_dual_bound / lm.obj_scale
  return Result(status, obj, bound, values, time.perf_counter() - start, "highs")


@SOLVERS.register("portfolio")
def solve_portfolio(lm: LinearModel, opt: Options, hint: np.ndarray | None = None) -> Result:
  """CP-SAT incumbent, then HiGHS bound warm-started from it (paper: one commercial MIP)."""
  start = time.perf_counter()
  first = solve_cpsat(lm, dataclasses.replace(opt, time_limit=opt.time_limit * opt.cpsat_fraction),
                      hint)
  if first.status in ("optimal", "infeasible"):
    first.solver, first.stages = "portfolio", [first.summary()]
    return first
  rest = max(1.0, opt.time_limit - (time.perf_counter() - start))
  second = solve_highs(lm, dataclasses.replace(opt, time_limit=rest), first.values)
  return _combine(first, second, time.perf_counter() - start, opt.rel_gap)


def _combine(a: Result, b: Result, seconds: float, rel_gap: float) -> Result:
  stages = [a.summary(), b.summary()]
  if b.status == "infeasible" or a.status == "infeasible":
    return Result("infeasible", None, None, None, seconds, "portfolio", stages)
  found = [r for r in (a, b) if r.objective is not None]
  best = min(found, key=lambda r: r.objective) if found else None
  bounds = [r.bound for r in (a, b) if r.bound is not None]
  bound = max(bounds) if bounds else None
  if best is None:
    return Result("timeout", None, bound, None, seconds, "portfolio", stages)
  bound = min(bound, best.objective) if bound is not None else None
  res = Result("feasible", best.objective, bound, best.values, seconds, "portfolio", stages)
  if "optimal" in (a.status, b.status) or (res.gap is not None and res.gap <= rel_gap):
    res.status, res.bound = "optimal", best.objective
  return res


def solve(name: str, lm: LinearModel, opt: Options, hint: np.ndarray | None = None) -> Result:
  return SOLVERS.get(name, field="solver.name")(lm, opt, hint)
