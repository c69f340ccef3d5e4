"""Independent validator of a network.json: graph searches only, nothing from the solver model.

It re-derives every property from the vertex coordinates, the candidate edges and the selected
subset: no islands (every used vertex reaches a sink), required vertices present, coverage range
(at the vertices, and with coverage.locations = 'edges' at every point of every template edge, in
closed form), traffic paths (and detour limit), local-feature counts against their rules, and the
objective value (length + travel term + traffic + soft penalties) which must match what the solver
reported. The travel term is the half-edge proxy or the mean trip (walk to the nearest network
vertex, then along the network to a sink, averaged over the vertices), by spec["travel_term"].
"""

from __future__ import annotations

import dataclasses
import heapq
import math
from collections import defaultdict


@dataclasses.dataclass
class Report:
  ok: bool
  violations: list
  metrics: dict


def _adjacency(vertices, edges, chosen):
  adj = defaultdict(list)
  for x in chosen:
    i, j = edges[x]
    w = math.dist(vertices[i], vertices[j])
    adj[i].append((j, w))
    adj[j].append((i, w))
  return adj


def _dijkstra(adj, sources):
  """Multi-source shortest distances {vertex: distance}."""
  dist = {s: 0.0 for s in sources}
  heap = [(0.0, s) for s in sources]
  while heap:
    d, u = heapq.heappop(heap)
    if d > dist.get(u, math.inf):
      continue
    for v, w in adj[u]:
      if d + w < dist.get(v, math.inf) - 1e-12:
        dist[v] = d + w
        heapq.heappush(heap, (d + w, v))
  return dist


def _cross(o, a, b):
  return (a[0] - o[0]) * (b[1] - a[1]) - (a[1] - o[1]) * (b[0] - a[0])


def count_features(vertices, edges, chosen, sinks) -> dict:
  """Dead ends (degree 1 off the sinks), branches (>= 3), T-junctions (= 3), zig-zags."""
  deg = defaultdict(int)
  for x in chosen:
    for v in edges[x]:
      deg[v] += 1
  counts = {"dead_end": sum(1 for v, d in deg.items() if d == 1 and v not in sinks),
            "branch": sum(1 for d in deg.values() if d >= 3),
            "t_junction": sum(1 for d in deg.values() if d == 3), "zigzag": 0}
  nbrs = defaultdict(list)
  for x in chosen:
    i, j = edges[x]
    nbrs[i].append(j)
    nbrs[j].append(i)
  for x in chosen:  # middle segment j-k of a staircase i-j-k-l with both turns, opposite senses
    j, k = edges[x]
    if deg[j] != 2 or deg[k] != 2:
      continue
    i = next(v for v in nbrs[j] if v != k)
    l = next(v for v in nbrs[k] if v != j)
    t1 = _cross(vertices[i], vertices[j], vertices[k])
    t2 = _cross(vertices[j], vertices[k], vertices[l])
    counts["zigzag"] += int(abs(t1) > 1e-9 and abs(t2) > 1e-9 and t1 * t2 < 0)
  return counts


def _template_distances(vertices, edges, metric, source):
  if metric == "euclidean":
    return {v: math.dist(vertices[source], p) for v, p in enumerate(vertices)}
  return _dijkstra(_adjacency(vertices, edges, range(len(edges))), [source])


def check(net: dict, tol: float = 1e-6) -> Report:
  """Validates a network.json dict; `tol` is the relative tolerance on the objective."""
  V, E = [tuple(p) for p in net["vertices"]], [tuple(e) for e in net["edges"]]
  chosen, sinks, spec = list(net["selected"]), set(net["sinks"]), net["spec"]
  bad = []
  if len(set(chosen)) != len(chosen) or any(not 0 <= x < len(E) for x in chosen):
    return Report(False, ["selected holds duplicate or out-of-range edge indices"], {})
  if net["status"] not in ("optimal", "feasible"):
    # No network was returned: nothing to check except that none is claimed.
    return Report(not chosen, [] if not chosen else ["selected edges without a solution"], {})
  adj = _adjacency(V, E, chosen)
  used = set(adj)
  to_sink = _dijkstra(adj, [s for s in sinks if s in used])
  walk = _Walks(V, E, _walk_metric(spec["coverage"]))
  islands = sorted(used - set(to_sink))
  if islands:
    bad.append(f"{len(islands)} used vertices cannot reach a sink (islands), e.g. {islands[:5]}")
  if spec["sinks_required"]:
    missing = sorted(sinks - used)
    if missing:
      bad.append(f"sinks {missing} are not on the network")
  missing = sorted(set(spec["required"]) - used)
  if missing:
    bad.append(f"required vertices {missing} are not on the network")
  bad += _check_coverage(walk, used, spec["coverage"])
  if spec["coverage"]["enabled"] and spec["coverage"].get("locations", "vertices") == "edges":
    bad += _check_edge_coverage(V, E, set(chosen), used, spec["coverage"])
  traffic_len, msgs = _check_traffic(V, E, adj, spec["traffic"])
  bad += msgs
  feats = count_features(V, E, chosen, sinks)
  penalty = 0.0
  for name, rule in spec["features"].items():
    if rule["mode"] == "forbid" and feats[name]:
      bad.append(f"forbidden feature {name} occurs {feats[name]} times")
    if rule["mode"] == "at_least" and feats[name] < rule["count"]:
      bad.append(f"feature {name} occurs {feats[name]} < {rule['count']} times")
    if rule["mode"] == "soft":
      penalty += rule["weight"] * feats[name]
  metrics = _metrics(V, E, chosen, to_sink, feats, used, walk, sinks)
  w = spec["weights"]
  key = "mean_travel_distance" if spec.get("travel_term") == "mean_trip" else "travel_proxy"
  travel = w["travel"] * metrics[key] if w["travel"] else 0.0
  metrics["objective_recomputed"] = (w["length"] * metrics["length"] + travel
                                     + spec["traffic"]["weight"] * traffic_len + penalty)
  bad += _check_objective(net, metrics["objective_recomputed"], tol)
  return Report(not bad, bad, metrics)


def _walk_metric(cov) -> str:
  """Walking metric of coverage and of the mean trip: the coverage metric, else geodesic."""
  return cov["metric"] if cov["enabled"] else "geodesic"


class _Walks:
  """Template distance rows {v: d} from each source, computed on first use."""

  def __init__(self, V, E, metric):
    self.V, self.E, self.metric, self.rows = V, E, metric, {}

  def __call__(self, u) -> dict:
    if u not in self.rows:
      self.rows[u] = _template_distances(self.V, self.E, self.metric, u)
    return self.rows[u]


def _check_coverage(walk, used, cov) -> list:
  if not cov["enabled"]:
    return []
  far = []
  for u in range(len(walk.V)):
    if u in used:
      continue
    d = walk(u)
    if min((d.get(v, math.inf) for v in used), default=math.inf) > cov["range"] + 1e-9:
      far.append(u)
  return [f"{len(far)} vertices are farther than {cov['range']} from the network, e.g. {far[:5]}"
          ] if far else []


def _check_edge_coverage(V, E, chosen, used, cov) -> list:
  """Every point of every unused template edge within the range of a network vertex.

  Geodesic: with d = template distance to the network (one multi-source Dijkstra), the farthest
  point of edge (a, b) of length L is at (L + d_a + d_b) / 2 when |d_a - d_b| <= L, else at an end.
  Euclidean: the chords of the used vertices' discs must cover the segment (interval sweep).
  """
  r, far = cov["range"], []
  d = _dijkstra(_adjacency(V, E, range(len(E))), sorted(used)) if cov["metric"] != "euclidean" \
      else None
  for x, (a, b) in enumerate(E):
    if x in chosen:
      continue
    length = math.dist(V[a], V[b])
    if d is not None:
      da, db = d.get(a, math.inf), d.get(b, math.inf)
      worst = (length + da + db) / 2 if abs(da - db) <= length else max(da, db)
      ok = worst <= r + 1e-9
    else:
      ok = _chords_cover(V, a, b, length, used, r)
    if not ok:
      far.append(x)
  return [f"{len(far)} template edges have points farther than {r} from the network, e.g. "
          f"edges {far[:5]}"] if far else []


def _chords_cover(V, a, b, length, used, r) -> bool:
  """Do the discs of radius r around the used vertices cover the segment V[a]-V[b]?"""
  ux, uy = (V[b][0] - V[a][0]) / length, (V[b][1] - V[a][1]) / length
  chords = []
  for v in used:
    px, py = V[v][0] - V[a][0], V[v][1] - V[a][1]
    along = px * ux + py * uy
    half2 = r * r - (px * px + py * py - along * along)
    if half2 >= -1e-12:
      h = math.sqrt(max(half2, 0.0))
      chords.append((along - h, along + h))
  reach = 0.0
  for lo, hi in sorted(chords):
    if lo > reach + 1e-9:
      return False
    reach = max(reach, hi)
  return reach >= length - 1e-9


def _check_traffic(V, E, adj, traffic):
  total, bad = 0.0, []
  for a, b in traffic["pairs"]:
    d = _dijkstra(adj, [a]).get(b, math.inf) if a in adj else math.inf
    if math.isinf(d):
      bad.append(f"traffic pair ({a}, {b}) is not connected by the network")
      continue
    total += d
    if traffic["max_detour"] > 0:
      limit = traffic["max_detour"] * _template_distances(V, E, "geodesic", a)[b]
      if d > limit + 1e-6:
        bad.append(f"traffic pair ({a}, {b}) path {d:.3f} exceeds detour limit {limit:.3f}")
  return total, bad


def _metrics(V, E, chosen, to_sink, feats, used, walk, sinks) -> dict:
  """Length, travel proxy sum over used half-edges i->j of (L_ij + dist(j)), loops, ..."""
  length = sum(math.dist(V[E[x][0]], V[E[x][1]]) for x in chosen)
  travel = sum(2 * math.dist(V[i], V[j]) + to_sink.get(i, math.inf) + to_sink.get(j, math.inf)
               for i, j in (E[x] for x in chosen))
  comps = _components(used, chosen, E)
  reach = [to_sink[v] for v in used if v in to_sink]
  trips = _trips(walk, used, to_sink, sinks)
  return {"length": length, "travel_proxy": travel, "num_edges": len(chosen),
          "num_vertices": len(used), "components": comps,
          "loops": len(chosen) - len(used) + comps,   # cyclomatic number
          "mean_distance_to_sink": sum(reach) / len(reach) if reach else 0.0,
          "max_distance_to_sink": max(reach) if reach else 0.0,
          "mean_travel_distance": sum(trips) / len(trips) if trips else 0.0, **feats}


def _trips(walk, used, to_sink, sinks) -> list:
  """Per site: walk to the nearest network vertex, then along the network to an exit.

  Among equally near network vertices the shortest trip counts. Sites are the vertices that can
  walk to the template component of a sink (all of them, unless obstacles split the template).
  """
  comp = {v for s in sinks for v, d in _template_distances(walk.V, walk.E, "geodesic", s).items()}
  trips = []
  for u in range(len(walk.V)):
    d = walk(u)
    if not any(v in comp for v in d):
      continue
    near = min((d[v] for v in used if v in d), default=math.inf)
    trips.append(min((d[v] + to_sink.get(v, math.inf) for v in used
                      if d.get(v, math.inf) <= near + 1e-9), default=math.inf))
  return trips


def _components(used, chosen, E) -> int:
  parent = {v: v for v in used}

  def find(v):
    while parent[v] != v:
      parent[v] = parent[parent[v]]
      v = parent[v]
    return v

  for x in chosen:
    parent[find(E[x][0])] = find(E[x][1])
  return len({find(v) for v in used})


def _check_objective(net, recomputed, tol) -> list:
  obj = net.get("objective")
  if obj is None or net["status"] not in ("optimal", "feasible"):
    return []
  # Lengths enter the IP rounded to 1/length_scale: allow that rounding on top of `tol`.
  slack = tol * max(1.0, abs(obj)) + _rounding_slack(net)
  if net["status"] == "optimal" and abs(obj - recomputed) > slack:
    return [f"objective {obj} differs from the recomputed {recomputed}"]
  if recomputed > obj + slack:  # the IP's travel/traffic terms can only over-estimate
    return [f"recomputed objective {recomputed} exceeds the reported {obj}"]
  return []


def _rounding_slack(net) -> float:
  V, E = net["vertices"], net["edges"]
  s = net["spec"]["length_scale"]
  err = max((abs(round(math.dist(V[i], V[j]) * s) - math.dist(V[i], V[j]) * s) / s
             for i, j in E), default=0.0)
  w = net["spec"]["weights"]
  n = len(net["selected"])
  paths = len(net["spec"]["traffic"]["pairs"])
  # travel proxy sums up to 2n half-edges each with a path of at most len(V) edges; a mean trip
  # is a walk plus a network path of at most len(V) edges each (or one rounded straight line).
  per_travel = 2 * len(V) + 1 if net["spec"].get("travel_term") == "mean_trip" else 2 * n * (
      len(V) + 1)
  return err * (w["length"] * n + w["travel"] * per_travel
                + net["spec"]["traffic"]["weight"] * paths * len(V)) + 1e-9
