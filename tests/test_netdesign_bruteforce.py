"""The IP optimum equals the optimum found by exhaustive enumeration of edge subsets (grids <= 4x4).

The enumeration below shares nothing with the IP: it lists every subset of template edges in order
of size, keeps those that satisfy the specification (checked by vectorised graph searches), scores
them with network distances from Bellman-Ford, and stops once no larger subset can win (every term
of the objective grows at least like (w_len + 2 w_travel) * shortest length * #edges).
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
  if t["w_travel"]:
    half = [2 * lengths[x] + dist[:, i] + dist[:, j] for x, (i, j) in enumerate(edges)]
    obj = obj + t["w_travel"] * np.where(eb, np.stack(half, 1), 0.0).sum(1)
  for a, b in t["traffic"]:
    src = np.zeros(n, bool)
    src[a] = True
    d_ab = _bellman_ford(eb, edges, lengths, n, src[None] & used[:, a:a + 1])[:, b]
    ok &= np.isfinite(d_ab)
    obj = obj + t["w_traffic"] * np.where(np.isfinite(d_ab), d_ab, 0.0)
  return masks[ok], obj[ok]


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
  t = dict(n=n, edges=edges, lengths=lengths, is_sink=is_sink, must_use=np.array(must, np.int64),
           cover=cover, stairs=_staircases(tpl.vertices.tolist(), edges), features=inst.features,
           w_len=inst.length_weight, w_travel=inst.travel_weight, w_traffic=inst.traffic_weight,
           traffic=inst.traffic)
  best, best_mask = np.inf, None
  per_edge = (inst.length_weight + 2 * inst.travel_weight) * lengths.min()
  level, top = np.zeros(1, np.int64), np.full(1, -1)  # all k-subsets as bit masks, highest bit
  for k in range(len(edges) + 1):
    if k * per_edge > best + 1e-9:  # no subset with k or more edges can beat `best`
      break
    if k:
      grown = [(level[top < b] | (1 << b), b) for b in range(len(edges))]
      level = np.concatenate([m for m, _ in grown])
      top = np.concatenate([np.full(len(m), b) for m, b in grown])
    masks, obj = _score(level, t)
    if len(obj) and obj.min() < best - 1e-9:
      best, best_mask = float(obj.min()), int(masks[np.argmin(obj)])
  chosen = None if best_mask is None else [x for x in range(len(edges)) if best_mask >> x & 1]
  return best, chosen


def _config(n, sinks, **over):
  c = base.get_config()
  c.template.nx = c.template.ny = n
  c.sinks.points = sinks
  c.solver.name, c.solver.time_limit = "cpsat", 60.0
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


def test_enumeration_can_disagree():
  """The oracle is sensitive: dropping the travel term changes the optimum it reports."""
  a, _ = brute_force(spec_lib.from_config(CASES["3x3_travel"]))
  b, _ = brute_force(spec_lib.from_config(CASES["3x3_length"]))
  assert a > b + 1.0
