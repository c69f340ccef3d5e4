"""Single-level EBM losses against independent truth (Gaussian RBM, d = 2, m = 3).

Truths: Hyvarinen's objective 0.5 ||s||^2 + tr grad s written in closed form in numpy (its gradient
by finite differences), the Fisher divergence to a known GRBM (exact scores), Gauss-Hermite
quadrature over the DSM noise, the exact maximum-likelihood gradient through enumeration of log Z,
and the NCE stationarity of the true model.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from common.errors import ConfigError
from ebm import grbm, losses
from ebm.grbm import GRBMParams

D, M = 2, 3


def random_params(seed, w_scale=1.0, dtype=np.float64):
  """Numpy arrays, so that float64 ones are only made into JAX arrays inside enable_x64."""
  rs = np.random.RandomState(seed)
  return GRBMParams((w_scale * rs.randn(D, M)).astype(dtype), rs.uniform(-1, 1, D).astype(dtype),
                    rs.uniform(-1, 1, M).astype(dtype), rs.uniform(0.6, 1.4, D).astype(dtype))


def make_model(p, dtype=jnp.float64):
  model = grbm.GRBM(D, M, rngs=nnx.Rngs(0), dtype=dtype)
  model.load_params(p)
  return model


def flat(state):
  """{'W': array, ...} from an nnx.State (nested names joined with '/')."""
  leaves = jax.tree_util.tree_flatten_with_path(state)[0]
  name = lambda path: "/".join(str(getattr(k, "key", "")) for k in path if hasattr(k, "key"))
  return {name(path): np.asarray(leaf, np.float64) for path, leaf in leaves}


def np_hyvarinen(theta, v):
  """mean_b 0.5 ||s(v_b)||^2 + tr grad s(v_b) of a GRBM, closed form (numpy float64)."""
  W, b, c, s2 = theta["W"], theta["b"], theta["c"], np.exp(2 * theta["log_sigma"])
  sig = 1 / (1 + np.exp(-(c + v @ W)))
  score = -(v - b) / s2 + sig @ W.T
  trace = -np.sum(1 / s2) + (sig * (1 - sig)) @ np.sum(W ** 2, 0)
  return np.mean(0.5 * np.sum(score ** 2, -1) + trace)


def fd_grad(fn, theta, delta=1e-6):
  grads = {}
  for k, x in theta.items():
    g = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
      up, down = dict(theta), dict(theta)
      up[k], down[k] = x.copy(), x.copy()
      up[k][idx] += delta
      down[k][idx] -= delta
      g[idx] = (fn(up) - fn(down)) / (2 * delta)
    grads[k] = g
  return grads


def assert_close(got, want, rtol, atol=0.0):
  for k in want:
    np.testing.assert_allclose(got[k], want[k], rtol=rtol, atol=atol, err_msg=k)


def mean_and_se(stacked):
  """Per-component mean and standard error over the leading (replica) axis."""
  return ({k: v.mean(0) for k, v in stacked.items()},
          {k: v.std(0, ddof=1) / np.sqrt(v.shape[0]) for k, v in stacked.items()})


def assert_within(mean, se, want, num_se=4.0):
  """|mean - want| within num_se standard errors (plus float32 rounding of the estimate)."""
  for k in want:
    slack = num_se * se[k] + 1e-5 * np.abs(want[k]) + 1e-7
    assert np.all(np.abs(mean[k] - want[k]) <= slack), (k, mean[k], want[k], se[k])


THETA = random_params(0)
V = np.random.RandomState(1).uniform(0, 1, (8, D))      # checkerboard-like inputs


def hyvarinen_grad_truth(p=THETA, v=V):
  theta = flat(nnx.split(make_model(p))[1])
  return np_hyvarinen(theta, v), fd_grad(lambda t: np_hyvarinen(t, v), theta)


def test_ssm_over_all_rademacher_projections_is_hyvarinen():
  """Averaged over the 2^d sign vectors, the sliced objective is exactly 0.5||s||^2 + tr grad s."""
  with jax.enable_x64(True):
    value_truth, grad_truth = hyvarinen_grad_truth()
    gd, state = nnx.split(make_model(THETA))
    signs = np.array(list(itertools.product([-1.0, 1.0], repeat=D)))

    def expected(state):
      score_fn = losses.free_energy_score_fn(nnx.merge(gd, state))
      v = jnp.asarray(V)
      return jnp.mean(jnp.stack([jnp.mean(losses.sliced_objective(
          score_fn, v, jnp.broadcast_to(u, v.shape))) for u in signs]))

    value, grads = jax.jit(jax.value_and_grad(expected))(state)
    assert abs(float(value) - value_truth) < 1e-10
    assert_close(flat(grads), grad_truth, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("projection", ["rademacher", "gaussian"])
def test_ssm_loss_gradient_is_unbiased(projection):
  with jax.enable_x64(True):
    _, grad_truth = hyvarinen_grad_truth()
  gd, state = nnx.split(make_model(random_params(0, dtype=np.float32), jnp.float32))
  spec, cfg = losses.LOSSES["ssm"], {"projection": projection}
  v = jnp.asarray(V, jnp.float32)
  grad = jax.jit(jax.vmap(lambda key: losses.value_and_grad(spec.loss, gd, state, v, key, cfg)[3]))
  mean, se = mean_and_se(flat(grad(jax.random.split(jax.random.key(0), 2000))))
  assert_within(mean, se, grad_truth)
  assert max(np.max(se[k]) for k in se) < 0.1 * max(np.max(np.abs(grad_truth[k])) for k in se)


def test_ssm_expected_gradient_is_the_fisher_divergence_gradient():
  """On exact samples of a GRBM p*, grad E_u[SSM] - grad 0.5||s_theta - s_*||^2 has mean zero
  (integration by parts), per sample; tested within 4 standard errors on 20,000 samples."""
  data_p = random_params(5, dtype=np.float32)
  x, _ = grbm.sample_exact(data_p, jax.random.key(0), 20_000)
  gd, state = nnx.split(make_model(random_params(0, dtype=np.float32), jnp.float32))
  signs = jnp.asarray(list(itertools.product([-1.0, 1.0], repeat=D)), jnp.float32)

  def ssm(state, v):
    fn = losses.free_energy_score_fn(nnx.merge(gd, state))
    return jnp.mean(jax.vmap(lambda u: losses.sliced_objective(fn, v, u[None])[0])(signs))

  def fisher(state, v):
    return 0.5 * jnp.sum((nnx.merge(gd, state).score(v) - grbm.score(data_p, v)) ** 2)

  diff = jax.jit(jax.vmap(lambda v: jax.tree.map(
      lambda a, b: a - b, jax.grad(ssm)(state, v[None]), jax.grad(fisher)(state, v[None]))))
  per_fisher = jax.jit(jax.vmap(lambda v: jax.grad(fisher)(state, v[None])))
  mean, se = mean_and_se(flat(diff(x)))
  assert_within(mean, se, {k: np.zeros_like(v) for k, v in mean.items()})
  fisher_mean, _ = mean_and_se(flat(per_fisher(x)))
  assert max(np.max(np.abs(fisher_mean[k])) / np.max(se[k]) for k in se) > 20  # not vacuous


def gauss_hermite(n=20):
  x, w = np.polynomial.hermite_e.hermegauss(n)            # weight exp(-x^2 / 2)
  w = w / np.sqrt(2 * np.pi)
  nodes = np.array(list(itertools.product(x, repeat=D)))
  weights = np.prod(np.array(list(itertools.product(w, repeat=D))), 1)
  return nodes, weights


def test_dsm_gradient_approaches_the_score_matching_gradient():
  """E_eps of the DSM gradient (quadrature): its distance to the SM gradient falls ~sigma^2."""
  with jax.enable_x64(True):
    _, grad_truth = hyvarinen_grad_truth()
    gd, state = nnx.split(make_model(THETA))
    nodes, weights = (jnp.asarray(a) for a in gauss_hermite())
    v = jnp.asarray(V)

    @jax.jit
    def expected_grad(state, sigma):
      def loss(state):
        score_fn = losses.free_energy_score_fn(nnx.merge(gd, state))
        per = jax.vmap(lambda eps: losses.denoising_objective(
            score_fn(v + sigma * eps), jnp.broadcast_to(eps, v.shape),
            jnp.full((v.shape[0],), sigma)))(nodes)                       # [nodes, B]
        return jnp.mean(weights @ per)
      return jax.grad(loss)(state)

    norm = np.sqrt(sum(np.sum(g ** 2) for g in grad_truth.values()))
    errors = []
    for sigma in (0.2, 0.1, 0.05):
      got = flat(expected_grad(state, sigma))
      errors.append(np.sqrt(sum(np.sum((got[k] - grad_truth[k]) ** 2) for k in grad_truth)))
    ratios = [errors[1] / errors[0], errors[2] / errors[1]]
    assert all(0.15 < r < 0.35 for r in ratios), (errors, ratios)   # O(sigma^2): 1/4 per halving
    assert errors[-1] < 0.01 * norm, (errors, norm)


def test_dsm_loss_draws_its_noise_as_specified():
  """The sampled DSM loss (sigma = 0.2) averages to the quadrature expectation."""
  gd, state = nnx.split(make_model(random_params(0, dtype=np.float32), jnp.float32))
  nodes, weights = gauss_hermite()
  v = jnp.asarray(V, jnp.float32)
  score_fn = losses.free_energy_score_fn(nnx.merge(gd, state))
  per = jax.jit(jax.vmap(lambda e: losses.denoising_objective(
      score_fn(v + 0.2 * e), jnp.broadcast_to(e, v.shape), jnp.full((8,), 0.2))))(
          jnp.asarray(nodes, jnp.float32))
  expected = float(np.mean(weights @ np.asarray(per, np.float64)))
  spec = losses.LOSSES["dsm"]
  values = jax.jit(jax.vmap(lambda k: spec.loss(nnx.merge(gd, state), v, k, {"sigma": 0.2})[0]))(
      jax.random.split(jax.random.key(1), 4000))
  values = np.asarray(values, np.float64)
  assert abs(values.mean() - expected) < 4 * values.std() / np.sqrt(len(values))


def test_mdsm_grid_and_its_reduction_to_dsm():
  sig = np.asarray(losses.mdsm_sigmas(5, {"sigma_begin": 0.05, "sigma_end": 1.0}))
  np.testing.assert_allclose(sig[[0, -1]], [0.05, 1.0], rtol=1e-6)
  np.testing.assert_allclose(sig[1:] / sig[:-1], (1.0 / 0.05) ** 0.25, rtol=1e-5)   # geometric
  lin = np.asarray(losses.mdsm_sigmas(5, {"sigma_begin": 0.1, "sigma_end": 0.5,
                                          "sigma_spacing": "linear"}))
  np.testing.assert_allclose(lin, [0.1, 0.2, 0.3, 0.4, 0.5], rtol=1e-6)
  # With every sigma_i = sigma_0 = sigma the MDSM objective is the DSM objective / sigma^2.
  model = make_model(random_params(0, dtype=np.float32), jnp.float32)
  v, key, s = jnp.asarray(V, jnp.float32), jax.random.key(3), 0.3
  mdsm = losses.LOSSES["mdsm"].loss(model, v, key, {"sigma_begin": s, "sigma_end": s,
                                                    "sigma0": s})[0]
  dsm = losses.LOSSES["dsm"].loss(model, v, key, {"sigma": s})[0]
  np.testing.assert_allclose(float(mdsm), float(dsm) / s ** 2, rtol=1e-5)


def ml_gradient(gd, state, v):
  """The exact negative log-likelihood gradient, mean F(v) + log Z by enumeration."""
  def nll(state):
    model = nnx.merge(gd, state)
    return jnp.mean(model.free_energy(v)) + grbm.log_z(model.params())
  return flat(jax.grad(nll)(state))


DATA_P = random_params(7, w_scale=0.6, dtype=np.float32)
MODEL_P = random_params(8, w_scale=0.4, dtype=np.float32)   # small couplings: Gibbs mixes fast


def test_cd10_gradient_matches_the_exact_likelihood_gradient():
  gd, state = nnx.split(make_model(MODEL_P, jnp.float32))
  v, _ = grbm.sample_exact(DATA_P, jax.random.key(0), 256)
  spec = losses.LOSSES["cd10"]
  grads = jax.jit(jax.vmap(lambda k: losses.value_and_grad(spec.loss, gd, state, v, k, {})[3]))(
      jax.random.split(jax.random.key(1), 64))
  mean, se = mean_and_se(flat(grads))
  truth = ml_gradient(gd, state, v)
  assert_within(mean, se, truth)
  assert max(np.max(np.abs(truth[k])) / np.max(se[k]) for k in se) > 20


def test_pcd1_chains_carry_over_and_reach_the_model():
  """30 PCD-1 steps at fixed theta: the carried chains are then model samples, so the gradient is
  the exact likelihood gradient (within 4 standard errors over 64 replicas)."""
  gd, state = nnx.split(make_model(MODEL_P, jnp.float32))
  v, _ = grbm.sample_exact(DATA_P, jax.random.key(0), 256)
  spec = losses.LOSSES["pcd1"]

  def replica(key):
    init_key, run_key = jax.random.split(key)
    carry = spec.init_carry(nnx.merge(gd, state), v, init_key, {})
    assert carry.shape == (256, M)

    def step(carry, k):
      _, _, carry, grads = losses.value_and_grad(spec.loss, gd, state, v, k, {}, carry)
      return carry, grads
    _, grads = jax.lax.scan(step, carry, jax.random.split(run_key, 30))
    return jax.tree.map(lambda g: g[-1], grads)

  mean, se = mean_and_se(flat(jax.jit(jax.vmap(replica))(jax.random.split(jax.random.key(2), 64))))
  assert_within(mean, se, ml_gradient(gd, state, v))


def test_nce_true_model_is_stationary_and_log_z_gradient_has_the_right_sign():
  data_p = DATA_P
  model = losses.WithLogZ(make_model(data_p, jnp.float32))
  true_log_z = float(grbm.log_z(data_p))
  big, _ = grbm.sample_exact(data_p, jax.random.key(0), 20_000)
  cfg = {"noise": losses.fit_gaussian(np.asarray(big)), "nu": 2}
  spec = losses.LOSSES["nce"]
  v_all, _ = grbm.sample_exact(data_p, jax.random.key(1), 64 * 256)
  v_all = v_all.reshape(64, 256, D)

  gd, state = nnx.split(model)
  keys = jax.random.split(jax.random.key(2), 64)
  fn = jax.jit(jax.vmap(lambda state, v, k: losses.value_and_grad(spec.loss, gd, state, v, k,
                                                                    cfg)[3], (None, 0, 0)))

  def grads_at(log_z):
    state["log_z"][...] = jnp.asarray(log_z, jnp.float32)
    return mean_and_se(flat(fn(state, v_all, keys)))

  mean, se = grads_at(true_log_z)
  assert_within(mean, se, {k: np.zeros_like(v) for k, v in mean.items()})
  mean, se = grads_at(true_log_z + 0.5)   # a too-large normaliser: the loss falls as log_z does
  assert mean["log_z"] > 10 * se["log_z"]


def test_registry_and_validation_errors_name_the_field():
  assert set(losses.LOSSES.names()) == {"cd1", "cd5", "cd10", "pcd1", "ssm", "dsm", "mdsm", "nce",
                                          "ksd", "ml"}
  with pytest.raises(ConfigError, match="valid names: cd1, cd10"):
    losses.LOSSES.get("cd2", field="method")
  with pytest.raises(ConfigError, match="loss.sigma="):
    losses.validate({"sigma": 0.0}, "dsm")
  with pytest.raises(ConfigError, match="loss.sigma_spacing="):
    losses.validate({"sigma_spacing": "log"}, "mdsm")
  with pytest.raises(ConfigError, match="loss.projection="):
    losses.validate({"projection": "sphere"}, "ssm")
  with pytest.raises(ConfigError, match="loss.nu="):
    losses.validate({"nu": 0.5}, "nce")
  with pytest.raises(ConfigError, match="loss.noise is missing"):
    losses.LOSSES["nce"].loss(losses.WithLogZ(make_model(DATA_P, jnp.float32)),
                              jnp.zeros((2, D)), jax.random.key(0), {})


def np_ksd_paired(theta, v, h):
  """The paired-halves KSD of a GRBM with its closed-form score and an RBF kernel (numpy)."""
  W, b, c, s2 = theta["W"], theta["b"], theta["c"], np.exp(2 * theta["log_sigma"])
  score = -(v - b) / s2 + (1 / (1 + np.exp(-(c + v @ W)))) @ W.T
  half = len(v) // 2
  x, y, sx, sy = v[:half], v[half:], score[:half], score[half:]
  diff = x - y
  r2 = np.sum(diff ** 2, -1)
  u = np.exp(-r2 / (2 * h * h)) * (np.sum(sx * sy, -1) + (np.sum((sx - sy) * diff, -1)) / h ** 2
                                  + x.shape[-1] / h ** 2 - r2 / h ** 4)
  return np.mean(u)


def test_ksd_loss_is_the_paired_stein_discrepancy_with_the_exact_score():
  """Value against a numpy closed form (score and Stein kernel written out), gradient against its
  central differences, at the official bandwidth 0.1 and at 0.5."""
  with jax.enable_x64(True):
    gd, state = nnx.split(make_model(THETA))
    theta = flat(state)
    for h in (0.1, 0.5):
      loss = lambda s: losses.LOSSES["ksd"].loss(nnx.merge(gd, s), jnp.asarray(V), None,
                                                 {"bandwidth": h})[0]
      value, grads = jax.value_and_grad(loss)(state)
      assert abs(float(value) - np_ksd_paired(theta, V, h)) < 1e-9 * max(1.0, abs(float(value)))
      assert_close(flat(grads), fd_grad(lambda t: np_ksd_paired(t, V, h), theta), rtol=1e-5,
                   atol=1e-7)
  with pytest.raises(ConfigError, match="loss.bandwidth=0"):
    losses.validate({"bandwidth": 0}, "ksd")
