"""VP noise schedules in continuous time: log alpha_t, sigma_t, lambda_t and the inverse lambda -> t.

A VP process x_t = alpha_t x_0 + sigma_t eps has sigma_t^2 = 1 - alpha_t^2, and DPM-Solver works in the
half log-SNR lambda_t = log(alpha_t / sigma_t) (Lu et al. 2022, arXiv 2206.00927, Sec. 3), so a
schedule only needs log alpha_t and the inverse of lambda_t.

Three kinds, chosen by name from `SCHEDULES`:
  * "discrete": a trained discrete-time model with alpha_bar_1..alpha_bar_N. Knot n (1-based) sits at
    t_n = n / N and log alpha_t is piecewise linear in t between knots; the network is fed the index
    1000 * (t - 1/N) (= n - 1 for N = 1000). Knots whose lambda is below `clip_lambda` (-5.1) are dropped
    from the end, which shortens T to the last kept knot but keeps every knot at its own t_n, so the
    network's time input still matches the step it was trained on (cosine beta schedules, whose last
    steps have alpha_bar ~ 0, need this).
  * "linear": the VP-SDE with beta(t) = beta_0 + t (beta_1 - beta_0), T = 1.
  * "cosine": Nichol & Dhariwal's alpha_bar(t) = cos^2((t + s)/(1 + s) pi/2) / cos^2(s/(1 + s) pi/2) with
    s = 0.008, trimmed to T = t(lambda = clip_lambda) ~ 0.9961 where lambda -> -inf at t = 1; the network
    is fed t itself (not t / T), so its input matches the training time. The DPM-Solver paper's T = 0.9946
    (lambda ~ -4.78) is `sample(..., t_start=0.9946)`.

All array methods accept t of any shape and compute in t's floating dtype, so the same schedule serves
float32 sampling and float64 reference runs.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from common.errors import ConfigError
from common.registry import Registry

SCHEDULES: Registry = Registry("noise schedule")
for _name in ("discrete", "linear", "cosine"):
  SCHEDULES.add(_name, _name)

DEFAULT_CLIP_LAMBDA = -5.1
_COSINE_S = 0.008


def _as_float(t):
  t = jnp.asarray(t)
  return t if jnp.issubdtype(t.dtype, jnp.floating) else t.astype(jnp.float32)


def _interp(x, xp, fp):
  """Piecewise-linear interpolation through (xp, fp) (xp increasing), extrapolated linearly at both ends.

  jnp.interp clamps outside [xp[0], xp[-1]]; a sampler that asks for t slightly below the first knot
  (t_end < 1/N) needs the straight-line continuation instead.
  """
  # compare_all: one vectorised comparison, where the default binary search is a loop per call.
  idx = jnp.searchsorted(xp, x, side="right", method="compare_all")
  idx = jnp.clip(idx - 1, 0, xp.shape[0] - 2)
  x0, x1, f0, f1 = xp[idx], xp[idx + 1], fp[idx], fp[idx + 1]
  return f0 + (x - x0) * (f1 - f0) / (x1 - x0)


class NoiseScheduleVP:
  """A VP noise schedule with the public DPM-Solver constructor.

  Args:
    schedule: "discrete", "linear" or "cosine".
    betas: discrete only: beta_1..beta_N, shape [N].
    alphas_cumprod: discrete only, instead of betas: alpha_bar_1..alpha_bar_N, shape [N] (the public
      DPM-Solver convention). `dpm.schedules.get_alphas_cumprod` returns length N + 1 with alpha_bar_0 = 1
      at index 0: pass `alphas_cumprod[1:]`. A first entry of exactly 1 is rejected as that mistake.
    continuous_beta_0, continuous_beta_1: linear only: beta(0) and beta(1) of the VP-SDE.
    clip_lambda: knots / times with lambda below this are trimmed (discrete and cosine).

  Attributes:
    schedule: the kind. T: the largest usable time. total_N: N of the time input 1000 (t - 1/N) for
    discrete models (1000 for continuous ones, where it only sets the default t_end).
  """

  def __init__(self, schedule: str = "discrete", betas=None, alphas_cumprod=None,
               continuous_beta_0: float = 0.1, continuous_beta_1: float = 20.0, *,
               clip_lambda: float = DEFAULT_CLIP_LAMBDA):
    SCHEDULES.get(schedule, field="schedule")
    self.schedule = schedule
    self.clip_lambda = float(clip_lambda)
    if schedule == "discrete":
      self._init_discrete(betas, alphas_cumprod)
    else:
      if betas is not None or alphas_cumprod is not None:
        raise ConfigError(f"schedule={schedule!r} is continuous: betas / alphas_cumprod are only for "
                          "schedule='discrete'")
      self.total_N = 1000
      self.beta_0, self.beta_1 = float(continuous_beta_0), float(continuous_beta_1)
      if schedule == "linear":
        self.T = 1.0
      else:
        self._cos_log_alpha_0 = math.log(math.cos(_COSINE_S / (1.0 + _COSINE_S) * math.pi / 2.0))
        log_alpha = -0.5 * math.log1p(math.exp(-2.0 * self.clip_lambda))
        self.T = (math.acos(math.exp(log_alpha + self._cos_log_alpha_0)) * 2.0 * (1.0 + _COSINE_S)
                  / math.pi - _COSINE_S)

  def _init_discrete(self, betas, alphas_cumprod):
    if (betas is None) == (alphas_cumprod is None):
      raise ConfigError("schedule='discrete' needs exactly one of betas or alphas_cumprod")
    if betas is not None:
      log_alphas = 0.5 * np.cumsum(np.log1p(-np.asarray(betas, np.float64)))
    else:
      abar = np.asarray(alphas_cumprod, np.float64)
      if abar[0] == 1.0:
        raise ConfigError("alphas_cumprod[0] == 1: pass alpha_bar_1..alpha_bar_N (length N); "
                          "dpm.schedules arrays hold alpha_bar_0 = 1 at index 0, use [1:]")
      log_alphas = 0.5 * np.log(abar)
    n = log_alphas.shape[0]
    self.total_N = n
    lambdas = log_alphas - 0.5 * np.log(-np.expm1(2.0 * log_alphas))
    keep = int(np.sum(lambdas >= self.clip_lambda))  # lambda decreases in n
    if keep < 2:
      raise ConfigError(f"discrete schedule has fewer than 2 steps with lambda >= {self.clip_lambda}")
    self.t_array = np.arange(1, keep + 1, dtype=np.float64) / n
    self.log_alpha_array = log_alphas[:keep]
    self.T = float(self.t_array[-1])
    self._knots = {}

  def _knot_arrays(self, dtype):
    """(t_array, log_alpha_array) as jax arrays of `dtype`, created once per dtype so a traced
    sampler closes over one constant pair instead of embedding a copy at every schedule call."""
    key = jnp.dtype(dtype).name
    if key not in self._knots:
      with jax.ensure_compile_time_eval():  # concrete arrays even when first asked inside a trace
        self._knots[key] = (jnp.asarray(self.t_array, dtype),
                            jnp.asarray(self.log_alpha_array, dtype))
    return self._knots[key]

  def marginal_log_mean_coeff(self, t):
    """log alpha_t, same shape as t."""
    t = _as_float(t)
    if self.schedule == "discrete":
      # Knot j sits at (j + 1) / N, so the interval index is direct (no search over the knots).
      _, log_alpha_knots = self._knot_arrays(t.dtype)
      j = jnp.clip(jnp.floor(t * self.total_N).astype(jnp.int32) - 1, 0,
                   log_alpha_knots.shape[0] - 2)
      f0, f1 = log_alpha_knots[j], log_alpha_knots[j + 1]
      return f0 + (t * self.total_N - (j + 1).astype(t.dtype)) * (f1 - f0)
    return self._continuous_log_alpha(t, jnp)

  def log_alpha_float64(self, t) -> np.ndarray:
    """log alpha_t in float64 numpy (continuous schedules), for host-side tables such as the
    discretised chain alpha_bar_n = alpha_{t_n}^2 of a continuous-time model."""
    if self.schedule == "discrete":
      raise ValueError("log_alpha_float64 is for continuous schedules; discrete ones are tables")
    return self._continuous_log_alpha(np.asarray(t, np.float64), np)

  def _continuous_log_alpha(self, t, xp):
    if self.schedule == "linear":
      return -0.25 * t ** 2 * (self.beta_1 - self.beta_0) - 0.5 * t * self.beta_0
    angle = (t + _COSINE_S) / (1.0 + _COSINE_S) * (math.pi / 2.0)
    return xp.log(xp.cos(angle)) - self._cos_log_alpha_0

  def marginal_alpha(self, t):
    return jnp.exp(self.marginal_log_mean_coeff(t))

  def marginal_std(self, t):
    """sigma_t = sqrt(1 - alpha_t^2), computed with expm1 so it stays accurate as t -> 0."""
    return jnp.sqrt(-jnp.expm1(2.0 * self.marginal_log_mean_coeff(t)))

  def marginal_lambda(self, t):
    """lambda_t = log alpha_t - log sigma_t."""
    log_alpha = self.marginal_log_mean_coeff(t)
    return log_alpha - 0.5 * jnp.log(-jnp.expm1(2.0 * log_alpha))

  def inverse_lambda(self, lamb):
    """The time t with lambda_t = lamb (lambda is strictly decreasing in t)."""
    lamb = _as_float(lamb)
    log_alpha = -0.5 * jnp.logaddexp(jnp.zeros_like(lamb), -2.0 * lamb)
    if self.schedule == "discrete":
      t_knots, log_alpha_knots = self._knot_arrays(log_alpha.dtype)
      return _interp(log_alpha, log_alpha_knots[::-1], t_knots[::-1])
    if self.schedule == "linear":
      # Root of (b1 - b0)/4 t^2 + b0/2 t + log_alpha = 0 in the cancellation-free form -2c / (b + sqrt(.)).
      disc = 0.25 * self.beta_0 ** 2 - (self.beta_1 - self.beta_0) * log_alpha
      return -2.0 * log_alpha / (0.5 * self.beta_0 + jnp.sqrt(disc))
    cos_angle = jnp.exp(log_alpha + self._cos_log_alpha_0)
    return jnp.arccos(cos_angle) * (2.0 * (1.0 + _COSINE_S) / math.pi) - _COSINE_S

  def model_time(self, t):
    """The time input the network was trained with: 1000 (t - 1/N) for discrete models, else t."""
    t = _as_float(t)
    if self.schedule == "discrete":
      return (t - 1.0 / self.total_N) * 1000.0
    return t

  def __repr__(self):
    return f"NoiseScheduleVP(schedule={self.schedule!r}, T={self.T:.6g}, total_N={self.total_N})"
