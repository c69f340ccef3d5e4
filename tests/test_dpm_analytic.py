"""Analytic-DPM variance against ground truth: Gaussian-mixture data, exact noise predictor.

The truths are independent of the code under test: C_t comes from the mixture's closed-form
posterior covariance (not from Gamma), and the optimal isotropic variance also from a direct Monte
Carlo of E||mean_q - mean_p||^2 / d through dpm/reverse.py's reverse mean.
"""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from common.errors import ConfigError
from dpm import analytic, gmm, reverse, schedules
from tests import helpers

N = 1000
AC = schedules.get_alphas_cumprod("linear", N)
MIX = gmm.default_mixture(dim=4, seed=1)      # 4 components with means inside [-0.6, 0.6]^4
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def exact_eps_fn(mix, alphas_cumprod):
  sqrt_a = np.sqrt(alphas_cumprod)
  sqrt_b = np.sqrt(1.0 - alphas_cumprod)

  def eps_fn(x, n):
    return mix.eps(x, jnp.asarray(sqrt_a, x.dtype)[n], jnp.asarray(sqrt_b, x.dtype)[n])
  return eps_fn


EPS_FN = exact_eps_fn(MIX, AC)


def draw(mix, n_samples, seed):
  """x_0 ~ mix with numpy's generator (test-side randomness stays out of XLA: compiling JAX's
  threefry sampler costs seconds on a busy 2-core machine)."""
  rs = np.random.RandomState(seed)
  comp = rs.choice(len(mix.weights), n_samples, p=mix.weights)
  return (mix.means[comp] + mix.stds[comp, None] * rs.randn(n_samples, mix.dim)).astype(np.float32)


def noisy(seed, n_samples, t):
  """(x_0, x_t) pairs from q, with draws independent of estimate_gamma's."""
  x0 = draw(MIX, n_samples, seed)
  noise = np.random.RandomState(seed + 1).randn(*x0.shape).astype(np.float32)
  return x0, (np.sqrt(AC[t]) * x0 + np.sqrt(1 - AC[t]) * noise).astype(np.float32)


@jax.jit
def _truth_stats(xt, a, s):
  """Per-sample tr Cov[x_0|x_t]/d (closed-form posterior) and ||eps*(x_t)||^2/d."""
  return MIX.posterior_trace_var(xt, a, s), jnp.sum(MIX.eps(xt, a, s) ** 2, 1) / MIX.dim


def true_c(t, seed):
  """C_t = E tr Cov[x_0|x_t] / d from the closed-form posterior over 40,000 x_t ~ q, its Monte
  Carlo s.e., and the std of ||eps*(x_t)||^2 / d (to size the tolerance of a Gamma estimate)."""
  _, xt = noisy(seed, 40000, t)
  v, e = (np.asarray(a, np.float64)
          for a in _truth_stats(xt, np.float32(np.sqrt(AC[t])), np.float32(np.sqrt(1 - AC[t]))))
  return v.mean(), v.std() / np.sqrt(len(v)), e.std()


@pytest.fixture(scope="module")
def gamma_mc():
  """Monte Carlo Gamma (20,000 draws, exact predictor) at small and medium t, computed once."""
  ts = np.array([1, 5, 40, 112, 150, 223, 300, 334])
  x0 = draw(MIX, 20000, seed=0)
  gamma = analytic.estimate_gamma(EPS_FN, AC, x0, ts, jax.random.PRNGKey(1), batch_size=5000)
  return dict(zip(ts.tolist(), gamma)), len(x0)


def test_gamma_matches_closed_form_c(gamma_mc):
  gamma, m = gamma_mc
  for i, t in enumerate([5, 40, 150, 300]):      # small and medium t
    c, c_se, e_std = true_c(t, 100 + i)
    ratio = AC[t] / (1 - AC[t])
    truth = 1.0 - ratio * c                      # E||E[eps|x_t]||^2/d = 1 - (abar/bbar) C_t
    se = np.hypot(e_std / np.sqrt(m), ratio * c_se)
    assert abs(gamma[t] - truth) < 4.5 * se + 1e-4, (t, gamma[t], truth, se)
    # and through the public formula: C from Gamma matches C from the posterior covariance
    c_hat = analytic.posterior_variance(gamma[t], AC[t], clip_range=None)
    assert abs(c_hat - c) < 4.5 * se / ratio + 1e-6


def test_gamma_of_a_linear_predictor_passed_as_partial():
  """eps_hat = c_n x (weights as a Partial's traced argument): Gamma_n = c_n^2 (abar_n E x_0^2 +
  bbar_n) exactly, up to the Monte Carlo error of the forward noise alone."""
  scale = jnp.asarray(np.linspace(0.5, 1.5, N + 1), jnp.float32)
  eps_fn = jax.tree_util.Partial(lambda c, x, n: c[n][:, None] * x, scale)
  x0 = draw(MIX, 3000, seed=11)
  ts = np.array([1, 250, 999])
  gamma = analytic.estimate_gamma(eps_fn, AC, x0, ts, jax.random.PRNGKey(5), batch_size=1024)
  c2 = np.asarray(scale, np.float64)[ts] ** 2
  second = np.mean(x0.astype(np.float64) ** 2)
  truth = c2 * (AC[ts] * second + 1 - AC[ts])
  # noise part: var of ||sqrt(bbar) e + ...||^2/d is about 2 bbar^2/d + 4 abar bbar E x0^2/d
  se = c2 * np.sqrt((2 * (1 - AC[ts]) ** 2 + 4 * AC[ts] * (1 - AC[ts]) * second) / MIX.dim / 3000)
  np.testing.assert_array_less(np.abs(gamma - truth), 4.5 * se + 1e-6)


def _true_gamma2(terms, k, form, lam2):
  a_s, a_t = terms.abar_s[k], terms.abar_t[k]
  if form == "ddpm":
    return a_s * (1 - a_t / a_s) ** 2 / (1 - a_t) ** 2
  return (np.sqrt(a_s) - np.sqrt((1 - a_s - lam2) * a_t / (1 - a_t))) ** 2


@pytest.mark.parametrize("form,eta", [("ddpm", 0.0), ("ddim", 0.0), ("ddim", 0.5)])
def test_analytic_variance_is_true_optimum(gamma_mc, form, eta):
  gamma_at_t, m = gamma_mc
  traj = reverse.make_trajectory("even", 10, N)   # 1, 112, 223, 334, ...
  gamma = np.array([gamma_at_t.get(int(t), 1.0) for t in traj])  # steps k >= 4 are not checked
  sigma2 = analytic.optimal_variance(gamma, AC, traj, form=form, eta=eta)
  terms = reverse.step_terms(AC, traj)
  coefs = tuple(jnp.asarray(c, jnp.float32) for c in reverse.mean_coefs(AC, traj, form, eta))
  for k in [0, 1, 2, 3]:                          # steps from t = 1, 112, 223, 334: small/medium
    t = int(traj[k])
    lam2 = (1.0 if form == "ddpm" else eta ** 2) * terms.beta_tilde[k]
    c, _, e_std = true_c(t, 300 + k)
    g2 = _true_gamma2(terms, k, form, lam2)
    truth = lam2 + g2 * c
    se = g2 * (1 - AC[t]) / AC[t] * e_std / np.sqrt(m)
    assert abs(sigma2[k] - truth) < 4.5 * se + 1e-6 * truth, (k, sigma2[k], truth, se)
    # Direct truth: the minimiser of E KL(q || N(mean_p, s^2 I)) over s^2 is
    # lambda^2 + E||mean_q - mean_p||^2 / d, with mean_q the forward posterior (DDIM-family) mean.
    x0s, xt = noisy(500 + k, 20000, t)
    mean_p, _, _ = reverse.reverse_mean(EPS_FN, xt, k, jnp.asarray(traj), jnp.asarray(terms.abar_t),
                                        coefs, clip_denoised=False)
    noise = (xt - np.sqrt(AC[t]) * x0s) / np.sqrt(1 - AC[t])
    mean_q = coefs[0][k] * x0s + coefs[1][k] * xt + coefs[2][k] * noise
    sq = np.asarray(jnp.sum((mean_q - mean_p) ** 2, 1), np.float64) / MIX.dim
    direct = lam2 + sq.mean()
    assert abs(sigma2[k] - direct) < 4.5 * (se + sq.std() / np.sqrt(len(sq))) + 1e-6 * truth


def test_ddim_with_eta_one_is_ddpm():
  traj = reverse.make_trajectory("quad", 20, N)
  gamma = np.linspace(0.05, 0.999, len(traj))
  np.testing.assert_allclose(analytic.optimal_variance(gamma, AC, traj, "ddim", eta=1.0),
                             analytic.optimal_variance(gamma, AC, traj, "ddpm"), rtol=1e-9)


def test_clip_keeps_variance_valid_on_a_small_sample():
  """Few data points: the noisy Gamma exceeds 1 at large t, C_t < 0, and sigma^2 < 0 unclipped."""
  traj = reverse.make_trajectory("even", 10, N)
  for seed in range(20):  # a noisy estimate above the bound is common; find one deterministically
    x0 = draw(MIX, 4, seed)
    gamma = analytic.estimate_gamma(EPS_FN, AC, x0, traj, jax.random.PRNGKey(1000 + seed))
    raw = analytic.optimal_variance(gamma, AC, traj, "ddpm", clip_range=None)
    if np.any(raw < 0):
      break
  else:
    pytest.fail("no small sample gave a negative unclipped variance")
  assert np.max(gamma) > 1.0
  with np.errstate(invalid="ignore"):
    assert np.isnan(np.sqrt(raw)).any()         # what a sampler would take the square root of
  for form in ("ddpm", "ddim"):
    clipped = analytic.optimal_variance(gamma, AC, traj, form, clip_range=(0.0, 1.0))
    lam2 = reverse.lambda2(reverse.step_terms(AC, traj), form)
    assert np.all(clipped >= lam2) and np.all(clipped >= 0) and np.all(np.isfinite(clipped))
    assert np.all(clipped <= lam2 + 1.0 + 1e-12)  # gamma^2 <= 1 here, C <= 1
  raw_ddim = analytic.optimal_variance(gamma, AC, traj, "ddim", clip_range=None)
  assert np.any(raw_ddim < 0)                   # Analytic-DDIM (lambda = 0) breaks at any Gamma > 1
  # The clipped variance samples finite values through dpm/reverse.py's sampler.
  sigma2 = analytic.sampling_variance("analytic", AC, traj, "ddpm", gamma=gamma)
  x_T = jnp.asarray(np.random.RandomState(7).randn(64, MIX.dim), jnp.float32)
  x = reverse.sample(EPS_FN, x_T, jax.random.PRNGKey(8), AC, traj, sigma2)
  assert np.all(np.isfinite(np.asarray(x)))


def test_first_step_clip():
  bound = (2 * 2 / 255 * np.sqrt(np.pi / 2)) ** 2
  assert analytic.first_step_bound(2.0) == pytest.approx(bound)
  assert analytic.first_step_bound(1.0, num_bins=17) == pytest.approx((2 / 16) ** 2 * np.pi / 2)
  assert analytic.first_step_clip_constant("linear", "ddpm") == 2.0
  assert analytic.first_step_clip_constant("linear", "ddim") == 1.0
  assert analytic.first_step_clip_constant("cosine", "ddpm") == 1.0
  sigma2 = np.array([0.5, 0.5, 0.5, 1e-6])
  out = analytic.clip_first_step(sigma2, 2.0)
  np.testing.assert_array_equal(out, [0.5, bound, 0.5, 1e-6])  # only the step into x_{tau_1}
  assert sigma2[1] == 0.5                                       # the input is left alone
  traj = reverse.make_trajectory("even", 10, N)
  gamma = np.full(10, 0.5)
  on = analytic.sampling_variance("analytic", AC, traj, gamma=gamma, first_step_clip=1.0)
  off = analytic.sampling_variance("analytic", AC, traj, gamma=gamma, first_step_clip=None)
  assert on[1] < off[1] and np.array_equal(np.delete(on, 1), np.delete(off, 1))
  beta = analytic.sampling_variance("beta", AC, traj)           # baselines are not clipped
  np.testing.assert_array_equal(beta, reverse.fixed_variance("beta", AC, traj))


def test_variance_registry():
  traj = reverse.make_trajectory("even", 10, N)
  assert analytic.VARIANCES.names() == ["analytic", "beta", "beta_tilde", "ddim"]
  for name, form in [("beta", "ddpm"), ("beta_tilde", "ddpm"), ("ddim", "ddim")]:
    np.testing.assert_array_equal(analytic.reverse_variance(name, AC, traj, form, eta=0.3),
                                  reverse.fixed_variance(name, AC, traj, form, eta=0.3))
  with pytest.raises(ConfigError, match="analytic, beta, beta_tilde, ddim"):
    analytic.reverse_variance("learned", AC, traj)
  with pytest.raises(ConfigError, match="needs Gamma"):
    analytic.reverse_variance("analytic", AC, traj)
  with pytest.raises(ValueError, match="Gamma_1..Gamma_N"):      # an [N + 1] vector is ambiguous
    analytic.optimal_variance(np.ones(N + 1), AC, traj)
  full = np.linspace(0.0, 1.0, N)                              # Gamma_1..Gamma_N
  np.testing.assert_array_equal(
      analytic.reverse_variance("analytic", AC, traj, gamma=full),
      analytic.optimal_variance(full[traj - 1], AC, traj))


def test_gamma_cache(tmp_path):
  calls = []

  def compute():
    calls.append(1)
    return np.linspace(0.1, 1.0, 7) + len(calls)

  meta = {"num_steps": 7, "num_data": 100}
  g1, reused = analytic.cached_gamma(str(tmp_path), 500, compute, meta)
  assert not reused and len(calls) == 1
  g2, reused = analytic.cached_gamma(str(tmp_path), 500, compute, meta)
  assert reused and len(calls) == 1 and np.array_equal(g1, g2)   # exact round trip
  g3, reused = analytic.cached_gamma(str(tmp_path), 600, compute, meta)  # new model step
  assert not reused and len(calls) == 2 and not np.array_equal(g1, g3)
  _, reused = analytic.cached_gamma(str(tmp_path), 600, compute, {"num_steps": 7, "num_data": 5})
  assert not reused and len(calls) == 3
  with open(analytic.gamma_cache_path(str(tmp_path))) as f:
    assert json.load(f)["step"] == 600
  assert not [p for p in os.listdir(tmp_path / "analytic") if p.endswith(".tmp")]
  with open(analytic.gamma_cache_path(str(tmp_path)), "w") as f:
    f.write("{truncated")
  _, reused = analytic.cached_gamma(str(tmp_path), 600, compute, meta)  # corrupt: recomputed
  assert not reused and len(calls) == 4


_SHARDED = r"""
import json, sys
import jax, numpy as np
sys.path.insert(0, sys.argv[1])
from common import mesh as cmesh
from dpm import analytic
import test_dpm_analytic as t
x0 = t.draw(t.MIX, 300, seed=9)
ts = np.array([1, 500, 1000])
one = analytic.estimate_gamma(t.EPS_FN, t.AC, x0, ts, jax.random.PRNGKey(2), batch_size=300)
mesh = cmesh.make_mesh()
four = analytic.estimate_gamma(t.EPS_FN, t.AC, x0, ts, jax.random.PRNGKey(2), batch_size=64,
                               mesh=mesh)
print(json.dumps({"devices": mesh.size, "one": one.tolist(), "four": four.tolist()}))
"""


def test_gamma_same_sharded_over_devices_and_in_any_chunk_size():
  """No mesh with one chunk of 300, and 4 simulated devices with chunks of 64 (the last one padded
  and masked) give the same estimate: each noise draw is keyed by the example's index."""
  env = dict(os.environ, XLA_FLAGS=helpers.xla_flags(4),
             JAX_PLATFORMS="cpu", PYTHONPATH=os.pathsep.join([ROOT, os.path.join(ROOT, "tests")]))
  out = subprocess.run([sys.executable, "-c", _SHARDED, ROOT], env=env, capture_output=True,
                       text=True, timeout=120)
  assert out.returncode == 0, out.stderr[-2000:]
  res = json.loads(out.stdout.strip().splitlines()[-1])
  assert res["devices"] == 4
  np.testing.assert_allclose(res["four"], res["one"], rtol=1e-5)
