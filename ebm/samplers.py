"""Samplers: block Gibbs for RBMs, annealed Langevin dynamics for deep EBLVMs.

Block Gibbs alternates the two exact conditionals of an RBM (ebm/grbm.py):
  h | v ~ Bernoulli(sigmoid(beta (c + W^T v))),
  v | h ~ N(b + beta sigma^2 W h, diag sigma^2) (Gaussian RBM) or Bernoulli(sigmoid(b + beta W h)),
at inverse temperature beta on the couplings (beta = 1 is the model; AIS anneals beta from 0).

Annealed Langevin dynamics (the official BiSM sampler, read for its settings) at temperatures T_t:
  x <- x - (s^2 / 2) grad_x E(x) + sqrt(T_t) s z,  z ~ N(0, I),
with step size s = 0.02, 500 steps at T = 100, 2000 steps geometrically from 100 towards 1,
200 steps linearly from 1 to 0, then optionally one denoising step x - sigma_0^2 grad_x E(x)
(sigma_0 = 0.1).
x may be any pytree (the joint (v, h) of a deep EBLVM, or v alone with h fixed).
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from ebm.grbm import BinaryRBMParams, GRBMParams

PyTree = Any


def sample_hidden(p: GRBMParams | BinaryRBMParams, rng: jax.Array, v: jax.Array,
                  beta: jax.Array | float = 1.0) -> jax.Array:
  """h ~ p_beta(h | v), binary, shape [B, m]."""
  probs = jax.nn.sigmoid(beta * (p.c + v @ p.W))
  return jax.random.bernoulli(rng, probs).astype(v.dtype)


def sample_visible(p: GRBMParams | BinaryRBMParams, rng: jax.Array, h: jax.Array,
                   beta: jax.Array | float = 1.0) -> jax.Array:
  """v ~ p_beta(v | h), shape [B, d]: Gaussian for a GRBM, binary for a binary RBM."""
  if isinstance(p, GRBMParams):
    mean = p.b + beta * p.sigma ** 2 * (h @ p.W.T)
    return mean + p.sigma * jax.random.normal(rng, mean.shape, mean.dtype)
  probs = jax.nn.sigmoid(p.b + beta * (h @ p.W.T))
  return jax.random.bernoulli(rng, probs).astype(h.dtype)


def gibbs_sweep(p, rng: jax.Array, v: jax.Array, beta: jax.Array | float = 1.0) -> jax.Array:
  """One block-Gibbs sweep v -> h -> v' at inverse temperature beta, shape [B, d]."""
  h_rng, v_rng = jax.random.split(rng)
  return sample_visible(p, v_rng, sample_hidden(p, h_rng, v, beta), beta)


def gibbs_chain(p, rng: jax.Array, h: jax.Array, num_steps: int) -> tuple[jax.Array, jax.Array]:
  """`num_steps` sweeps h -> v -> h started from hidden states h [B, m] (CD and PCD chains).

  Returns:
    (v, h): the last visible sample [B, d] (drawn from p(v | h_{k-1})) and the hidden state h_k
    drawn from p(h | v) that a persistent chain carries on from.
  """
  def sweep(h, key):
    v_key, h_key = jax.random.split(key)
    v = sample_visible(p, v_key, h)
    return sample_hidden(p, h_key, v), v

  h, vs = jax.lax.scan(sweep, h, jax.random.split(rng, num_steps))
  return vs[-1], h


@functools.partial(jax.jit, static_argnames=("num_steps",))
def block_gibbs(p, rng: jax.Array, v: jax.Array, num_steps: int) -> jax.Array:
  """`num_steps` block-Gibbs sweeps from visible states v [B, d] at beta = 1, shape [B, d]."""
  def sweep(v, key):
    return gibbs_sweep(p, key, v), None

  v, _ = jax.lax.scan(sweep, v, jax.random.split(rng, num_steps))
  return v


def paper_temperatures(t_max: float = 100.0, t_min: float = 1.0, num_hot: int = 500,
                       num_anneal: int = 2000, num_cool: int = 200) -> np.ndarray:
  """The official annealing schedule: num_hot steps at t_max, num_anneal geometric steps
  t_max * (t_min / t_max)^(i / num_anneal) for i = 0..num_anneal-1, then num_cool steps linearly
  from t_min down to 0 (the last step is noise-free). Shape [num_hot + num_anneal + num_cool]."""
  i = np.arange(num_anneal)
  anneal = t_max * np.exp(-i * np.log(t_max / t_min) / num_anneal)
  return np.concatenate([np.full(num_hot, t_max), anneal, t_min * np.linspace(1.0, 0.0, num_cool)])


def annealed_langevin(energy_fn: Callable[[PyTree], jax.Array], x0: PyTree, rng: jax.Array,
                      temperatures: jax.Array, step_size: float = 0.02,
                      denoise_sigma: float | None = 0.1) -> PyTree:
  """Annealed Langevin dynamics on the energy, one step per temperature (jittable).

  Args:
    energy_fn: x -> per-example energies [B]; x is a pytree of [B, ...] arrays.
    x0: the initial state (the official code starts from 0.5 + N(0, 1) noise).
    rng: key for the Langevin noise.
    temperatures: [T] temperatures, e.g. `paper_temperatures()`.
    step_size: s in x <- x - (s^2 / 2) grad E + sqrt(T) s z.
    denoise_sigma: if not None, a final noise-free step x - denoise_sigma^2 grad E(x) (Tweedie
      denoising of the sigma_0-smoothed data the model was fitted to with MDSM).

  Returns:
    the final state, same structure as x0.
  """
  grad_e = jax.grad(lambda x: jnp.sum(energy_fn(x)))

  def step(x, inputs):
    temp, key = inputs
    g = grad_e(x)
    leaves, tree = jax.tree.flatten(x)
    keys = jax.random.split(key, len(leaves))
    noise = [jax.random.normal(k, l.shape, l.dtype) for k, l in zip(keys, leaves)]
    noise = jax.tree.unflatten(tree, noise)
    x = jax.tree.map(lambda xi, gi, zi: xi - 0.5 * step_size ** 2 * gi
                     + jnp.sqrt(temp) * step_size * zi, x, g, noise)
    return x, None

  temps = jnp.asarray(temperatures, jax.tree.leaves(x0)[0].dtype)
  x, _ = jax.lax.scan(step, x0, (temps, jax.random.split(rng, temps.shape[0])))
  if denoise_sigma is not None:
    g = grad_e(x)
    x = jax.tree.map(lambda xi, gi: xi - denoise_sigma ** 2 * gi, x, g)
  return x

