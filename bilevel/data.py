"""The examples a bilevel run draws its splits from: one flat pool per dataset, and per-seed splits.

A pool is every labelled example of a dataset as flat float32 vectors in [0, 1] (the official
code's `ToTensor` scale; stability_ho.md): `mnist_5k` and `digits` offline (their train and test
splits together: 5,000 and 1,797 examples), TFDS `mnist` (its 60,000 training images, as the
official `rw_mnist.py` permutes MNIST train) and TFDS `omniglot` (the 964 background classes,
resized to 28 x 28 and inverted, as `fl_omniglot.py`), both read through `tfds.data_source` once
prepared in array_record format (common/data.py) and cached as .npz in the user cache.

The split of seed s (train / val / test / mval / pool positions into the pool, and their labels:
noisy for reweighting, renumbered for feature learning) is computed here in numpy by the task and
carried in the run's state, so a checkpoint holds the exact examples it was trained on.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from absl import logging

from common import data as data_lib
from common.errors import DataError
from common.registry import Registry

POOLS: Registry = Registry("bilevel dataset")

OMNIGLOT_SIZE = 28


@dataclasses.dataclass
class Pool:
  """Every example of a dataset: x float32 [N, D] in [0, 1], y int32 [N], classes 0..C-1."""
  name: str
  x: np.ndarray
  y: np.ndarray
  num_classes: int


def _from_common(config) -> Pool:
  """A labelled dataset of common.data, train and test splits together."""
  ds = data_lib.get_dataset(config)
  if ds.train_labels is None:
    raise DataError(f"data.name={config.name!r} has no class labels: the bilevel tasks need them")
  raw = [src[np.arange(len(src))] for src in (ds.train, ds.test)]
  x = np.concatenate([_unit(r, ds.num_levels) for r in raw])
  y = np.concatenate([ds.labels("train"), ds.labels("test")])
  return Pool(config.name, x, y.astype(np.int32), int(ds.num_classes))


def _unit(raw: np.ndarray, num_levels: int | None) -> np.ndarray:
  x = np.asarray(raw, np.float32).reshape(len(raw), -1)
  return x / (num_levels - 1) if num_levels else x


for _name in ("mnist_5k", "digits"):
  POOLS.add(_name, _from_common)


@POOLS.register("mnist")
def _mnist(config) -> Pool:
  """TFDS MNIST's 60,000 training images (the official code permutes MNIST train only)."""
  def load():
    ds = data_lib.get_dataset(config)
    logging.info("Reading the %d MNIST training images from TFDS (once; cached).", len(ds.train))
    return _unit(ds.train[np.arange(len(ds.train))], 256), ds.labels("train")
  x, y = data_lib.cached_arrays("bilevel_mnist_train", load,
                                enabled=config.get("cache", True))
  return Pool("mnist", x, y.astype(np.int32), 10)


def _omniglot_source(config):
  import tensorflow_datasets as tfds
  data_dir = data_lib.tfds_data_dir(config)
  try:
    return tfds.data_source("omniglot", split="train", data_dir=data_dir, download=False)
  except Exception as e:  # TFDS raises several types for "not prepared"; all mean the same here.
    reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise DataError(
        f"dataset 'omniglot' is not prepared in array_record format under {data_dir} ({reason}). "
        "Prepare it once on a machine with TensorFlow and internet: `tfds build omniglot "
        f"--file_format=array_record --data_dir={data_dir}`, then set data.tfds_data_dir or "
        "TFDS_DATA_DIR to that directory.") from None


def omniglot_image(image: np.ndarray) -> np.ndarray:
  """One Omniglot image (uint8 [105, 105, 1 or 3], dark strokes on white) -> float32 [784] in
  [0, 1], resized bilinearly to 28 x 28 and inverted (strokes 1), as `fl_omniglot.py`."""
  from PIL import Image
  gray = np.asarray(image)[..., 0] if np.ndim(image) == 3 else np.asarray(image)
  small = Image.fromarray(gray.astype(np.uint8)).resize((OMNIGLOT_SIZE, OMNIGLOT_SIZE),
                                                       Image.BILINEAR)
  return 1.0 - np.asarray(small, np.float32).reshape(-1) / 255.0


@POOLS.register("omniglot")
def _omniglot(config) -> Pool:
  """TFDS Omniglot's background set ('train': 964 characters, 20 drawings each)."""
  def load():
    source = _omniglot_source(config)
    logging.info("Reading the %d Omniglot background images from TFDS (once; cached).",
                 len(source))
    records = [source[i] for i in range(len(source))]
    x = np.stack([omniglot_image(r["image"]) for r in records])
    return x, np.asarray([int(r["label"]) for r in records], np.int32)
  x, y = data_lib.cached_arrays("bilevel_omniglot28", load,
                                enabled=config.get("cache", True))
  _, y = np.unique(y, return_inverse=True)  # background labels are a subset of 0..1622
  return Pool("omniglot", x, y.astype(np.int32), int(y.max()) + 1)


def load_pool(config) -> Pool:
  """The pool of `config.data` (POOLS names: mnist_5k, digits, mnist, omniglot)."""
  return POOLS.get(config.name, field="data.name")(config)
