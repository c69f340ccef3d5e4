"""Exact Gaussian-RBM tools, AIS and samplers against independent truth.

Truths: numerical integration of exp(-F) on a 2-D grid (F written again here in numpy), brute-force
enumeration of binary states, finite differences of the exact log density, the closed-form Fisher
divergence between two Gaussians (W = 0), and grid quadrature with numpy finite-difference scores.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ebm import ais, grbm, samplers
from ebm.grbm import BinaryRBMParams, GRBMParams


def random_grbm(d, m, seed, w_scale=1.0, dtype=np.float64):
  rs = np.random.RandomState(seed)
  return GRBMParams(
      jnp.asarray(w_scale * rs.randn(d, m), dtype), jnp.asarray(rs.uniform(-1, 1, d), dtype),
      jnp.asarray(rs.uniform(-1, 1, m), dtype), jnp.asarray(rs.uniform(0.5, 1.5, d), dtype))


def np_free_energy(p, v):
  W, b, c, s = (np.asarray(x, np.float64) for x in p)
  return 0.5 * np.sum(((v - b) / s) ** 2, -1) - np.sum(np.logaddexp(0, c + v @ W), -1)


def grid(p, n=801, width=8.0):
  """A square grid covering every component N(b + sigma^2 W h, sigma^2) by `width` std devs."""
  W, b, c, s = (np.asarray(x, np.float64) for x in p)
  reach = s ** 2 * np.sum(np.abs(W), 1)
  axes = [np.linspace(b[i] - reach[i] - width * s[i], b[i] + reach[i] + width * s[i], n)
          for i in range(2)]
  xx, yy = np.meshgrid(*axes, indexing="ij")
  cell = (axes[0][1] - axes[0][0]) * (axes[1][1] - axes[1][0])
  return axes, np.stack([xx, yy], -1), cell


def grid_log_z(p, n=801):
  _, pts, cell = grid(p, n)
  log_f = -np_free_energy(p, pts.reshape(-1, 2))
  return np.logaddexp.reduce(log_f) + np.log(cell)


def test_log_z_matches_grid_integration():
  with jax.enable_x64(True):
    for seed, m in [(0, 3), (1, 5)]:
      p = random_grbm(2, m, seed)
      exact = float(grbm.log_z(p))
      assert abs(exact - grid_log_z(p)) < 1e-6, (seed, exact, grid_log_z(p))
      # Chunking does not change the sum.
      assert abs(float(grbm.log_z(p, chunk_size=4)) - exact) < 1e-10


def test_binary_log_z_matches_brute_force():
  rs = np.random.RandomState(3)
  d, m = 4, 5
  W, b, c = rs.randn(d, m), rs.randn(d), rs.randn(m)
  states = lambda k: np.array(list(itertools.product([0, 1], repeat=k)), np.float64)
  v, h = states(d), states(m)
  neg_e = (v @ b)[:, None] + (h @ c)[None, :] + v @ W @ h.T
  truth = np.logaddexp.reduce(neg_e.ravel())
  with jax.enable_x64(True):
    p = BinaryRBMParams(jnp.asarray(W), jnp.asarray(b), jnp.asarray(c))
    assert abs(float(grbm.binary_log_z(p)) - truth) < 1e-10


def test_exact_score_matches_finite_differences():
  with jax.enable_x64(True):
    p = random_grbm(3, 4, seed=2)
    v = jnp.asarray(np.random.RandomState(0).randn(5, 3))
    logz = grbm.log_z(p)
    delta = 1e-5
    fd = np.stack([(grbm.log_prob(p, v + delta * e, logz) - grbm.log_prob(p, v - delta * e, logz))
                   / (2 * delta) for e in np.eye(3)], -1)
    np.testing.assert_allclose(np.asarray(grbm.score(p, v)), fd, rtol=1e-7, atol=1e-8)
    # log p integrates to one (grid check of -F - log Z in 2-D).
    p2 = random_grbm(2, 3, seed=4)
    _, pts, cell = grid(p2)
    mass = np.sum(np.exp(np.asarray(grbm.log_prob(p2, jnp.asarray(pts.reshape(-1, 2)))))) * cell
    assert abs(mass - 1.0) < 1e-6


def test_posterior_matches_enumerated_joint():
  with jax.enable_x64(True):
    p = random_grbm(3, 4, seed=5)
    W, b, c, s = (np.asarray(x) for x in p)
    v = np.random.RandomState(1).randn(6, 3)
    h = np.array(list(itertools.product([0, 1], repeat=4)), np.float64)      # [16, 4]
    neg_e = (-0.5 * np.sum(((v - b) / s) ** 2, -1))[:, None] + (h @ c)[None] + v @ W @ h.T
    joint = np.exp(neg_e - np.logaddexp.reduce(neg_e, axis=1, keepdims=True))   # p(h | v)
    np.testing.assert_allclose(np.asarray(grbm.posterior_probs(p, jnp.asarray(v))), joint @ h,
                               rtol=1e-10)
    for k in range(len(h)):
      hk = jnp.asarray(np.broadcast_to(h[k], (6, 4)))
      np.testing.assert_allclose(np.exp(np.asarray(grbm.log_posterior(p, hk, jnp.asarray(v)))),
                                 joint[:, k], rtol=1e-10)


def grid_moments(p):
  _, pts, cell = grid(p, n=601)
  pts = pts.reshape(-1, 2)
  w = np.exp(-np_free_energy(p, pts))
  w /= w.sum()
  mean = w @ pts
  return mean, (pts - mean).T @ (w[:, None] * (pts - mean))


def check_moments(samples, p, tol_sd=4.0):
  """Sample mean and covariance against grid quadrature, within tol_sd standard errors."""
  x = np.asarray(samples, np.float64)
  n = len(x)
  mean, cov = grid_moments(p)
  se_mean = np.sqrt(np.diag(cov) / n)
  assert np.all(np.abs(x.mean(0) - mean) < tol_sd * se_mean), (x.mean(0), mean, se_mean)
  centred = x - mean
  prods = centred[:, :, None] * centred[:, None, :]
  se_cov = prods.reshape(n, -1).std(0) / np.sqrt(n)
  assert np.all(np.abs(prods.mean(0) - cov).ravel() < tol_sd * se_cov), (prods.mean(0), cov)


def test_exact_samples_and_gibbs_match_grid_moments():
  p = random_grbm(2, 3, seed=6, dtype=np.float32)
  v, h = grbm.sample_exact(p, jax.random.key(0), 100_000)
  assert v.shape == (100_000, 2) and h.shape == (100_000, 3)
  check_moments(v, p)
  # Hidden frequencies against the enumerated marginal (the categorical step).
  freq = np.bincount(np.asarray(h, np.int64) @ (2 ** np.arange(3)), minlength=8) / 100_000
  probs = np.exp(np.asarray(grbm.hidden_marginal_logits(p)))
  assert np.all(np.abs(freq - probs) < 4 * np.sqrt(probs * (1 - probs) / 100_000) + 1e-4)
  # Block Gibbs: independent chains from a uniform start, long enough to forget it.
  v0 = jax.random.uniform(jax.random.key(1), (20_000, 2), jnp.float32, -3.0, 3.0)
  check_moments(samplers.block_gibbs(p, jax.random.key(2), v0, 100), p)


def test_fisher_divergence_zero_and_closed_form():
  p = random_grbm(2, 3, seed=7, dtype=np.float32)
  est, se = grbm.fisher_divergence(p, p, jax.random.key(0), 1000)
  assert float(est) == 0.0 and float(se) == 0.0
  # W = 0: two diagonal Gaussians N(b, sigma^2), closed form
  # 0.5 sum_i [(s_p/s_q^2 - 1/s_p)^2 + ((b_p - b_q)/s_q^2)^2].
  zero = lambda q: q._replace(W=jnp.zeros_like(q.W))
  gp, gq = zero(p), zero(random_grbm(2, 3, seed=8, dtype=np.float32))
  sp, sq, bp, bq = (np.asarray(x, np.float64) for x in (gp.sigma, gq.sigma, gp.b, gq.b))
  truth = 0.5 * np.sum((sp / sq ** 2 - 1 / sp) ** 2 + ((bp - bq) / sq ** 2) ** 2)
  est, se = grbm.fisher_divergence(gp, gq, jax.random.key(1), 200_000)
  assert abs(float(est) - truth) < 4 * float(se) and float(se) < 0.02 * truth


def test_fisher_divergence_matches_grid_brute_force():
  """W != 0: the truth is a grid integral with scores from numpy finite differences of log F."""
  p = random_grbm(2, 2, seed=9, dtype=np.float32)
  q = random_grbm(2, 2, seed=10, dtype=np.float32)
  axes, pts, cell = grid(p, n=801)
  log_p = -np_free_energy(p, pts)
  log_q = -np_free_energy(q, pts)
  diff = [np.gradient(log_p - log_q, axes[i], axis=i) for i in range(2)]
  dens = np.exp(log_p - np.logaddexp.reduce(log_p.ravel()))   # normalised on the grid
  truth = np.sum(dens * 0.5 * (diff[0] ** 2 + diff[1] ** 2))
  est, se = grbm.fisher_divergence(p, q, jax.random.key(2), 200_000)
  assert abs(float(est) - truth) < 4 * float(se) + 1e-3 * truth, (float(est), truth, float(se))
  assert float(se) < 0.02 * truth


def test_ais_agrees_with_enumeration_within_error_bar():
  """12 hidden units (4096 states): AIS within 3 standard errors, and the error bar is small."""
  p = random_grbm(3, 12, seed=11, w_scale=0.5, dtype=np.float32)
  exact = float(grbm.log_z(p))
  res = ais.ais_log_z(p, jax.random.key(0), num_chains=500, num_betas=500)
  assert 0 < float(res.stderr) < 0.02, float(res.stderr)
  assert abs(float(res.log_z) - exact) < 3 * float(res.stderr), (float(res.log_z), exact)
  rs = np.random.RandomState(12)
  bp = BinaryRBMParams(jnp.asarray(0.5 * rs.randn(10, 12), jnp.float32),
                       jnp.asarray(rs.randn(10) * 0.5, jnp.float32),
                       jnp.asarray(rs.randn(12) * 0.5, jnp.float32))
  exact = float(grbm.binary_log_z(bp))
  res = ais.ais_log_z(bp, jax.random.key(1), num_chains=500, num_betas=500)
  assert 0 < float(res.stderr) < 0.02, float(res.stderr)
  assert abs(float(res.log_z) - exact) < 3 * float(res.stderr), (float(res.log_z), exact)


def test_module_export_is_the_pinned_form():
  model = grbm.GRBM(3, 4, rngs=nnx.Rngs(0))
  model.log_sigma[...] = jnp.asarray([0.1, -0.2, 0.3])
  out = model.to_npz_dict()
  assert {k: v.shape for k, v in out.items()} == {"W": (3, 4), "b": (3,), "c": (4,), "sigma": (3,)}
  assert all(v.dtype == np.float32 for v in out.values())
  np.testing.assert_allclose(out["sigma"], np.exp([0.1, -0.2, 0.3]), rtol=1e-6)
  rs = np.random.RandomState(0)
  v, h = rs.randn(5, 3), rs.randint(0, 2, (5, 4)).astype(np.float64)
  pinned = (0.5 * np.sum(((v - out["b"]) / out["sigma"]) ** 2, -1) - h @ out["c"]
            - np.sum((v @ out["W"]) * h, -1))
  np.testing.assert_allclose(np.asarray(model.energy(jnp.asarray(v, jnp.float32),
                                                     jnp.asarray(h, jnp.float32))),
                             pinned, rtol=1e-5)
  other = grbm.GRBM(3, 4, rngs=nnx.Rngs(1))
  other.load_params(out)
  np.testing.assert_allclose(other.to_npz_dict()["W"], out["W"])
  np.testing.assert_allclose(other.to_npz_dict()["sigma"], out["sigma"], rtol=1e-6)


def test_langevin_samples_a_gaussian_and_schedule():
  temps = samplers.paper_temperatures()
  assert temps.shape == (2700,) and temps[0] == 100 and temps[-1] == 0
  assert abs(temps[2499] - 1.0) < 0.01 and np.all(np.diff(temps[500:2500]) < 0)
  # At T = 1 on E(v) = ||(v - b) / sigma||^2 / 2 (a GRBM with W = 0) the discretised chain
  # x' = (1 - a) x + a b + s z, a = s^2 / (2 sigma^2), is exactly Gaussian at stationarity with
  # mean b and variance sigma^2 / (1 - a / 2); 1500 steps forget x0 = 0 (rate a >= 0.005).
  p = random_grbm(2, 1, seed=13, dtype=np.float32)
  energy = lambda v: 0.5 * jnp.sum(((v - p.b) / p.sigma) ** 2, -1)
  n, step = 10_000, 0.15
  x = samplers.annealed_langevin(energy, jnp.zeros((n, 2), jnp.float32), jax.random.key(0),
                                 jnp.ones(1500), step_size=step, denoise_sigma=None)
  x, sigma2 = np.asarray(x, np.float64), np.asarray(p.sigma, np.float64) ** 2
  var = sigma2 / (1 - step ** 2 / (4 * sigma2))
  assert np.all(np.abs(x.mean(0) - np.asarray(p.b)) < 4 * np.sqrt(var / n))
  assert np.all(np.abs(x.var(0) / var - 1) < 4 * np.sqrt(2 / n))
  # The final denoising step is x - sigma_0^2 grad E(x).
  y = samplers.annealed_langevin(energy, jnp.ones((3, 2)), jax.random.key(1), jnp.zeros(1),
                                 step_size=0.0, denoise_sigma=0.1)
  grad = (1.0 - np.asarray(p.b)) / sigma2
  np.testing.assert_allclose(np.asarray(y), np.broadcast_to(1.0 - 0.01 * grad, (3, 2)), rtol=1e-5)
