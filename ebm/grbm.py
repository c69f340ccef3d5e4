"""Restricted Boltzmann machines with exact tools for few hidden units (../shared/papers/ebm.md).

Gaussian RBM (GRBM), in the pinned export form of issue 14:

  E(v, h) = sum_i (v_i - b_i)^2 / (2 sigma_i^2) - c^T h - v^T W h,   v in R^d, h in {0, 1}^m,
  F(v)    = sum_i (v_i - b_i)^2 / (2 sigma_i^2) - sum_j softplus(c_j + (v^T W)_j)   (free energy).

The coupling is v^T W h, NOT (v / sigma^2)^T W h: the official BiSM code (models/rbm.py, read for
facts) writes the energy this way and its conditional mean is E[v | h] = b + sigma^2 (W h), which
only this form gives. So our parameters are already the exported ones; only sigma is stored as
log sigma (learned, initialised at 0 as in the official code).

Integrating v out of exp(-E(v, h)) is a Gaussian integral, which gives the exact tools for small m
(ebm.md, "Exact testbeds"):

  log Z = logsumexp_h [c^T h + b^T W h + 0.5 ||sigma * (W h)||^2] + (d/2) log 2 pi + sum log sigma,

evaluated in chunks over the 2^m hidden states (m <= MAX_EXACT_HIDDEN). A binary RBM
(E = -b^T v - c^T h - v^T W h, v in {0, 1}^d) is here too, for AIS and its enumeration check.

All functions take a `GRBMParams` / `BinaryRBMParams` (plain arrays), so they serve a trained module
(`GRBM.params()`) and a loaded `grbm.npz` alike; batch shapes are [B, d] and [B, m].
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

# 2^24 states take ~10 s on one CPU core; beyond that use ebm.ais.
MAX_EXACT_HIDDEN = 24
_LOG_2PI = math.log(2.0 * math.pi)


class GRBMParams(NamedTuple):
  """A Gaussian RBM in the pinned form (the `grbm.npz` fields).

  Attributes:
    W: [d, m] coupling, energy term -v^T W h.
    b: [d] visible bias (the mean of v given h = 0).
    c: [m] hidden bias.
    sigma: [d] visible standard deviations (> 0).
  """
  W: jax.Array
  b: jax.Array
  c: jax.Array
  sigma: jax.Array


class BinaryRBMParams(NamedTuple):
  """A binary RBM: E(v, h) = -b^T v - c^T h - v^T W h with v in {0,1}^d, h in {0,1}^m."""
  W: jax.Array
  b: jax.Array
  c: jax.Array


# ---------------------------------------------------------------------------------------------
# Energies, free energies and conditionals.


def energy(p: GRBMParams, v: jax.Array, h: jax.Array) -> jax.Array:
  """E(v, h), shape [B]; h may be relaxed (in [0, 1]^m) as BiSM's Gumbel-softmax samples are."""
  quad = 0.5 * jnp.sum(((v - p.b) / p.sigma) ** 2, axis=-1)
  return quad - h @ p.c - jnp.sum((v @ p.W) * h, axis=-1)


def free_energy(p: GRBMParams, v: jax.Array) -> jax.Array:
  """F(v) = -log sum_h exp(-E(v, h)), shape [B]."""
  quad = 0.5 * jnp.sum(((v - p.b) / p.sigma) ** 2, axis=-1)
  return quad - jnp.sum(jax.nn.softplus(p.c + v @ p.W), axis=-1)


def score(p: GRBMParams, v: jax.Array) -> jax.Array:
  """The exact score grad_v log p(v) = -(v - b) / sigma^2 + W sigmoid(c + W^T v), shape [B, d]."""
  return -(v - p.b) / p.sigma ** 2 + jax.nn.sigmoid(p.c + v @ p.W) @ p.W.T


def posterior_probs(p: GRBMParams | BinaryRBMParams, v: jax.Array) -> jax.Array:
  """p(h_j = 1 | v) = sigmoid(c_j + (v^T W)_j), shape [B, m]; p(h | v) factorises over j."""
  return jax.nn.sigmoid(p.c + v @ p.W)


def log_posterior(p: GRBMParams | BinaryRBMParams, h: jax.Array, v: jax.Array) -> jax.Array:
  """log p(h | v) of binary h [B, m], shape [B]."""
  logits = p.c + v @ p.W
  return jnp.sum(h * logits - jax.nn.softplus(logits), axis=-1)


def visible_mean(p: GRBMParams, h: jax.Array) -> jax.Array:
  """E[v | h] = b + sigma^2 (W h), shape [B, d]; v | h is N(this, diag(sigma^2))."""
  return p.b + p.sigma ** 2 * (h @ p.W.T)


def binary_free_energy(p: BinaryRBMParams, v: jax.Array) -> jax.Array:
  """F(v) of a binary RBM, shape [B]."""
  return -v @ p.b - jnp.sum(jax.nn.softplus(p.c + v @ p.W), axis=-1)


# ---------------------------------------------------------------------------------------------
# Enumeration over the 2^m hidden states.


def hidden_states(start: jax.Array | int, size: int, m: int, dtype=jnp.float32) -> jax.Array:
  """The binary codes of states start .. start + size - 1 (bit j of the index is h_j), [size, m]."""
  idx = start + jnp.arange(size, dtype=jnp.int32)
  return ((idx[:, None] >> jnp.arange(m, dtype=jnp.int32)) & 1).astype(dtype)


def log_marginal_h(p: GRBMParams, h: jax.Array) -> jax.Array:
  """log of the integral over v of exp(-E(v, h)) (unnormalised log p(h)), shape [S].

  Completing the square in v: the integrand is a Gaussian with mean b + sigma^2 W h, which leaves
  c^T h + b^T W h + 0.5 ||sigma * W h||^2 + (d/2) log 2 pi + sum log sigma.
  """
  wh = h @ p.W.T
  const = 0.5 * p.b.shape[-1] * _LOG_2PI + jnp.sum(jnp.log(p.sigma))
  return h @ p.c + wh @ p.b + 0.5 * jnp.sum((p.sigma * wh) ** 2, axis=-1) + const


def _binary_log_marginal_h(p: BinaryRBMParams, h: jax.Array) -> jax.Array:
  """log sum_v exp(-E(v, h)) of a binary RBM, shape [S]."""
  return h @ p.c + jnp.sum(jax.nn.softplus(p.b + h @ p.W.T), axis=-1)


def _check_exact(m: int) -> None:
  if m > MAX_EXACT_HIDDEN:
    raise ValueError(f"exact enumeration over 2^{m} hidden states is too slow "
                     f"(at most {MAX_EXACT_HIDDEN} hidden units); use ebm.ais.ais_log_z")


def _chunked_map(fn, m: int, chunk_size: int, dtype) -> jax.Array:
  """fn(h [chunk, m]) for every chunk of the 2^m states, stacked to [num_chunks, ...]."""
  _check_exact(m)
  chunk = min(chunk_size, 2 ** m)
  return jax.lax.map(lambda k: fn(hidden_states(k * chunk, chunk, m, dtype)),
                     jnp.arange(2 ** m // chunk, dtype=jnp.int32))


def _log_z_of(log_marginal, p, chunk_size: int) -> jax.Array:
  m = p.c.shape[-1]
  per_chunk = _chunked_map(lambda h: jax.nn.logsumexp(log_marginal(p, h)), m, chunk_size,
                           p.W.dtype)
  return jax.nn.logsumexp(per_chunk)


@functools.partial(jax.jit, static_argnames=("chunk_size",))
def log_z(p: GRBMParams, chunk_size: int = 2 ** 14) -> jax.Array:
  """Exact log partition function by enumeration of the 2^m hidden states (ebm.md), scalar.

  Args:
    p: the GRBM; m = p.c.shape[0] <= MAX_EXACT_HIDDEN.
    chunk_size: states per chunk (a power of 2); memory is O(chunk_size * (d + m)).
  """
  return _log_z_of(log_marginal_h, p, chunk_size)


@functools.partial(jax.jit, static_argnames=("chunk_size",))
def binary_log_z(p: BinaryRBMParams, chunk_size: int = 2 ** 14) -> jax.Array:
  """Exact log Z of a binary RBM by enumeration over its hidden states, scalar."""
  return _log_z_of(_binary_log_marginal_h, p, chunk_size)


def log_prob(p: GRBMParams, v: jax.Array, logz: jax.Array | None = None) -> jax.Array:
  """Exact log p(v) = -F(v) - log Z, shape [B] (pass `logz` to reuse one enumeration)."""
  return -free_energy(p, v) - (log_z(p) if logz is None else logz)


@functools.partial(jax.jit, static_argnames=("chunk_size",))
def hidden_marginal_logits(p: GRBMParams, chunk_size: int = 2 ** 14) -> jax.Array:
  """Normalised log p(h) over all 2^m states in index order (see hidden_states), shape [2^m]."""
  logits = _chunked_map(lambda h: log_marginal_h(p, h), p.c.shape[-1], chunk_size, p.W.dtype)
  logits = logits.reshape(-1)
  return logits - jax.nn.logsumexp(logits)


@functools.partial(jax.jit, static_argnames=("num_samples", "chunk_size"))
def sample_exact(p: GRBMParams, rng: jax.Array, num_samples: int,
                 chunk_size: int = 2 ** 14) -> tuple[jax.Array, jax.Array]:
  """Independent exact samples (v, h) from the GRBM, shapes [n, d] and [n, m].

  Ancestral: h from its marginal p(h) (enumerated, `hidden_marginal_logits`), then
  v | h ~ N(b + sigma^2 W h, diag(sigma^2)). No Markov chain, so no burn-in or correlation.
  The categorical draw inverts the float CDF of the 2^m probabilities: states with probability
  below ~1e-7 relative to the largest may be under-sampled in float32.
  """
  m = p.c.shape[-1]
  h_rng, v_rng = jax.random.split(rng)
  probs = jnp.exp(hidden_marginal_logits(p, chunk_size))
  idx = jax.random.choice(h_rng, 2 ** m, (num_samples,), p=probs)
  h = ((idx[:, None] >> jnp.arange(m, dtype=idx.dtype)) & 1).astype(p.W.dtype)
  noise = jax.random.normal(v_rng, (num_samples, p.b.shape[-1]), p.W.dtype)
  return visible_mean(p, h) + p.sigma * noise, h


@functools.partial(jax.jit, static_argnames=("num_samples",))
def fisher_divergence(p: GRBMParams, q: GRBMParams, rng: jax.Array,
                      num_samples: int = 100_000) -> tuple[jax.Array, jax.Array]:
  """Fisher divergence D_F(p || q) = E_p 0.5 ||grad log p(v) - grad log q(v)||^2 and its error.

  Both scores are exact (`score`); the expectation under p is a Monte Carlo mean over exact,
  independent samples from p (`sample_exact`), so the estimate is unbiased and its standard error
  is the sample standard deviation over sqrt(n). D_F(p || p) is exactly 0 for every sample.

  Returns:
    (estimate, standard error), scalars.
  """
  v, _ = sample_exact(p, rng, num_samples)
  per = 0.5 * jnp.sum((score(p, v) - score(q, v)) ** 2, axis=-1)
  return jnp.mean(per), jnp.std(per) / jnp.sqrt(num_samples)


# ---------------------------------------------------------------------------------------------
# The NNX module.


def _uniform(rng: jax.Array, shape: tuple[int, ...], bound: float, dtype) -> jax.Array:
  return jax.random.uniform(rng, shape, dtype, -bound, bound)


class GRBM(nnx.Module):
  """Gaussian RBM with learned sigma; parameters W [d, m], b [d], c [m], log_sigma [d] (dtype).

  Initialisation as in the official code: W, b and c uniform in +-1/sqrt(m) (PyTorch's
  kaiming_uniform(a=sqrt(5)) bound for a [d, m] tensor, whose fan-in is m), log sigma = 0.
  """

  def __init__(self, num_visible: int, num_hidden: int, *, rngs: nnx.Rngs,
               dtype=jnp.float32):
    bound = 1.0 / math.sqrt(num_hidden)
    self.W = nnx.Param(_uniform(rngs.params(), (num_visible, num_hidden), bound, dtype))
    self.b = nnx.Param(_uniform(rngs.params(), (num_visible,), bound, dtype))
    self.c = nnx.Param(_uniform(rngs.params(), (num_hidden,), bound, dtype))
    self.log_sigma = nnx.Param(jnp.zeros((num_visible,), dtype))

  def params(self) -> GRBMParams:
    """The pinned-form parameters (differentiable with respect to the module's)."""
    return GRBMParams(self.W[...], self.b[...], self.c[...], jnp.exp(self.log_sigma[...]))

  def energy(self, v: jax.Array, h: jax.Array) -> jax.Array:
    return energy(self.params(), v, h)

  def free_energy(self, v: jax.Array) -> jax.Array:
    return free_energy(self.params(), v)

  def score(self, v: jax.Array) -> jax.Array:
    return score(self.params(), v)

  def to_npz_dict(self) -> dict[str, np.ndarray]:
    """{'W': [d, m], 'b': [d], 'c': [m], 'sigma': [d]} as float32 numpy arrays (pinned format)."""
    return {k: np.asarray(v, np.float32) for k, v in self.params()._asdict().items()}

  def load_params(self, p: GRBMParams | dict) -> None:
    """Sets the module from pinned-form arrays (e.g. a loaded grbm.npz)."""
    p = GRBMParams(**p) if isinstance(p, dict) else p
    dtype = self.W[...].dtype
    self.W[...] = jnp.asarray(p.W, dtype)
    self.b[...] = jnp.asarray(p.b, dtype)
    self.c[...] = jnp.asarray(p.c, dtype)
    self.log_sigma[...] = jnp.log(jnp.asarray(p.sigma, dtype))
