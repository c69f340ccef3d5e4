"""Training losses of diffusion models, discrete and continuous time (pure; return (loss, metrics))."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx


def network_time(n: jax.Array) -> jax.Array:
  """The U-Net's time input for discrete step n in 1..N: n - 1 (as in DDPM's 0-based code)."""
  return jnp.asarray(n, jnp.float32) - 1.0


def q_sample(x0: jax.Array, n: jax.Array, eps: jax.Array, alphas_cumprod: jax.Array) -> jax.Array:
  """x_n = sqrt(alpha_bar_n) x_0 + sqrt(1 - alpha_bar_n) eps, with n [B] in 1..N."""
  abar = alphas_cumprod[n].reshape((-1,) + (1,) * (x0.ndim - 1))
  return jnp.sqrt(abar) * x0 + jnp.sqrt(1.0 - abar) * eps


def eps_loss(model: nnx.Module, x0: jax.Array, rng: jax.Array, alphas_cumprod: jax.Array,
             train: bool = True):
  """DDPM's simple loss E_{n, eps} ||eps - eps_theta(x_n, n)||^2 / d with n ~ U{1..N} (Ho et al. eq. 14).

  Args:
    model: the noise predictor, called as model(x, t, train=..., rngs=dropout_key).
    x0: [B, ...] data in [-1, 1].
    rng: key for n, eps and dropout.
    alphas_cumprod: [N + 1] with alphas_cumprod[0] = 1.
  """
  n_rng, e_rng, d_rng = jax.random.split(rng, 3)
  num_steps = alphas_cumprod.shape[0] - 1
  n = jax.random.randint(n_rng, (x0.shape[0],), 1, num_steps + 1)
  eps = jax.random.normal(e_rng, x0.shape, x0.dtype)
  pred = model(q_sample(x0, n, eps, alphas_cumprod), network_time(n), train=train, rngs=d_rng)
  loss = jnp.mean((eps - pred) ** 2)
  return loss, {}


def continuous_eps_loss(model: nnx.Module, x0: jax.Array, rng: jax.Array, log_alpha_fn, t_min: float,
                        t_max: float, time_scale: float, train: bool = True):
  """The same simple loss in continuous VP time (score_sde's DDPM++ cont., reduce_mean, no
  likelihood weighting): t ~ U(t_min, t_max), x_t = alpha_t x_0 + sigma_t eps with
  sigma_t^2 = 1 - alpha_t^2, and the network sees time_scale * t.

  Args:
    log_alpha_fn: t [B] -> log alpha_t [B] (e.g. NoiseScheduleVP.marginal_log_mean_coeff).
  """
  t_rng, e_rng, d_rng = jax.random.split(rng, 3)
  t = jax.random.uniform(t_rng, (x0.shape[0],), jnp.float32, t_min, t_max)
  log_alpha = log_alpha_fn(t).reshape((-1,) + (1,) * (x0.ndim - 1))
  eps = jax.random.normal(e_rng, x0.shape, x0.dtype)
  x_t = jnp.exp(log_alpha) * x0 + jnp.sqrt(-jnp.expm1(2.0 * log_alpha)) * eps
  pred = model(x_t, time_scale * t, train=train, rngs=d_rng)
  return jnp.mean((eps - pred) ** 2), {}
