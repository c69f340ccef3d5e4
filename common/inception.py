"""The FID Inception-v3 (pytorch-fid 0.3.0's FIDInceptionV3) in Flax NNX: pool3 features and logits.

This is the 2015 TensorFlow Inception graph that FID and IS numbers in the papers come from, as
pytorch-fid ports it. It differs from torchvision's Inception-v3 in four places, all reproduced:
  - Mixed_5b/5c/5d (A), 6b-6e (C) and 7b (E_1) average-pool over the un-padded window only
    (TF's 'SAME' average pool; torchvision counts the zero padding);
  - Mixed_7c (E_2) max-pools (3x3, stride 1, pad 1) in its pool branch where torchvision averages;
  - 1008 output classes (the TF graph's, 8 of them unused);
  - batch norm eps 0.001 in every conv block.
Inputs are resized to 299x299 with bilinear interpolation as torch's
F.interpolate(mode='bilinear', align_corners=False) does (half-pixel centres, no antialiasing), then
mapped from [0, 1] to [-1, 1]. Layout is NHWC; batch norm runs in inference mode with the stored
running statistics.

Weights: pytorch-fid's `pt_inception-2015-12-05-6726825d.pth` (FID_WEIGHTS_URL), converted once:
  python -m common.inception --convert pt_inception-2015-12-05-6726825d.pth --out inception_fid.npz
(torch is needed for this command only); `load('inception_fid.npz')` then needs numpy and JAX only.

Logits: the callable returns pool3 @ W, the 1008-way softmax logits WITHOUT the fc bias, because
that is what the TF Inception Score code the papers used computes (improved-gan takes the weight
input of 'softmax/logits/MatMul' and multiplies pool3 by it). `load(..., logits_bias=True)` adds the
bias, giving torchvision/pytorch-fid's fc output.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from typing import Any, Callable, Iterable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax import lax

from common import io
from common.errors import DataError

FID_WEIGHTS_URL = ("https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
                   "pt_inception-2015-12-05-6726825d.pth")
INPUT_SIZE = 299
POOL_DIM = 2048
NUM_CLASSES = 1008
BN_EPS = 1e-3  # the TF graph's (pytorch-fid's BasicConv2d), not flax's 1e-5 default

ApplyFn = Callable[[Any], tuple[jax.Array, jax.Array]]


# ---------------------------------------------------------------------------------------------
# Input resizing and pooling.


@functools.cache
def _resize_matrix(n_in: int, n_out: int) -> np.ndarray:
  """[n_out, n_in] weights of 1-D bilinear resizing with torch's align_corners=False rule.

  Output i samples the input at src = (i + 0.5) n_in / n_out - 0.5, clamped below at 0, between
  floor(src) and the next index (clamped to n_in - 1). No antialiasing, also when shrinking. The
  index arithmetic copies torch's float32 kernel (scale rounded to float32, then one fused
  multiply-add rounding): exact index maths would differ from pytorch-fid's weights by up to one
  float32 ulp of src (2e-5 when shrinking 400 -> 299), which the network then amplifies. With this
  rule the weights equal torch 2.13's bit for bit (tests/test_common_inception.py).
  """
  f32 = np.float32
  scale = np.float64(f32(n_in) / f32(n_out))
  src = (scale * (np.arange(n_out) + 0.5) - 0.5).astype(f32)  # exact in float64, rounded once
  src = np.maximum(src, f32(0.0))
  lo = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
  hi = np.minimum(lo + 1, n_in - 1)
  frac = np.clip(src - lo.astype(f32), f32(0.0), f32(1.0))
  weights = np.zeros((n_out, n_in), f32)
  np.add.at(weights, (np.arange(n_out), lo), f32(1.0) - frac)
  np.add.at(weights, (np.arange(n_out), hi), frac)
  return weights


def resize_bilinear(images: jax.Array, size: int = INPUT_SIZE) -> jax.Array:
  """Resizes [n, H, W, C] to [n, size, size, C] as F.interpolate(bilinear, align_corners=False)."""
  _, h, w, _ = images.shape
  if (h, w) == (size, size):
    return images  # torch's rule is the identity here
  rows, cols = jnp.asarray(_resize_matrix(h, size)), jnp.asarray(_resize_matrix(w, size))
  hp = lax.Precision.HIGHEST
  images = jnp.einsum("oh,nhwc->nowc", rows, images, precision=hp)
  return jnp.einsum("pw,nowc->nopc", cols, images, precision=hp)


def preprocess(images: jax.Array) -> jax.Array:
  """Images [n, H, W, 3 or 1] in [0, 1] -> network input [n, 299, 299, 3] in [-1, 1]."""
  images = images.astype(jnp.float32)
  if images.shape[-1] == 1:  # grayscale is read as RGB, as pytorch-fid's PIL loader does
    images = jnp.repeat(images, 3, axis=-1)
  return 2.0 * resize_bilinear(images) - 1.0


def max_pool(x: jax.Array, stride: int, padding: int = 0) -> jax.Array:
  """3x3 max pool [n, H, W, C]; padding counts as -inf (torch's and TF's rule)."""
  pad = ((0, 0), (padding, padding), (padding, padding), (0, 0))
  return lax.reduce_window(x, -jnp.inf, lax.max, (1, 3, 3, 1), (1, stride, stride, 1), pad)


def avg_pool_valid_only(x: jax.Array) -> jax.Array:
  """3x3 stride-1 average pool with pad 1 that averages over in-image pixels only.

  This is torch's count_include_pad=False (TF's 'SAME' average pool), the FID Inception's rule:
  border outputs divide by 4 or 6, not 9.
  """
  pad = ((0, 0), (1, 1), (1, 1), (0, 0))
  window, strides = (1, 3, 3, 1), (1, 1, 1, 1)
  sums = lax.reduce_window(x, 0.0, lax.add, window, strides, pad)
  counts = lax.reduce_window(jnp.ones((1,) + x.shape[1:3] + (1,), x.dtype), 0.0, lax.add, window,
                             strides, pad)
  return sums / counts


# ---------------------------------------------------------------------------------------------
# The network. Attribute names follow torchvision/pytorch-fid so that weights map by name.


def _pair(v: int | tuple[int, int]) -> tuple[int, int]:
  return (v, v) if isinstance(v, int) else tuple(v)


class BasicConv(nnx.Module):
  """Conv (no bias) -> batch norm (inference, eps 0.001) -> ReLU."""

  def __init__(self, cin: int, cout: int, kernel: int | tuple[int, int], stride: int = 1,
               padding: int | tuple[int, int] = 0, *, precision: Any, rngs: nnx.Rngs):
    ph, pw = _pair(padding)
    self.conv = nnx.Conv(cin, cout, _pair(kernel), strides=stride, padding=((ph, ph), (pw, pw)),
                         use_bias=False, precision=precision, rngs=rngs)
    self.bn = nnx.BatchNorm(cout, use_running_average=True, epsilon=BN_EPS, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return jax.nn.relu(self.bn(self.conv(x)))


class InceptionA(nnx.Module):
  """Mixed_5b-5d (FIDInceptionA): 1x1 | 5x5 | double 3x3 | valid-only avg pool + 1x1."""

  def __init__(self, cin: int, pool_features: int, **kw):
    self.branch1x1 = BasicConv(cin, 64, 1, **kw)
    self.branch5x5_1 = BasicConv(cin, 48, 1, **kw)
    self.branch5x5_2 = BasicConv(48, 64, 5, padding=2, **kw)
    self.branch3x3dbl_1 = BasicConv(cin, 64, 1, **kw)
    self.branch3x3dbl_2 = BasicConv(64, 96, 3, padding=1, **kw)
    self.branch3x3dbl_3 = BasicConv(96, 96, 3, padding=1, **kw)
    self.branch_pool = BasicConv(cin, pool_features, 1, **kw)

  def __call__(self, x: jax.Array) -> jax.Array:
    b5 = self.branch5x5_2(self.branch5x5_1(x))
    b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
    bp = self.branch_pool(avg_pool_valid_only(x))
    return jnp.concatenate([self.branch1x1(x), b5, b3, bp], axis=-1)


class InceptionB(nnx.Module):
  """Mixed_6a (grid reduction 35 -> 17): stride-2 3x3 | double 3x3 | 3x3 max pool."""

  def __init__(self, cin: int, **kw):
    self.branch3x3 = BasicConv(cin, 384, 3, stride=2, **kw)
    self.branch3x3dbl_1 = BasicConv(cin, 64, 1, **kw)
    self.branch3x3dbl_2 = BasicConv(64, 96, 3, padding=1, **kw)
    self.branch3x3dbl_3 = BasicConv(96, 96, 3, stride=2, **kw)

  def __call__(self, x: jax.Array) -> jax.Array:
    b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
    return jnp.concatenate([self.branch3x3(x), b3, max_pool(x, stride=2)], axis=-1)


class InceptionC(nnx.Module):
  """Mixed_6b-6e (FIDInceptionC): factorised 7x7 branches | valid-only avg pool + 1x1."""

  def __init__(self, cin: int, c7: int, **kw):
    self.branch1x1 = BasicConv(cin, 192, 1, **kw)
    self.branch7x7_1 = BasicConv(cin, c7, 1, **kw)
    self.branch7x7_2 = BasicConv(c7, c7, (1, 7), padding=(0, 3), **kw)
    self.branch7x7_3 = BasicConv(c7, 192, (7, 1), padding=(3, 0), **kw)
    self.branch7x7dbl_1 = BasicConv(cin, c7, 1, **kw)
    self.branch7x7dbl_2 = BasicConv(c7, c7, (7, 1), padding=(3, 0), **kw)
    self.branch7x7dbl_3 = BasicConv(c7, c7, (1, 7), padding=(0, 3), **kw)
    self.branch7x7dbl_4 = BasicConv(c7, c7, (7, 1), padding=(3, 0), **kw)
    self.branch7x7dbl_5 = BasicConv(c7, 192, (1, 7), padding=(0, 3), **kw)
    self.branch_pool = BasicConv(cin, 192, 1, **kw)

  def __call__(self, x: jax.Array) -> jax.Array:
    b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
    bd = x
    for layer in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3,
                  self.branch7x7dbl_4, self.branch7x7dbl_5):
      bd = layer(bd)
    bp = self.branch_pool(avg_pool_valid_only(x))
    return jnp.concatenate([self.branch1x1(x), b7, bd, bp], axis=-1)


class InceptionD(nnx.Module):
  """Mixed_7a (grid reduction 17 -> 8): 1x1 + stride-2 3x3 | 7x1/1x7 + stride-2 3x3 | max pool."""

  def __init__(self, cin: int, **kw):
    self.branch3x3_1 = BasicConv(cin, 192, 1, **kw)
    self.branch3x3_2 = BasicConv(192, 320, 3, stride=2, **kw)
    self.branch7x7x3_1 = BasicConv(cin, 192, 1, **kw)
    self.branch7x7x3_2 = BasicConv(192, 192, (1, 7), padding=(0, 3), **kw)
    self.branch7x7x3_3 = BasicConv(192, 192, (7, 1), padding=(3, 0), **kw)
    self.branch7x7x3_4 = BasicConv(192, 192, 3, stride=2, **kw)

  def __call__(self, x: jax.Array) -> jax.Array:
    b3 = self.branch3x3_2(self.branch3x3_1(x))
    b7 = x
    for layer in (self.branch7x7x3_1, self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4):
      b7 = layer(b7)
    return jnp.concatenate([b3, b7, max_pool(x, stride=2)], axis=-1)


class InceptionE(nnx.Module):
  """Mixed_7b (FIDInceptionE_1, pool='avg', valid-only) and Mixed_7c (FIDInceptionE_2, 'max')."""

  def __init__(self, cin: int, pool: str, **kw):
    if pool not in ("avg", "max"):
      raise ValueError(f"InceptionE: pool must be 'avg' or 'max', got {pool!r}")
    self.pool = pool
    self.branch1x1 = BasicConv(cin, 320, 1, **kw)
    self.branch3x3_1 = BasicConv(cin, 384, 1, **kw)
    self.branch3x3_2a = BasicConv(384, 384, (1, 3), padding=(0, 1), **kw)
    self.branch3x3_2b = BasicConv(384, 384, (3, 1), padding=(1, 0), **kw)
    self.branch3x3dbl_1 = BasicConv(cin, 448, 1, **kw)
    self.branch3x3dbl_2 = BasicConv(448, 384, 3, padding=1, **kw)
    self.branch3x3dbl_3a = BasicConv(384, 384, (1, 3), padding=(0, 1), **kw)
    self.branch3x3dbl_3b = BasicConv(384, 384, (3, 1), padding=(1, 0), **kw)
    self.branch_pool = BasicConv(cin, 192, 1, **kw)

  def __call__(self, x: jax.Array) -> jax.Array:
    b3 = self.branch3x3_1(x)
    b3 = jnp.concatenate([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], axis=-1)
    bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
    bd = jnp.concatenate([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], axis=-1)
    # E_2's max pool is a quirk of the TF graph that FID numbers depend on; keep it.
    pooled = avg_pool_valid_only(x) if self.pool == "avg" else max_pool(x, stride=1, padding=1)
    return jnp.concatenate([self.branch1x1(x), b3, bd, self.branch_pool(pooled)], axis=-1)


class FIDInceptionV3(nnx.Module):
  """Images [n, H, W, 3] in [0, 1] -> (pool3 features [n, 2048], logits [n, 1008]).

  Attributes:
    logits_bias: whether the logits include the fc bias (False: the TF Inception Score's logits).
  """

  def __init__(self, *, logits_bias: bool = False, precision: Any = "highest",
               rngs: nnx.Rngs):
    kw = dict(precision=precision, rngs=rngs)
    self.logits_bias = logits_bias
    self.precision = precision
    self.Conv2d_1a_3x3 = BasicConv(3, 32, 3, stride=2, **kw)
    self.Conv2d_2a_3x3 = BasicConv(32, 32, 3, **kw)
    self.Conv2d_2b_3x3 = BasicConv(32, 64, 3, padding=1, **kw)
    self.Conv2d_3b_1x1 = BasicConv(64, 80, 1, **kw)
    self.Conv2d_4a_3x3 = BasicConv(80, 192, 3, **kw)
    self.Mixed_5b = InceptionA(192, 32, **kw)
    self.Mixed_5c = InceptionA(256, 64, **kw)
    self.Mixed_5d = InceptionA(288, 64, **kw)
    self.Mixed_6a = InceptionB(288, **kw)
    self.Mixed_6b = InceptionC(768, 128, **kw)
    self.Mixed_6c = InceptionC(768, 160, **kw)
    self.Mixed_6d = InceptionC(768, 160, **kw)
    self.Mixed_6e = InceptionC(768, 192, **kw)
    self.Mixed_7a = InceptionD(768, **kw)
    self.Mixed_7b = InceptionE(1280, "avg", **kw)
    self.Mixed_7c = InceptionE(2048, "max", **kw)
    self.fc = nnx.Linear(POOL_DIM, NUM_CLASSES, rngs=rngs)

  def __call__(self, images: jax.Array) -> tuple[jax.Array, jax.Array]:
    x = preprocess(images)
    x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
    x = max_pool(x, stride=2)
    x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
    x = max_pool(x, stride=2)
    for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b,
                  self.Mixed_6c, self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b,
                  self.Mixed_7c):
      x = block(x)
    pool = jnp.mean(x, axis=(1, 2))  # pool3: global average over the 8x8 grid
    logits = jnp.dot(pool, self.fc.kernel[...], precision=self.precision)
    if self.logits_bias:
      logits = logits + self.fc.bias[...]
    return pool, logits


# ---------------------------------------------------------------------------------------------
# Weights: pytorch-fid state dict -> flat {"Mixed_5b/branch1x1/conv/kernel": array} -> model.


@functools.cache
def weight_shapes() -> dict[str, tuple[int, ...]]:
  """Every weight the network needs, by flat name ("a/b/c"), with its shape (JAX layout)."""
  abstract = nnx.eval_shape(lambda: FIDInceptionV3(rngs=nnx.Rngs(0)))
  _, state = nnx.split(abstract)
  return {k: tuple(v.shape) for k, v in _flatten(nnx.to_pure_dict(state)).items()}


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  flat = {}
  for key, value in tree.items():
    name = f"{prefix}{key}"
    flat.update(_flatten(value, name + "/") if isinstance(value, Mapping) else {name: value})
  return flat


def _unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
  tree: dict[str, Any] = {}
  for name, value in flat.items():
    *parents, leaf = name.split("/")
    node = tree
    for part in parents:
      node = node.setdefault(part, {})
    node[leaf] = value
  return tree


# torch BasicConv2d / Linear parameter -> (our leaf, transpose OIHW->HWIO or [out,in]->[in,out])
_TORCH_LEAVES = {
    "conv.weight": ("conv/kernel", (2, 3, 1, 0)),
    "bn.weight": ("bn/scale", None),
    "bn.bias": ("bn/bias", None),
    "bn.running_mean": ("bn/mean", None),
    "bn.running_var": ("bn/var", None),
    "fc.weight": ("fc/kernel", (1, 0)),
    "fc.bias": ("fc/bias", None),
}


def convert_state_dict(state_dict: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """pytorch-fid's FIDInceptionV3 state dict (torch tensors or arrays) -> our flat float32 weights.

  Conv kernels go from torch's OIHW to HWIO, the fc weight from [out, in] to [in, out]; batch-norm
  counters (num_batches_tracked) are dropped.

  Raises:
    DataError: names missing, unexpected or mis-shaped entries.
  """
  weights = {}
  for key, value in state_dict.items():
    if key.endswith("num_batches_tracked"):
      continue
    array = _to_numpy(value)
    for suffix, (leaf, perm) in _TORCH_LEAVES.items():
      if key == suffix or key.endswith("." + suffix):
        prefix = key[:-len(suffix)].rstrip(".").replace(".", "/")
        weights[f"{prefix}/{leaf}" if prefix else leaf] = (
            array if perm is None else np.transpose(array, perm)).astype(np.float32)
        break
    else:
      raise DataError(f"state dict entry {key!r} is not part of pytorch-fid's FIDInceptionV3")
  check_weights(weights, "converted state dict")
  return weights


def _to_numpy(value: Any) -> np.ndarray:
  if hasattr(value, "detach"):  # a torch tensor; avoids importing torch here
    value = value.detach().cpu().numpy()
  return np.asarray(value)


def check_weights(weights: Mapping[str, np.ndarray], source: str) -> None:
  """Raises DataError unless `weights` holds exactly the network's weights with their shapes."""
  expected = weight_shapes()
  missing = sorted(set(expected) - set(weights))
  unexpected = sorted(set(weights) - set(expected))
  if missing or unexpected:
    raise DataError(f"{source} does not match the FID Inception: missing {missing[:3]}"
                    f"{'...' if len(missing) > 3 else ''} ({len(missing)}), unexpected "
                    f"{unexpected[:3]}{'...' if len(unexpected) > 3 else ''} ({len(unexpected)})")
  for name, shape in expected.items():
    if tuple(np.shape(weights[name])) != shape:
      raise DataError(f"{source}: {name} has shape {np.shape(weights[name])}, expected {shape}")


def random_weights(seed: int = 0) -> dict[str, np.ndarray]:
  """He-normal conv/fc weights and identity batch norms: for tests and benchmarks, not for FID."""
  rng = np.random.default_rng(seed)
  weights = {}
  for name, shape in weight_shapes().items():
    if name.endswith("kernel"):
      fan_in = int(np.prod(shape[:-1]))
      weights[name] = rng.normal(0.0, np.sqrt(2.0 / fan_in), shape).astype(np.float32)
    elif name.endswith(("scale", "var")):
      weights[name] = np.ones(shape, np.float32)
    else:
      weights[name] = np.zeros(shape, np.float32)
  return weights


def save_weights(path: str, weights: Mapping[str, np.ndarray]) -> None:
  check_weights(weights, "weights to save")
  io.atomic_save_npz(path, **weights)


def load_weights(path: str) -> dict[str, np.ndarray]:
  """Reads converted weights; a missing file is a DataError saying how to make it."""
  if not os.path.isfile(path):
    raise DataError(
        f"Inception weights {path} not found: download {FID_WEIGHTS_URL} and convert it with "
        f"`python -m common.inception --convert pt_inception-2015-12-05-6726825d.pth --out {path}`")
  try:
    with np.load(path) as f:
      weights = {name: f[name] for name in f.files}
  except (OSError, ValueError) as e:
    raise DataError(f"{path} is not a converted Inception weight file (.npz): {e}") from None
  check_weights(weights, path)
  return weights


# ---------------------------------------------------------------------------------------------
# Jitted, optionally sharded forward pass.


def build(weights: Mapping[str, np.ndarray], *, mesh: jax.sharding.Mesh | None = None,
          logits_bias: bool = False, precision: Any = "highest") -> ApplyFn:
  """A jitted `images [n, H, W, 3] in [0, 1] -> (pool [n, 2048], logits [n, 1008])` from weights.

  Args:
    weights: flat weights (convert_state_dict / load_weights / random_weights).
    mesh: if given, each batch is split over its `data` axis (padded to a multiple of the axis size,
      the padding dropped again) and the weights are replicated. Single-process meshes only.
    logits_bias: add the fc bias to the logits (see the module docstring).
    precision: matmul/conv precision; "highest" keeps float32 convolutions on GPU/TPU too, as
      FID comparisons need.
  """
  check_weights(weights, "weights")
  abstract = nnx.eval_shape(
      lambda: FIDInceptionV3(logits_bias=logits_bias, precision=precision, rngs=nnx.Rngs(0)))
  graphdef, state = nnx.split(abstract)
  nnx.replace_by_pure_dict(
      state, _unflatten({k: jnp.asarray(v, jnp.float32) for k, v in weights.items()}))
  forward = jax.jit(lambda st, images: nnx.merge(graphdef, st)(images))
  if mesh is None:
    return lambda images: forward(state, _check_images(images))
  from common import mesh as mesh_lib
  state = jax.device_put(state, mesh_lib.replicated(mesh))
  sharding = mesh_lib.batch_sharding(mesh)
  shards = mesh.shape[mesh_lib.DATA_AXIS]

  def apply(images):
    images = _check_images(images)
    n = images.shape[0]
    padded = jnp.pad(images, ((0, -n % shards), (0, 0), (0, 0), (0, 0)))
    pool, logits = forward(state, jax.device_put(padded, sharding))
    return pool[:n], logits[:n]
  return apply


def load(npz_path: str, *, mesh: jax.sharding.Mesh | None = None,
         logits_bias: bool = False) -> ApplyFn:
  """The FID Inception from a converted weight file: `images -> (pool, logits)`, jitted.

  Args:
    npz_path: output of `python -m common.inception --convert`.
    mesh: optional mesh to shard each batch over its `data` axis.
    logits_bias: see `build`.

  Returns:
    A callable taking float images [n, H, W, 3] in [0, 1] of any size (resized to 299x299 inside)
    and returning pool3 features [n, 2048] and logits [n, 1008] (float32 jax arrays).
  """
  return build(load_weights(npz_path), mesh=mesh, logits_bias=logits_bias)


def _check_images(images: Any) -> jax.Array:
  shape = np.shape(images)
  if len(shape) != 4 or shape[-1] not in (1, 3) or shape[0] == 0:
    raise ValueError(f"expected images [n, H, W, 3] (or 1 channel) with n > 0, got shape {shape}")
  return jnp.asarray(images)


def features_stats(apply_fn: ApplyFn, batches: Iterable[Any], keep_logits: bool = True
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
  """Streams image batches through the network into running float64 feature statistics.

  Args:
    apply_fn: from `load` / `build`.
    batches: iterable of image batches [b, H, W, 3] in [0, 1].
    keep_logits: also return all logits (float32 [n, 1008], 4 KB per image) for the Inception
      Score; the pool features themselves are never kept.

  Returns:
    (mu [2048], sigma [2048, 2048], logits [n, 1008] or None).
  """
  from common import fid
  stats = fid.RunningStats(POOL_DIM)
  logits = []
  for batch in batches:
    pool, lg = apply_fn(batch)
    stats.update(np.asarray(pool, np.float64))  # blocks on each batch: bounded device memory
    if keep_logits:
      logits.append(np.asarray(lg, np.float32))
  mu, sigma = stats.stats()
  return mu, sigma, (np.concatenate(logits) if keep_logits else None)


# ---------------------------------------------------------------------------------------------
# Command line: convert pytorch-fid's weight file.


def convert_file(pth_path: str, out_path: str) -> dict[str, np.ndarray]:
  """Converts pytorch-fid's .pth state dict to our .npz (needs torch, imported here only)."""
  if not os.path.isfile(pth_path):
    raise DataError(f"pytorch-fid weight file {pth_path} not found: download it from "
                    f"{FID_WEIGHTS_URL}")
  try:
    import torch
  except ImportError:
    raise DataError("converting the .pth needs torch: pip install torch==2.13.0 (CPU wheel); "
                    "the converted .npz then needs numpy and JAX only") from None
  state_dict = torch.load(pth_path, map_location="cpu", weights_only=True)
  weights = convert_state_dict(state_dict)
  save_weights(out_path, weights)
  return weights


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m common.inception",
                                   description="Convert pytorch-fid's Inception weights to .npz.")
  parser.add_argument("--convert", required=True, metavar="PTH",
                      help="pt_inception-2015-12-05-6726825d.pth")
  parser.add_argument("--out", required=True, metavar="NPZ", help="converted weights to write")
  args = parser.parse_args(argv)
  try:
    weights = convert_file(args.convert, args.out)
  except DataError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  count = sum(int(np.prod(w.shape)) for w in weights.values())
  print(f"wrote {args.out}: {len(weights)} arrays, {count:,} parameters")
  return 0


if __name__ == "__main__":
  sys.exit(main())
