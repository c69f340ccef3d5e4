"""Drawings of a network over its template (PNG and SVG through common.io, atomically)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.collections import LineCollection  # noqa: E402
from matplotlib.patches import Polygon  # noqa: E402
import numpy as np  # noqa: E402

from common import io  # noqa: E402


def draw_on(ax, net: dict, title: str = "") -> None:
  """Draws template edges grey, selected edges black, sinks as red squares, obstacles brown."""
  v = np.asarray(net["vertices"], np.float64)
  e = np.asarray(net["edges"], np.int64).reshape(-1, 2)
  span = np.ptp(v, axis=0) + 1e-9
  for hole in net["spec"].get("obstacles", []):
    ax.add_patch(Polygon(np.asarray(hole), closed=True, facecolor="#c9b79c", edgecolor="none"))
  ax.add_collection(LineCollection(v[e], colors="#d0d0d0", linewidths=0.6))
  sel = np.asarray(net["selected"], np.int64)
  if len(sel):
    ax.add_collection(LineCollection(v[e[sel]], colors="black", linewidths=2.2,
                                     capstyle="round"))
  req = net["spec"].get("required", [])
  if len(req):
    ax.scatter(*v[req].T, s=28, marker="o", color="#1f77b4", zorder=3)
  for a, b in net["spec"]["traffic"]["pairs"]:
    ax.scatter(*v[[a, b]].T, s=40, marker="*", color="#2ca02c", zorder=3)
  if len(net["sinks"]):
    ax.scatter(*v[net["sinks"]].T, s=36, marker="s", color="#d62728", zorder=4)
  pad = 0.04 * span.max()
  ax.set_xlim(v[:, 0].min() - pad, v[:, 0].max() + pad)
  ax.set_ylim(v[:, 1].min() - pad, v[:, 1].max() + pad)
  ax.set_aspect("equal")
  ax.axis("off")
  if title:
    ax.set_title(title, fontsize=8)


def figure(net: dict, title: str = "", size: float = 3.2):
  """A one-panel matplotlib figure of `net`."""
  span = np.ptp(np.asarray(net["vertices"], np.float64), axis=0) + 1e-9
  fig, ax = plt.subplots(figsize=(size, size * float(np.clip(span[1] / span[0], 0.4, 2.5))))
  draw_on(ax, net, title)
  fig.tight_layout(pad=0.2)
  return fig


def save(net: dict, stem: str, title: str = "", formats=("png", "svg"), dpi: int = 80) -> list:
  """Writes stem.<fmt> for each format; returns the paths."""
  fig = figure(net, title)
  paths = []
  try:
    for fmt in formats:
      path = f"{stem}.{fmt}"
      io.atomic_save_figure(fig, path, dpi=dpi)
      paths.append(path)
  finally:
    plt.close(fig)
  return paths


def title_of(net: dict, metrics: dict) -> str:
  obj = net["objective"]
  obj = "-" if obj is None else f"{obj:.2f}"
  return (f"{net['status']}  obj {obj}  len {metrics.get('length', 0):.1f}  "
          f"loops {metrics.get('loops', 0)}")
