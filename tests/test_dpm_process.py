"""The forward process (dpm/process.py): continuous-time VP training and its discrete chain, checked
against closed forms on Gaussian data, where the exact noise predictor and the exact probability-flow
ODE solution are known."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from common.errors import ConfigError
from configs.dpm import base
from dpm import experiment, process, reports, samplers, schedules

S = 0.5  # data std: x_0 ~ N(0, S^2 I)


def _log_alpha_linear(t, b0=0.1, b1=20.0):
  # log alpha_t = -1/2 int_0^t beta(u) du for beta(u) = b0 + u (b1 - b0)
  return -0.5 * (b0 * t + 0.5 * (b1 - b0) * t ** 2)


def test_continuous_chain_is_the_vp_sde_at_t_n_and_close_to_ddpm_linear():
  p = process.Process(time="continuous", schedule="linear", num_steps=1000)
  t = np.arange(1001) / 1000.0
  np.testing.assert_allclose(p.alphas_cumprod, np.exp(2 * _log_alpha_linear(t)), rtol=1e-12)
  assert p.alphas_cumprod[0] == 1.0 and p.noise_schedule.T == 1.0
  # DDPM's linear betas (1e-4 .. 0.02, N = 1000) discretise the same SDE: log alpha_bar agree to 1%
  # from t = 0.1 on (6% below, where the sum's half-step offset matters).
  ddpm = schedules.get_alphas_cumprod("linear", 1000)
  rel = np.abs(np.log(p.alphas_cumprod[10:]) / np.log(ddpm[10:]) - 1)
  assert rel[90:].max() < 0.01 and rel.max() < 0.06, (rel[90:].max(), rel.max())


def test_continuous_step_input_is_time_scale_times_t_n():
  p = process.Process(time="continuous", schedule="cosine", num_steps=200, time_scale=999.0)
  n = jnp.array([1, 50, 200])
  t_n = np.asarray(n) * p.noise_schedule.T / 200
  np.testing.assert_allclose(p.step_input(n), 999.0 * t_n, rtol=1e-6)
  np.testing.assert_allclose(p.alphas_cumprod[np.asarray(n)],
                             np.asarray(p.noise_schedule.marginal_alpha(jnp.asarray(t_n))) ** 2,
                             rtol=1e-4)  # float32 alpha
  d = process.Process(num_steps=100)
  np.testing.assert_array_equal(d.step_input(jnp.array([1, 100])), [0.0, 99.0])


class _ExactGaussianEps(nnx.Module):
  """The exact noise predictor of x_0 ~ N(0, S^2 I) under a process, called like the U-Net:
  model(x, network_time) -> eps. It decodes the network time the way the process encodes it."""

  def __init__(self, p: process.Process):
    self.p = p
    self.log_s = nnx.Param(jnp.log(jnp.float32(S)))

  def __call__(self, x, t_in, train=False, rngs=None):
    ns = self.p.noise_schedule
    t = (t_in / self.p.time_scale if self.p.continuous else (t_in + 1.0) / self.p.num_steps)
    alpha = ns.marginal_alpha(t).reshape((-1,) + (1,) * (x.ndim - 1))
    sigma = ns.marginal_std(t).reshape(alpha.shape)
    s2 = jnp.exp(2 * self.log_s[...])
    return sigma * x / (alpha ** 2 * s2 + sigma ** 2)  # -sigma * grad log N(x; 0, a^2 s^2 + sigma^2)


def test_continuous_loss_of_the_exact_predictor_matches_quadrature():
  # For Gaussian data the exact predictor's loss is E_t[a_t^2 S^2 / (a_t^2 S^2 + sigma_t^2)].
  p = process.Process(time="continuous", schedule="linear", t_eps=1e-5)
  x0 = S * jax.random.normal(jax.random.key(0), (50_000, 4))
  loss, _ = p.loss(_ExactGaussianEps(p), x0, jax.random.key(1))
  t = np.linspace(1e-5, 1.0, 200_001)
  a2 = np.exp(2 * _log_alpha_linear(t))
  truth = np.trapezoid(a2 * S ** 2 / (a2 * S ** 2 + 1 - a2), t) / (1.0 - 1e-5)
  assert abs(float(loss) - truth) < 0.005, (float(loss), truth)
  # ...and it is the minimum: a predictor that ignores x does worse by E[sigma^2 ...] > 0.
  zero_loss, _ = p.loss(lambda x, t, train, rngs: jnp.zeros_like(x), x0, jax.random.key(1))
  assert float(zero_loss) > truth + 0.3


@pytest.mark.parametrize("kind,schedule,n", [("continuous", "linear", 1000),
                                             ("continuous", "cosine", 1000),
                                             ("discrete", "linear", 1000),
                                             ("discrete", "linear", 100)])
def test_solver_report_sampler_solves_the_exact_ode(kind, schedule, n):
  # The probability-flow ODE of Gaussian data is linear: x_t = sqrt(v_t / v_T) x_T with
  # v_t = a_t^2 S^2 + sigma_t^2. The report's sampler (schedule, time input) must reproduce it.
  p = process.Process(time=kind, schedule=schedule, num_steps=n)
  model = _ExactGaussianEps(p)
  graphdef, state = nnx.split(model)
  x_T = jax.random.normal(jax.random.key(2), (64, 3))
  # DPM-Solver-fast (third order, logSNR steps) at 60 NFE: 2e-4 from the truth on the continuous
  # linear schedule (1.2% at 20, 0.09% at 40); the time-uniform multistep methods converge slower
  # here, with long steps in lambda near t = 0.
  out = samplers.solve(samplers.solver_method("dpm_solver_fast"), p, graphdef, 60)(state, x_T)
  ns = p.noise_schedule
  t_end = 1.0 / ns.total_N if kind == "discrete" else 1e-4  # the solver's default end time
  v = lambda t: float(ns.marginal_alpha(jnp.float32(t))) ** 2 * S ** 2 + float(
      ns.marginal_std(jnp.float32(t))) ** 2
  expected = np.asarray(x_T) * math.sqrt(v(t_end) / v(ns.T))
  np.testing.assert_allclose(np.asarray(out), expected, rtol=1e-3, atol=1e-4)


def _config(**diffusion):
  c = base.get_config()
  c.diffusion.update(diffusion)
  return c


@pytest.mark.parametrize("diffusion,field", [
    (dict(time="ct"), "diffusion.time"),
    (dict(time="continuous", schedule="quad"), "diffusion.schedule"),
    (dict(time="continuous", t_eps=0.0), "diffusion.t_eps"),
    (dict(time="continuous", continuous_beta_1=0.05), "diffusion.continuous_beta_1"),
    (dict(time="continuous", time_scale=-1.0), "diffusion.time_scale"),
    (dict(time="discrete", schedule="sqrt"), "diffusion.schedule"),
])
def test_bad_diffusion_block_names_the_field(diffusion, field):
  with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
    experiment.validate(_config(**diffusion))
