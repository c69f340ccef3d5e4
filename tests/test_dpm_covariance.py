"""SN/NPR-DPM's diagonal covariance against ground truth: Monte Carlo of the reverse step on a
Gaussian mixture with its exact posterior, Analytic-DPM's isotropic variance, the sampler and the
NLL with a state-dependent covariance (exact moments on grid-valued data)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dpm import analytic, covariance, gmm, nll, reverse, schedules
from tests.test_dpm_analytic_nll import QuantisedMixture

AC = schedules.get_alphas_cumprod("linear", 1000)
MIX = gmm.default_mixture(dim=3, seed=1)


def _exact(x_t, t):
  """eps*, h* = E[eps^2 | x_t], Var[eps | x_t] of the mixture at timestep t, numpy [B, d]."""
  a, s = math.sqrt(AC[t]), math.sqrt(1 - AC[t])
  x = jnp.asarray(x_t, jnp.float32)
  eps = np.asarray(MIX.eps(x, a, s), np.float64)
  h = np.asarray(MIX.eps_second_moment(x, a, s), np.float64)
  var = (a / s) ** 2 * np.asarray(MIX.posterior_var(x, a, s), np.float64)
  return eps, h, var


def _x_t(t, num, seed):
  x0 = np.asarray(MIX.sample(jax.random.key(seed), num), np.float64)
  noise = np.random.RandomState(seed).randn(*x0.shape)
  return math.sqrt(AC[t]) * x0 + math.sqrt(1 - AC[t]) * noise


def _monte_carlo_x_s(x_t, s, t, form, eta, draws, seed):
  """x_s given x_t: x_0 from the mixture's exact posterior, then x_s from q(x_s | x_t, x_0) (the
  notes' forward posterior, written here independently of dpm.reverse); [B, draws, d]."""
  rs = np.random.RandomState(seed)
  a, sd = math.sqrt(AC[t]), math.sqrt(1 - AC[t])
  r, m, v = (np.asarray(z, np.float64) for z in MIX.posterior(jnp.asarray(x_t, jnp.float32), a, sd))
  out = []
  for b in range(len(x_t)):
    comp = rs.choice(len(r[b]), draws, p=r[b] / r[b].sum())
    x0 = m[b, comp] + np.sqrt(v[b, comp])[:, None] * rs.randn(draws, x_t.shape[1])
    abar_s, abar_t = AC[s], AC[t]
    beta_ts = 1 - abar_t / abar_s
    beta_tilde = (1 - abar_s) * beta_ts / (1 - abar_t)
    if form == "ddpm":
      mean = (math.sqrt(abar_s) * beta_ts / (1 - abar_t) * x0
              + math.sqrt(abar_t / abar_s) * (1 - abar_s) / (1 - abar_t) * x_t[b])
      lam2 = beta_tilde
    else:
      lam2 = eta ** 2 * beta_tilde
      direction = (x_t[b] - math.sqrt(abar_t) * x0) / math.sqrt(1 - abar_t)
      mean = math.sqrt(abar_s) * x0 + math.sqrt(1 - abar_s - lam2) * direction
    out.append(mean + math.sqrt(lam2) * rs.randn(*mean.shape))
  return np.stack(out)


def _var_and_se(samples, centre=None):
  """Per-element E (x - centre)^2 (variance if centre is None) and its standard error; [B, d]."""
  dev = samples - (samples.mean(1, keepdims=True) if centre is None else centre[:, None])
  sq = dev ** 2
  return sq.mean(1), sq.std(1) / math.sqrt(samples.shape[1])


STEPS = [("ddpm", 0.0, 150, 300), ("ddpm", 0.0, 0, 40), ("ddim", 0.0, 150, 300),
         ("ddim", 0.5, 300, 500), ("ddim", 0.0, 0, 40)]


@pytest.mark.parametrize("form,eta,s,t", STEPS)
def test_exact_mean_sn_and_npr_equal_the_monte_carlo_variance(form, eta, s, t):
  x_t = _x_t(t, 4, seed=t)
  eps, h, var_eps = _exact(x_t, t)
  sn = np.asarray(covariance.diagonal_variance(h, eps, AC, s, t, "sn", form, eta), np.float64)
  npr = np.asarray(covariance.diagonal_variance(var_eps, eps, AC, s, t, "npr", form, eta),
                   np.float64)
  np.testing.assert_allclose(sn, npr, rtol=1e-4)
  mc, se = _var_and_se(_monte_carlo_x_s(x_t, s, t, form, eta, 40_000, seed=s + t))
  assert np.all(np.abs(npr - mc) < 4.5 * se + 1e-7), (npr, mc, se)
  assert np.ptp(npr) > 10 * se.max()  # the variance really varies by element and state


@pytest.mark.parametrize("form,eta,s,t", [("ddpm", 0.0, 150, 300), ("ddim", 0.0, 150, 300)])
def test_with_a_biased_mean_only_npr_matches(form, eta, s, t):
  """eps_hat = eps* + a state-dependent bias: the optimal variance of the Gaussian step with this
  mean is E[(x_s - mean)^2 | x_t]; NPR's g = Var[eps | x_t] + bias^2 gives it, SN does not."""
  x_t = _x_t(t, 4, seed=7)
  eps, h, var_eps = _exact(x_t, t)
  eps_b = eps + 0.3 * np.tanh(3 * x_t)
  g = var_eps + (eps - eps_b) ** 2
  traj = np.array([s, t])
  coefs = tuple(jnp.asarray(c, jnp.float32) for c in reverse.mean_coefs(AC, traj, form, eta))
  mean, _, _ = reverse.reverse_mean(lambda x, n: jnp.asarray(eps_b, jnp.float32),
                                    jnp.asarray(x_t, jnp.float32), 1,
                                    jnp.asarray(traj, jnp.int32),
                                    jnp.asarray(AC[traj], jnp.float32), coefs, False)
  truth, se = _var_and_se(_monte_carlo_x_s(x_t, s, t, form, eta, 40_000, seed=3),
                          np.asarray(mean, np.float64))
  npr = np.asarray(covariance.diagonal_variance(g, eps_b, AC, s, t, "npr", form, eta), np.float64)
  sn = np.asarray(covariance.diagonal_variance(h, eps_b, AC, s, t, "sn", form, eta), np.float64)
  assert np.all(np.abs(npr - truth) < 4.5 * se + 1e-7), (npr, truth, se)
  assert np.max(np.abs(sn - truth) / se) > 20, (sn, truth, se)


@pytest.mark.parametrize("form,eta", [("ddpm", 0.0), ("ddim", 0.0), ("ddim", 0.5)])
def test_constant_moment_gives_the_analytic_variance(form, eta):
  traj = reverse.make_trajectory("even", 10, 1000)
  gamma = np.linspace(0.2, 1.1, 10)        # values above 1 exercise the lower clip
  gamma[2] = -30.0                         # and one the upper clip
  want = analytic.optimal_variance(gamma, AC, traj, form, eta)
  eps_hat = np.random.RandomState(0).randn(2, 5)
  for k in range(len(traj)):
    s, t = (0 if k == 0 else int(traj[k - 1])), int(traj[k])
    g = np.full((2, 5), 1.0 - gamma[k])
    npr = covariance.diagonal_variance(g, eps_hat, AC, s, t, "npr", form, eta)
    sn = covariance.diagonal_variance(g + eps_hat ** 2, eps_hat, AC, s, t, "sn", form, eta)
    np.testing.assert_allclose(npr, want[k], rtol=1e-5)
    np.testing.assert_allclose(sn, want[k], rtol=1e-4, atol=1e-7)  # float32 (g + e^2) - e^2


def test_clip_is_elementwise_and_traced_steps_agree():
  eps_hat = np.zeros((1, 3), np.float32)
  g = np.array([[-1.0, 1e-3, 10.0]], np.float32)
  s, t = 100, 200
  lam2, gamma2 = covariance.step_coefficients(AC, s, t)
  out = np.asarray(covariance.diagonal_variance(g, eps_hat, AC, s, t, "npr"))
  c = min((1 - AC[t]) / AC[t] * 1e-3, 1.0)
  np.testing.assert_allclose(out[0], [lam2, lam2 + gamma2 * c, lam2 + gamma2], rtol=1e-5)
  unclipped = np.asarray(covariance.diagonal_variance(g, eps_hat, AC, s, t, "npr",
                                                      clip_range=None))
  assert unclipped[0, 0] < lam2 < unclipped[0, 2] and unclipped[0, 2] > lam2 + gamma2
  traced = jax.jit(lambda s, t: covariance.diagonal_variance(
      g, eps_hat, jnp.asarray(AC, jnp.float32), s, t, "npr", "ddim", 0.3))(s, t)
  np.testing.assert_allclose(traced, covariance.diagonal_variance(g, eps_hat, AC, s, t, "npr",
                                                                  "ddim", 0.3), rtol=2e-3)
  with pytest.raises(Exception, match="kind"):
    covariance.diagonal_variance(g, eps_hat, AC, s, t, "bogus")


def test_sampler_reproduces_the_isotropic_one_and_clips_the_first_step():
  traj = reverse.make_trajectory("even", 6, 1000)
  sigma2 = reverse.fixed_variance("beta", AC, traj)
  eps_fn = lambda x, n: 0.5 * x
  x_T = jax.random.normal(jax.random.key(0), (4, 3))
  want = reverse.sample(eps_fn, x_T, jax.random.key(1), AC, traj, sigma2, clip_denoised=False)
  got = reverse.sample_state_dependent(lambda x, n: (eps_fn(x, n), None),
                                       lambda k, e, a: jnp.asarray(sigma2, jnp.float32)[k], x_T,
                                       jax.random.key(1), AC, traj, clip_denoised=False)
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
  fn = covariance.sampling_variance_fn("npr", AC, traj, "ddpm", first_step_clip=2.0)
  big = {"npr": jnp.full((4, 3), 10.0)}
  bound = analytic.first_step_bound(2.0)
  np.testing.assert_allclose(fn(1, x_T, big), bound, rtol=1e-6)
  lam2, gamma2 = covariance.step_coefficients(AC, traj[1], traj[2])
  np.testing.assert_allclose(fn(2, x_T, big), lam2 + gamma2, rtol=1e-5)
  avg = covariance.sampling_variance_fn("npr_avg", AC, traj, first_step_clip=None)
  g = jnp.asarray([[0.0, 0.0, 3e-3]] * 4)
  c = min((1 - AC[traj[2]]) / AC[traj[2]] * 1e-3, 1.0)
  np.testing.assert_allclose(avg(2, x_T, {"npr": g}), lam2 + gamma2 * c, rtol=1e-4)


def test_moments_match_gamma_and_the_closed_form():
  """estimate_moments with the mixture's exact eps* and h*: its 'gamma' is estimate_gamma's (same
  noise keys), and its 'sn' average E mean_d Var[eps | x_t] = (alpha_bar/beta_bar) C_t."""
  ts = np.array([20, 200, 600])
  sa, sb = jnp.asarray(np.sqrt(AC), jnp.float32), jnp.asarray(np.sqrt(1 - AC), jnp.float32)

  def model_fn(x, n):
    eps = MIX.eps(x, sa[n], sb[n])
    h = MIX.eps_second_moment(x, sa[n], sb[n])
    return eps, {"sn": h, "npr": h - eps ** 2}

  x0 = np.asarray(MIX.sample(jax.random.key(5), 4000))
  got = covariance.estimate_moments(model_fn, AC, x0, ts, jax.random.key(6), batch_size=1000)
  gamma = analytic.estimate_gamma(lambda x, n: model_fn(x, n)[0], AC, x0, ts, jax.random.key(6),
                                  batch_size=1000)
  np.testing.assert_allclose(got["gamma"], gamma, rtol=1e-5)
  np.testing.assert_allclose(got["sn"], got["npr"], rtol=1e-5)
  for i, t in enumerate(ts):
    x_t = _x_t(int(t), 20_000, seed=11 + i)
    c = np.asarray(MIX.posterior_trace_var(jnp.asarray(x_t, jnp.float32), sa[t], sb[t]))
    want = AC[t] / (1 - AC[t]) * c
    assert abs(got["sn"][i] - want.mean()) < 0.03 * want.mean() + 1e-6, (t, got["sn"][i], want)
    np.testing.assert_allclose(1 - got["sn"][i], gamma[i], atol=0.03)  # E eps^2 = 1


# ------------------------------------------------------------------------------------------------
# NLL with a state-dependent diagonal covariance


class Moments(QuantisedMixture):
  """QuantisedMixture with its exact per-element E[x_0 | x_t] and E[x_0^2 | x_t]."""

  def model_fn(self, alphas_cumprod, bias):
    sa, sb = np.sqrt(alphas_cumprod), np.sqrt(1 - alphas_cumprod)
    log_p = jnp.asarray(np.log(self.probs), jnp.float32)
    lev = jnp.asarray(self.levels, jnp.float32)

    def fn(x, t):
      a = jnp.asarray(sa, x.dtype)[t][:, None]
      b = jnp.asarray(sb, x.dtype)[t][:, None]
      w = jax.nn.softmax(log_p - (x[..., None] - a[..., None] * lev) ** 2
                         / (2 * b[..., None] ** 2), -1)
      m1, m2 = jnp.sum(w * lev, -1), jnp.sum(w * lev ** 2, -1)
      eps = (x - a * m1) / b
      eps_hat = eps + bias(x, b)
      var_eps = (a / b) ** 2 * (m2 - m1 ** 2)
      h = (x ** 2 - 2 * a * x * m1 + a ** 2 * m2) / b ** 2
      return eps_hat, {"npr": var_eps + (eps - eps_hat) ** 2, "sn": h}
    return fn


def test_state_dependent_nll_with_a_constant_moment_equals_nll_bpd():
  ac = schedules.get_alphas_cumprod("linear", 200)
  data = Moments(dim=4)
  traj = reverse.make_trajectory("even", 8, 200)
  gamma = np.linspace(0.99, 0.5, 8)
  c = 1 - gamma
  eps_fn = data.eps_fn(ac)
  # The NPR moment set to 1 - Gamma_t makes its variance Analytic-DPM's for that Gamma.
  t_of = {int(t): float(v) for t, v in zip(traj, c)}
  table = jnp.asarray([t_of.get(n, 0.0) for n in range(201)], jnp.float32)
  model_fn = lambda x, n: (eps_fn(x, n), {"npr": jnp.broadcast_to(table[n][:, None], x.shape)})
  sigma2 = np.stack([analytic.optimal_variance(gamma, ac, traj),
                     reverse.fixed_variance("beta", ac, traj)])
  x0 = data.sample(0, 64)
  want = nll.nll_bpd(eps_fn, ac, traj, sigma2, x0, jax.random.key(1))
  got = nll.nll_bpd_state_dependent(model_fn, ac, traj, x0, jax.random.key(1), sigma2=sigma2,
                                    variances=("npr", "npr_avg"))
  np.testing.assert_allclose(got[:2], want, rtol=2e-5, atol=2e-5)
  np.testing.assert_allclose(got[2], want[0], rtol=2e-4, atol=2e-4)
  np.testing.assert_allclose(got[3], want[0], rtol=2e-4, atol=2e-4)


def test_npr_nll_with_an_imperfect_mean_beats_the_analytic_variance():
  """Grid-valued data, exact moments, a biased predictor: NPR (its exact g) beats the analytic
  isotropic variance (Gamma of the biased predictor) by > 4 paired s.e. at K = 10 and 25, and g
  itself beats g scaled by 0.6 or 1.6 (it is the optimum); all bounds stay above the entropy."""
  n = 1000
  data = Moments(dim=8)
  bias = lambda x, b: 0.25 * jnp.tanh(4 * x) * b
  fn = data.model_fn(AC, bias)
  scaled = lambda f: (lambda x, t: (fn(x, t)[0], {"npr": f * fn(x, t)[1]["npr"],
                                                  "sn": fn(x, t)[1]["sn"]}))
  test = data.sample(3, 600)
  for k in (10, 25):
    traj = reverse.make_trajectory("even", k, n)
    gamma = analytic.estimate_gamma(lambda x, t: fn(x, t)[0], AC, data.sample(1, 1000), traj,
                                    jax.random.key(2), batch_size=1000)
    sigma2 = analytic.reverse_variance("analytic", AC, traj, gamma=gamma)[None]
    out = np.asarray(nll.nll_bpd_state_dependent(fn, AC, traj, test, jax.random.key(4),
                                                 sigma2=sigma2, variances=("npr", "sn")),
                     np.float64)
    analytic_row, npr, sn = out
    diff = analytic_row - npr
    assert diff.mean() > 4 * diff.std() / math.sqrt(len(diff)), (k, out.mean(1))
    for f in (0.6, 1.6):
      other = np.asarray(nll.nll_bpd_state_dependent(scaled(f), AC, traj, test,
                                                     jax.random.key(4)), np.float64)[0]
      d = other - npr
      assert d.mean() > 4 * d.std() / math.sqrt(len(d)), (k, f, other.mean(), npr.mean())
    for row in out:
      assert row.mean() > data.entropy_bpd - 3 * row.std() / math.sqrt(len(row))
    assert sn.mean() > npr.mean()  # SN's moment is right only for the exact mean
