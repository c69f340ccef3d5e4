"""Second-stage covariance heads of SN/NPR-DPM and the two-part model that shares the U-Net.

Parameter sharing (Bao et al., ICML 2022, sec. 4): a trained noise predictor is frozen and a small
head reads its last feature map (the input of its output layer) to predict a per-element moment:
SN's h(x_t) ~ E[eps^2 | x_t] or NPR's g(x_t) ~ E[(eps - eps_hat)^2 | x_t] (dpm/covariance.py).

  light  GroupNorm -> SiLU -> zero-initialised 3x3 conv (the official `simple` head)
  heavy  one residual block (with the U-Net's time embedding) first (`complex`)

The head outputs the moment itself, with no output nonlinearity (as the official code): the
x_0-variance estimate it implies is clipped to [0, 1] where it is used.
"""

from __future__ import annotations

from typing import Sequence

import jax
from flax import nnx

from common.errors import ConfigError
from common.registry import Registry
from dpm import covariance
from dpm.unet import ResBlock, UNet

HEADS: Registry = Registry("covariance head")


class LightHead(nnx.Module):
  """features [B, H, W, F] -> GroupNorm -> SiLU -> zero-init 3x3 conv -> [B, H, W, C]."""

  def __init__(self, features: int, channels: int, temb_dim: int, groups: int, rngs: nnx.Rngs):
    del temb_dim
    self.norm = nnx.GroupNorm(features, num_groups=groups, rngs=rngs)
    self.conv = nnx.Conv(features, channels, (3, 3), padding="SAME",
                         kernel_init=nnx.initializers.zeros_init(), rngs=rngs)

  def __call__(self, h: jax.Array, temb: jax.Array, *, train: bool = False, rngs=None):
    del temb, train, rngs
    return self.conv(nnx.silu(self.norm(h)))


class HeavyHead(nnx.Module):
  """One residual block (conditioned on the time embedding, no dropout), then the light head."""

  def __init__(self, features: int, channels: int, temb_dim: int, groups: int, rngs: nnx.Rngs):
    self.block = ResBlock(features, features, temb_dim, 0.0, groups, rngs)
    self.out = LightHead(features, channels, temb_dim, groups, rngs)

  def __call__(self, h: jax.Array, temb: jax.Array, *, train: bool = False, rngs=None):
    return self.out(self.block(h, temb, train=train, rngs=rngs), temb)


HEADS.add("light", LightHead)
HEADS.add("heavy", HeavyHead)


class Heads(nnx.Module):
  """One head per moment kind ('sn', 'npr'), as attributes named by kind."""

  def __init__(self, kinds: Sequence[str], make):
    self.kinds = tuple(kinds)
    for kind in self.kinds:
      setattr(self, kind, make())

  def __call__(self, h, temb, *, train: bool = False, rngs=None) -> dict[str, jax.Array]:
    return {k: getattr(self, k)(h, temb, train=train, rngs=rngs) for k in self.kinds}


class TwoPartModel(nnx.Module):
  """(x_t, t) -> (eps_hat, {kind: moment}): the frozen U-Net (`unet`) and the heads (`head`).

  The U-Net runs deterministically (no dropout) and its outputs are cut from the gradient, so a
  step that trains the heads never differentiates through it (the frozen backward is skipped).
  Its parameters live under the path `unet`: a warm start grafts a stage-1 checkpoint's
  `ema_params` into `consts.frozen.unet`.
  """

  def __init__(self, unet: UNet, kinds: Sequence[str] = covariance.KINDS, head: str = "light", *,
               rngs: nnx.Rngs):
    for kind in kinds:
      covariance.check_kind(kind)
    if len(set(kinds)) != len(kinds) or not kinds:
      raise ConfigError(f"sn_npr.kinds={tuple(kinds)} is invalid: expected distinct kinds from "
                        f"{list(covariance.KINDS)}")
    make_head = HEADS.get(head, field="sn_npr.head")
    features = unet.conv_out.in_features
    channels = unet.conv_out.out_features
    temb_dim = unet.temb2.out_features
    groups = unet.norm_out.num_groups
    self.unet = unet
    self.head = Heads(kinds, lambda: make_head(features, channels, temb_dim, groups, rngs))

  def __call__(self, x: jax.Array, t: jax.Array, *, train: bool = False,
               rngs: jax.Array | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
    """x: [B, H, W, C]; t: [B] network time; returns eps_hat [B, H, W, C] and the moments."""
    h, temb = self.unet.features(x, t, train=False)
    h, temb = jax.lax.stop_gradient(h), jax.lax.stop_gradient(temb)
    eps = jax.lax.stop_gradient(self.unet.output(h))
    return eps, self.head(h, temb, train=train, rngs=rngs)


def count_head_params(model: TwoPartModel) -> int:
  return sum(x.size for x in jax.tree.leaves(nnx.state(model.head, nnx.Param)))


def eps_only(model: TwoPartModel):
  """The noise predictor alone, (x, t) -> eps_hat (for the isotropic variances)."""
  return lambda x, t: model(x, t)[0]
