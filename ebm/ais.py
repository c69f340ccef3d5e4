"""Annealed importance sampling (AIS) for the log partition function of RBMs too large to enumerate.

The path (Neal 2001; Salakhutdinov & Murray 2008) scales the couplings of the joint energy,
E_beta(v, h) = E_0(v) - beta (c^T h + v^T W h), beta from 0 to 1: a geometric path in the joint
between the base p_0 (beta = 0: W = 0, c = 0, the target's visible terms kept, as in the official
BiSM AIS) and the target. The base's log Z is known in closed form:
  Gaussian RBM: log Z_0 = sum_i log sigma_i + (d/2) log 2 pi + m log 2,
  binary RBM:   log Z_0 = sum_i softplus(b_i) + m log 2,
and exact samples from it are v ~ N(b, sigma^2) (resp. Bernoulli(sigmoid(b))). With f_beta(v) =
-F_beta(v) = log sum_h exp(-E_beta(v, h)) in closed form, each chain accumulates
  log w = sum_k [f_{beta_k}(v_{k-1}) - f_{beta_{k-1}}(v_{k-1})],  v_k ~ T_{beta_k}(. | v_{k-1})
(T_beta one block-Gibbs sweep at beta, which leaves p_beta invariant), and
  log Z_hat = log Z_0 + log mean_i exp(log w_i).
Z_hat is unbiased for Z; log Z_hat is biased low by about Var(w) / (2 E[w]^2) (Jensen).
Standard error of log Z_hat by the delta method: std(w) / (sqrt(n) mean(w)), computed from the
normalised weights (its square is also the relative variance of Z_hat).
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from ebm.grbm import BinaryRBMParams, GRBMParams
from ebm.samplers import gibbs_sweep

_LOG_2PI = math.log(2.0 * math.pi)


class AISResult(NamedTuple):
  """log_z: the estimate; stderr: its delta-method standard error; log_w: [n] chain log-weights;
  ess: effective sample size (sum w)^2 / sum w^2 of the weights."""
  log_z: jax.Array
  stderr: jax.Array
  log_w: jax.Array
  ess: jax.Array


def base_log_z(p: GRBMParams | BinaryRBMParams) -> jax.Array:
  """log Z_0 of the beta = 0 base (W = 0, c = 0, visible terms of p)."""
  m = p.c.shape[-1]
  if isinstance(p, GRBMParams):
    return jnp.sum(jnp.log(p.sigma)) + 0.5 * p.b.shape[-1] * _LOG_2PI + m * math.log(2.0)
  return jnp.sum(jax.nn.softplus(p.b)) + m * math.log(2.0)


def sample_base(p: GRBMParams | BinaryRBMParams, rng: jax.Array, n: int) -> jax.Array:
  """n exact samples from the base, shape [n, d]."""
  d = p.b.shape[-1]
  if isinstance(p, GRBMParams):
    return p.b + p.sigma * jax.random.normal(rng, (n, d), p.b.dtype)
  return jax.random.bernoulli(rng, jax.nn.sigmoid(p.b), (n, d)).astype(p.b.dtype)


def log_unnormalised(p: GRBMParams | BinaryRBMParams, v: jax.Array,
                     beta: jax.Array | float) -> jax.Array:
  """f_beta(v) = -F_beta(v) = log sum_h exp(-E_beta(v, h)), shape [n]."""
  hidden = jnp.sum(jax.nn.softplus(beta * (p.c + v @ p.W)), axis=-1)
  if isinstance(p, GRBMParams):
    return hidden - 0.5 * jnp.sum(((v - p.b) / p.sigma) ** 2, axis=-1)
  return hidden + v @ p.b


def summarise(log_w: jax.Array, log_z0: jax.Array) -> AISResult:
  """log-mean-exp of the chain weights and its delta-method standard error."""
  n = log_w.shape[0]
  w = jnp.exp(log_w - jnp.max(log_w))      # normalised: only ratios matter
  mean = jnp.mean(w)
  log_z = log_z0 + jnp.max(log_w) + jnp.log(mean)
  stderr = jnp.std(w) / (jnp.sqrt(n) * mean)
  ess = jnp.sum(w) ** 2 / jnp.sum(w ** 2)
  return AISResult(log_z, stderr, log_w, ess)


@functools.partial(jax.jit, static_argnames=("num_chains", "num_betas"))
def ais_log_z(p: GRBMParams | BinaryRBMParams, rng: jax.Array, num_chains: int = 2000,
              num_betas: int = 2000) -> AISResult:
  """AIS estimate of log Z over `num_chains` independent chains and a linear beta grid.

  Args:
    p: the RBM (Gaussian or binary; the path is chosen by its type).
    rng: key.
    num_chains: independent AIS chains (the official Frey-face setting is 2000).
    num_betas: grid size, beta = linspace(0, 1, num_betas) (official: 2000).

  Returns:
    AISResult with log_z, its standard error, the log-weights and the effective sample size.
  """
  betas = jnp.linspace(0.0, 1.0, num_betas, dtype=p.W.dtype)
  init_rng, chain_rng = jax.random.split(rng)
  v = sample_base(p, init_rng, num_chains)

  def step(carry, inputs):
    v, log_w = carry
    beta_prev, beta, key = inputs
    log_w = log_w + log_unnormalised(p, v, beta) - log_unnormalised(p, v, beta_prev)
    return (gibbs_sweep(p, key, v, beta), log_w), None

  keys = jax.random.split(chain_rng, num_betas - 1)
  log_w0 = jnp.zeros((num_chains,), p.W.dtype)
  (_, log_w), _ = jax.lax.scan(step, (v, log_w0), (betas[:-1], betas[1:], keys))
  return summarise(log_w, base_log_z(p))
