"""Small NNX CNN classifiers whose intermediate activations can be read and masked by layer name.

The papers probe high-level neurons of ImageNet CNNs; offline we use the same structure at the size
of the embedded data: two conv blocks and one hidden dense layer,

    conv1 -> [BN] -> ReLU -> maxpool 2 -> conv2 -> [BN] -> ReLU -> maxpool 2 -> fc1 -> [BN] -> ReLU
    -> logits

Inputs are images [n, H, W, C] in [0, 1] (the attack box), H and W divisible by 4. The neurons of a
layer are the ReLU outputs before pooling: a conv channel's activation map [n, h, w] is reduced by a
spatial max (`neuron_activations`), which equals the max over its pooled map.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from common.errors import ConfigError
from common.registry import Registry

LAYERS = ("conv1", "conv2", "fc1")


@dataclasses.dataclass(frozen=True)
class Preset:
  """Default architecture for one dataset: image shape, classes, conv channels, hidden units."""
  image_shape: tuple[int, int, int]
  num_classes: int
  channels: tuple[int, int]
  hidden: int


# Tiny on purpose: the offline experiments train several models per mode and seed on 2 CPU cores.
PRESETS: Registry = Registry("interp model preset")
PRESETS.add("digits", Preset((8, 8, 1), 10, channels=(8, 16), hidden=32))
PRESETS.add("mnist_5k", Preset((28, 28, 1), 10, channels=(16, 32), hidden=64))
PRESETS.add("mnist", Preset((28, 28, 1), 10, channels=(16, 32), hidden=64))  # full MNIST (TFDS)
# Paper scale (GPU/TPU): the same structure, wide enough for CIFAR-10 (see configs/interp/).
PRESETS.add("cifar10", Preset((32, 32, 3), 10, channels=(64, 128), hidden=256))


class CNN(nnx.Module):
  """conv-conv-dense classifier with optional batch norm (batch statistics in nnx.BatchStat)."""

  def __init__(self, image_shape: Sequence[int], num_classes: int = 10,
               channels: Sequence[int] = (8, 16), hidden: int = 32, batch_norm: bool = False,
               *, rngs: nnx.Rngs):
    h, w, c = image_shape
    if h % 4 or w % 4:
      raise ConfigError(f"image size {h}x{w} must be divisible by 4 (two 2x2 poolings)")
    c1, c2 = channels
    self.conv1 = nnx.Conv(c, c1, (3, 3), padding="SAME", rngs=rngs)
    self.conv2 = nnx.Conv(c1, c2, (3, 3), padding="SAME", rngs=rngs)
    self.fc1 = nnx.Linear((h // 4) * (w // 4) * c2, hidden, rngs=rngs)
    self.out = nnx.Linear(hidden, num_classes, rngs=rngs)
    # momentum 0.9: the offline runs are a few thousand steps, too short for flax's default 0.99.
    norm = (lambda n: nnx.BatchNorm(n, momentum=0.9, rngs=rngs)) if batch_norm else (lambda n: None)
    self.bn1, self.bn2, self.bn3 = norm(c1), norm(c2), norm(hidden)

  def __call__(self, x: jax.Array, *, train: bool = False, return_features: bool = False,
               masks: Mapping[str, jax.Array] | None = None):
    """Forward pass.

    Args:
      x: images [n, H, W, C] in [0, 1].
      train: batch statistics (and their running-average update) instead of running averages.
      return_features: also return {layer: ReLU activation} for the layers in LAYERS
        (conv: [n, h, w, channels], fc1: [n, hidden]).
      masks: optional {layer: mask} multiplying a layer's activation (mask [units] or [n, units]);
        a 0 entry removes that neuron, as in the prediction-difference analysis.

    Returns:
      logits [n, num_classes], or (logits, features) if return_features.
    """
    masks = dict(masks or {})
    unknown = set(masks) - set(LAYERS)
    if unknown:
      raise ValueError(f"unknown layers {sorted(unknown)} in masks; layers: {LAYERS}")
    feats = {}

    def block(name, h, norm):
      if norm is not None:
        h = norm(h, use_running_average=not train)
      h = nnx.relu(h)
      if name in masks:
        h = h * _broadcast_mask(masks[name], h)
      feats[name] = h
      return h

    h = nnx.max_pool(block("conv1", self.conv1(x), self.bn1), (2, 2), (2, 2))
    h = nnx.max_pool(block("conv2", self.conv2(h), self.bn2), (2, 2), (2, 2))
    h = block("fc1", self.fc1(h.reshape(h.shape[0], -1)), self.bn3)
    logits = self.out(h)
    return (logits, feats) if return_features else logits


def _broadcast_mask(mask: jax.Array, h: jax.Array) -> jax.Array:
  """A mask [units] or [n, units] shaped to broadcast against h [n, ..., units]."""
  mask = jnp.asarray(mask, h.dtype)
  if mask.ndim == 2:
    mask = mask.reshape(mask.shape[:1] + (1,) * (h.ndim - 2) + mask.shape[1:])
  return mask


def build_model(dataset: str, *, batch_norm: bool = False, seed: int | jax.Array = 0,
                channels: Sequence[int] | None = None, hidden: int | None = None,
                field: str | None = None) -> CNN:
  """The preset CNN of `dataset` (a name in PRESETS), with optional size overrides.

  `seed` is an int or a jax.random key (a traced one too: `jax.vmap` over keys builds the
  parameters of several independently initialised models at once)."""
  p = PRESETS.get(dataset, field=field)
  return CNN(p.image_shape, p.num_classes, tuple(channels or p.channels), hidden or p.hidden,
             batch_norm, rngs=nnx.Rngs(seed))


def num_units(model: CNN, layer: str) -> int:
  """Number of neurons (channels or hidden units) of `layer`."""
  if layer not in LAYERS:
    raise ConfigError(f"layer={layer!r} is not a layer of the CNN; layers: {', '.join(LAYERS)}")
  return getattr(model, layer).out_features


def neuron_activations(activation: jax.Array) -> jax.Array:
  """One number per neuron: conv maps [n, h, w, U] -> spatial max [n, U]; [n, U] unchanged."""
  if activation.ndim == 2:
    return activation
  return jnp.max(activation, axis=tuple(range(1, activation.ndim - 1)))


def apply(graphdef: nnx.GraphDef, state: nnx.State | tuple[nnx.State, ...], x: jax.Array, *,
          train: bool = False, masks: Mapping[str, jax.Array] | None = None):
  """Pure forward pass of a split model: (logits [n, C], features {layer: activation}, new state).

  Args:
    graphdef: from nnx.split(model, ...).
    state: the model's State, or a tuple of States such as (params, rest) from
      nnx.split(model, nnx.Param, ...), merged in order.
    x: images [n, H, W, C] in [0, 1].
    train: batch statistics instead of running averages (and their update).
    masks: as in CNN.__call__.

  Returns:
    logits [n, C], features {layer: activation}, and the merged model's whole new State; in train
    mode `nnx.filter_state(new_state, nnx.BatchStat)` holds the updated running averages. The
    input state is never changed (flax 0.12's merge would otherwise share its Variables with the
    merged module).
  """
  states = state if isinstance(state, tuple) else (state,)
  model = nnx.merge(graphdef, *states, copy=True)
  logits, feats = model(x, train=train, return_features=True, masks=masks)
  return logits, feats, nnx.state(model)


def layer_activations_fn(model: CNN, layer: str):
  """A jitted x [n, H, W, C] -> neuron activations [n, U] of `layer` (eval mode).

  The model's state is an argument of the jitted function, not a baked-in constant, so one compiled
  program serves every model of the same architecture; the split state shares the model's
  Variables, so the function follows later in-place updates of the model.
  """
  num_units(model, layer)  # validates the name
  graphdef, state = nnx.split(model)
  fn = jax.jit(lambda st, x: neuron_activations(apply(graphdef, st, x)[1][layer]))
  return lambda x: fn(state, x)


def logits_fn(model: CNN):
  """A jitted x -> logits [n, C] of the model in eval mode (state passed, not baked in; follows
  in-place updates of the model)."""
  graphdef, state = nnx.split(model)
  fn = jax.jit(lambda st, x: apply(graphdef, st, x)[0])
  return lambda x: fn(state, x)
