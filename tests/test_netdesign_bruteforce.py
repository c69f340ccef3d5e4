"""The IP optimum equals the optimum found by exhaustive enumeration of edge subsets (grids <= 4x4).

The enumeration below shares nothing with the IP: it lists every subset of template edges in order
of size, keeps those that satisfy the specification (checked by vectorised graph searches), scores
them with network distances from Bellman-Ford, and stops once no larger subset can win (the
objective is at least k * (w_len + 2 w_travel) * shortest length with k edges for the proxy, and
k * w_len * shortest length + w_travel * mean distance to a sink for the mean trip).
Coverage of edge points is checked on 11 sample points per edge (exact on these unit grids,
where every breakpoint lies on a multiple of 0.5).
"""

import itertools

import numpy as np
import pytest

from common.sweep import apply_overrides
from configs.netdesign import base
from netdesign import checker, experiment, model, solvers
from netdesign import spec as spec_lib


def _floyd(n, edges, lengths):
  d = np.full((n, n), np.inf)
  np.fill_diagonal(d, 0.0)
  for (i, j), w in zip(edges, lengths):
    d[i, j] = d[j, i] = min(d[i, j], w)
  for k in range(n):
    d = np.minimum(d, d[:, k:k + 1] + d[k:k + 1, :])
  return d


def _staircases(vertices, edges):
  """(a, x, b, j, k): edges a = ij, x = jk, b = kl turning at j and k in opposite senses."""
  out = []
  for x, (j, k) in enumerate(edges):
    for a, b in itertools.product(range(len(edges)), repeat=2):
      if a == x or b == x or j not in edges[a] or k not in edges[b]:
        continue
      i, l = sum(edges[a]) - j, sum(edges[b]) - k
      p = vertices
      t1 = (p[j][0] - p[i][0]) * (p[k][1] - p[j][1]) - (p[j][1] - p[i][1]) * (p[k][0] - p[j][0])
      t2 = (p[k][0] - p[j][0]) * (p[l][1] - p[k][1]) - (p[k][1] - p[j][1]) * (p[l][0] - p[k][0])
      if t1 * t2 < -1e-12:
        out.append((a, x, b, j, k))
  return out


def _bellman_ford(eb, edges, lengths, n, sources_mask):
  """[N, n] network distances from the sources (inf where unreachable)."""
  dist = np.where(sources_mask, 0.0, np.inf)
  for _ in range(n):
    old = dist.copy()
    for x, (i, j) in enumerate(edges):
      w = np.where(eb[:, x], lengths[x], np.inf)
      dist[:, i] = np.minimum(dist[:, i], dist[:, j] + w)
      dist[:, j] = np.minimum(dist[:, j], dist[:, i] + w)
    if np.array_equal(old, dist):
      break
  return dist


def _score(masks, t):
  """Objective of each mask, +inf where the specification is violated."""
  n, edges, lengths = t["n"], t["edges"], t["lengths"]
  eb = ((masks[:, None] >> np.arange(len(edges))[None, :]) & 1).astype(bool)
  deg = np.zeros((len(masks), n), np.int64)
  for x, (i, j) in enumerate(edges):
    deg[:, i] += eb[:, x]
    deg[:, j] += eb[:, x]
  used = deg > 0
  ok = used[:, t["must_use"]].all(axis=1)
  for cover in t["cover"]:
    ok &= used[:, cover].any(axis=1)
  for x, cover in t["edge_cover"]:  # a point of edge x: on the network, or a vertex within range
    ok &= eb[:, x] | used[:, cover].any(axis=1)
  counts = {"dead_end": ((deg == 1) & ~t["is_sink"][None]).sum(1), "branch": (deg >= 3).sum(1),
            "t_junction": (deg == 3).sum(1), "zigzag": np.zeros(len(masks), np.int64)}
  for a, x, b, j, k in t["stairs"]:
    counts["zigzag"] += eb[:, a] & eb[:, x] & eb[:, b] & (deg[:, j] == 2) & (deg[:, k] == 2)
  penalty = np.zeros(len(masks))
  for name, f in t["features"].items():
    ok &= {"forbid": counts[name] == 0, "at_least": counts[name] >= f.count}.get(f.mode, True)
    penalty += f.weight * counts[name] if f.mode == "soft" else 0.0
  eb, deg, used, penalty, masks = eb[ok], deg[ok], used[ok], penalty[ok], masks[ok]
  dist = _bellman_ford(eb, edges, lengths, n, used & t["is_sink"][None])
  ok = np.where(used, np.isfinite(dist), True).all(axis=1)  # no islands
  obj = t["w_len"] * (eb * lengths).sum(1) + penalty
  if t["w_travel"] and t["trip"]:
    obj = obj + t["w_travel"] * _mean_trip(used, dist, t["geo"][t["sites"]])
  elif t["w_travel"]:
    half = [2 * lengths[x] + dist[:, i] + dist[:, j] for x, (i, j) in enumerate(edges)]
    obj = obj + t["w_travel"] * np.where(eb, np.stack(half, 1), 0.0).sum(1)
  for a, b in t["traffic"]:
    src = np.zeros(n, bool)
    src[a] = True
    d_ab = _bellman_ford(eb, edges, lengths, n, src[None] & used[:, a:a + 1])[:, b]
    ok &= np.isfinite(d_ab)
    obj = obj + t["w_traffic"] * np.where(np.isfinite(d_ab), d_ab, 0.0)
  return masks[ok], obj[ok]


def _mean_trip(used, dist, geo_sites):
  """[N] mean over sites of walk to the nearest used vertex + its network distance to a sink."""
  walk = np.where(used[:, None, :], geo_sites[None], np.inf)         # [N, sites, n]
  near = walk.min(axis=2, keepdims=True)
  return np.where(walk <= near + 1e-9, walk + dist[:, None, :], np.inf).min(axis=2).mean(axis=1)


def _edge_samples(edges, lengths, geo, r):
  """[(edge, vertices within r of one sample point on it)] over 11 points per edge."""
  out = []
  for x, (a, b) in enumerate(edges):
    for s in np.linspace(0.0, lengths[x], 11):
      d = np.minimum(s + geo[a], lengths[x] - s + geo[b])
      out.append((x, np.flatnonzero(d <= r + 1e-9)))
  return out


def brute_force(inst):
  """(optimal objective, optimal edge list) by enumeration; (inf, None) if infeasible."""
  tpl = inst.template
  n, edges, lengths = tpl.num_vertices, [tuple(e) for e in tpl.edges.tolist()], tpl.lengths
  assert inst.coverage_metric == "geodesic" and inst.max_detour == 0
  geo = _floyd(n, edges, lengths)
  is_sink = np.zeros(n, bool)
  is_sink[inst.sinks] = True
  must = list(inst.required) + (list(inst.sinks) if inst.sinks_required else [])
  cover = ([np.flatnonzero(geo[u] <= inst.coverage_range + 1e-9) for u in range(n)]
           if inst.coverage_range is not None else [])
  edge_cover = (_edge_samples(edges, lengths, geo, inst.coverage_range)
                if inst.coverage_range is not None and inst.coverage_locations == "edges" else [])
  trip = inst.travel_term == "mean_trip"
  sites = np.flatnonzero(np.isfinite(geo[:, inst.sinks]).any(axis=1))
  t = dict(n=n, edges=edges, lengths=lengths, is_sink=is_sink, must_use=np.array(must, np.int64),
           cover=cover, stairs=_staircases(tpl.vertices.tolist(), edges), features=inst.features,
           w_len=inst.length_weight, w_travel=inst.travel_weight, w_traffic=inst.traffic_weight,
           traffic=inst.traffic, edge_cover=edge_cover, trip=trip, geo=geo, sites=sites)
  best, best_mask = np.inf, None
  per_edge = (inst.length_weight + (0 if trip else 2 * inst.travel_weight)) * lengths.min()
  floor = inst.travel_weight * geo[sites][:, inst.sinks].min(axis=1).mean() if trip else 0.0
  level, top = np.zeros(1, np.int64), np.full(1, -1)  # all k-subsets as bit masks, highest bit
  for k in range(len(edges) + 1):
    if k * per_edge + floor > best + 1e-9:  # no subset with k or more edges can beat `best`
      break
    if k:
      grown = [(level[top < b] | (1 << b), b) for b in range(len(edges))]
      level = np.concatenate([m for m, _ in grown])
      top = np.concatenate([np.full(len(m), b) for m, b in grown])
    for chunk in np.array_split(level, max(1, len(level) // 20000)):
      masks, obj = _score(chunk, t)
      if len(obj) and obj.min() < best - 1e-9:
        best, best_mask = float(obj.min()), int(masks[np.argmin(obj)])
  chosen = None if best_mask is None else [x for x in range(len(edges)) if best_mask >> x & 1]
  return best, chosen


def _config(n, sinks, **over):
  c = base.get_config()
  c.template.nx = c.template.ny = n
  c.sinks.points = sinks
  c.solver.name, c.solver.time_limit = "cpsat", 60.0
  c.solver.threads = 2  # the suite runs on 2 cores
  return apply_overrides(c, over)


CASES = {
    "3x3_length": _config(3, [[0, 0]]),
    "3x3_travel": _config(3, [[0, 0]], **{"model.travel_weight": 0.5}),
    "3x3_traffic_branch": _config(
        3, [[0, 0]], **{"spec.traffic.pairs": [[[2, 0], [0, 2]]], "spec.traffic.weight": 0.3,
                        "spec.coverage.enabled": False, "spec.features.branch.mode": "at_least",
                        "spec.features.branch.count": 1}),
    "3x4_deadend_soft_travel": _config(
        3, [[0, 0], [2, 2]], **{"template.ny": 4, "model.travel_weight": 0.2,
                                "spec.features.dead_end.mode": "soft",
                                "spec.features.dead_end.weight": 0.5}),
    "3x4_all_vertices_no_dead_ends": _config(
        3, [[1, 0]], **{"template.ny": 4, "spec.coverage.range": 0.0,
                        "spec.features.dead_end.mode": "forbid"}),
    "4x4_length": _config(4, [[0, 0]]),
    "4x4_zigzag_forbid_t_soft": _config(
        4, [[0, 0], [3, 3]], **{"spec.features.zigzag.mode": "forbid",
                                "spec.features.t_junction.mode": "soft",
                                "spec.features.t_junction.weight": 0.3}),
    "4x4_travel_zigzag_soft": _config(
        4, [[0, 1], [3, 2]], **{"model.travel_weight": 0.1, "spec.features.zigzag.mode": "soft",
                                "spec.features.zigzag.weight": 0.4}),
    "4x4_tree_length": _config(4, [[0, 0]], **{"model.connectivity": "tree"}),
    # mean trip (walk to the nearest network vertex + network distance to an exit, averaged)
    "3x3_trip": _config(3, [[0, 0]], **{"model.travel_term": "mean_trip",
                                        "model.travel_weight": 4.0}),
    "3x3_trip_no_coverage_tree": _config(
        3, [[0, 0]], **{"model.travel_term": "mean_trip", "model.travel_weight": 3.0,
                        "model.connectivity": "tree", "spec.coverage.enabled": False,
                        "spec.required_points": [[2, 2]]}),
    "3x4_trip_two_sinks_deadend_soft": _config(
        3, [[0, 0], [2, 3]], **{"template.ny": 4, "model.travel_term": "mean_trip",
                                "model.travel_weight": 6.0, "spec.features.dead_end.mode": "soft",
                                "spec.features.dead_end.weight": 0.5}),
    "3x4_trip_corner_heavy": _config(3, [[0, 0]], **{"template.ny": 4,
                                                    "model.travel_term": "mean_trip",
                                                    "model.travel_weight": 10.0}),
    "3x4_trip_tree_heavy": _config(
        3, [[1, 0]], **{"template.ny": 4, "model.travel_term": "mean_trip",
                        "model.travel_weight": 20.0, "model.connectivity": "tree"}),
    # coverage of every point of every edge
    "3x4_edge_coverage": _config(3, [[0, 0]], **{"template.ny": 4,
                                                 "spec.coverage.locations": "edges"}),
    "3x3_edge_coverage_range_1.5_trip_tree": _config(
        3, [[1, 0]], **{"spec.coverage.locations": "edges", "spec.coverage.range": 1.5,
                        "model.travel_term": "mean_trip", "model.travel_weight": 2.0,
                        "model.connectivity": "tree"}),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_ip_optimum_equals_enumeration(name):
  config = CASES[name]
  experiment.validate(config)
  inst = spec_lib.from_config(config)
  built = model.build(inst)
  res = solvers.solve("cpsat", built.lm, experiment.options(config))
  assert res.status == "optimal", res.summary()
  net = experiment.network_json(inst, built, res)
  report = checker.check(net)
  assert report.ok, report.violations
  expected, chosen = brute_force(inst)
  assert chosen is not None
  assert res.objective == pytest.approx(expected, abs=1e-6)
  # The enumerated optimum is itself a valid network under the independent validator.
  brute_net = {**net, "selected": chosen, "objective": expected}
  assert checker.check(brute_net).ok
  if inst.travel_weight:  # the model's travel value equals the validator's Dijkstra recomputation
    key = "mean_travel_distance" if inst.travel_term == "mean_trip" else "travel_proxy"
    assert model.travel_value(built, res.values) == pytest.approx(report.metrics[key], abs=1e-6)


def test_enumeration_can_disagree():
  """The oracle is sensitive: dropping the travel term changes the optimum it reports."""
  a, _ = brute_force(spec_lib.from_config(CASES["3x3_travel"]))
  b, _ = brute_force(spec_lib.from_config(CASES["3x3_length"]))
  assert a > b + 1.0


def _network_metrics(inst, chosen):
  """The validator's metrics of an enumerated network (no solver involved)."""
  empty = solvers.Result("optimal", None, None, None, 0.0, "enumeration")
  net = {**experiment.network_json(inst, None, empty), "selected": chosen}
  return checker.check(net).metrics


def test_enumeration_shows_length_travel_tradeoff():
  """Oracle for the sweep: with the mean trip, a larger travel weight buys a longer network with
  shorter trips. Measured by enumeration on 3 x 4 with one exit at a corner: length 4 and mean
  trip 2.83 at w = 0 and 3, length 6 and mean trip 2.5 at w = 10 (on grids walking plus a short
  tree is often already a geodesic trip, so the trade-off needs a large weight)."""
  rows = []
  for w in (0.0, 3.0, 10.0):
    config = _config(3, [[0, 0]], **{"template.ny": 4, "model.travel_term": "mean_trip",
                                     "model.travel_weight": w})
    inst = spec_lib.from_config(config)
    _, chosen = brute_force(inst)
    rows.append(_network_metrics(inst, chosen))
  lengths = [m["length"] for m in rows]
  trips = [m["mean_travel_distance"] for m in rows]
  assert lengths[0] < lengths[-1] and trips[0] > trips[-1], (lengths, trips)
  assert lengths == sorted(lengths) and trips == sorted(trips, reverse=True)
