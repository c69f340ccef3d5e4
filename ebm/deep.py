"""The deep EBLVM of BiSM (../shared/papers/ebm.md, "Models"; sources/bism.md, latent_ebm_resnet):

  E(v, h) = sum_j ELU(w_j^T [f(v) + h, h] + b_j)^2,   h in R^m (continuous),

with f(v) = Linear(ResNet features of v) in R^m. The ResNet (ELU, mean-pool downsampling) is a 3x3
conv to `channels`, then 3 stages of `blocks_per_stage` residual blocks; the first block of each
stage doubles the width and halves the resolution (channels -> 2, 4, 8 x channels). Official:
ResNet6 (2 blocks a stage, channels 64) for MNIST padded to 32x32, ResNet9 (3 blocks, channels 128)
for CIFAR-10 / CelebA 32; the head has (hw / 8)^2 * 4 * channels units (with 3 stages). Trained
with BiMDSM, the posterior-Fisher lower level, K = 5, N = 0 and
ebm.posteriors.GaussianConvPosterior as q.

Inputs are NHWC images [B, H, W, C] with H, W divisible by 8.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx


def _conv(cin: int, cout: int, k: int, rngs: nnx.Rngs, bias: bool = True) -> nnx.Conv:
  return nnx.Conv(cin, cout, (k, k), padding="SAME", use_bias=bias, rngs=rngs)


def mean_pool(x: jax.Array) -> jax.Array:
  """2x2 average pooling of [B, H, W, C] -> [B, H/2, W/2, C]."""
  b, h, w, c = x.shape
  return x.reshape(b, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))


class ResidualBlock(nnx.Module):
  """ELU -> conv3x3 (no bias) -> ELU -> conv3x3 [-> mean pool], plus a 1x1-conv shortcut
  [after a mean pool] (the shortcut is a 1x1 conv also when the width is unchanged)."""

  def __init__(self, cin: int, cout: int, down: bool, rngs: nnx.Rngs):
    self.conv1 = _conv(cin, cin, 3, rngs, bias=False)
    self.conv2 = _conv(cin, cout, 3, rngs)
    self.shortcut = _conv(cin, cout, 1, rngs)
    self.down = down

  def __call__(self, x: jax.Array) -> jax.Array:
    y = self.conv2(jax.nn.elu(self.conv1(jax.nn.elu(x))))
    skip = x
    if self.down:
      y, skip = mean_pool(y), mean_pool(skip)
    return y + self.shortcut(skip)


class ResNetFeatures(nnx.Module):
  """v [B, H, W, C] -> features [B, (H / 2^S) (W / 2^S) 2^S channels], S = num_stages (3)."""

  def __init__(self, in_channels: int, channels: int, blocks_per_stage: int, rngs: nnx.Rngs,
               num_stages: int = 3):
    self.stem = _conv(in_channels, channels, 3, rngs)
    blocks, width = [], channels
    for _ in range(num_stages):
      blocks.append(ResidualBlock(width, 2 * width, True, rngs))
      blocks += [ResidualBlock(2 * width, 2 * width, False, rngs)
                 for _ in range(blocks_per_stage - 1)]
      width *= 2
    self.blocks = nnx.List(blocks)

  def __call__(self, v: jax.Array) -> jax.Array:
    x = self.stem(v)
    for block in self.blocks:
      x = block(x)
    return x.reshape(x.shape[0], -1)


class DeepEBLVM(nnx.Module):
  """E(v, h) = sum_j ELU(w_j^T [f(v) + h, h] + b_j)^2 with a ResNet f.

  Args:
    image_shape: (H, W, C) of v.
    num_hidden: m, the latent dimension (20, 50 or 100 in the paper).
    channels: the ResNet's base width (64 for MNIST, 128 for CIFAR-10 / CelebA).
    blocks_per_stage: 2 (ResNet6) or 3 (ResNet9).
    num_stages: downsampling stages (3 in the paper; fewer only to make tests cheap).
  """

  def __init__(self, image_shape: Sequence[int], num_hidden: int, *, channels: int = 64,
               blocks_per_stage: int = 2, num_stages: int = 3, rngs: nnx.Rngs):
    hw, _, cin = image_shape
    scale = 2 ** num_stages
    cells = (hw // scale) ** 2
    self.features = ResNetFeatures(cin, channels, blocks_per_stage, rngs, num_stages)
    self.to_hidden = nnx.Linear(cells * scale * channels, num_hidden, rngs=rngs)
    self.head = nnx.Linear(2 * num_hidden, cells * scale // 2 * channels, rngs=rngs)

  def feature(self, v: jax.Array) -> jax.Array:
    """f(v), [B, m]."""
    return self.to_hidden(self.features(v))

  def energy(self, v: jax.Array, h: jax.Array) -> jax.Array:
    """E(v, h), [B]; v [B, H, W, C], h [B, m]."""
    joint = jnp.concatenate([self.feature(v) + h, h], axis=-1)
    return jnp.sum(jax.nn.elu(self.head(joint)) ** 2, axis=-1)
