"""Reverse processes on a K-step trajectory of a discrete-time model (DDPM and DDIM forms).

Notation as in ../shared/papers/dpm.md: for a step s < t, alpha_{t|s} = alpha_bar_t / alpha_bar_s and
beta_{t|s} = 1 - alpha_{t|s}. A trajectory is an increasing int array tau_1 < ... < tau_K = N; step k
goes from tau_k down to tau_{k-1} (down to 0 for k = 1, which returns the mean without noise).
Per-step arrays (variances, coefficients) are indexed by k = 0..K-1 for the step leaving tau_{k+1}.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from common.errors import ConfigError
from common.registry import Registry

EpsFn = Callable[[jax.Array, jax.Array], jax.Array]  # (x [B, ...], n [B] ints in 1..N) -> eps_hat
FORMS = ("ddpm", "ddim")
TRAJECTORIES: Registry = Registry("trajectory")
FIXED_VARIANCES: Registry = Registry("fixed reverse variance")


def strictly_increasing(t: np.ndarray, num_steps: int) -> np.ndarray:
  """Rounded timesteps [K] made strictly increasing (each at least one above the one before), ending
  at N = num_steps."""
  t = np.asarray(t, np.int64)
  for i in range(1, len(t)):
    t[i] = max(t[i], t[i - 1] + 1)
  if t[-1] != num_steps:
    raise ValueError(f"trajectory must end at N={num_steps}, got {t[-1]}")
  return t


@TRAJECTORIES.register("even")
def even_trajectory(k: int, num_steps: int) -> np.ndarray:
  """K timesteps evenly spaced from 1 to N (both included)."""
  return strictly_increasing(np.round(np.linspace(1, num_steps, k)), num_steps)


@TRAJECTORIES.register("quad")
def quad_trajectory(k: int, num_steps: int) -> np.ndarray:
  """K timesteps from 1 to N, quadratically denser near 1 (DDIM's 'quad' spacing)."""
  t = 1 + np.round(np.linspace(0.0, np.sqrt(num_steps - 1), k) ** 2)
  return strictly_increasing(t, num_steps)


def make_trajectory(kind: str, k: int, num_steps: int) -> np.ndarray:
  if not 1 <= k <= num_steps:
    raise ConfigError(f"K={k} is invalid: expected 1 <= K <= N={num_steps}")
  if k == 1:
    return np.array([num_steps])
  return TRAJECTORIES.get(kind, field="sample.trajectory")(k, num_steps)


class StepTerms(NamedTuple):
  """Per-step scalars of a trajectory, float64 numpy arrays of shape [K]."""
  t: np.ndarray            # tau_k
  s: np.ndarray            # tau_{k-1} (0 for the first step)
  abar_t: np.ndarray
  abar_s: np.ndarray
  beta_ts: np.ndarray      # beta_{t|s}
  beta_tilde: np.ndarray   # bbar_s beta_{t|s} / bbar_t


def step_terms(alphas_cumprod: np.ndarray, trajectory: np.ndarray) -> StepTerms:
  alphas_cumprod = np.asarray(alphas_cumprod, np.float64)
  t = np.asarray(trajectory, np.int64)
  s = np.concatenate([[0], t[:-1]])
  abar_t, abar_s = alphas_cumprod[t], alphas_cumprod[s]
  beta_ts = 1.0 - abar_t / abar_s
  beta_tilde = (1.0 - abar_s) * beta_ts / (1.0 - abar_t)
  return StepTerms(t, s, abar_t, abar_s, beta_ts, beta_tilde)


@FIXED_VARIANCES.register("beta")
def _beta(terms: StepTerms, eta: float) -> np.ndarray:
  del eta
  return terms.beta_ts


@FIXED_VARIANCES.register("beta_tilde")
def _beta_tilde(terms: StepTerms, eta: float) -> np.ndarray:
  del eta
  return terms.beta_tilde


@FIXED_VARIANCES.register("ddim")
def _ddim(terms: StepTerms, eta: float) -> np.ndarray:
  return eta ** 2 * terms.beta_tilde


def lambda2(terms: StepTerms, form: str, eta: float = 0.0) -> np.ndarray:
  """lambda^2_{s|t}: beta_tilde for the DDPM form, eta^2 beta_tilde for the DDIM form; shape [K]."""
  return terms.beta_tilde if form == "ddpm" else eta ** 2 * terms.beta_tilde


def fixed_variance(name: str, alphas_cumprod: np.ndarray, trajectory: np.ndarray,
                   form: str = "ddpm", eta: float = 0.0) -> np.ndarray:
  """sigma^2 of each step for a fixed (data-independent) choice; shape [K]."""
  check_form(form)
  if form == "ddim" and name != "ddim":
    raise ConfigError(f"sample.variance={name!r} is a DDPM-form variance; the DDIM form uses "
                      "'ddim' (eta^2 beta_tilde) or 'analytic'")
  if form == "ddpm" and name == "ddim":
    raise ConfigError("sample.variance='ddim' needs sample.form='ddim'")
  return FIXED_VARIANCES.get(name, field="sample.variance")(step_terms(alphas_cumprod, trajectory),
                                                             eta)


def check_form(form: str) -> None:
  if form not in FORMS:
    raise ConfigError(f"sample.form={form!r} is invalid: expected one of {list(FORMS)}")


class MeanCoefs(NamedTuple):
  """mean = c_x0 * x0_hat + c_xt * x_t + c_eps * eps_hat; float64 arrays of shape [K]."""
  c_x0: np.ndarray
  c_xt: np.ndarray
  c_eps: np.ndarray


def mean_coefs(alphas_cumprod: np.ndarray, trajectory: np.ndarray, form: str = "ddpm",
               eta: float = 0.0) -> MeanCoefs:
  """Coefficients of the reverse mean for each step (DDPM posterior mean or DDIM update)."""
  check_form(form)
  terms = step_terms(alphas_cumprod, trajectory)
  bbar_t, bbar_s = 1.0 - terms.abar_t, 1.0 - terms.abar_s
  if form == "ddpm":
    c_x0 = np.sqrt(terms.abar_s) * terms.beta_ts / bbar_t
    c_xt = np.sqrt(1.0 - terms.beta_ts) * bbar_s / bbar_t
    c_eps = np.zeros_like(c_x0)
  else:
    lam2 = lambda2(terms, form, eta)
    c_x0 = np.sqrt(terms.abar_s)
    c_xt = np.zeros_like(c_x0)
    c_eps = np.sqrt(np.maximum(bbar_s - lam2, 0.0))
  return MeanCoefs(c_x0, c_xt, c_eps)


def predict_x0(x_t: jax.Array, eps: jax.Array, abar_t: jax.Array, clip: bool) -> jax.Array:
  """x0_hat = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t), optionally clipped to [-1, 1]."""
  x0 = (x_t - jnp.sqrt(1.0 - abar_t) * eps) / jnp.sqrt(abar_t)
  return jnp.clip(x0, -1.0, 1.0) if clip else x0


def reverse_mean(eps_fn: EpsFn, x_t: jax.Array, k: jax.Array, t: jax.Array, abar_t: jax.Array,
                 coefs: tuple[jax.Array, jax.Array, jax.Array], clip_denoised: bool):
  """Mean of p(x_s | x_t) for step k; returns (mean, eps_hat, x0_hat)."""
  n = jnp.full((x_t.shape[0],), t[k], jnp.int32)
  eps = eps_fn(x_t, n)
  x0 = predict_x0(x_t, eps, abar_t[k], clip_denoised)
  # With clipping, the DDIM direction uses the eps implied by the clipped x0 (as in DDIM).
  eps_dir = (x_t - jnp.sqrt(abar_t[k]) * x0) / jnp.sqrt(1.0 - abar_t[k]) if clip_denoised else eps
  c_x0, c_xt, c_eps = (c[k] for c in coefs)
  return c_x0 * x0 + c_xt * x_t + c_eps * eps_dir, eps, x0


def sample(eps_fn: EpsFn, x_T: jax.Array, rng: jax.Array, alphas_cumprod: np.ndarray,
           trajectory: np.ndarray, sigma2: np.ndarray, form: str = "ddpm", eta: float = 0.0,
           clip_denoised: bool = True) -> jax.Array:
  """Runs the K-step reverse process from x_T ~ N(0, I); jit-compatible (one fori_loop).

  Args:
    eps_fn: noise predictor eps_hat(x, n).
    x_T: [B, ...] starting noise.
    rng: PRNG key for the per-step noise.
    alphas_cumprod: [N + 1] with alphas_cumprod[0] = 1.
    trajectory: [K] increasing ints ending at N.
    sigma2: [K] variance of each step (sigma2[0], for the step to 0, is unused: that step returns
      its mean).
    form: 'ddpm' or 'ddim'; eta: DDIM's eta (only enters the DDIM mean).
    clip_denoised: clip x0_hat to [-1, 1] (images).

  Returns:
    x_0 samples, same shape as x_T.
  """
  sigma2 = jnp.asarray(sigma2, x_T.dtype)  # may be traced
  return sample_state_dependent(lambda x, n: (eps_fn(x, n), None), lambda k, eps, aux: sigma2[k],
                                x_T, rng, alphas_cumprod, trajectory, form, eta, clip_denoised)


# (x [B, ...], n [B]) -> (eps_hat [B, ...], aux): a noise predictor with extra outputs (e.g. the
# second-stage moments of SN/NPR-DPM, dpm/heads.py).
ModelFn = Callable[[jax.Array, jax.Array], tuple[jax.Array, object]]
# (k, eps_hat, aux) -> sigma^2 of step k, broadcastable to [B, ...] (k may be traced).
VarianceFn = Callable[[jax.Array, jax.Array, object], jax.Array]


def sample_state_dependent(model_fn: ModelFn, variance_fn: VarianceFn, x_T: jax.Array,
                           rng: jax.Array, alphas_cumprod: np.ndarray, trajectory: np.ndarray,
                           form: str = "ddpm", eta: float = 0.0,
                           clip_denoised: bool = True) -> jax.Array:
  """`sample` with a variance that depends on the state: sigma^2 = variance_fn(k, eps_hat, aux)
  from the same model call as the mean (SN/NPR-DPM's diagonal covariance, dpm/covariance.py).

  The per-step noise is keyed as in `sample`, so a variance_fn returning sigma2[k] reproduces it.

  Args:
    model_fn: (x, n) -> (eps_hat, aux).
    variance_fn: (k, eps_hat, aux) -> sigma^2 [B, ...] (or broadcastable); unused at k = 0.
    Others as for `sample`.

  Returns:
    x_0 samples, same shape as x_T.
  """
  dtype = x_T.dtype
  terms = step_terms(alphas_cumprod, trajectory)
  coefs = tuple(jnp.asarray(c, dtype) for c in mean_coefs(alphas_cumprod, trajectory, form, eta))
  t = jnp.asarray(terms.t, jnp.int32)
  abar_t = jnp.asarray(terms.abar_t, dtype)
  num = len(terms.t)

  def body(i, x):
    k = num - 1 - i
    eps, aux = model_fn(x, jnp.full((x.shape[0],), t[k], jnp.int32))
    mean, _, _ = reverse_mean(lambda *_: eps, x, k, t, abar_t, coefs, clip_denoised)
    std = jnp.sqrt(jnp.maximum(variance_fn(k, eps, aux), 0.0)).astype(dtype)
    noise = jax.random.normal(jax.random.fold_in(rng, k), x.shape, dtype)
    return jnp.where(k > 0, mean + std * noise, mean)

  return jax.lax.fori_loop(0, num, body, x_T)
