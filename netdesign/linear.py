"""A solver-neutral integer linear model: integer variables, linear rows, indicator rows.

The IP of the paper is written once against this class and translated for each solver: CP-SAT keeps
indicator rows as enforced (`only_enforce_if`) constraints, HiGHS gets them as big-M rows. All
coefficients are integers (CP-SAT needs them), so lengths are scaled before they reach the model.
"""

from __future__ import annotations

import dataclasses
from typing import Iterable

import numpy as np

INF = float("inf")
Terms = list  # [(var index, int coefficient), ...]


@dataclasses.dataclass
class Indicator:
  """b = 1  =>  sum(terms) >= lo.  Relaxed for LP solvers as sum(terms) >= lo - big_m * (1 - b)."""
  b: int
  terms: Terms
  lo: int
  big_m: int


class LinearModel:
  """Minimise sum(objective) subject to rows and indicators; every variable is integer-valued.

  `implied[i]` marks variables whose integrality follows from the others (labels, flows): MIP
  solvers may treat them as continuous.
  """

  def __init__(self):
    self.lb: list[int] = []
    self.ub: list[int] = []
    self.implied: list[bool] = []
    self.rows: list[tuple[Terms, float, float]] = []
    self.indicators: list[Indicator] = []
    self.objective: dict[int, int] = {}
    self.obj_scale: float = 1.0  # real objective = integer objective / obj_scale

  @property
  def num_vars(self) -> int:
    return len(self.lb)

  def var(self, lb: int, ub: int, implied: bool = False) -> int:
    self.lb.append(int(lb))
    self.ub.append(int(ub))
    self.implied.append(implied)
    return len(self.lb) - 1

  def boolean(self) -> int:
    return self.var(0, 1)

  def add(self, terms: Iterable, lo: float = -INF, hi: float = INF) -> None:
    """lo <= sum(coef * var) <= hi."""
    self.rows.append((_merge(terms), lo, hi))

  def add_indicator(self, b: int, terms: Iterable, lo: int, big_m: int) -> None:
    self.indicators.append(Indicator(b, _merge(terms), int(lo), int(big_m)))

  def minimize(self, terms: Iterable) -> None:
    for v, c in terms:
      self.objective[v] = self.objective.get(v, 0) + int(c)

  def objective_value(self, values: np.ndarray) -> int:
    return int(sum(c * int(round(values[v])) for v, c in self.objective.items()))

  def is_feasible(self, values: np.ndarray) -> bool:
    """Checks an integer assignment against every row (used to vet warm starts)."""
    x = np.round(np.asarray(values)).astype(np.int64)
    if np.any(x < self.lb) or np.any(x > self.ub):
      return False
    for terms, lo, hi in self.rows:
      s = sum(c * x[v] for v, c in terms)
      if s < lo or s > hi:
        return False
    return all(x[ind.b] == 0 or sum(c * x[v] for v, c in ind.terms) >= ind.lo
               for ind in self.indicators)


def _merge(terms: Iterable) -> Terms:
  acc: dict[int, int] = {}
  for v, c in terms:
    acc[int(v)] = acc.get(int(v), 0) + int(c)
  return [(v, c) for v, c in acc.items() if c != 0]
