"""The forward process of a config's `diffusion` block: discrete steps or continuous VP time.

  diffusion.time = "discrete"    DDPM: steps n = 1..N of a beta schedule (`dpm.schedules`), the
                                 network sees n - 1, training draws n ~ U{1..N}.
  diffusion.time = "continuous"  score_sde / DPM-Solver's continuous-time VP models: t ~ U(t_eps, T)
                                 on the VP-SDE of `diffusion.schedule` ("linear": beta(t) = beta_0 +
                                 t (beta_1 - beta_0), T = 1; "cosine": trimmed T ~ 0.996), the network
                                 sees time_scale * t (999 t, as score_sde's DDPM++ continuous models).

Everything that works on integer steps (DDPM/DDIM sampling, Analytic-DPM's Gamma, DP trajectories,
the NLL bound) runs on a continuous model through its discretisation to N steps: step n is the time
t_n = n T / N, alpha_bar_n = alpha_{t_n}^2 (the Analytic-DPM / SN-DPM treatment of continuous models),
and the network is fed time_scale * t_n. DPM-Solver integrates the continuous model in its own time.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from common import checks
from common.errors import ConfigError
from dpm import losses, schedules
from dpm.solver.schedule import NoiseScheduleVP

TIMES = ("discrete", "continuous")
CONTINUOUS_SCHEDULES = ("linear", "cosine")


@dataclasses.dataclass(frozen=True)
class Process:
  """Hashable description of a forward process (usable as a cache key and a static jit argument)."""

  time: str = "discrete"
  schedule: str = "linear"
  num_steps: int = 1000
  continuous_beta_0: float = 0.1
  continuous_beta_1: float = 20.0
  t_eps: float = 1e-5
  time_scale: float = 999.0

  @property
  def continuous(self) -> bool:
    return self.time == "continuous"

  @functools.cached_property
  def noise_schedule(self) -> NoiseScheduleVP:
    """The schedule DPM-Solver integrates: the model's own for continuous time; for discrete time
    the interpolated table of alpha_bar_1..alpha_bar_N."""
    if self.continuous:
      return NoiseScheduleVP(self.schedule, continuous_beta_0=self.continuous_beta_0,
                             continuous_beta_1=self.continuous_beta_1)
    return NoiseScheduleVP("discrete", alphas_cumprod=self.alphas_cumprod[1:])

  @functools.cached_property
  def alphas_cumprod(self) -> np.ndarray:
    """alpha_bar_0..alpha_bar_N (float64, alpha_bar_0 = 1) of the discrete chain; for continuous
    time alpha_{t_n}^2 at t_n = n T / N."""
    if not self.continuous:
      return schedules.get_alphas_cumprod(self.schedule, self.num_steps)
    ns = self.noise_schedule
    t = np.arange(self.num_steps + 1, dtype=np.float64) * ns.T / self.num_steps
    return np.exp(2.0 * ns.log_alpha_float64(t))

  def step_input(self, n: jax.Array) -> jax.Array:
    """The network's time input at integer step n (1..N)."""
    if not self.continuous:
      return losses.network_time(n)
    t_per_step = self.noise_schedule.T / self.num_steps
    return jnp.asarray(n, jnp.float32) * (self.time_scale * t_per_step)

  def solver_input(self, t_model: jax.Array) -> jax.Array:
    """The network's time input from DPM-Solver's model time `noise_schedule.model_time(t)`:
    1000 (t - 1/N) for discrete schedules, which is n - 1 at t = n / N only when N = 1000 (so it is
    rescaled to N t - 1 here), and t itself for continuous ones (scaled by time_scale)."""
    if not self.continuous:
      return t_model * (self.num_steps / 1000.0)
    return t_model * self.time_scale

  def loss(self, model, x0: jax.Array, rng: jax.Array, train: bool = True):
    if not self.continuous:
      return losses.eps_loss(model, x0, rng, jnp.asarray(self.alphas_cumprod, jnp.float32), train)
    ns = self.noise_schedule
    return losses.continuous_eps_loss(model, x0, rng, ns.marginal_log_mean_coeff, self.t_eps, ns.T,
                                      self.time_scale, train)

  def summary(self) -> dict:
    """Fields that identify the process (for caches and results files)."""
    return dataclasses.asdict(self) if self.continuous else {
        "time": self.time, "schedule": self.schedule, "num_steps": self.num_steps}


def of(config) -> Process:
  """The process of config.diffusion; fields it lacks (a config saved before they existed) take
  Process's defaults."""
  d = config.diffusion
  return Process(**{f.name: type(f.default)(d[f.name]) for f in dataclasses.fields(Process)
                    if f.name in d})


def validate(config) -> None:
  """Rejects a bad `diffusion` block, naming the field."""
  checks.one_of(config, "diffusion.time", TIMES)
  checks.positive(config, "diffusion.num_steps")
  d = config.diffusion
  if d.time == "discrete":
    schedules.BETA_SCHEDULES.get(d.schedule, field="diffusion.schedule")
    return
  if d.schedule not in CONTINUOUS_SCHEDULES:
    raise ConfigError(f"diffusion.schedule={d.schedule!r} is invalid for diffusion.time='continuous':"
                      f" expected one of {list(CONTINUOUS_SCHEDULES)} (VP-SDE schedules)")
  checks.positive(config, "diffusion.continuous_beta_0")
  if d.continuous_beta_1 <= d.continuous_beta_0:
    raise ConfigError(f"diffusion.continuous_beta_1={d.continuous_beta_1!r} must exceed "
                      f"diffusion.continuous_beta_0={d.continuous_beta_0!r}")
  checks.positive(config, "diffusion.time_scale")
  if not 0.0 < d.t_eps < 0.1:
    raise ConfigError(f"diffusion.t_eps={d.t_eps!r} is invalid: expected the smallest training time,"
                      " in (0, 0.1) (score_sde uses 1e-5)")
