"""DP-optimal trajectories: brute-force optimality, never worse than even/quad, cost identities."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from common.errors import ConfigError
from dpm import analytic, gmm, reverse, schedules


def test_dp_matches_brute_force_on_a_tiny_chain():
  rs = np.random.RandomState(0)
  n, k = 14, 5
  cost = np.full((n + 1, n + 1), np.inf)
  for s in range(1, n + 1):
    for t in range(s + 1, n + 1):
      cost[s, t] = rs.uniform(-1, 1) + 0.1 * (t - s) ** 1.5
  best = min((sum(cost[a, b] for a, b in zip(p[:-1], p[1:])), p)
             for mid in itertools.combinations(range(2, n), k - 2)
             for p in [(1,) + mid + (n,)])
  traj, total = analytic.optimal_trajectory(cost, k)
  assert tuple(traj) == best[1]
  assert total == pytest.approx(best[0], abs=1e-12)
  assert analytic.trajectory_cost(cost, traj) == pytest.approx(total, abs=1e-12)
  many = analytic.optimal_trajectories(cost, [2, 3, k, n])
  assert tuple(many[k][0]) == best[1]
  np.testing.assert_array_equal(many[n][0], np.arange(1, n + 1))    # K = N: every step
  np.testing.assert_array_equal(many[2][0], [1, n])
  with pytest.raises(ConfigError):
    analytic.optimal_trajectory(cost, n + 1)


MIX = gmm.default_mixture(dim=4, seed=2)


@jax.jit
def _exact_gamma(sqrt_a, sqrt_b, x0, noise):
  """Gamma_t = 1 - (alpha_bar_t / beta_bar_t) C_t with C_t from the closed-form posterior
  covariance averaged over the given x_t draws; vectorised over t."""
  def one(a, s, e):
    xt = a * x0 + s * e
    return 1.0 - (a / s) ** 2 * jnp.mean(MIX.posterior_trace_var(xt, a, s))
  return jax.vmap(one)(sqrt_a, sqrt_b, noise)


def _mixture_gamma(schedule, n):
  """Gamma_1..Gamma_N of a mixture in [-1, 1]^4 (256 draws of x_t per t; numpy randomness)."""
  ac = schedules.get_alphas_cumprod(schedule, n)
  rs = np.random.RandomState(0)
  comp = rs.choice(4, 256, p=MIX.weights)
  x0 = MIX.means[comp] + MIX.stds[comp, None] * rs.randn(256, 4)
  noise = rs.randn(n, 256, 4)
  f32 = lambda a: jnp.asarray(a, jnp.float32)
  gamma = _exact_gamma(f32(np.sqrt(ac[1:])), f32(np.sqrt(1 - ac[1:])), f32(x0), f32(noise))
  return ac, np.asarray(gamma, np.float64)


@pytest.mark.parametrize("schedule,variance", [("linear", "analytic"), ("cosine", "analytic"),
                                               ("linear", "beta")])
def test_dp_never_above_even_or_quad(schedule, variance):
  n = 1000
  ac, gamma = _mixture_gamma(schedule, n)
  cost = analytic.dp_cost_matrix(gamma, ac, variance=variance)
  ks = [2, 5, 10, 25, 50, 100]
  best = analytic.optimal_trajectories(cost, ks)
  for k in ks:
    traj, total = best[k]
    assert len(traj) == k and traj[0] == 1 and traj[-1] == n and np.all(np.diff(traj) > 0)
    assert analytic.trajectory_cost(cost, traj) == pytest.approx(total, rel=1e-12)
    for kind in ("even", "quad"):
      other = analytic.trajectory_cost(cost, reverse.make_trajectory(kind, k, n))
      assert np.isfinite(other)
      assert total <= other + 1e-9, (k, kind, total, other)
  assert best[10][1] < analytic.trajectory_cost(cost, reverse.make_trajectory("even", 10, n)) - 0.1
  # (The total need not fall with K: on Gaussian data every path costs the same, since J telescopes
  # there; only where the mixture is far from Gaussian do extra steps pay off.)


def test_dp_cost_is_the_kl_of_the_analytic_variance():
  """J(s,t) + log(beta_bar_t/beta_bar_s) + log(alpha_bar_s/alpha_bar_t) = log(sigma*^2/lambda^2),
  the per-step expected KL (x 2/d) under the optimal variance; with and without the C_t clip."""
  n = 200
  ac = schedules.get_alphas_cumprod("linear", n)
  gamma = np.clip(np.linspace(0.0, 1.1, n) + 0.05 * np.sin(np.arange(n)), 0, None)  # some > 1
  traj = np.array([1, 3, 20, 21, 90, 150, n])
  terms = reverse.step_terms(ac, traj)
  sigma2 = analytic.optimal_variance(gamma, ac, traj)
  lhs = np.log(sigma2[1:] / terms.beta_tilde[1:])
  cost = analytic.dp_cost_matrix(gamma, ac)
  s, t = traj[:-1], traj[1:]
  j = cost[s, t]
  telescoping = np.log((1 - ac[t]) / (1 - ac[s])) + np.log(ac[s] / ac[t])
  np.testing.assert_allclose(j + telescoping, lhs, rtol=1e-10, atol=1e-12)
  # The paper's formula J = log(1 - beta_{t|s} Gamma_t / beta_bar_t) where C_t needs no clip.
  c = (1 - ac[t]) / ac[t] * (1 - gamma[t - 1])
  ok = (c >= 0) & (c <= 1)
  assert ok.sum() >= 2 and not ok.all()
  with np.errstate(invalid="ignore"):
    paper = np.log(1 - (1 - ac[t] / ac[s]) * gamma[t - 1] / (1 - ac[t]))
  np.testing.assert_allclose(j[ok], paper[ok], rtol=1e-10)
  # DDIM form with eta > 0: the cost is log(sigma*^2 / lambda^2) directly.
  cost_ddim = analytic.dp_cost_matrix(gamma, ac, form="ddim", eta=0.5)
  sig = analytic.optimal_variance(gamma, ac, traj, form="ddim", eta=0.5)
  np.testing.assert_allclose(cost_ddim[s, t], np.log(sig[1:] / (0.25 * terms.beta_tilde[1:])),
                             rtol=1e-10)
  with pytest.raises(ConfigError):
    analytic.dp_cost_matrix(gamma, ac, form="ddim", eta=0.0)


def test_dp_cost_of_a_fixed_variance_is_its_kl():
  """For sigma^2 = beta or beta_tilde the cost is 2/d times the step's expected KL,
  log(sigma^2/lambda^2) + sigma*^2/sigma^2 - 1 (sigma*^2 = lambda^2 + gamma^2 C_t from
  optimal_variance), never below the analytic variance's log(sigma*^2/lambda^2), with equality
  nowhere else than where sigma^2 = sigma*^2."""
  n = 200
  ac = schedules.get_alphas_cumprod("linear", n)
  gamma = np.clip(np.linspace(0.0, 1.1, n) + 0.05 * np.sin(np.arange(n)), 0, None)
  traj = np.array([1, 3, 20, 21, 90, 150, n])
  terms = reverse.step_terms(ac, traj)
  s, t = traj[:-1], traj[1:]
  best = analytic.optimal_variance(gamma, ac, traj)[1:]
  lam2 = terms.beta_tilde[1:]
  for name in ("beta", "beta_tilde"):
    sigma2 = reverse.fixed_variance(name, ac, traj)[1:]
    cost = analytic.dp_cost_matrix(gamma, ac, variance=name)
    expected = np.log(sigma2 / lam2) + best / sigma2 - 1.0
    np.testing.assert_allclose(cost[s, t], expected, rtol=1e-9, atol=1e-12)
    assert np.all(cost[s, t] >= np.log(best / lam2) - 1e-12)
  with pytest.raises(ConfigError, match="variance"):
    analytic.dp_cost_matrix(gamma, ac, variance="sn")
  with pytest.raises(ConfigError, match="ddim"):
    analytic.dp_cost_matrix(gamma, ac, variance="ddim")


def test_segmented_dp_keeps_to_the_reliable_prefix():
  n = 200
  ac = schedules.get_alphas_cumprod("linear", n)
  gamma = np.clip(np.linspace(0.0, 0.999, n), 0, None)
  cost = analytic.dp_cost_matrix(gamma, ac)
  assert analytic.reliable_prefix(gamma) == n
  plain = analytic.optimal_trajectories(cost, [5, 20])
  seg = analytic.segmented_trajectories(cost, gamma, [5, 20])
  for k in (5, 20):
    np.testing.assert_array_equal(seg[k], plain[k][0])   # nothing to cut: the plain DP
  noisy = gamma.copy()
  noisy[169] = 1.001                                     # first estimate above 1 at t = 170
  n1 = analytic.reliable_prefix(noisy)
  assert n1 == n - 2 * (n - 170 + 1) == 138
  cost = analytic.dp_cost_matrix(noisy, ac)
  for k in (3, 10, 20, n):
    traj = analytic.segmented_trajectories(cost, noisy, [k])[k]
    assert len(traj) == k and traj[0] == 1 and traj[-1] == n and np.all(np.diff(traj) > 0)
    head = traj[traj <= n1]
    if 2 <= len(head) < k:                               # the head is DP-optimal on 1..N1
      best = analytic.optimal_trajectory(cost[:n1 + 1, :n1 + 1], len(head))[0]
      np.testing.assert_array_equal(head, best)
      assert head[-1] == n1
      np.testing.assert_allclose(np.diff(traj[len(head) - 1:]), (n - n1) / (k - len(head)),
                                 atol=1)                 # the tail is evenly spaced


def test_isotonic_gamma_is_monotone_bounded_and_closer_to_the_truth():
  """On a mixture (true Gamma from the posterior), Monte Carlo-like noise on Gamma makes some
  estimates exceed 1; the refit has C_t non-decreasing, within [0, tr Cov / d], no Gamma above 1,
  and a smaller error in C_t than the clipped raw estimate where the noise matters."""
  n = 1000
  ac, gamma = _mixture_gamma("linear", n)
  rs = np.random.RandomState(1)
  noisy = gamma + 0.002 * rs.randn(n)
  assert np.sum(noisy > 1) > 10
  comp = rs.choice(4, 200_000, p=MIX.weights)
  x = MIX.means[comp] + MIX.stds[comp, None] * rs.randn(200_000, 4)
  upper = analytic.data_variance(x)
  truth = analytic.posterior_variance(gamma, ac[1:], None)
  assert np.all(truth <= upper * 1.05)                   # law of total variance
  refit = analytic.isotonic_gamma(noisy, ac, upper)
  c = analytic.posterior_variance(refit, ac[1:], None)
  assert np.all(np.diff(c) >= -1e-9) and c.min() >= 0 and c.max() <= upper + 1e-9
  assert np.all(refit <= 1 + 1e-12)
  raw = analytic.posterior_variance(noisy, ac[1:], (0.0, 1.0))
  late = slice(n // 2, n)
  assert np.mean((c[late] - truth[late]) ** 2) < 0.5 * np.mean((raw[late] - truth[late]) ** 2)
