"""The functional specification of a network (the paper's input), resolved onto a template.

`Instance` is everything the IP and the validator need: template, sinks, required vertices,
traffic pairs, coverage range, local-feature rules and objective weights. `to_json` gives the
"spec" block of network.json, which holds vertex indices so that any tool can re-check a network.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from common.registry import Registry
from netdesign import templates

FEATURE_NAMES = ("dead_end", "branch", "zigzag", "t_junction")
# allow: ignored; forbid: hard constraint count = 0; soft: weight * count added to the objective;
# at_least: hard constraint count >= `count` (wanted features, e.g. dead ends in a game level).
FEATURE_MODES = ("allow", "forbid", "soft", "at_least")
COVERAGE_METRICS: Registry = Registry("coverage metric")
COVERAGE_METRICS.add("geodesic", lambda tpl: tpl.geodesic())
COVERAGE_METRICS.add("euclidean", lambda tpl: tpl.euclidean())
# vertices: every template vertex within range (the paper's rows); edges: also every point of every
# template edge (street sides between crossings), model.edge_cover_sets.
COVERAGE_LOCATIONS = ("vertices", "edges")


@dataclasses.dataclass(frozen=True)
class Feature:
  mode: str = "allow"
  weight: float = 0.0
  count: int = 0


@dataclasses.dataclass(frozen=True)
class Instance:
  """A specification resolved to template vertex indices.

  Attributes:
    template: the candidate network.
    sinks: [S] vertex indices of exits / destinations every network part must reach.
    sinks_required: every sink must lie on the network.
    required: [R] vertex indices that must lie on the network (rooms' doors, ...).
    traffic: [(a, b), ...] vertex pairs that must be joined by a path (point-to-point traffic).
    coverage_range: every vertex within this distance of the network; None disables coverage.
    coverage_metric: 'geodesic' (along the template) or 'euclidean'.
    coverage_locations: 'vertices' or 'edges' (vertices and every point of every template edge).
    features: local-feature rules by name (FEATURE_NAMES).
    length_weight, travel_weight, traffic_weight: objective weights.
    max_detour: traffic path length <= max_detour * template distance (0 disables).
    length_scale: lengths are rounded to 1 / length_scale for the integer model.
    connectivity: name of the connectivity formulation ('labels' or 'flow').
    ball_cuts: add the valid geodesic-ball cut rows (model._ball_cuts) that tighten the LP.
    coverage_cuts: add the coverage rows strengthened by the used edges (model._coverage_cuts).
    forest_cuts: where model.forest_is_optimal, keep only forests with one sink per tree
      (model._forest_rows); the optimum is unchanged.
    travel_term: 'proxy' (sum of half-edge labels) or 'mean_trip' (mean over sites of the walk to
      the nearest network vertex plus the network distance to a sink), model.TRAVEL.
  """
  template: templates.Template
  sinks: np.ndarray
  sinks_required: bool
  required: np.ndarray
  traffic: tuple
  coverage_range: float | None
  coverage_metric: str
  features: dict
  length_weight: float
  travel_weight: float
  traffic_weight: float
  max_detour: float
  length_scale: int
  connectivity: str
  ball_cuts: bool = True
  travel_term: str = "proxy"
  coverage_locations: str = "vertices"
  coverage_cuts: bool = True
  forest_cuts: bool = True

  def to_json(self) -> dict:
    return {
        "sinks_required": self.sinks_required,
        "required": [int(v) for v in self.required],
        "traffic": {"pairs": [[int(a), int(b)] for a, b in self.traffic],
                    "weight": self.traffic_weight, "max_detour": self.max_detour},
        "coverage": {"enabled": self.coverage_range is not None,
                     "range": self.coverage_range, "metric": self.coverage_metric,
                     "locations": self.coverage_locations},
        "features": {k: dataclasses.asdict(f) for k, f in self.features.items()},
        "weights": {"length": self.length_weight, "travel": self.travel_weight},
        "travel_term": self.travel_term,
        "connectivity": self.connectivity,
        "ball_cuts": self.ball_cuts,
        "coverage_cuts": self.coverage_cuts,
        "forest_cuts": self.forest_cuts,
        "length_scale": self.length_scale,
    }


def from_config(config) -> Instance:
  """Builds the template and snaps every point of the config onto it."""
  tpl = templates.from_config(config.template)
  h = float(config.template.spacing)
  sinks = np.unique(tpl.snap(config.sinks.points, "sinks.points", h))
  required = np.unique(tpl.snap(config.spec.required_points, "spec.required_points", h))
  traffic = []
  for k, pair in enumerate(config.spec.traffic.pairs):
    a, b = tpl.snap(pair, f"spec.traffic.pairs[{k}]", h)
    if a != b:
      traffic.append((int(a), int(b)))
  cov = config.spec.coverage
  feats = {name: Feature(str(f.mode), float(f.weight), int(f.count))
           for name, f in ((n, config.spec.features[n]) for n in FEATURE_NAMES)}
  return Instance(
      template=tpl, sinks=sinks, sinks_required=bool(config.sinks.required), required=required,
      traffic=tuple(traffic), coverage_range=float(cov.range) if cov.enabled else None,
      coverage_metric=str(cov.metric), features=feats,
      length_weight=float(config.model.length_weight),
      travel_weight=float(config.model.travel_weight),
      traffic_weight=float(config.spec.traffic.weight),
      max_detour=float(config.spec.traffic.max_detour),
      length_scale=int(config.template.length_scale),
      connectivity=str(config.model.connectivity),
      ball_cuts=bool(config.model.ball_cuts),
      travel_term=str(config.model.travel_term),
      coverage_locations=str(cov.locations),
      coverage_cuts=bool(config.model.coverage_cuts),
      forest_cuts=bool(config.model.forest_cuts))
