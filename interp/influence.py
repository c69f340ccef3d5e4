"""Influential neurons by prediction difference (Dong et al., arXiv 1708.05493).

The influence of neuron j of a layer on input x with class y is

    PD_j(x) = p(y | x) - p(y | x, a_j = 0),

the drop of the true class's probability when the neuron's activation (the whole channel for a conv
layer) is set to zero. A large positive PD means the decision relies on the neuron; tracing a wrong
prediction to its most influential neurons is how the papers explain errors.
"""

from __future__ import annotations

import functools
from typing import Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from interp import models

MaskedLogitsFn = Callable[[jax.Array, jax.Array], jax.Array]


def unit_masks(num_units: int, chunk: int) -> jax.Array:
  """[1 + U, U] rows: all ones (no mask), then 1 - e_j for each neuron j; padded with rows of ones
  to a multiple of `chunk` so every row runs through the same compiled loop body."""
  rows = jnp.concatenate([jnp.ones((1, num_units)), 1.0 - jnp.eye(num_units)])
  pad = -rows.shape[0] % chunk
  return jnp.concatenate([rows, jnp.ones((pad, num_units))])


def prediction_difference(logits_fn: MaskedLogitsFn, x: jax.Array, labels: jax.Array, *,
                          num_units: int, chunk: int = 8) -> jax.Array:
  """PD_j(x) for every example and neuron of one layer (jittable).

  The unmasked probability is computed by the same vmapped program as the masked ones (it is mask
  row 0), so a neuron the output ignores gets a difference of exactly zero.

  Args:
    logits_fn: (x [n, ...], mask [U]) -> logits [n, C] with the layer's activation times mask.
    x: inputs [n, ...]; labels: true classes [n].
    num_units: U, neurons in the layer (static).
    chunk: masks evaluated together by vmap (static); memory grows with chunk * n.

  Returns:
    [n, U] prediction differences.
  """
  masks = unit_masks(num_units, chunk).astype(x.dtype)

  def true_prob(mask):
    p = jax.nn.softmax(logits_fn(x, mask), axis=-1)
    return jnp.take_along_axis(p, labels[:, None], axis=1)[:, 0]

  probs = jax.lax.map(true_prob, masks, batch_size=chunk)  # [rows, n]
  return (probs[0][None, :] - probs[1:1 + num_units]).T


def model_prediction_difference(model: models.CNN, layer: str, *, chunk: int = 8):
  """A jitted (x [n, ...], labels [n]) -> PD [n, U] for `layer` of `model` (eval mode).

  The model's state is a jit argument, so other models of the same architecture reuse the program.
  """
  units = models.num_units(model, layer)
  graphdef, state = nnx.split(model)

  @jax.jit
  def run(st, x, labels):
    masked = lambda z, m: models.apply(graphdef, st, z, masks={layer: m})[0]
    return prediction_difference(masked, x, labels, num_units=units, chunk=chunk)

  return functools.partial(run, state)


def mean_prediction_difference(pd_fn: Callable[[np.ndarray, np.ndarray], jax.Array],
                               batches: Iterable[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
  """Mean PD [U] over a stream of (x, labels) batches, weighting every example equally."""
  total, count = None, 0
  for x, labels in batches:
    pd = np.asarray(pd_fn(x, labels), np.float64)
    total = pd.sum(0) if total is None else total + pd.sum(0)
    count += len(pd)
  if not count:
    raise ValueError("no batches")
  return total / count


def most_influential(pd: np.ndarray, top: int) -> np.ndarray:
  """Indices [n, top] of each example's neurons with the largest prediction difference."""
  return np.argsort(-np.asarray(pd), axis=-1, kind="stable")[..., :top]
