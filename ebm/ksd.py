"""The kernelized Stein discrepancy with an RBF kernel (VaGES-KSD, ../shared/papers/ebm.md).

For a model with score s and data x, x' ~ p, the squared KSD (Liu et al. 2016; Chwialkowski et al.
2016) is E_{x, x'} u(x, x') with the Stein kernel

  u(x, y) = s(x) . s(y) k(x, y) + s(x) . grad_y k(x, y) + grad_x k(x, y) . s(y)
            + tr grad_x grad_y k(x, y),

and for the RBF kernel k(x, y) = exp(-||x - y||^2 / (2 h^2)) (the official `rbf_kernel`, bandwidth
h = 0.1): grad_y k = k (x - y) / h^2 = -grad_x k and tr grad_x grad_y k = k (D / h^2 -
||x - y||^2 / h^4), D the flattened dimension. It is 0 iff the model's score is the data's, and
then E u = E[(s - s_p)(x) . (s - s_p)(y) k(x, y)] (the data's Stein terms vanish).

Two unbiased estimates from n points:
  `ksd_u_statistic`: the U-statistic 1 / (n (n - 1)) sum_{i != j} u(x_i, x_j) over all pairs;
  `ksd_paired`: the batch split in halves, 2 / n sum_i u(x_i, x_{n/2 + i}) (the official VaGES-KSD
  estimate, linear in n).
Both take the scores as arrays, so any score (exact, VaES, ...) plugs in; `*_fn` variants take a
score function s(x [n, ...]) -> [n, ...].
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

BANDWIDTH = 0.1   # the official KSD bandwidth


def _flat(x: jax.Array) -> jax.Array:
  return x.reshape(x.shape[0], -1)


def rbf_kernel(x: jax.Array, y: jax.Array, bandwidth: float = BANDWIDTH) -> jax.Array:
  """k(x_i, y_i) = exp(-||x_i - y_i||^2 / (2 h^2)) of paired rows x, y [n, ...], shape [n]."""
  diff = _flat(x) - _flat(y)
  return jnp.exp(-jnp.sum(diff ** 2, -1) / (2 * bandwidth ** 2))


def stein_kernel(x: jax.Array, y: jax.Array, sx: jax.Array, sy: jax.Array,
                 bandwidth: float = BANDWIDTH) -> jax.Array:
  """u(x_i, y_i) of paired rows: points x, y [n, ...] with scores sx, sy [n, ...]; shape [n]."""
  x, y, sx, sy = _flat(x), _flat(y), _flat(sx), _flat(sy)
  h2 = bandwidth ** 2
  diff = x - y
  r2 = jnp.sum(diff ** 2, -1)
  k = jnp.exp(-r2 / (2 * h2))
  cross = (jnp.sum(sx * diff, -1) - jnp.sum(diff * sy, -1)) / h2
  trace = x.shape[-1] / h2 - r2 / h2 ** 2
  return k * (jnp.sum(sx * sy, -1) + cross + trace)


def ksd_u_statistic(x: jax.Array, scores: jax.Array, bandwidth: float = BANDWIDTH) -> jax.Array:
  """The U-statistic 1 / (n (n - 1)) sum_{i != j} u(x_i, x_j), scalar; x, scores [n, ...], n >= 2.

  Memory O(n^2 D) (all pairs at once): meant for minibatches.
  """
  n = x.shape[0]
  x, scores = _flat(x), _flat(scores)
  xi, xj = jnp.repeat(x, n, axis=0), jnp.tile(x, (n, 1))
  si, sj = jnp.repeat(scores, n, axis=0), jnp.tile(scores, (n, 1))
  u = stein_kernel(xi, xj, si, sj, bandwidth).reshape(n, n)
  return (jnp.sum(u) - jnp.sum(jnp.diagonal(u))) / (n * (n - 1))


def ksd_paired(x: jax.Array, scores: jax.Array, bandwidth: float = BANDWIDTH) -> jax.Array:
  """The paired-halves estimate mean_i u(x_i, x_{n/2 + i}), scalar; x, scores [n, ...], n even."""
  n = x.shape[0]
  if n % 2:
    raise ValueError(f"the paired KSD splits the batch in halves: n = {n} is odd")
  half = n // 2
  return jnp.mean(stein_kernel(x[:half], x[half:], scores[:half], scores[half:], bandwidth))


def ksd_u_statistic_fn(score_fn: Callable[[jax.Array], jax.Array], x: jax.Array,
                       bandwidth: float = BANDWIDTH) -> jax.Array:
  """`ksd_u_statistic` with the scores from score_fn(x)."""
  return ksd_u_statistic(x, score_fn(x), bandwidth)


def ksd_paired_fn(score_fn: Callable[[jax.Array], jax.Array], x: jax.Array,
                  bandwidth: float = BANDWIDTH) -> jax.Array:
  """`ksd_paired` with the scores from score_fn(x)."""
  return ksd_paired(x, score_fn(x), bandwidth)
