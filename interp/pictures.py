"""Pictures of neurons: each chosen neuron's top-k real and top-k adversarial inputs side by side.

One row per neuron: k real images, a blank tile, k adversarial images, each tile titled with its
class (for adversarial images, the source image's class). The papers' observation to look for: a
neuron whose real top-k share a class while its adversarial top-k come from many classes.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from common import io


def neuron_rows(real_images: np.ndarray, real_top: np.ndarray, adv_images: np.ndarray,
                adv_top: np.ndarray, neurons: Sequence[int]) -> np.ndarray:
  """Tiles [len(neurons) * (2k + 1), H, W, C]: per neuron its k real, one blank, its k adversarial.

  Args:
    real_images: [N, H, W, C] in [0, 1]; adv_images: [M, H, W, C] in [0, 1].
    real_top: [U, k] indices into real_images; adv_top: [U, k] indices into adv_images.
    neurons: neuron ids (rows of real_top / adv_top) to show.
  """
  real_images, adv_images = np.asarray(real_images), np.asarray(adv_images)
  blank = np.ones((1,) + real_images.shape[1:], real_images.dtype)
  rows = [np.concatenate([real_images[np.asarray(real_top)[j]], blank,
                          adv_images[np.asarray(adv_top)[j]]]) for j in neurons]
  return np.concatenate(rows)


def save_neuron_pictures(path: str, real_images: np.ndarray, real_top: np.ndarray,
                         adv_images: np.ndarray, adv_top: np.ndarray, neurons: Sequence[int], *,
                         real_labels: np.ndarray | None = None,
                         adv_labels: np.ndarray | None = None,
                         scores: dict[str, np.ndarray] | None = None,
                         title: str = "", scale: float = 0.5) -> str:
  """Writes one PNG with a row per neuron: top-k real | top-k adversarial inputs.

  Args:
    path: output .png, written atomically.
    real_images, real_top, adv_images, adv_top, neurons: as in `neuron_rows`.
    real_labels, adv_labels: optional classes [N] / [M], printed above each tile.
    scores: optional {"real": [U], "adversarial": [U], ...} consistency scores shown per row.
    title: figure title.
    scale: inches per tile.

  Returns:
    path.
  """
  k = np.asarray(real_top).shape[1]
  tiles = neuron_rows(real_images, real_top, adv_images, adv_top, neurons)
  pad = 2
  grid = io.image_grid(tiles, nrow=2 * k + 1, value_range=(0.0, 1.0), padding=pad)
  h, w = tiles.shape[1:3]
  fig = Figure(figsize=(scale * (2 * k + 1) + 2.5, scale * len(neurons) + 0.8))
  FigureCanvasAgg(fig)
  ax = fig.add_subplot()
  ax.imshow(grid[..., 0] if grid.shape[-1] == 1 else grid, cmap="gray", vmin=0, vmax=255,
            interpolation="nearest")
  centre = lambda i, size: pad + i * (size + pad) + size / 2
  ax.set_yticks([centre(i, h) for i in range(len(neurons))],
                [_row_label(j, scores) for j in neurons], fontsize=7)
  ax.set_xticks([centre((k - 1) / 2, w), centre(k + 1 + (k - 1) / 2, w)],
                [f"top-{k} real", f"top-{k} adversarial"], fontsize=8)
  ax.xaxis.tick_top()
  _label_tiles(ax, neurons, real_top, adv_top, real_labels, adv_labels, h, w, pad)
  if title:
    fig.suptitle(title, fontsize=9)
  fig.tight_layout()
  io.atomic_save_figure(fig, path, dpi=150)
  return path


def _row_label(neuron: int, scores: dict[str, np.ndarray] | None) -> str:
  if not scores:
    return f"neuron {neuron}"
  short = {"adversarial": "adv"}
  parts = " ".join(f"{short.get(name, name)} {float(np.asarray(v)[neuron]):.2f}"
                   for name, v in scores.items())
  return f"neuron {neuron}\n{parts}"


def _label_tiles(ax, neurons, real_top, adv_top, real_labels, adv_labels, h, w, pad) -> None:
  """Writes each tile's class in its top-left corner (skipped where labels are not given)."""
  k = np.asarray(real_top).shape[1]
  for row, j in enumerate(neurons):
    for side, (top, labels, first) in enumerate([(real_top, real_labels, 0),
                                                 (adv_top, adv_labels, k + 1)]):
      if labels is None:
        continue
      for i, idx in enumerate(np.asarray(top)[j]):
        x = pad + (first + i) * (w + pad)
        y = pad + row * (h + pad)
        ax.text(x + 0.5, y + 0.5, str(int(np.asarray(labels)[idx])), color="red" if side else
                "lime", fontsize=5, va="top", ha="left")
