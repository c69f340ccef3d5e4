"""The integer program of the paper on a `LinearModel` (notes: variables, constraints, objective).

Variables (E = template edges, H = 2E half-edges, half-edge 2x is i->j and 2x+1 is j->i for
edge x = (i, j)):
  e_x in {0, 1}             edge used (E_x); both half-edges of a used edge are used, E_{i->j} =
                            E_{j->i} = E_x, because a street can be walked both ways.
  g_{v,k} in {0, 1}         unary degree: g_{v,k} = [deg(v) >= k]; V_v = g_{v,1} (vertex used).
  D_h in [0, Dmax]          distance label of half-edge h (labels formulation).
  s_{h,h'} in {0, 1}        successor L_{i->j; j->k}: h' continues h towards a sink.
The labels formulation of the paper requires every used half-edge not entering a sink to have a used
successor with D_h >= D_h' + L_h; labels strictly decrease along successors, so each used edge
reaches a sink and there are no islands. A U-turn successor (j->i after i->j) is allowed, which
makes D_{i->j} = L_ij + (network distance from j to a sink) at an optimum with travel weight > 0:
the travel-distance proxy sum_h D_h is then exactly checkable by a graph search.
The ablation 'flow' replaces labels by a single-commodity flow from the sinks that delivers one unit
to every used vertex. 'tree' (ours) gives each used non-sink vertex one parent arc along a used edge
with vertex labels that decrease towards the sinks: a rooted spanning forest, 2H binaries instead of
one per pair of consecutive half-edges, and it implies #edges >= #used non-sink vertices.

Valid rows of ours, on by default (config `model.*`): ball cuts (geodesic balls without a sink
are left by a used edge), coverage cuts (coverage rows minus the used edges at the vertex) and,
where `forest_is_optimal`, forest dominance (#used edges = #used non-sink vertices). They change
no optimum; tests/test_netdesign_cuts.py checks them against every valid network of a 3 x 3 grid.

Travel terms (TRAVEL registry, `model.travel_term`):
  proxy      w * sum_h D_h over used half-edges (the notes' proxy; labels only).
  mean_trip  w * (1 / |U|) sum_u T_u over the sites U (every template vertex that can reach a sink):
             T_u = walk from u to its nearest network vertex v + network distance from v to a sink,
             the average travel distance of the paper's plots. Needs labels or tree.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from common.registry import Registry
from netdesign import spec as spec_lib
from netdesign.linear import LinearModel

CONNECTIVITY: Registry = Registry("connectivity formulation")
TRAVEL: Registry = Registry("travel term")
FEATURES: Registry = Registry("local feature")
_WEIGHT_RESOLUTION = 1000  # objective weights are exact to 1e-3


@dataclasses.dataclass
class Context:
  """Index bookkeeping shared by the constraint builders."""
  inst: spec_lib.Instance
  lm: LinearModel
  e: list                 # [E] var index of e_x
  g: list                 # [V] list of var indices g_{v,1..deg_M(v)}
  lengths: np.ndarray     # [E] int scaled lengths
  tail: np.ndarray        # [H]
  head: np.ndarray        # [H]
  out_of: list            # [V] half-edges leaving v
  into: list              # [V] half-edges entering v
  is_sink: np.ndarray     # [V] bool
  d: list | None = None          # [H] half-edge labels D_h (labels formulation)
  node_dist: list | None = None  # [V] var >= network distance to a sink when used; None at sinks
  parent: dict | None = None     # (v, w) -> var of the parent arc p_{v->w} (tree formulation)

  def edge_of(self, h: int) -> int:
    return h // 2

  def used(self, v: int) -> int:
    return self.g[v][0]

  def degree_at_least(self, v: int, k: int) -> list:
    """Terms of [deg(v) >= k] (empty when the template degree is below k, i.e. always 0)."""
    return [(self.g[v][k - 1], 1)] if k <= len(self.g[v]) else []


@dataclasses.dataclass
class Built:
  lm: LinearModel
  ctx: Context
  objective_terms: dict   # name -> list of (var, real coefficient in scaled-length units)
  travel: list = dataclasses.field(default_factory=list)  # unweighted travel term (var, coef)


def _context(inst: spec_lib.Instance, lm: LinearModel) -> Context:
  tpl = inst.template
  n = tpl.num_vertices
  lengths = np.maximum(1, np.round(tpl.lengths * inst.length_scale)).astype(np.int64)
  tail = np.stack([tpl.edges[:, 0], tpl.edges[:, 1]], axis=1).reshape(-1)
  head = np.stack([tpl.edges[:, 1], tpl.edges[:, 0]], axis=1).reshape(-1)
  out_of, into = [[] for _ in range(n)], [[] for _ in range(n)]
  for h in range(len(tail)):
    out_of[tail[h]].append(h)
    into[head[h]].append(h)
  is_sink = np.zeros(n, bool)
  is_sink[inst.sinks] = True
  e = [lm.boolean() for _ in range(len(tpl.edges))]
  g = [[lm.boolean() for _ in out_of[v]] for v in range(n)]
  return Context(inst, lm, e, g, lengths, tail, head, out_of, into, is_sink)


def _degree_rows(ctx: Context) -> None:
  """sum_k g_{v,k} = sum of incident e_x and g_{v,k} >= g_{v,k+1}: V_v = OR of incident edges."""
  for v, gv in enumerate(ctx.g):
    ctx.lm.add([(x, 1) for x in gv] + [(ctx.e[h // 2], -1) for h in ctx.out_of[v]], 0, 0)
    for a, b in zip(gv[:-1], gv[1:]):
      ctx.lm.add([(a, 1), (b, -1)], lo=0)


def _fix_unreachable(ctx: Context) -> None:
  """Presolve by graph search: an edge in a template component without a sink can never reach a
  sink, so e_x = 0. Makes specs with sinks cut off by obstacles infeasible at once."""
  to_sink = sink_distance(ctx, unreachable=-1)
  for x, (i, _) in enumerate(ctx.inst.template.edges):
    if to_sink[i] < 0:
      ctx.lm.ub[ctx.e[x]] = 0


def label_bound(ctx: Context) -> int:
  """Dmax: a used half-edge plus a simple network path to a sink is at most V * max length."""
  return int(ctx.inst.template.num_vertices * ctx.lengths.max())


def sink_distance(ctx: Context, unreachable: int = 0) -> np.ndarray:
  """[V] int template shortest-path distance (scaled lengths) to the nearest sink."""
  from scipy import sparse
  from scipy.sparse import csgraph
  tpl, n = ctx.inst.template, ctx.inst.template.num_vertices
  w = sparse.coo_matrix((ctx.lengths, (tpl.edges[:, 0], tpl.edges[:, 1])), shape=(n, n)).tocsr()
  d = csgraph.dijkstra(w, directed=False, indices=ctx.inst.sinks, min_only=True)
  return np.where(np.isfinite(d), d, unreachable).astype(np.int64)


@CONNECTIVITY.register("labels")
def labels(ctx: Context) -> None:
  """Distance labelling with successors (the paper's connectivity); sets ctx.d."""
  lm, dmax = ctx.lm, label_bound(ctx)
  to_sink = sink_distance(ctx)
  d = [lm.var(0, dmax, implied=True) for _ in range(len(ctx.tail))]
  for h, dh in enumerate(d):
    x, j = ctx.edge_of(h), ctx.head[h]
    # D_h >= (L_h + template distance from j to a sink) E_h: the network can only be longer. Valid
    # for every labelling that the travel objective drives to its minimum, and it tightens the LP.
    lm.add([(dh, 1), (ctx.e[x], -int(ctx.lengths[x] + to_sink[j]))], lo=0)
    lm.add([(dh, 1), (ctx.e[x], -dmax)], hi=0)                  # D_h = 0 when unused
    if ctx.is_sink[j]:
      continue
    succ = []
    for h2 in ctx.out_of[j]:
      s = lm.boolean()
      succ.append((s, 1))
      lm.add([(s, 1), (ctx.e[ctx.edge_of(h2)], -1)], hi=0)     # successor must be used
      lm.add([(s, 1), (ctx.e[x], -1)], hi=0)
      lm.add_indicator(s, [(dh, 1), (d[h2], -1)], lo=int(ctx.lengths[x]),
                       big_m=dmax + int(ctx.lengths[x]))
    lm.add(succ + [(ctx.e[x], -1)], 0, 0)                        # used => one successor
  ctx.d = d


@CONNECTIVITY.register("tree")
def tree(ctx: Context) -> None:
  """Ours: a rooted spanning forest. p_{v->w} = 1 makes w the parent of the used non-sink v:

  sum_w p_{v->w} = V_v,  p_{v->w} + p_{w->v} <= e_vw,  p_{v->w} = 1 => N_v >= N_w + L_vw (N = 0 at
  sinks). Labels strictly decrease along parents, so every used vertex reaches a sink, and any valid
  network has such a forest (a shortest-path forest to the sinks). At an optimum of mean_trip N_v
  is v's network distance to a sink. Summing the first row: #used edges >= #used non-sink vertices.
  With travel weight 0 the steps are 1 instead of L_vw (ctx.node_dist is then not a distance, and
  no travel term reads it).
  """
  lm, n = ctx.lm, ctx.inst.template.num_vertices
  # Without a travel term the labels only have to decrease: unit steps (hop counts) give CP-SAT
  # domains of size V instead of V * length_scale. With one, they are network distances.
  hops = ctx.inst.travel_weight == 0
  dmax = n if hops else label_bound(ctx)
  step = np.ones_like(ctx.lengths) if hops else ctx.lengths
  to_sink = np.zeros(n, np.int64) if hops else sink_distance(ctx)
  node = [None if ctx.is_sink[v] else lm.var(0, dmax, implied=True) for v in range(n)]
  on_edge = [[] for _ in ctx.e]
  ctx.parent = {}
  for v in range(n):
    if ctx.is_sink[v]:
      continue
    if to_sink[v]:
      lm.add([(node[v], 1), (ctx.used(v), -int(to_sink[v]))], lo=0)
    arcs = []
    for h in ctx.out_of[v]:
      x, w, p = ctx.edge_of(h), ctx.head[h], lm.boolean()
      ctx.parent[(int(v), int(w))] = p
      arcs.append((p, 1))
      on_edge[x].append((p, 1))
      if ctx.is_sink[w]:
        lm.add([(node[v], 1), (p, -int(step[x]))], lo=0)
      else:
        lm.add_indicator(p, [(node[v], 1), (node[w], -1)], lo=int(step[x]),
                         big_m=dmax + int(step[x]))
    lm.add(arcs + [(ctx.used(v), -1)], 0, 0)
  for x, arcs in enumerate(on_edge):
    if arcs:
      lm.add(arcs + [(ctx.e[x], -1)], hi=0)
  ctx.node_dist = node


@CONNECTIVITY.register("flow")
def flow(ctx: Context) -> list:
  """Ablation: sinks send one unit of flow to every used vertex along used edges."""
  lm, n = ctx.lm, ctx.inst.template.num_vertices
  f = [lm.var(0, n, implied=True) for _ in range(len(ctx.tail))]
  for h, fh in enumerate(f):
    lm.add([(fh, 1), (ctx.e[ctx.edge_of(h)], -n)], hi=0)
  for v in range(n):
    if not ctx.is_sink[v]:
      lm.add([(f[h], 1) for h in ctx.into[v]] + [(f[h], -1) for h in ctx.out_of[v]]
             + [(ctx.used(v), -1)], 0, 0)


@TRAVEL.register("proxy")
def travel_proxy(ctx: Context) -> tuple:
  """sum_h D_h over the half-edges (the notes' proxy). Returns (terms, denominator 1)."""
  if ctx.d is None:
    raise ValueError("travel_term 'proxy' needs the 'labels' connectivity (half-edge labels)")
  return [(dh, 1.0) for dh in ctx.d], 1


def _node_distance_from_labels(ctx: Context) -> list:
  """N_v >= D_h for the out-going used half-edge h that a selector c_{v,h} picks (labels).

  D_h >= L_h + network distance of h's head, so N_v >= network distance of v, with equality
  reachable along a shortest path. Sinks have N = 0 (None).
  """
  lm, dmax = ctx.lm, label_bound(ctx)
  to_sink = sink_distance(ctx)
  node = []
  for v in range(ctx.inst.template.num_vertices):
    if ctx.is_sink[v]:
      node.append(None)
      continue
    nv = lm.var(0, dmax, implied=True)
    lm.add([(nv, 1), (ctx.used(v), -int(to_sink[v]))], lo=0)
    picks = []
    for h in ctx.out_of[v]:
      c = lm.boolean()
      picks.append((c, 1))
      lm.add([(c, 1), (ctx.e[ctx.edge_of(h)], -1)], hi=0)
      lm.add_indicator(c, [(nv, 1), (ctx.d[h], -1)], lo=0, big_m=dmax)
    lm.add(picks + [(ctx.used(v), -1)], 0, 0)
    node.append(nv)
  return node


def access_distance(inst: spec_lib.Instance, lengths: np.ndarray) -> np.ndarray:
  """[V, V] walking distance in scaled integer units (inf between components).

  The coverage metric when coverage is on (geodesic: sums of the rounded edge lengths, exactly as
  the labels add them; euclidean: rounded straight lines), else geodesic.
  """
  from scipy import sparse
  from scipy.sparse import csgraph
  tpl, n = inst.template, inst.template.num_vertices
  if inst.coverage_range is not None and inst.coverage_metric == "euclidean":
    return np.round(tpl.euclidean() * inst.length_scale)
  w = sparse.coo_matrix((lengths, (tpl.edges[:, 0], tpl.edges[:, 1])), shape=(n, n)).tocsr()
  return csgraph.dijkstra(w, directed=False)


def trip_sites(inst: spec_lib.Instance, to_sink: np.ndarray, acc: np.ndarray) -> list:
  """Sites of mean_trip: vertices that can walk to some vertex connected to a sink."""
  return [u for u in range(inst.template.num_vertices)
          if np.isfinite(acc[u][to_sink >= 0]).any()]


@TRAVEL.register("mean_trip")
def travel_mean_trip(ctx: Context) -> tuple:
  """(1 / |U|) sum_u T_u, T_u = walk to the nearest network vertex v + network distance of v.

  z_{u,v} picks v among the candidates (within the coverage range, else every vertex); it must be
  used (z <= V_v) and nearest (V_w + sum_{v farther than w} z_{u,v} <= 1); z => T_u >= a_uv + N_v.
  Ties between nearest vertices go to the shorter trip (the minimisation picks it). Returns
  (terms, |U|): |U| makes the rounded objective exact.
  """
  lm, inst = ctx.lm, ctx.inst
  if ctx.node_dist is None and ctx.d is None:
    raise ValueError("travel_term 'mean_trip' needs the 'labels' or 'tree' connectivity")
  node = ctx.node_dist if ctx.node_dist is not None else _node_distance_from_labels(ctx)
  to_sink = sink_distance(ctx, unreachable=-1)
  acc = access_distance(inst, ctx.lengths)
  near = coverage_balls(inst) if inst.coverage_range is not None else None
  sites = trip_sites(inst, to_sink, acc)
  dmax = label_bound(ctx)
  terms = []
  for u in sites:
    cand = [v for v in range(len(node)) if to_sink[v] >= 0 and np.isfinite(acc[u, v])
            and (near is None or near[u, v])]
    a = {v: int(acc[u, v]) for v in cand}
    lb = min(a[v] + int(to_sink[v]) for v in cand)
    t = lm.var(lb, max(a.values()) + dmax, implied=True)
    z = {v: lm.boolean() for v in cand}
    for v in cand:
      lm.add([(z[v], 1), (ctx.used(v), -1)], hi=0)
      if node[v] is None:
        lm.add([(t, 1), (z[v], -a[v])], lo=0)
      else:
        lm.add_indicator(z[v], [(t, 1), (node[v], -1)], lo=a[v], big_m=a[v] + dmax)
    lm.add([(z[v], 1) for v in cand], 1, 1)
    for w in cand:
      farther = [(z[v], 1) for v in cand if a[v] > a[w]]
      if farther:
        lm.add([(ctx.used(w), 1)] + farther, hi=1)
    terms.append((t, 1.0 / len(sites)))
  return terms, max(1, len(sites))


def coverage_balls(inst: spec_lib.Instance) -> np.ndarray:
  """[V, V] bool: near[u, v] iff v is within the coverage range of u (spec.coverage.metric)."""
  dist = spec_lib.COVERAGE_METRICS.get(inst.coverage_metric, "spec.coverage.metric")(
      inst.template)
  return dist <= inst.coverage_range + 1e-9


def _coverage(ctx: Context) -> None:
  """Every template vertex has a used vertex within the coverage range (the paper's coverage)."""
  inst = ctx.inst
  if inst.coverage_range is None:
    return
  for near in coverage_balls(inst):
    ctx.lm.add([(ctx.used(int(v)), 1) for v in np.flatnonzero(near)], lo=1)


def forest_is_optimal(inst: spec_lib.Instance) -> bool:
  """True when some optimal network is a forest with exactly one sink in each tree.

  Holds when the objective is length only and nothing but connectivity, vertex coverage and
  required vertices constrains the network, and no two sinks are fewer than 3 template edges
  apart. Then removing an edge from a cycle, or the second edge of a path between two sinks (both
  of its ends lie inside the path), keeps every used vertex used and joined to a sink, so the
  network stays valid and is no longer. Traffic, travel, local features and edge-point coverage can
  all need such an edge; so can two sinks joined by one or two edges (s - t, or s - v - t with both
  sinks of degree 1: the only edges to remove would leave a sink off the network).
  """
  if not (inst.travel_weight == 0 and not inst.traffic
          and all(f.mode == "allow" for f in inst.features.values())
          and (inst.coverage_range is None or inst.coverage_locations == "vertices")):
    return False
  from scipy import sparse
  from scipy.sparse import csgraph
  tpl, n = inst.template, inst.template.num_vertices
  adj = sparse.coo_matrix((np.ones(len(tpl.edges)), (tpl.edges[:, 0], tpl.edges[:, 1])),
                          shape=(n, n))
  hops = csgraph.shortest_path(adj, directed=False, unweighted=True, indices=inst.sinks)
  hops = hops[:, inst.sinks]
  np.fill_diagonal(hops, np.inf)
  return bool((hops >= 3).all())


def _forest_rows(ctx: Context) -> None:
  """Forest dominance (ours; only where forest_is_optimal): #used edges = #used non-sink vertices.

  Every network has #edges >= #used vertices - #components >= #used vertices - #used sinks, with
  equality exactly for forests with one sink per tree, so the row keeps one optimal network and
  drops the others. With `tree` connectivity it is written per edge, e_x = p_{v->w} + p_{w->v}
  (an edge is used iff it is a parent arc), which sums to the same row.
  """
  if ctx.parent is not None:
    on_edge = [[] for _ in ctx.e]
    for h, (v, w) in enumerate(zip(ctx.tail, ctx.head)):
      p = ctx.parent.get((int(v), int(w)))
      if p is not None:
        on_edge[ctx.edge_of(h)].append((p, 1))
    for x, arcs in enumerate(on_edge):
      ctx.lm.add(arcs + [(ctx.e[x], -1)], 0, 0)
    return
  non_sinks = [(ctx.used(v), -1) for v in range(len(ctx.g)) if not ctx.is_sink[v]]
  ctx.lm.add([(ex, 1) for ex in ctx.e] + non_sinks, 0, 0)


def coverage_cut_rows(inst: spec_lib.Instance, forest: bool) -> list:
  """[(W, F), ...]: one valid row sum_{v in W} V_v - sum_{x in F} e_x >= 1 per template vertex u
  (ours, a strengthened coverage row; W, F are int arrays of vertices and edges).

  W = the vertices within range of u. Without `forest`, F holds the template edges from u into W:
  if u is used, each used edge of F brings a distinct used vertex of W besides u; if not, F is
  unused and the row is u's coverage row. With `forest` (only where forest_is_optimal and the
  forest rows are in the model), F holds every template edge inside W: the used edges inside W
  then form a forest with at least one tree, which has more vertices than edges. On the 10 x 10
  street block (range 1) these rows lift the LP bound from 21.9 to 29.9 (optimum 32).
  """
  tpl = inst.template
  near = coverage_balls(inst)
  a, b = tpl.edges[:, 0], tpl.edges[:, 1]
  rows = []
  for u in range(tpl.num_vertices):
    inside = near[u][a] & near[u][b]
    if not forest:
      inside &= (a == u) | (b == u)
    rows.append((np.flatnonzero(near[u]), np.flatnonzero(inside)))
  return rows


def _coverage_cuts(ctx: Context, forest: bool) -> None:
  for w, f in coverage_cut_rows(ctx.inst, forest):
    ctx.lm.add([(ctx.used(int(v)), 1) for v in w] + [(ctx.e[int(x)], -1) for x in f], lo=1)


def edge_cover_sets(inst: spec_lib.Instance) -> list:
  """[(edge x, frozenset of vertices), ...]: every point of template edge x is within the coverage
  range of the network iff x is used or, for every row of x, one of the row's vertices is used.

  The vertices within range of a point at arc length t on edge (a, b) form, per vertex v, a union
  of closed intervals of t: geodesic [0, r - d(a, v)] and [L - r + d(b, v), L]; euclidean the chord
  of v's disc. Cutting [0, L] at every interval end gives pieces on which the covering set is
  constant; one row per distinct set (the piece's midpoint decides).
  """
  tpl, r = inst.template, inst.coverage_range
  geo = tpl.geodesic() if inst.coverage_metric == "geodesic" else None
  rows = []
  for x, (a, b) in enumerate(tpl.edges):
    ivs = _edge_intervals(tpl, geo, a, b, float(tpl.lengths[x]), r)
    cuts = sorted({0.0, float(tpl.lengths[x])} | {t for _, lo, hi in ivs for t in (lo, hi)})
    seen = set()
    for t0, t1 in zip(cuts[:-1], cuts[1:]):
      if t1 - t0 <= 1e-9:
        continue
      m = 0.5 * (t0 + t1)
      cover = frozenset(v for v, lo, hi in ivs if lo - 1e-9 <= m <= hi + 1e-9)
      if cover not in seen:
        seen.add(cover)
        rows.append((x, cover))
  return rows


def _edge_intervals(tpl, geo, a: int, b: int, length: float, r: float) -> list:
  """[(v, lo, hi)]: the arc lengths t in [lo, hi] of edge (a, b) that are within r of vertex v."""
  out = []
  if geo is not None:
    for v in range(tpl.num_vertices):
      if r - geo[a, v] >= -1e-9:
        out.append((v, 0.0, min(length, r - geo[a, v])))
      if r - geo[b, v] >= -1e-9:
        out.append((v, max(0.0, length - r + geo[b, v]), length))
    return out
  pa, direction = tpl.vertices[a], (tpl.vertices[b] - tpl.vertices[a]) / length
  for v, pv in enumerate(tpl.vertices):
    c = float(direction @ (pv - pa))
    disc = c * c - float((pv - pa) @ (pv - pa)) + r * r
    if disc >= -1e-12:
      lo, hi = c - np.sqrt(max(disc, 0.0)), c + np.sqrt(max(disc, 0.0))
      if hi >= -1e-9 and lo <= length + 1e-9:
        out.append((v, max(0.0, lo), min(length, hi)))
  return out


def _edge_coverage(ctx: Context) -> None:
  """Coverage of every point of every template edge (spec.coverage.locations = 'edges')."""
  for x, cover in edge_cover_sets(ctx.inst):
    ctx.lm.add([(ctx.e[x], 1)] + [(ctx.used(v), 1) for v in cover], lo=1)


def _ball_cuts(ctx: Context) -> None:
  """Valid cut inequalities over geodesic balls (ours, not in the paper; they tighten the LP).

  A used vertex reaches a sink, so a ball B around u that holds no sink is left by a used edge:
  sum_{x in delta(B)} e_x >= V_u. If B also holds all of u's coverage set, some used vertex lies in
  B and the right-hand side is 1. One row per vertex and ball radius below the sink distance.
  """
  inst = ctx.inst
  tpl = inst.template
  geo = tpl.geodesic()
  to_sink = geo[:, inst.sinks].min(axis=1)
  cover = coverage_balls(inst) if inst.coverage_range is not None else None
  for u in range(tpl.num_vertices):
    if ctx.is_sink[u]:
      continue
    reach = geo[u] < np.inf
    covered_within = geo[u, cover[u]].max() if cover is not None else np.inf
    for rho in np.unique(geo[u][reach]):
      if rho >= to_sink[u] - 1e-9:
        break
      inside = geo[u] <= rho + 1e-9
      crossing = np.flatnonzero(inside[tpl.edges[:, 0]] != inside[tpl.edges[:, 1]])
      cut = [(ctx.e[x], 1) for x in crossing]
      if rho >= covered_within - 1e-9:
        ctx.lm.add(cut, lo=1)
      else:
        ctx.lm.add(cut + [(ctx.used(u), -1)], lo=0)


def _traffic(ctx: Context) -> list:
  """A path of used edges for each traffic pair (binary path flow); returns its length terms."""
  inst, lm = ctx.inst, ctx.lm
  geo = inst.template.geodesic() if inst.max_detour > 0 and inst.traffic else None
  terms = []
  for a, b in inst.traffic:
    y = [lm.boolean() for _ in range(len(ctx.tail))]
    for h, yh in enumerate(y):
      lm.add([(yh, 1), (ctx.e[ctx.edge_of(h)], -1)], hi=0)
    for v in range(inst.template.num_vertices):
      rhs = 1 if v == a else (-1 if v == b else 0)
      lm.add([(y[h], 1) for h in ctx.out_of[v]] + [(y[h], -1) for h in ctx.into[v]], rhs, rhs)
    length = [(yh, int(ctx.lengths[ctx.edge_of(h)])) for h, yh in enumerate(y)]
    if geo is not None:
      lm.add(length, hi=math.floor(inst.max_detour * geo[a, b] * inst.length_scale + 1e-6))
    terms += [(v, float(c)) for v, c in length]
  return terms


@FEATURES.register("dead_end")
def dead_ends(ctx: Context) -> list:
  """[deg(v) = 1] off the sinks: g_{v,1} - g_{v,2}."""
  return [[(ctx.g[v][0], 1)] + [(t, -1) for t, _ in ctx.degree_at_least(v, 2)]
          for v in range(len(ctx.g)) if not ctx.is_sink[v]]


@FEATURES.register("branch")
def branches(ctx: Context) -> list:
  """[deg(v) >= 3]."""
  return [ctx.degree_at_least(v, 3) for v in range(len(ctx.g)) if len(ctx.g[v]) >= 3]


@FEATURES.register("t_junction")
def t_junctions(ctx: Context) -> list:
  """[deg(v) = 3]: on a quad mesh three of four directions meet as a T."""
  return [ctx.degree_at_least(v, 3) + [(t, -1) for t, _ in ctx.degree_at_least(v, 4)]
          for v in range(len(ctx.g)) if len(ctx.g[v]) >= 3]


def _cross2(u, v) -> float:
  """z-component of the cross product of two plane vectors (numpy 2 deprecates np.cross on 2-d)."""
  return float(u[0] * v[1] - u[1] * v[0])


def zigzag_patterns(tpl) -> list:
  """(edge ij, edge jk, edge kl, j, k): turn at j and at k in opposite senses (a staircase step)."""
  p, inc = tpl.vertices, tpl.incidence()
  out = []
  for x, (j, k) in enumerate(tpl.edges):
    for a in inc[j]:
      i = tpl.edges[a].sum() - j
      t1 = _cross2(p[j] - p[i], p[k] - p[j]) if a != x else 0.0
      for b in inc[k]:
        l = tpl.edges[b].sum() - k
        t2 = _cross2(p[k] - p[j], p[l] - p[k]) if b != x else 0.0
        if a != x and b != x and abs(t1) > 1e-9 and abs(t2) > 1e-9 and t1 * t2 < 0:
          out.append((a, x, b, int(j), int(k)))
  return out


@FEATURES.register("zigzag")
def zigzags(ctx: Context) -> list:
  """z = 1 iff the three edges are used and j, k have degree exactly 2 (no branch there)."""
  lm, rows = ctx.lm, []
  for a, x, b, j, k in zigzag_patterns(ctx.inst.template):
    z = lm.boolean()
    e3 = [(ctx.e[a], 1), (ctx.e[x], 1), (ctx.e[b], 1)]
    br = [(t, -1) for t, _ in ctx.degree_at_least(j, 3) + ctx.degree_at_least(k, 3)]
    lm.add([(z, 1)] + [(v, -1) for v, _ in e3] + br, lo=-2)   # z >= e + e + e - br - 2
    for v, _ in e3:
      lm.add([(z, 1), (v, -1)], hi=0)
    for t, _ in br:
      lm.add([(z, 1), (t, 1)], hi=1)
    rows.append([(z, 1)])
  return rows


def _features(ctx: Context) -> list:
  """Applies each feature's mode (hard or soft, as in the paper); returns soft penalty terms."""
  penalty = []
  for name, feat in ctx.inst.features.items():
    if feat.mode == "allow":
      continue
    indicators = [t for t in FEATURES.get(name, f"spec.features.{name}")(ctx) if t]
    if feat.mode == "forbid":
      for t in indicators:
        ctx.lm.add(t, hi=0)
    elif feat.mode == "at_least":
      ctx.lm.add([vc for t in indicators for vc in t], lo=feat.count)
    elif feat.mode == "soft":
      scale = feat.weight * ctx.inst.length_scale
      penalty += [(v, c * scale) for t in indicators for v, c in t]
  return penalty


def build(inst: spec_lib.Instance) -> Built:
  """Writes the whole IP for `inst`; objective = w_len length + w_travel travel + penalties."""
  lm = LinearModel()
  ctx = _context(inst, lm)
  _degree_rows(ctx)
  _fix_unreachable(ctx)
  for v in (inst.sinks if inst.sinks_required else []):
    lm.add([(ctx.used(int(v)), 1)], lo=1)
  for v in inst.required:
    lm.add([(ctx.used(int(v)), 1)], lo=1)
  CONNECTIVITY.get(inst.connectivity, "model.connectivity")(ctx)
  travel, denominator = [], 1
  if inst.travel_weight > 0:
    travel, denominator = TRAVEL.get(inst.travel_term, "model.travel_term")(ctx)
  _coverage(ctx)
  if inst.coverage_range is not None and inst.coverage_locations == "edges":
    _edge_coverage(ctx)
  if inst.ball_cuts:
    _ball_cuts(ctx)
  forest = inst.forest_cuts and forest_is_optimal(inst)
  if forest:
    _forest_rows(ctx)
  if inst.coverage_cuts and inst.coverage_range is not None:
    _coverage_cuts(ctx, forest)
  terms = {
      "length": [(ctx.e[x], inst.length_weight * float(L)) for x, L in enumerate(ctx.lengths)],
      "travel": [(v, inst.travel_weight * c) for v, c in travel],
      "traffic": [(v, inst.traffic_weight * c) for v, c in _traffic(ctx)],
      "features": _features(ctx),
  }
  _set_objective(lm, terms, inst.length_scale, denominator)
  return Built(lm, ctx, terms, travel)


def _set_objective(lm: LinearModel, terms: dict, length_scale: int, denominator: int = 1) -> None:
  """Rounds real coefficients to integers (CP-SAT needs them) and records the scale.

  Weights are exact to 1e-3 of `1 / denominator` (mean_trip divides by the number of sites).
  """
  res = _WEIGHT_RESOLUTION * denominator
  ints = [(v, int(round(c * res))) for ts in terms.values() for v, c in ts]
  ints = [(v, c) for v, c in ints if c]
  div = math.gcd(*[abs(c) for _, c in ints]) if ints else 1
  lm.minimize((v, c // div) for v, c in ints)
  lm.obj_scale = length_scale * res / div


def travel_value(built: Built, values: np.ndarray) -> float | None:
  """The model's own travel term (proxy sum or mean trip) in real length units, unweighted."""
  if not built.travel or values is None:
    return None
  return sum(c * float(values[v]) for v, c in built.travel) / built.ctx.inst.length_scale


def selected_edges(built: Built, values: np.ndarray) -> list:
  return [x for x, v in enumerate(built.ctx.e) if values[v] > 0.5]


def add_nogood(built: Built, selected: list, min_hamming: int) -> None:
  """Hamming distance >= min_hamming from a previous network (diverse alternatives)."""
  sel = set(selected)
  terms = [(v, -1 if x in sel else 1) for x, v in enumerate(built.ctx.e)]
  built.lm.add(terms, lo=min_hamming - len(sel))
