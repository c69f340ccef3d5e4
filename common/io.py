"""Atomic output files: a reader never sees a half-written result."""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any, Callable

import numpy as np


def cache_dir(*parts: str) -> str:
  """The user cache of this codebase, $XDG_CACHE_HOME/jax-papers (default ~/.cache/jax-papers),
  joined with `parts`: compiled XLA programs, parsed datasets."""
  base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
  return os.path.join(base, "jax-papers", *parts)


def on_main_process(path: str, write: Callable[[str], Any]) -> str:
  """Calls `write(path)` on process 0 only (every process computes, one writes); returns path."""
  import jax
  if jax.process_index() == 0:
    write(path)
  return path


def atomic_write_bytes(path: str, data: bytes) -> None:
  """Writes `data` to `path` through a temporary file in the same directory and a rename."""
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; give outputs the usual mode
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise


def _umask() -> int:
  mask = os.umask(0)
  os.umask(mask)
  return mask


def atomic_write_text(path: str, text: str) -> None:
  atomic_write_bytes(path, text.encode("utf-8"))


def _to_builtin(obj: Any) -> Any:
  if isinstance(obj, (np.generic,)):
    return obj.item()
  if hasattr(obj, "tolist"):
    return obj.tolist()
  raise TypeError(f"cannot serialise {type(obj).__name__} to JSON")


def atomic_write_json(path: str, obj: Any) -> None:
  atomic_write_text(path, json.dumps(obj, indent=2, default=_to_builtin) + "\n")


def atomic_save_npy(path: str, array: np.ndarray) -> None:
  import io as _io
  buf = _io.BytesIO()
  np.save(buf, np.asarray(array))
  atomic_write_bytes(path, buf.getvalue())


def atomic_save_npz(path: str, **arrays: np.ndarray) -> None:
  import io as _io
  buf = _io.BytesIO()
  np.savez(buf, **arrays)
  atomic_write_bytes(path, buf.getvalue())


def atomic_save_figure(fig: Any, path: str, **kwargs: Any) -> None:
  """Saves a matplotlib figure atomically; the format follows the file extension."""
  import io as _io
  buf = _io.BytesIO()
  fmt = os.path.splitext(path)[1].lstrip(".") or "png"
  fig.savefig(buf, format=fmt, **kwargs)
  atomic_write_bytes(path, buf.getvalue())


def save_image_grid(path: str, images: np.ndarray, nrow: int | None = None,
                    value_range: tuple[float, float] = (-1.0, 1.0), padding: int = 2) -> None:
  """Writes a batch of images [B, H, W, C] (C = 1 or 3) as one PNG grid, atomically."""
  from PIL import Image
  grid = image_grid(images, nrow, value_range, padding)
  c = grid.shape[-1]
  pil = Image.fromarray(grid[..., 0] if c == 1 else grid)
  import io as _io
  buf = _io.BytesIO()
  pil.save(buf, format="PNG")
  atomic_write_bytes(path, buf.getvalue())


def image_grid(images: np.ndarray, nrow: int | None = None,
               value_range: tuple[float, float] = (-1.0, 1.0), padding: int = 2) -> np.ndarray:
  """A batch of images [B, H, W, C] (C = 1 or 3) tiled into one uint8 image [H', W', C]."""
  images = np.asarray(images, dtype=np.float32)
  if images.ndim != 4 or images.shape[-1] not in (1, 3):
    raise ValueError(f"expected images of shape [B, H, W, 1|3], got {images.shape}")
  low, high = value_range
  images = np.clip((images - low) / (high - low), 0.0, 1.0)
  b, h, w, c = images.shape
  nrow = nrow or int(np.ceil(np.sqrt(b)))
  ncol = int(np.ceil(b / nrow))
  grid = np.ones((ncol * (h + padding) + padding, nrow * (w + padding) + padding, c), np.float32)
  for i, img in enumerate(images):
    r, q = divmod(i, nrow)
    y, x = padding + r * (h + padding), padding + q * (w + padding)
    grid[y:y + h, x:x + w] = img
  return (grid * 255 + 0.5).astype(np.uint8)
