"""VaES, VaGES and the KSD against independent truth (Gaussian RBM, d = 3, m = 4; Gaussians).

Truths: the GRBM's closed-form score -(v - b) / sigma^2 + W sigmoid(c + W^T v) (ebm.grbm.score) and
its autodiff parameter-Jacobian; hand-derived closed forms, in numpy, of what VaES and VaGES
estimate under a factorised Bernoulli q that is not the posterior (E_q and Cov_q of the GRBM's
joint score, linear in h); enumeration over the 16 hidden states for chi^2(q || p(h | v)); the
exact-score DSM gradient; for the KSD, a float64 numpy double-sum transcription of the Stein kernel
and the closed form of the RBF-kernel KSD between diagonal Gaussians (derived in
`gaussian_ksd_closed_form`). Monte Carlo checks pass within NUM_SE standard errors over R
independent replicas, and each comes with a check that it has the power to fail.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ebm import grbm, ksd, vages

D, M = 3, 4
R = 4000          # independent replicas of each estimate
NUM_SE = 4.0      # tolerance in standard errors of the replica mean
FIELDS = grbm.GRBMParams._fields


def log_joint(p, v, h):
  return -grbm.energy(p, v, h)


def random_grbm(seed=0, w_scale=0.8):
  rs = np.random.RandomState(seed)
  arrays = (w_scale * rs.randn(D, M), rs.uniform(-1, 1, D), rs.uniform(-1, 1, M),
            rs.uniform(0.7, 1.3, D))
  return grbm.GRBMParams(*(jnp.asarray(a, jnp.float32) for a in arrays))


P = random_grbm()
V = jnp.asarray(np.random.RandomState(1).randn(6, D), jnp.float32)
Z = jnp.asarray(np.random.RandomState(2).randn(6, D), jnp.float32)      # a fixed cotangent
SHIFT = np.random.RandomState(3).randn(M)                                # q's logit offset


def posterior_logits(p, v, delta=0.0):
  """Logits of q(h | v): the exact posterior's c + W^T v, moved by delta * SHIFT."""
  return p.c + v @ p.W + delta * jnp.asarray(SHIFT, jnp.float32)


def mean_se(x):
  x = np.asarray(x, np.float64)
  return x.mean(0), x.std(0, ddof=1) / np.sqrt(x.shape[0])


def assert_within_se(samples, truth, name, num_se=NUM_SE):
  """|replica mean - truth| <= num_se standard errors (+ float32 rounding of the estimate)."""
  mean, se = mean_se(samples)
  truth = np.asarray(truth, np.float64)
  slack = num_se * se + 1e-5 * (1 + np.abs(truth))
  assert np.all(np.abs(mean - truth) <= slack), (name, mean, truth, se)


@jax.jit
def vaes_replicas(logits, keys):
  return jax.vmap(lambda k: vages.vaes(log_joint, P, V, vages.bernoulli_particles(logits, k, 2)))(
      keys)


def vages_replicas(logits, keys, num=2, unbiased=True):
  def one(k):
    k_exp, k_cov = jax.random.split(k)
    return vages.vages(log_joint, P, V, Z, vages.bernoulli_particles(logits, k_exp, num),
                       vages.bernoulli_particles(logits, k_cov, num), unbiased)
  return jax.jit(jax.vmap(one))(keys)


def exact_score_gradient(p, v, z):
  """d/dtheta sum_b z_b . s(v_b) by autodiff of the closed-form score."""
  return jax.grad(lambda p: jnp.sum(z * grbm.score(p, v)))(p)


def vages_target_under_q(p, v, z, pi):
  """What VaGES estimates under q = prod_j Bernoulli(pi_j), in closed form (numpy float64).

  With g(h) = grad_v log p~ = -(v - b) / sigma^2 + W h and log p~ = -||(v - b) / sigma||^2 / 2
  + c^T h + v^T W h: E_q d/dtheta (z . g) gives W: z pi^T, b: z / sigma^2, sigma: 2 z (v - b) /
  sigma^3, c: 0; Cov_q(z . g, grad_theta log p~) = Cov_q(z^T W h, (h, v h^T)) gives c: pi (1 - pi) *
  (W^T z) and W: v (pi (1 - pi) * (W^T z))^T. Summed over the batch.
  """
  W, b, c, sigma = (np.asarray(a, np.float64) for a in p)
  v, z, pi = (np.asarray(a, np.float64) for a in (v, z, pi))
  cov_c = pi * (1 - pi) * (z @ W)                                          # [B, m]
  return grbm.GRBMParams(W=z.T @ pi + v.T @ cov_c, b=np.sum(z, 0) / sigma ** 2,
                         c=np.sum(cov_c, 0), sigma=np.sum(2 * z * (v - b), 0) / sigma ** 3)


def test_vaes_with_exact_posterior_is_the_exact_score():
  samples = vaes_replicas(posterior_logits(P, V), jax.random.split(jax.random.key(0), R))
  assert samples.shape == (R,) + V.shape
  assert_within_se(samples, grbm.score(P, V), "vaes")
  _, se = mean_se(samples)
  assert np.all(se > 1e-4)         # the particles do vary: the check above has power


def test_vages_with_exact_posterior_is_the_exact_gradient_of_the_score():
  """Unbiased for L = 2 and L = 5 with the 1/(L-1) covariance; without it (the plug-in 1/L), the
  hidden-bias gradient, which comes from the covariance term only, is off by many errors."""
  truth = exact_score_gradient(P, V, Z)
  # The test's own closed form at q = p is the autodiff truth.
  at_p = vages_target_under_q(P, V, Z, jax.nn.sigmoid(posterior_logits(P, V)))
  for name in FIELDS:
    np.testing.assert_allclose(getattr(at_p, name), getattr(truth, name), rtol=1e-4, atol=1e-5)
  logits = posterior_logits(P, V)
  for num in (2, 5):
    samples = vages_replicas(logits, jax.random.split(jax.random.key(num), R), num)
    for name in FIELDS:
      assert_within_se(getattr(samples, name), getattr(truth, name), f"{name} L={num}")
  biased = vages_replicas(logits, jax.random.split(jax.random.key(9), R), 2, unbiased=False)
  mean, se = mean_se(biased.c)
  assert np.max(np.abs(mean - np.asarray(truth.c)) / se) > 8
  np.testing.assert_allclose(mean, 0.5 * np.asarray(truth.c), atol=NUM_SE * np.max(se))


def test_vages_dsm_gradient_matches_the_exact_score_dsm_gradient():
  """VaGES-DSM (z = VaES + eps / sigma on its own particles) is unbiased for the DSM gradient with
  the exact score, on the same noise."""
  sigma = 0.3
  eps = jax.random.normal(jax.random.key(5), V.shape)
  v_noised = V + sigma * eps
  loss_of_scores = lambda s: jnp.mean(0.5 * jnp.sum((s + eps / sigma) ** 2, -1))
  truth = jax.grad(lambda p: loss_of_scores(grbm.score(p, v_noised)))(P)
  logits = posterior_logits(P, v_noised)

  def one(k):
    ks = jax.random.split(k, 3)
    h = [vages.bernoulli_particles(logits, kk, 2) for kk in ks]
    return vages.vages_loss_grad(loss_of_scores, log_joint, P, v_noised, *h)

  values, grads = jax.jit(jax.vmap(one))(jax.random.split(jax.random.key(6), R))
  for name in FIELDS:
    assert_within_se(getattr(grads, name), getattr(truth, name), name)
  # The loss at VaES is not the exact loss (its square adds the VaES variance): it is larger.
  exact = float(loss_of_scores(grbm.score(P, v_noised)))
  mean, se = mean_se(values)
  assert mean > exact + NUM_SE * se


def chi_square(pi_q, pi_p):
  """chi^2(q || p) = sum_h q(h)^2 / p(h) - 1 per example, by enumeration of the 2^m states."""
  hs = np.array(list(itertools.product([0.0, 1.0], repeat=M)))              # [16, m]
  prob = lambda pi: np.prod(np.where(hs[None], pi[:, None], 1 - pi[:, None]), -1)   # [B, 16]
  q, p = prob(pi_q), prob(pi_p)
  return np.sum(q ** 2 / p, -1) - 1


@pytest.mark.parametrize("delta", [0.0, 0.5, 1.0, 2.0])
def test_bias_grows_as_q_moves_away_from_the_posterior(delta):
  """q's logits moved by delta * SHIFT: VaES and VaGES estimate exactly their closed-form targets
  under q (Monte Carlo), and those targets' distance to the truth grows with delta and obeys the
  bound ||E_q g - E_p g|| <= sqrt(chi^2(q || p) tr Cov_p g) (Cauchy-Schwarz on E_p[(q/p - 1)(g -
  E_p g)], the form of the paper's bias bound by a divergence from the posterior)."""
  W = np.asarray(P.W, np.float64)
  exact_score = np.asarray(grbm.score(P, V), np.float64)
  exact_grad = exact_score_gradient(P, V, Z)
  pi_p = np.asarray(jax.nn.sigmoid(posterior_logits(P, V)), np.float64)

  def targets(d):
    logits = posterior_logits(P, V, d)
    pi = np.asarray(jax.nn.sigmoid(logits), np.float64)
    score_q = exact_score + (pi - pi_p) @ W.T
    grad_q = vages_target_under_q(P, V, Z, pi)
    grad_bias = np.sqrt(sum(np.sum((getattr(grad_q, n) - np.asarray(getattr(exact_grad, n))) ** 2)
                            for n in FIELDS))
    return logits, pi, score_q, grad_q, np.linalg.norm(score_q - exact_score, axis=-1), grad_bias

  logits, pi, score_q, grad_q, score_bias, grad_bias = targets(delta)
  keys = jax.random.split(jax.random.key(int(10 * delta) + 20), R)
  assert_within_se(vaes_replicas(logits, keys), score_q, "vaes under q")
  samples = vages_replicas(logits, keys)
  for name in FIELDS:
    assert_within_se(getattr(samples, name), getattr(grad_q, name), f"vages under q: {name}")
  # tr Cov_p g = sum_j ||W_:j||^2 pi_j (1 - pi_j) (independent Bernoulli h).
  bound = np.sqrt(chi_square(pi, pi_p) * ((pi_p * (1 - pi_p)) @ np.sum(W ** 2, 0)))
  assert np.all(score_bias <= bound + 1e-6)
  if delta == 0.0:
    assert np.all(score_bias < 1e-5) and grad_bias < 1e-4
  else:
    _, _, _, _, smaller_score_bias, smaller_grad_bias = targets(delta / 2)
    assert np.all(score_bias > smaller_score_bias) and grad_bias > smaller_grad_bias
    # and the Monte Carlo mean itself is distinguishable from the exact score
    mean, se = mean_se(vaes_replicas(logits, keys))
    assert np.max(np.abs(mean - exact_score) / se) > 2 * NUM_SE


def test_particle_draws_and_argument_checks():
  logits = posterior_logits(P, V)
  h = vages.bernoulli_particles(logits, jax.random.key(0), 20000)
  assert h.shape == (20000,) + logits.shape and set(np.unique(np.asarray(h))) <= {0.0, 1.0}
  np.testing.assert_allclose(np.asarray(h).mean(0), jax.nn.sigmoid(logits), atol=0.015)
  drawn = vages.draw_particles(lambda v, k: jax.random.normal(k, (v.shape[0], M)), V,
                               jax.random.key(1), 3)
  assert drawn.shape == (3, V.shape[0], M) and not np.allclose(drawn[0], drawn[1])
  with pytest.raises(ValueError, match="at least 2 particles"):
    vages.vages(log_joint, P, V, Z, h[:1], h[:1])
  with pytest.raises(ValueError, match="odd"):
    ksd.ksd_paired(V[:5], V[:5])


# ---------------------------------------------------------------------------------------------
# KSD.


def numpy_ksd(x, s, bandwidth):
  """The U-statistic and the paired estimate by explicit loops over pairs (float64)."""
  x, s = np.asarray(x, np.float64), np.asarray(s, np.float64)
  n, d = x.shape
  h2 = bandwidth ** 2

  def u(i, j):
    diff = x[i] - x[j]
    k = np.exp(-diff @ diff / (2 * h2))
    grad_y = k * diff / h2            # d k / d y at y = x_j
    grad_x = -k * diff / h2
    trace = k * (d / h2 - diff @ diff / h2 ** 2)
    return k * s[i] @ s[j] + s[i] @ grad_y + grad_x @ s[j] + trace

  total = sum(u(i, j) for i in range(n) for j in range(n) if i != j)
  paired = np.mean([u(i, n // 2 + i) for i in range(n // 2)])
  return total / (n * (n - 1)), paired


def test_ksd_matches_a_numpy_double_sum():
  rs = np.random.RandomState(0)
  x, s = rs.randn(10, D), rs.randn(10, D)
  for bandwidth in (0.1, 0.7, 2.0):
    want_u, want_paired = numpy_ksd(x, s, bandwidth)
    with jax.enable_x64(True):
      got_u = float(ksd.ksd_u_statistic(jnp.asarray(x), jnp.asarray(s), bandwidth))
      got_paired = float(ksd.ksd_paired(jnp.asarray(x), jnp.asarray(s), bandwidth))
    assert got_u == pytest.approx(want_u, rel=1e-10, abs=1e-12)
    assert got_paired == pytest.approx(want_paired, rel=1e-10, abs=1e-12)
  assert abs(want_u) > 1e-3          # not trivially zero


def gaussian_ksd_closed_form(mu, s, m, t, bandwidth):
  """KSD^2 of the model N(m, diag t^2) against data N(mu, diag s^2), RBF kernel; numpy.

  E u(x, y) = E[delta(x) . delta(y) k(x, y)], delta = s_model - s_data, whose coordinates are
  delta_i(x_i) = alpha_i + beta_i xi_i at x_i = mu_i + s_i xi_i, alpha = (m - mu) / t^2,
  beta = 1 / s - s / t^2; k = prod_j exp(-s_j^2 (xi_j - eta_j)^2 / (2 h^2)) factorises. With
  u = (xi - eta) / sqrt 2, w = (xi + eta) / sqrt 2 independent N(0, 1) and gamma = s^2 / h^2:
    E k_j = (1 + 2 gamma_j)^(-1/2),
    E[delta_i(x) delta_i(y) k_i]
      = E_u[(alpha^2 + beta^2 (1 - u^2) / 2) exp(-gamma u^2)]
      = (alpha^2 + beta^2 / 2) (1 + 2 gamma)^(-1/2) - (beta^2 / 2) (1 + 2 gamma)^(-3/2).
  """
  mu, s, m, t = (np.asarray(a, np.float64) for a in (mu, s, m, t))
  alpha, beta, gamma = (m - mu) / t ** 2, 1 / s - s / t ** 2, s ** 2 / bandwidth ** 2
  ek = (1 + 2 * gamma) ** -0.5
  term = (alpha ** 2 + beta ** 2 / 2) * ek - beta ** 2 / 2 * (1 + 2 * gamma) ** -1.5
  return float(sum(term[i] * np.prod(np.delete(ek, i)) for i in range(len(mu))))


def gaussian_ksd_replicas(mu, s, m, t, bandwidth, n, estimator):
  mu, s, m, t = (jnp.asarray(a, jnp.float32) for a in (mu, s, m, t))
  score = lambda x: -(x - m) / t ** 2

  def one(k):
    x = mu + s * jax.random.normal(k, (n, mu.shape[0]))
    return estimator(x, score(x), bandwidth)

  return np.asarray(jax.jit(jax.vmap(one))(jax.random.split(jax.random.key(n), R)), np.float64)


@pytest.mark.parametrize("name,mu,s,m,t,bandwidth", [
    ("1-D, official bandwidth", [0.3], [0.2], [0.0], [0.25], 0.1),
    ("1-D, wide kernel", [0.5], [1.0], [-0.2], [1.5], 1.0),
    ("3-D diagonal", [0.2, -0.4, 0.0], [1.0, 0.6, 1.3], [0.0, 0.0, 0.5], [1.2, 0.5, 1.0], 1.0),
])
def test_ksd_estimates_match_the_gaussian_closed_form(name, mu, s, m, t, bandwidth):
  want = gaussian_ksd_closed_form(mu, s, m, t, bandwidth)
  assert want > 0
  for estimator in (ksd.ksd_u_statistic, ksd.ksd_paired):
    est = gaussian_ksd_replicas(mu, s, m, t, bandwidth, 16, estimator)
    mean, se = est.mean(), est.std(ddof=1) / np.sqrt(R)
    assert abs(mean - want) <= NUM_SE * se + 1e-6, (name, estimator.__name__, mean, want, se)
    assert se < 0.1 * want, (name, se, want)      # precise enough to reject a wrong form


def test_ksd_of_a_distribution_with_itself_is_zero_in_expectation():
  """Exact GRBM samples with the GRBM's own exact score: the U-statistic and the paired estimate
  average to 0; against a different GRBM they do not (the check's power)."""
  other = random_grbm(seed=7)

  def one(k):
    x, _ = grbm.sample_exact(P, k, 16)
    return jnp.stack([ksd.ksd_u_statistic_fn(lambda v: grbm.score(P, v), x, 1.0),
                      ksd.ksd_paired_fn(lambda v: grbm.score(P, v), x, 1.0),
                      ksd.ksd_u_statistic_fn(lambda v: grbm.score(other, v), x, 1.0)])

  est = np.asarray(jax.jit(jax.vmap(one))(jax.random.split(jax.random.key(3), R)), np.float64)
  mean, se = est.mean(0), est.std(0, ddof=1) / np.sqrt(R)
  assert np.all(np.abs(mean[:2]) <= NUM_SE * se[:2]), (mean, se)
  assert mean[2] > 10 * se[2], (mean, se)


def test_vages_ksd_gradient_matches_the_exact_score_ksd_gradient():
  """The KSD U-statistic (quadratic in the scores, each pair's term linear in each point's score)
  with VaGES: unbiased for the theta-gradient of the U-statistic with the exact score."""
  x, _ = grbm.sample_exact(random_grbm(seed=4), jax.random.key(11), 8)
  loss_of_scores = lambda s: ksd.ksd_u_statistic(x, s, 1.0)
  truth = jax.grad(lambda p: loss_of_scores(grbm.score(p, x)))(P)
  logits = posterior_logits(P, x)

  def one(k):
    h = [vages.bernoulli_particles(logits, kk, 2) for kk in jax.random.split(k, 3)]
    return vages.vages_loss_grad(loss_of_scores, log_joint, P, x, *h)[1]

  grads = jax.jit(jax.vmap(one))(jax.random.split(jax.random.key(12), R))
  for name in FIELDS:
    assert_within_se(getattr(grads, name), getattr(truth, name), name)


# ---------------------------------------------------------------------------------------------
# The runner's VaGES methods (ebm/experiment.py METHODS).


def _exact_loss(method, model, v, noise_rng, cfg):
  """The loss of a VaGES method with the exact free-energy score, on the step's noise."""
  from ebm import losses
  if method == "vages_ksd":
    return ksd.ksd_paired(v, model.score(v), cfg["bandwidth"])
  return losses.LOSSES[method.removeprefix("vages_")].loss(model, v, noise_rng, cfg)[0]


@pytest.mark.parametrize("method", ["vages_dsm", "vages_mdsm", "vages_ksd"])
def test_step_gradient_with_the_exact_posterior_is_unbiased(method):
  """vages_step_grads (K = 0, q = p(h | v)) through the NNX model and posterior: the per-replica
  difference to the exact-score loss's gradient (same noise; parameters W, b, c, log sigma)
  averages to 0, for each method."""
  from flax import nnx
  from ebm import posteriors
  import optax
  model = grbm.GRBM(D, M, rngs=nnx.Rngs(0))
  model.load_params(P)
  q = posteriors.LinearBernoulliPosterior(D, M, rngs=nnx.Rngs(1))
  q.set_exact(P.W, P.c)
  gd, theta = nnx.split(model)
  qd, phi = nnx.split(q)
  tx = optax.adam(1e-3)
  cfg = {"method": method, "inner_steps": 0, "sigma": 0.3, "sigma_begin": 0.1, "sigma_end": 1.0,
         "sigma0": 0.1, "bandwidth": 1.0}
  v = jnp.asarray(np.random.RandomState(8).randn(8, D), jnp.float32)

  def one(key):
    grads, _, _, _ = vages.vages_step_grads(gd, theta, qd, phi, tx.init(phi), tx, v, key, cfg)
    noise_rng = jax.random.split(key, 3)[1]
    exact = jax.grad(lambda th: _exact_loss(method, nnx.merge(gd, th), v, noise_rng, cfg))(theta)
    return jax.tree.map(lambda a, b: a - b, grads, exact), exact

  diffs, exact = jax.jit(jax.vmap(one))(jax.random.split(jax.random.key(13), R))
  ratios = []
  for diff, ex in zip(jax.tree.leaves(diffs), jax.tree.leaves(exact)):
    mean, se = mean_se(diff)
    scale = np.abs(np.asarray(ex, np.float64).mean(0))
    assert np.all(np.abs(mean) <= NUM_SE * se + 1e-5 * (1 + scale)), (method, mean, se)
    ratios.append(np.max(scale) / max(np.max(se), 1e-12))
  # precise: a relative error of 10% in the largest gradient would show
  assert max(ratios) > 10 * NUM_SE, ratios


@pytest.mark.parametrize("method", ["vages_dsm", "vages_mdsm", "vages_ksd"])
def test_vages_methods_run_on_the_checkerboard_runner(tmp_path, method):
  """The smoke config (6 steps, 2 vmapped seeds, K = 2): the pinned exports, whose test
  log-likelihood an independent numpy quadrature recomputes from grbm.npz; the posterior moved."""
  from configs.ebm import grbm_checkerboard
  from ebm import experiment
  from tests.test_ebm_runner import _test_points, numpy_log_likelihood
  config = grbm_checkerboard.get_config("smoke")
  config.method = method
  experiment.validate(config)
  res = experiment.run(config, str(tmp_path), "train")
  assert res["method"] == method and res["step"] == 6 and res["num_seeds"] == 2
  with np.load(tmp_path / "grbm.npz") as f:
    params = {k: f[k] for k in f.files}
  assert sorted(params) == ["W", "b", "c", "sigma"]
  assert numpy_log_likelihood(params, _test_points(config)) == pytest.approx(
      res["test_log_likelihood"], abs=2e-4)
  with open(tmp_path / "metrics.jsonl") as f:
    assert "lower_loss" in f.read()


def test_vages_config_errors_name_the_field():
  from common.errors import ConfigError
  from configs.ebm import grbm_checkerboard
  from ebm import experiment
  for method, field, value, message in [
      ("vages_dsm", "vages_particles", 1, "loss.vages_particles=1 is invalid"),
      ("vages_ksd", "bandwidth", 0.0, "loss.bandwidth=0.0 is invalid"),
      ("vages_mdsm", "sigma0", -1.0, "loss.sigma0=-1.0 is invalid"),
      ("vages_dsm", "lower", "elbo", "loss.lower='elbo' is invalid")]:
    config = grbm_checkerboard.get_config("smoke")
    config.method = method
    config.loss[field] = value
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
      experiment.validate(config)

