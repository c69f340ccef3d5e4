"""Template meshes M = (V, E): candidate network segments over a polygonal domain with holes.

A template is a lattice (square -> quad mesh, equilateral -> triangle mesh) clipped to the domain
polygon, with every vertex strictly inside a hole (obstacle) removed and every edge that passes
through a hole or leaves the domain dropped. Vertices left without an edge are removed too, so every
template vertex is a location the network can reach. The paper's template
M = (V, E, F).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np
from scipy import sparse
from scipy.sparse import csgraph
from scipy.spatial import cKDTree

from common.errors import ConfigError
from common.registry import Registry

TEMPLATES: Registry = Registry("template kind")
_EPS = 1e-9


@dataclasses.dataclass(frozen=True)
class Template:
  """A candidate network.

  Attributes:
    kind: registry name that built it ('grid', 'quad', 'triangle').
    vertices: [V, 2] float coordinates.
    edges: [E, 2] int vertex indices, i < j, sorted lexicographically.
    lengths: [E] float Euclidean edge lengths L_x.
    domain: [K, 2] outer polygon (for drawing).
    holes: list of [K_h, 2] obstacle polygons (for drawing).
  """
  kind: str
  vertices: np.ndarray
  edges: np.ndarray
  lengths: np.ndarray
  domain: np.ndarray
  holes: tuple

  @property
  def num_vertices(self) -> int:
    return len(self.vertices)

  def incidence(self) -> list[list[int]]:
    """For each vertex, the indices of its incident template edges."""
    inc = [[] for _ in range(self.num_vertices)]
    for x, (i, j) in enumerate(self.edges):
      inc[i].append(x)
      inc[j].append(x)
    return inc

  def geodesic(self) -> np.ndarray:
    """[V, V] shortest-path distances along template edges (inf between components)."""
    n = self.num_vertices
    w = sparse.coo_matrix((self.lengths, (self.edges[:, 0], self.edges[:, 1])), shape=(n, n))
    return csgraph.dijkstra(w.tocsr(), directed=False)

  def euclidean(self) -> np.ndarray:
    """[V, V] straight-line distances."""
    d = self.vertices[:, None, :] - self.vertices[None, :, :]
    return np.sqrt((d ** 2).sum(-1))

  def snap(self, points: Sequence[Sequence[float]], field: str, spacing: float) -> np.ndarray:
    """Indices of the template vertices nearest to `points`; ConfigError if one is far away."""
    points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    if len(points) == 0:
      return np.zeros((0,), np.int64)
    dist, idx = cKDTree(self.vertices).query(points)
    for k, (p, d) in enumerate(zip(points, dist)):
      if d > 0.75 * spacing:
        raise ConfigError(f"{field}[{k}]={p.tolist()} is not on the template (nearest vertex is "
                          f"{d:.3g} away; obstacle or outside the domain?)")
    return idx.astype(np.int64)


def _on_boundary(points: np.ndarray, poly: np.ndarray) -> np.ndarray:
  """[P] bool: point lies on an edge of the closed polygon (within _EPS * scale)."""
  a, b = poly, np.roll(poly, -1, axis=0)
  ab = b - a
  ap = points[:, None, :] - a[None]
  t = np.clip((ap * ab[None]).sum(-1) / np.maximum((ab ** 2).sum(-1), _EPS)[None], 0.0, 1.0)
  closest = a[None] + t[..., None] * ab[None]
  return (np.sqrt(((points[:, None, :] - closest) ** 2).sum(-1)) < 1e-7).any(axis=1)


def _ray_inside(points: np.ndarray, poly: np.ndarray) -> np.ndarray:
  """[P] bool: even-odd rule (boundary points undefined; combine with _on_boundary)."""
  x, y = points[:, 0:1], points[:, 1:2]
  a, b = poly[None], np.roll(poly, -1, axis=0)[None]
  crosses = (a[..., 1] > y) != (b[..., 1] > y)
  with np.errstate(divide="ignore", invalid="ignore"):
    x_cross = a[..., 0] + (y - a[..., 1]) * (b[..., 0] - a[..., 0]) / (b[..., 1] - a[..., 1])
  return ((crosses & (x < x_cross)).sum(axis=1) % 2) == 1


def inside_closed(points: np.ndarray, poly: np.ndarray) -> np.ndarray:
  return _on_boundary(points, poly) | _ray_inside(points, poly)


def strictly_inside(points: np.ndarray, poly: np.ndarray) -> np.ndarray:
  return ~_on_boundary(points, poly) & _ray_inside(points, poly)


def _free(points: np.ndarray, domain: np.ndarray, holes: Sequence[np.ndarray]) -> np.ndarray:
  ok = inside_closed(points, domain)
  for hole in holes:
    ok &= ~strictly_inside(points, hole)
  return ok


def clip_lattice(kind: str, points: np.ndarray, spacing: float, domain: np.ndarray,
                 holes: Sequence[np.ndarray]) -> Template:
  """Keeps lattice points and nearest-neighbour segments that lie in the free space."""
  points = points[_free(points, domain, holes)]
  pairs = np.array(sorted(cKDTree(points).query_pairs(spacing * (1 + 1e-6))), np.int64)
  pairs = pairs.reshape(-1, 2)
  # A segment is free when points along it are: catches thin walls between two free endpoints.
  t = np.linspace(0.0, 1.0, 11)
  samples = points[pairs[:, 0], None] * (1 - t[None, :, None]) + points[pairs[:, 1], None] * t[
      None, :, None]
  keep = _free(samples.reshape(-1, 2), domain, holes).reshape(len(pairs), len(t)).all(axis=1)
  pairs = pairs[keep]
  used = np.unique(pairs)
  remap = -np.ones(len(points), np.int64)
  remap[used] = np.arange(len(used))
  vertices = points[used]
  edges = np.sort(remap[pairs], axis=1)
  edges = edges[np.lexsort((edges[:, 1], edges[:, 0]))]
  lengths = np.linalg.norm(vertices[edges[:, 0]] - vertices[edges[:, 1]], axis=1)
  return Template(kind, vertices, edges, lengths, domain, tuple(holes))


def _bbox_lattice(domain: np.ndarray, dx: float, dy: float, row_shift: float) -> np.ndarray:
  lo, hi = domain.min(axis=0), domain.max(axis=0)
  rows = int(np.floor((hi[1] - lo[1]) / dy + 1e-9)) + 1
  cols = int(np.floor((hi[0] - lo[0]) / dx + 1e-9)) + 2
  pts = [(lo[0] + c * dx + (r % 2) * row_shift, lo[1] + r * dy)
         for r in range(rows) for c in range(cols)]
  return np.asarray(pts, np.float64)


def _rectangle(nx: int, ny: int, spacing: float) -> np.ndarray:
  w, h = (nx - 1) * spacing, (ny - 1) * spacing
  return np.array([[0.0, 0.0], [w, 0.0], [w, h], [0.0, h]])


@TEMPLATES.register("grid")
def grid(nx: int, ny: int, spacing: float, domain=None, holes=()) -> Template:
  """nx x ny vertices on a square lattice over [0, (nx-1)s] x [0, (ny-1)s], minus holes."""
  rect = _rectangle(nx, ny, spacing)
  return clip_lattice("grid", _bbox_lattice(rect, spacing, spacing, 0.0), spacing, rect, holes)


@TEMPLATES.register("quad")
def quad(nx: int, ny: int, spacing: float, domain=None, holes=()) -> Template:
  """Quad mesh of a polygonal domain with holes (the domain defaults to the nx x ny rectangle)."""
  domain = _rectangle(nx, ny, spacing) if domain is None else domain
  return clip_lattice("quad", _bbox_lattice(domain, spacing, spacing, 0.0), spacing, domain, holes)


@TEMPLATES.register("triangle")
def triangle(nx: int, ny: int, spacing: float, domain=None, holes=()) -> Template:
  """Equilateral triangle mesh (edge length = spacing) of a polygonal domain with holes."""
  domain = _rectangle(nx, ny, spacing) if domain is None else domain
  pts = _bbox_lattice(domain, spacing, spacing * np.sqrt(3) / 2, spacing / 2)
  return clip_lattice("triangle", pts, spacing, domain, holes)


def _polygon(value, field: str) -> np.ndarray:
  poly = np.asarray(value, dtype=np.float64)
  if poly.ndim != 2 or poly.shape[1] != 2 or len(poly) < 3:
    raise ConfigError(f"{field} is invalid: expected a polygon [[x, y], ...] with >= 3 points")
  return poly


def from_config(cfg) -> Template:
  """Builds the template described by config.template."""
  build = TEMPLATES.get(cfg.kind, field="template.kind")
  domain = _polygon(cfg.domain, "template.domain") if len(cfg.domain) else None
  holes = [_polygon(h, f"template.holes[{k}]") for k, h in enumerate(cfg.holes)]
  tpl = build(int(cfg.nx), int(cfg.ny), float(cfg.spacing), domain=domain, holes=holes)
  if len(tpl.edges) == 0:
    raise ConfigError("template has no edges: check template.domain, template.holes and "
                      "template.spacing")
  return tpl
