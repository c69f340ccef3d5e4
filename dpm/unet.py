"""The DDPM U-Net (Ho et al., 2020, appendix B) as an NNX module, from a tiny CPU model up to the
35.7M-parameter CIFAR-10 network (ch=128, ch_mult=(1, 2, 2, 2), 2 res blocks, attention at 16x16).
"""

from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

_zeros = nnx.initializers.zeros_init()
_default = nnx.initializers.variance_scaling(1.0, "fan_avg", "uniform")


def timestep_embedding(t: jax.Array, dim: int) -> jax.Array:
  """Sinusoidal embedding of (float) timesteps t [B] -> [B, dim], as in the Transformer / DDPM."""
  half = dim // 2
  freqs = jnp.exp(-math.log(10000.0) * jnp.arange(half, dtype=jnp.float32) / (half - 1))
  args = jnp.asarray(t, jnp.float32)[:, None] * freqs[None, :]
  return jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)


def upsample_nearest(x: jax.Array) -> jax.Array:
  """2x nearest-neighbour upsampling by broadcast + reshape (its gradient is a cheap sum; the
  gradient of jax.image.resize is a scatter, ~6x slower on CPU)."""
  b, h, w, c = x.shape
  x = jnp.broadcast_to(x[:, :, None, :, None, :], (b, h, 2, w, 2, c))
  return x.reshape(b, 2 * h, 2 * w, c)


def _conv(cin: int, cout: int, rngs: nnx.Rngs, k: int = 3, stride: int = 1, zero: bool = False):
  return nnx.Conv(cin, cout, (k, k), strides=(stride, stride), padding="SAME",
                  kernel_init=_zeros if zero else _default, rngs=rngs)


class ResBlock(nnx.Module):
  """GN -> SiLU -> conv -> + Dense(temb) -> GN -> SiLU -> dropout -> conv (zero-init), + skip."""

  def __init__(self, cin: int, cout: int, temb_dim: int, dropout: float, groups: int,
               rngs: nnx.Rngs):
    self.norm1 = nnx.GroupNorm(cin, num_groups=groups, rngs=rngs)
    self.conv1 = _conv(cin, cout, rngs)
    self.temb = nnx.Linear(temb_dim, cout, kernel_init=_default, rngs=rngs)
    self.norm2 = nnx.GroupNorm(cout, num_groups=groups, rngs=rngs)
    self.dropout = nnx.Dropout(dropout)
    self.conv2 = _conv(cout, cout, rngs, zero=True)
    self.skip = _conv(cin, cout, rngs, k=1) if cin != cout else None

  def __call__(self, x, temb, *, train: bool, rngs):
    h = self.conv1(nnx.silu(self.norm1(x)))
    h = h + self.temb(nnx.silu(temb))[:, None, None, :]
    h = nnx.silu(self.norm2(h))
    h = self.conv2(self.dropout(h, deterministic=not train, rngs=rngs))
    return h + (self.skip(x) if self.skip is not None else x)


class AttnBlock(nnx.Module):
  """Single-head self-attention over spatial positions, with a zero-initialised output projection."""

  def __init__(self, ch: int, groups: int, rngs: nnx.Rngs):
    self.norm = nnx.GroupNorm(ch, num_groups=groups, rngs=rngs)
    self.qkv = nnx.Linear(ch, 3 * ch, kernel_init=_default, rngs=rngs)
    self.proj = nnx.Linear(ch, ch, kernel_init=_zeros, rngs=rngs)

  def __call__(self, x):
    b, h, w, c = x.shape
    q, k, v = jnp.split(self.qkv(self.norm(x)).reshape(b, h * w, 3 * c), 3, axis=-1)
    weights = jax.nn.softmax(jnp.einsum("bic,bjc->bij", q, k) / math.sqrt(c), axis=-1)
    out = jnp.einsum("bij,bjc->bic", weights, v).reshape(b, h, w, c)
    return x + self.proj(out)


class Block(nnx.Module):
  """A residual block, optionally followed by self-attention (at the attention resolutions)."""

  def __init__(self, res: ResBlock, attn: AttnBlock | None):
    self.res = res
    self.attn = attn

  def __call__(self, x, temb, *, train: bool, rngs):
    h = self.res(x, temb, train=train, rngs=rngs)
    return self.attn(h) if self.attn is not None else h


class UNet(nnx.Module):
  """Noise-prediction U-Net eps_theta(x, t) on NHWC images.

  Args:
    image_size: input height (= width); attention is applied at the resolutions in `attn_resolutions`.
    channels: image channels (1 for MNIST, 3 for CIFAR-10).
    ch: base width; ch_mult: width multiplier per resolution level.
    num_res_blocks: residual blocks per level on the way down (one more on the way up).
    dropout: dropout rate inside residual blocks (active only with train=True).
    num_groups: GroupNorm groups (32 in DDPM; fewer for tiny models).
  """

  def __init__(self, *, image_size: int, channels: int, ch: int = 128,
               ch_mult: Sequence[int] = (1, 2, 2, 2), num_res_blocks: int = 2,
               attn_resolutions: Sequence[int] = (16,), dropout: float = 0.1,
               num_groups: int = 32, rngs: nnx.Rngs):
    self.ch = ch
    temb_dim = 4 * ch
    self.temb1 = nnx.Linear(ch, temb_dim, kernel_init=_default, rngs=rngs)
    self.temb2 = nnx.Linear(temb_dim, temb_dim, kernel_init=_default, rngs=rngs)
    self.conv_in = _conv(channels, ch, rngs)
    block = lambda cin, cout: ResBlock(cin, cout, temb_dim, dropout, num_groups, rngs)

    down, skips_ch, res, cur = [], [ch], image_size, ch
    for level, mult in enumerate(ch_mult):
      for _ in range(num_res_blocks):
        attn = AttnBlock(ch * mult, num_groups, rngs) if res in attn_resolutions else None
        down.append(Block(block(cur, ch * mult), attn))
        cur = ch * mult
        skips_ch.append(cur)
      if level != len(ch_mult) - 1:
        down.append(_conv(cur, cur, rngs, stride=2))
        skips_ch.append(cur)
        res //= 2
    self.down = nnx.List(down)
    self.mid1 = block(cur, cur)
    self.mid_attn = AttnBlock(cur, num_groups, rngs)
    self.mid2 = block(cur, cur)

    up = []
    for level, mult in reversed(list(enumerate(ch_mult))):
      for _ in range(num_res_blocks + 1):
        attn = AttnBlock(ch * mult, num_groups, rngs) if res in attn_resolutions else None
        up.append(Block(block(cur + skips_ch.pop(), ch * mult), attn))
        cur = ch * mult
      if level != 0:
        up.append(_conv(cur, cur, rngs))  # after nearest-neighbour upsampling
        res *= 2
    self.up = nnx.List(up)
    self.norm_out = nnx.GroupNorm(cur, num_groups=num_groups, rngs=rngs)
    self.conv_out = _conv(cur, channels, rngs, zero=True)

  def __call__(self, x: jax.Array, t: jax.Array, *, train: bool = False,
               rngs: jax.Array | None = None) -> jax.Array:
    """x: [B, H, W, C]; t: [B] network time input (n - 1 for discrete step n); returns [B, H, W, C]."""
    h, _ = self.features(x, t, train=train, rngs=rngs)
    return self.output(h)

  def features(self, x: jax.Array, t: jax.Array, *, train: bool = False,
               rngs: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """The last feature map [B, H, W, ch * ch_mult[0]] (before the output norm) and the time
    embedding [B, 4 ch]: what a second-stage head reads (SN/NPR-DPM's parameter sharing)."""
    temb = self.temb2(nnx.silu(self.temb1(timestep_embedding(t, self.ch))))
    hs = [self.conv_in(x)]
    for layer in self.down:
      if isinstance(layer, nnx.Conv):
        hs.append(layer(hs[-1]))
      else:
        hs.append(layer(hs[-1], temb, train=train, rngs=rngs))
    h = self.mid2(self.mid_attn(self.mid1(hs[-1], temb, train=train, rngs=rngs)), temb,
                  train=train, rngs=rngs)
    for layer in self.up:
      if isinstance(layer, nnx.Conv):
        h = layer(upsample_nearest(h))
      else:
        h = layer(jnp.concatenate([h, hs.pop()], axis=-1), temb, train=train, rngs=rngs)
    return h, temb

  def output(self, h: jax.Array) -> jax.Array:
    """eps_hat [B, H, W, C] from the last feature map of `features`."""
    return self.conv_out(nnx.silu(self.norm_out(h)))


def count_params(model: nnx.Module) -> int:
  return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
