"""Negative ELBO in bits/dim of a K-step reverse process (Analytic-DPM; Ho et al. 2020, Eq. 5).

  L = KL(q(x_N|x_0) || N(0, I))                                   prior
    + sum_{k>=1} KL(q(x_s|x_t, x_0) || p(x_s|x_t))                 step tau_{k+1} -> tau_k
    - log p(x_0 | x_{tau_1})                                      discretised Gaussian decoder
  divided by d ln 2. Each KL is between isotropic Gaussians; x_t ~ q(x_t|x_0) is drawn once per
  example and step. q(x_s|x_t, x_0) has variance lambda^2 (beta_tilde for the DDPM form,
  eta^2 beta_tilde for the DDIM form, which needs eta > 0); p(x_s|x_t) has the reverse mean of
  dpm/reverse.py and the per-step variance sigma2[k] given by the caller (any variance choice).
  nll_bpd_state_dependent does the same with diagonal, state-dependent reverse covariances
  (SN/NPR-DPM, dpm/covariance.py): each step's KL is then a sum of 1-D KLs over the elements.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import log_ndtr

from common import mesh as cmesh
from dpm import analytic, covariance, reverse


def discretized_gaussian_log_prob(x: jax.Array, mean: jax.Array, var: jax.Array,
                                  num_bins: int = 256,
                                  data_range: tuple[float, float] = (-1.0, 1.0)) -> jax.Array:
  """log P(x) per element for a Gaussian discretised to `num_bins` equal bins over data_range.

  x lies on the bin centres a + i (b - a) / (num_bins - 1); the outermost bins extend to +-inf.
  Differences of normal CDFs are taken on the side of the smaller tail so they keep their precision,
  and bins much narrower than the standard deviation use the midpoint density.
  """
  lo, hi = data_range
  half = 0.5 * (hi - lo) / (num_bins - 1)
  std = jnp.sqrt(var)
  upper = (x + half - mean) / std
  lower = (x - half - mean) / std
  # Reflect to the left tail: Phi(u) - Phi(l) = Phi(-l) - Phi(-u).
  flip = lower > 0
  a = jnp.where(flip, -upper, lower)
  b = jnp.where(flip, -lower, upper)
  log_b = log_ndtr(b)
  diff = jnp.maximum(log_ndtr(a) - log_b, -1e30)
  log_mass = log_b + jnp.log(-jnp.expm1(jnp.minimum(diff, -1e-30)))
  width = b - a
  mid = 0.5 * (a + b)
  log_mid = -0.5 * mid ** 2 - 0.5 * math.log(2 * math.pi) + jnp.log(width)
  log_mass = jnp.where(width < 1e-3, log_mid, log_mass)
  first = x < lo + half
  last = x > hi - half
  return jnp.where(first, log_ndtr(upper), jnp.where(last, log_ndtr(-lower), log_mass))


def gaussian_kl(mu_q, var_q, mu_p, var_p) -> jax.Array:
  """KL(N(mu_q, var_q I) || N(mu_p, var_p I)) per example, summed over all but the first axis."""
  per = 0.5 * (jnp.log(var_p / var_q) + (var_q + (mu_q - mu_p) ** 2) / var_p - 1.0)
  return jnp.sum(jnp.reshape(per, (per.shape[0], -1)), axis=1)


def default_decoder_variance(alphas_cumprod: np.ndarray, trajectory: np.ndarray) -> float:
  """Decoder variance shared by every variance choice, so NLLs differ only in the K-1 KL steps.

  For tau_1 = 1 it is DDPM's fixed value at t = 1, beta_tilde_2 = beta_bar_1 beta_2 / beta_bar_2
  (Ho et al. clip the log-variance there; the Analytic-DPM evaluation uses the same value);
  for tau_1 > 1 it is beta_bar_{tau_1} (the 'beta' choice of the step tau_1 -> 0).
  """
  abar = np.asarray(alphas_cumprod, np.float64)
  t1 = int(np.asarray(trajectory)[0])
  if t1 == 1 and len(abar) > 2:
    return float((1 - abar[1]) * (1 - abar[2] / abar[1]) / (1 - abar[2]))
  return float(1 - abar[t1])


@functools.partial(jax.jit, static_argnames=("form", "clip_denoised", "num_bins", "data_range"))
def _nll_nats(eps_fn, x0, rng, num, t, abar_t, coefs, lam2, sigma2, dec_var, abar_n, *, form,
              clip_denoised, num_bins, data_range):
  """Per-example negative ELBO in nats; per-step arrays are padded to length N and the loop runs
  over the first `num`, so one compile serves every K (and every chunk of a test split)."""
  del form  # the form is carried by the coefficients; kept static for a readable cache key
  batch = x0.shape[0]

  def draw(k):
    noise = jax.random.normal(jax.random.fold_in(rng, k), x0.shape, x0.dtype)
    return jnp.sqrt(abar_t[k]) * x0 + jnp.sqrt(1.0 - abar_t[k]) * noise, noise

  d = math.prod(x0.shape[1:])

  def step(k, total):
    x_t, noise = draw(k)
    mean_p, _, _ = reverse.reverse_mean(eps_fn, x_t, k, t, abar_t, coefs, clip_denoised)
    c_x0, c_xt, c_eps = (c[k] for c in coefs)
    mean_q = c_x0 * x0 + c_xt * x_t + c_eps * noise
    err = jnp.sum(jnp.reshape((mean_q - mean_p) ** 2, (batch, -1)), axis=1)      # [B]
    var_p = sigma2[:, k][:, None]                                                 # [V, 1]
    # KL of isotropic Gaussians for every variance choice at once, sharing the model call.
    kl = 0.5 * (d * (jnp.log(var_p / lam2[k]) + lam2[k] / var_p - 1.0) + err[None] / var_p)
    return total + kl

  prior = gaussian_kl(jnp.sqrt(abar_n) * x0, 1.0 - abar_n, jnp.zeros_like(x0), 1.0)
  kls = jax.lax.fori_loop(1, num, step, jnp.zeros((sigma2.shape[0], batch), x0.dtype))
  x_1, _ = draw(0)
  mean_0, _, _ = reverse.reverse_mean(eps_fn, x_1, 0, t, abar_t, coefs, clip_denoised)
  logp = discretized_gaussian_log_prob(x0, mean_0, dec_var, num_bins, data_range)
  return prior + kls - jnp.sum(jnp.reshape(logp, (batch, -1)), axis=1)              # [V, B]


def _nll_setup(alphas_cumprod, trajectory, form: str, eta: float, decoder_var):
  """The checked step terms, mean coefficients and decoder variance both NLL estimators start
  from: (terms, lambda^2, coefs, decoder_var, alphas_cumprod float64, N)."""
  reverse.check_form(form)
  terms = reverse.step_terms(alphas_cumprod, trajectory)
  lam2 = reverse.lambda2(terms, form, eta)
  if len(terms.t) > 1 and np.any(lam2[1:] <= 0):
    raise ValueError("the NLL needs lambda^2 > 0 on every step: use the DDPM form or eta > 0")
  coefs = reverse.mean_coefs(alphas_cumprod, trajectory, form, eta)
  if decoder_var is None:
    decoder_var = default_decoder_variance(alphas_cumprod, trajectory)
  abar = np.asarray(alphas_cumprod, np.float64)
  return terms, lam2, coefs, decoder_var, abar, len(abar) - 1


def nll_bpd(eps_fn: reverse.EpsFn, alphas_cumprod: np.ndarray, trajectory: np.ndarray,
            sigma2: np.ndarray, x0: jax.Array, rng: jax.Array, *, form: str = "ddpm",
            eta: float = 0.0, decoder_var: float | None = None, num_bins: int = 256,
            data_range: tuple[float, float] = (-1.0, 1.0),
            clip_denoised: bool = True) -> jax.Array:
  """Per-example negative ELBO (bits/dim) of the K-step reverse process on `trajectory`.

  Args:
    eps_fn: noise predictor eps_hat(x, n [B] int32); a jax.tree_util.Partial(apply, params)
      keeps a large network's weights out of the compiled program's constants.
    alphas_cumprod: [N + 1], alphas_cumprod[0] = 1.
    trajectory: [K] increasing ints ending at N.
    sigma2: [K] reverse variances (index k: step trajectory[k] -> trajectory[k-1]); sigma2[0] is
      not used (the decoder has `decoder_var`). Or [V, K]: V variance choices evaluated on the
      same x_t draws and model calls (one model call per step serves all V).
    x0: [B, ...] data on the bin centres of `num_bins` levels in data_range.
    rng: PRNG key for the x_t draws.
    form, eta: reverse-mean form; the DDIM form needs eta > 0 (else q(x_s|x_t,x_0) is a point mass).
    decoder_var: variance of the discretised Gaussian decoder; None: default_decoder_variance.
    num_bins: number of data levels (256 for 8-bit images, 17 for sklearn digits).
    clip_denoised: clip x0_hat to [-1, 1] in the reverse mean, as when sampling.

  Returns:
    [B] bits/dim ([V, B] for a [V, K] sigma2).
  """
  terms, lam2, coefs, decoder_var, abar, num_steps = _nll_setup(alphas_cumprod, trajectory, form,
                                                               eta, decoder_var)
  dtype = jnp.asarray(x0).dtype

  def pad(a, dt=dtype):  # per-step arrays padded to length N: one compile serves every K
    a = np.asarray(a, np.float64)
    out = np.ones(a.shape[:-1] + (num_steps,), np.float64)
    out[..., :a.shape[-1]] = a
    return jnp.asarray(out, dt)

  sigma2 = np.asarray(sigma2, np.float64)
  single = sigma2.ndim == 1
  if sigma2.shape[-1] != len(terms.t) or sigma2.ndim > 2:
    raise ValueError(f"sigma2 has shape {sigma2.shape}: expected [K] or [V, K] with K={len(terms.t)}")

  nats = _nll_nats(
      analytic.as_pytree_fn(eps_fn), jnp.asarray(x0), rng, jnp.int32(len(terms.t)),
      pad(terms.t, jnp.int32), pad(terms.abar_t), tuple(pad(c) for c in coefs),
      pad(np.maximum(lam2, 1e-30)), pad(np.atleast_2d(sigma2)),
      jnp.asarray(decoder_var, dtype), jnp.asarray(abar[-1], dtype), form=form,
      clip_denoised=bool(clip_denoised), num_bins=int(num_bins),
      data_range=tuple(map(float, data_range)))
  d = math.prod(jnp.shape(x0)[1:])
  bpd = nats / (d * math.log(2.0))
  return bpd[0] if single else bpd


def nll_bpd_dataset(eps_fn: reverse.EpsFn, alphas_cumprod: np.ndarray, trajectory: np.ndarray,
                    sigma2: np.ndarray, x0: np.ndarray, rng: jax.Array, *, batch_size: int = 256,
                    **kwargs) -> np.ndarray:
  """nll_bpd over a whole split in chunks of batch_size (chunk i uses fold_in(rng, i)); [M]
  ([V, M] for a [V, K] sigma2)."""
  out = []
  for i, start in enumerate(range(0, len(x0), batch_size)):
    chunk = np.asarray(x0[start:start + batch_size])
    out.append(np.asarray(nll_bpd(eps_fn, alphas_cumprod, trajectory, sigma2, chunk,
                                  jax.random.fold_in(rng, i), **kwargs)))
  return np.concatenate(out, axis=-1)


@functools.partial(jax.jit, static_argnames=("variances", "clip_range", "form", "clip_denoised",
                                             "num_bins", "data_range"))
def _nll_nats_state(model_fn, x0, rng, num, t, abar_t, ratio, coefs, lam2, gamma2, sigma2, dec_var,
                    abar_n, *, variances, clip_range, form, clip_denoised, num_bins, data_range):
  """_nll_nats with V_i isotropic rows (sigma2 [V_i, N]) and, after them, one row per
  covariance.Variance in `variances`, whose elementwise variance comes from the model's moments.
  The x_t draws are those of _nll_nats (same keys), so shared rows agree with nll_bpd."""
  del form
  batch = x0.shape[0]
  d = math.prod(x0.shape[1:])
  flat = lambda a: jnp.reshape(a, (a.shape[0], -1))

  def draw(k):
    noise = jax.random.normal(jax.random.fold_in(rng, k), x0.shape, x0.dtype)
    return jnp.sqrt(abar_t[k]) * x0 + jnp.sqrt(1.0 - abar_t[k]) * noise, noise

  def step(k, total):
    x_t, noise = draw(k)
    eps, moments = model_fn(x_t, jnp.full((batch,), t[k], jnp.int32))
    mean_p, _, _ = reverse.reverse_mean(lambda *_: eps, x_t, k, t, abar_t, coefs, clip_denoised)
    c_x0, c_xt, c_eps = (c[k] for c in coefs)
    sq = (c_x0 * x0 + c_xt * x_t + c_eps * noise - mean_p) ** 2                 # [B, ...]
    var_p = sigma2[:, k][:, None]                                                 # [V_i, 1]
    rows = [0.5 * (d * (jnp.log(var_p / lam2[k]) + lam2[k] / var_p - 1.0)
                   + jnp.sum(flat(sq), axis=1)[None] / var_p)]
    for v in variances:  # a diagonal Gaussian: the KL is a sum of 1-D KLs
      c = covariance.posterior_variance_estimate(moments[v.kind], eps, ratio[k], v.kind,
                                                 clip_range, v.average)
      var = lam2[k] + gamma2[k] * c
      per = jnp.log(var / lam2[k]) + (lam2[k] + sq) / var - 1.0
      rows.append(0.5 * jnp.sum(flat(per), axis=1)[None])
    return total + jnp.concatenate(rows, axis=0)

  num_rows = sigma2.shape[0] + len(variances)
  prior = gaussian_kl(jnp.sqrt(abar_n) * x0, 1.0 - abar_n, jnp.zeros_like(x0), 1.0)
  kls = jax.lax.fori_loop(1, num, step, jnp.zeros((num_rows, batch), x0.dtype))
  x_1, _ = draw(0)
  eps_1, _ = model_fn(x_1, jnp.full((batch,), t[0], jnp.int32))
  mean_0, _, _ = reverse.reverse_mean(lambda *_: eps_1, x_1, 0, t, abar_t, coefs, clip_denoised)
  logp = discretized_gaussian_log_prob(x0, mean_0, dec_var, num_bins, data_range)
  return prior + kls - jnp.sum(jnp.reshape(logp, (batch, -1)), axis=1)              # [V, B]


def nll_bpd_state_dependent(model_fn: reverse.ModelFn, alphas_cumprod: np.ndarray,
                            trajectory: np.ndarray, x0: jax.Array, rng: jax.Array, *,
                            variances: tuple = ("npr",), sigma2: np.ndarray | None = None,
                            form: str = "ddpm", eta: float = 0.0,
                            clip_range: tuple[float, float] | None = (0.0, 1.0),
                            decoder_var: float | None = None, num_bins: int = 256,
                            data_range: tuple[float, float] = (-1.0, 1.0),
                            clip_denoised: bool = True) -> jax.Array:
  """Per-example negative ELBO (bits/dim) with diagonal, state-dependent reverse covariances.

  Each step's KL(q(x_s|x_t,x_0) || p(x_s|x_t)) is that of diagonal Gaussians, p's variance per
  element sigma^2_{s|t}(x_t) = lambda^2 + gamma^2 c_hat(x_t) (dpm.covariance) from the same model
  call as its mean; the prior term and the decoder (variance `decoder_var`, shared by every row)
  are those of `nll_bpd`, so rows differ only in the K - 1 Gaussian steps.

  Args:
    model_fn: (x, n [B] int32) -> (eps_hat, {kind: moment}) (e.g. dpm.heads.TwoPartModel).
    variances: names in dpm.covariance.VARIANCES ('npr', 'sn', 'npr_avg', 'sn_avg') or
      covariance.Variance objects: one row each.
    sigma2: optional [V_i, K] isotropic variances evaluated on the same draws (rows first).
    clip_range: elementwise bounds on c_hat (None: off).
    Others as for `nll_bpd`.

  Returns:
    [V_i + len(variances), B] bits/dim.
  """
  specs = tuple(v if isinstance(v, covariance.Variance) else
                covariance.VARIANCES.get(v, field="variances") for v in variances)
  terms, lam2, coefs, decoder_var, abar, num_steps = _nll_setup(alphas_cumprod, trajectory, form,
                                                               eta, decoder_var)
  dtype = jnp.asarray(x0).dtype
  _, gamma2 = covariance.step_coefficients(alphas_cumprod, terms.s, terms.t, form, eta)
  k = len(terms.t)
  sigma2 = np.zeros((0, k)) if sigma2 is None else np.atleast_2d(np.asarray(sigma2, np.float64))
  if sigma2.shape[-1] != k or sigma2.ndim > 2:
    raise ValueError(f"sigma2 has shape {sigma2.shape}: expected [V, K] with K={k}")

  def pad(a, dt=dtype):  # padded to length N: one compile serves every K
    a = np.asarray(a, np.float64)
    out = np.ones(a.shape[:-1] + (num_steps,), np.float64)
    out[..., :a.shape[-1]] = a
    return jnp.asarray(out, dt)

  nats = _nll_nats_state(
      analytic.as_pytree_fn(model_fn), jnp.asarray(x0), rng, jnp.int32(k), pad(terms.t, jnp.int32),
      pad(terms.abar_t), pad((1.0 - terms.abar_t) / terms.abar_t), tuple(pad(c) for c in coefs),
      pad(np.maximum(lam2, 1e-30)), pad(gamma2),
      pad(sigma2), jnp.asarray(decoder_var, dtype), jnp.asarray(abar[-1], dtype),
      variances=specs, clip_range=None if clip_range is None else tuple(map(float, clip_range)),
      form=form, clip_denoised=bool(clip_denoised), num_bins=int(num_bins),
      data_range=tuple(map(float, data_range)))
  return nats / (math.prod(jnp.shape(x0)[1:]) * math.log(2.0))


def nll_bpd_state_dependent_dataset(model_fn: reverse.ModelFn, alphas_cumprod: np.ndarray,
                                    trajectory: np.ndarray, x0: np.ndarray, rng: jax.Array, *,
                                    batch_size: int = 256, mesh=None, **kwargs) -> np.ndarray:
  """nll_bpd_state_dependent over a split in chunks (chunk i uses fold_in(rng, i)); [V, M]. With a
  mesh, each chunk whose size its device count divides is sharded over the data axis."""
  out = []
  for i, start in enumerate(range(0, len(x0), batch_size)):
    chunk = np.asarray(x0[start:start + batch_size])
    if mesh is not None and len(chunk) % mesh.size == 0:
      chunk = jax.device_put(chunk, cmesh.batch_sharding(mesh))
    out.append(np.asarray(nll_bpd_state_dependent(model_fn, alphas_cumprod, trajectory, chunk,
                                                  jax.random.fold_in(rng, i), **kwargs)))
  return np.concatenate(out, axis=-1)
