"""BiSM and variational NCE against independent truth on a Gaussian RBM (d = 2, m = 3).

Truths: the exact GRBM score and the exact-free-energy losses (the linear Bernoulli posterior
contains p(h | v) = sigmoid(c + W^T v), where BiSM's score is exact for every h); Hyvarinen's
closed-form SM gradient (finite differences, as in test_ebm_losses); finite differences of the
unrolled upper objective; a hand-written optax loop for the post-K posterior.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from common.errors import ConfigError
from ebm import bism, losses, posteriors
from tests.test_ebm_losses import (D, M, flat, hyvarinen_grad_truth, make_model, mean_and_se,
                                   random_params)

TX = optax.adam(0.1, b1=0.9, b2=0.95)
V16 = np.random.RandomState(1).randn(16, D)     # spread inputs: a well-conditioned lower level


def posterior(kernel=None, bias=None, cls=posteriors.LinearBernoulliPosterior):
  q = cls(D, M, rngs=nnx.Rngs(0))
  if kernel is not None:
    q.linear.kernel[...] = jnp.asarray(kernel, jnp.float32)
    q.linear.bias[...] = jnp.asarray(bias, jnp.float32)
  return q


def exact_posterior(model):
  q = posterior()
  q.set_exact(model.W[...], model.c[...])
  return q


def test_exact_posterior_makes_bism_exact():
  """q = p(h | v): s(v; h) is the exact score for any relaxed h, so each BiSM upper objective is its
  exact-free-energy loss and VNCE is NCE, on the same noise."""
  model = make_model(random_params(0, dtype=np.float32), jnp.float32)
  wrapped = losses.WithLogZ(model)
  wrapped.log_z[...] = jnp.asarray(1.3)
  q = exact_posterior(model)
  v = jnp.asarray(V16, jnp.float32)
  noise_rng, sample_rng = jax.random.key(1), jax.random.key(2)
  sm_cfg = {"sigma": 0.1}
  nce_cfg = {"noise": losses.fit_gaussian(V16), "nu": 2, "num_particles": 3}
  y = losses.gaussian_sample(nce_cfg["noise"], jax.random.key(3), 32)

  @jax.jit
  def both(h):
    out = {"score": (bism.bism_score_fn(model, q, h)(v), model.score(v))}
    for method, scheme in [("bissm", "ssm"), ("bidsm", "dsm"), ("bimdsm", "mdsm")]:
      out[method] = (bism.METHODS[method].upper(model, q, v, noise_rng, sample_rng, sm_cfg)[0],
                     losses.LOSSES[scheme].loss(model, v, noise_rng, sm_cfg)[0])
    shift = 1.3 + np.log(2)
    g_v = -model.free_energy(v) - shift - losses.gaussian_log_prob(nce_cfg["noise"], v)
    g_y = -model.free_energy(y) - shift - losses.gaussian_log_prob(nce_cfg["noise"], y)
    out["vnce"] = (bism.vnce_objective(wrapped, q, v, y, sample_rng, nce_cfg),
                   losses.nce_objective(g_v, g_y, 2))
    return out

  for name, (got, want) in both(jax.random.uniform(jax.random.key(0), (16, M))).items():
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-4, atol=1e-5,
                               err_msg=name)


R = 128  # independent replicas (noise draws and posterior trajectories)


def replicated_step(gd, theta, qd, method, inner, unroll):
  cfg = {"method": method, "inner_steps": inner, "unroll_steps": unroll}
  v = jnp.asarray(V16, jnp.float32)
  one = lambda phi, opt, key: bism.bism_step_grads(gd, theta, qd, phi, opt, TX, v, key, cfg)
  return jax.jit(jax.vmap(one))


def gradient_error(grads, truth, keys):
  mean, se = mean_and_se(flat(grads))
  return {k: np.abs(mean[k] - truth[k]) for k in keys}, se


@pytest.fixture(scope="module")
def lower_level_run():
  """BiSSM with N = 0 on a fixed GRBM, q from zero weights (q = Bernoulli(1/2), far from p(h|v)):
  40 minibatch steps of K = 5 plain Adam steps each, R replicas. Returns the errors of the mean
  b / log sigma gradients against the exact SM gradient after 5 and after 200 inner steps, and the
  final posteriors."""
  with jax.enable_x64(True):
    _, truth = hyvarinen_grad_truth(v=V16)
  model = make_model(random_params(0, dtype=np.float32), jnp.float32)
  gd, theta = nnx.split(model)
  qd, phi = nnx.split(posterior(np.zeros((D, M)), np.zeros(M)))
  step = replicated_step(gd, theta, qd, "bissm", 5, 0)
  phis = jax.tree.map(lambda x: jnp.broadcast_to(x, (R,) + x.shape), phi)
  opts = jax.tree.map(lambda x: jnp.broadcast_to(x, (R,) + x.shape), TX.init(phi))
  keys = jax.random.split(jax.random.key(0), (40, R))
  errors = {}
  for t in range(40):
    grads, phis, opts, _ = step(phis, opts, keys[t])
    if t in (0, 39):
      errors[5 * (t + 1)] = gradient_error(grads, truth, ("b", "log_sigma"))
  return dict(truth=truth, errors=errors, gd=gd, theta=theta, qd=qd, phis=phis, opts=opts)


def test_bism_gradient_bias_vanishes_as_k_grows(lower_level_run):
  """The visible-bias and log-sigma gradients of BiSSM (N = 0) do not depend on phi except through
  the error of q, so their bias goes to 0 as the K plain steps bring q to p(h | v): significant
  (over 8 standard errors) after 5 steps, within 4 standard errors plus 1% of the gradient's
  scale after 200, and at least 10x smaller."""
  truth, errors = lower_level_run["truth"], lower_level_run["errors"]
  scale = max(np.max(np.abs(truth[k])) for k in ("b", "log_sigma"))
  (err5, se5), (err200, se200) = errors[5], errors[200]
  assert max(np.max(err5[k] / se5[k]) for k in err5) > 8, (err5, se5)
  for k in err200:
    assert np.all(err200[k] <= 4 * se200[k] + 0.01 * scale), (k, err200[k], se200[k], scale)
  assert max(np.max(err200[k]) for k in err200) < 0.1 * max(np.max(err5[k]) for k in err5)


def test_unrolling_supplies_the_hidden_bias_gradient(lower_level_run):
  """c enters s(v; h) only through phi*(theta): with N = 0 its BiSM gradient is exactly zero, and
  unrolling N = 20 steps from the converged q recovers most of the exact SM gradient of c."""
  run = lower_level_run
  truth = run["truth"]
  keys = jax.random.split(jax.random.key(1), R)
  errors = {}
  for unroll in (0, 20):
    step = replicated_step(run["gd"], run["theta"], run["qd"], "bissm", 0, unroll)
    grads = flat(step(run["phis"], run["opts"], keys)[0])
    if unroll == 0:
      assert np.all(grads["c"] == 0.0)
    errors[unroll] = np.linalg.norm(grads["c"].mean(0) - truth["c"])
  assert errors[20] < 0.2 * errors[0], errors


def test_unrolled_gradient_matches_finite_differences():
  """d/dtheta J(theta, phi_N(theta)) through N = 3 Adam steps equals central differences of the
  upper objective (float64, fixed keys, K = 0 so phi_0 is a constant)."""
  with jax.enable_x64(True):
    model = make_model(random_params(2))
    gd, theta = nnx.split(model)
    qd, phi = nnx.split(posterior(np.random.RandomState(3).randn(D, M), np.zeros(M)))
    phi = jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), phi)
    v = jnp.asarray(V16[:4])
    tx = optax.adam(0.05, b1=0.9, b2=0.95)
    opt = tx.init(phi)
    for seed in range(2):      # an optimiser state with history (nu > 0, count = 2)
      fake = jax.tree.map(lambda x: jnp.asarray(np.random.RandomState(seed).randn(*x.shape)), phi)
      _, opt = tx.update(fake, opt, phi)
    cfg = {"method": "bidsm", "sigma": 0.3, "inner_steps": 0, "unroll_steps": 3}
    run = jax.jit(lambda theta: bism.bism_step_grads(gd, theta, qd, phi, opt, tx, v,
                                                     jax.random.key(1), cfg))
    grads = flat(run(theta)[0])
    upper = lambda th: float(run(th)[3]["loss"])
    delta = 1e-6
    leaves, tree = jax.tree.flatten(theta)
    for i, leaf in enumerate(leaves):
      name = list(grads)[i]
      fd = np.zeros(leaf.shape)
      for idx in np.ndindex(leaf.shape):
        shifted = []
        for sign in (1, -1):
          moved = list(leaves)
          moved[i] = leaf.at[idx].add(sign * delta)
          shifted.append(upper(jax.tree.unflatten(tree, moved)))
        fd[idx] = (shifted[0] - shifted[1]) / (2 * delta)
      np.testing.assert_allclose(grads[name], fd, rtol=1e-5, atol=1e-7, err_msg=name)
    # Without the unroll the c gradient is exactly 0 (test above): here it comes from phi_N(theta).
    assert np.max(np.abs(grads["c"])) > 1e-3


class MeanFieldPosterior(posteriors.LinearBernoulliPosterior):
  """A deterministic 'sample' (the Bernoulli mean), so the lower level can be replayed exactly."""

  def sample(self, v, rng):
    return self.mean(v)


def test_posterior_keeps_its_post_k_value():
  """phi and its optimiser state come back after exactly K plain steps (replayed here with our own
  lower objective and optax loop), and the unrolled steps do not leak into them."""
  model = make_model(random_params(0, dtype=np.float32), jnp.float32)
  gd, theta = nnx.split(model)
  qd, phi = nnx.split(posterior(cls=MeanFieldPosterior))
  v = jnp.asarray(V16, jnp.float32)
  cfg = {"method": "bissm", "inner_steps": 3}

  def lower(phi):      # E_q[E + log q] at the mean-field h, written out
    kernel, bias = phi["linear"]["kernel"][...], phi["linear"]["bias"][...]
    logits = v @ kernel + bias
    mu = jax.nn.sigmoid(logits)
    return jnp.mean(model.energy(v, mu) + jnp.sum(mu * logits - jax.nn.softplus(logits), -1))

  @jax.jit
  def replay(phi):
    opt = TX.init(phi)
    for _ in range(3):
      updates, opt = TX.update(jax.grad(lower)(phi), opt, phi)
      phi = optax.apply_updates(phi, updates)
    return phi, opt

  want, opt = replay(phi)
  outs = [jax.jit(lambda phi, n=n: bism.bism_step_grads(
      gd, theta, qd, phi, TX.init(phi), TX, v, jax.random.key(0), dict(cfg, unroll_steps=n)))(phi)
          for n in (0, 1)]
  for got_phi, got_opt in [(o[1], o[2]) for o in outs]:
    for a, b in zip(jax.tree.leaves((got_phi, got_opt)), jax.tree.leaves((want, opt))):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
  assert int(outs[1][2][0].count) == 3


def test_every_method_runs_and_validation_names_fields():
  model = losses.WithLogZ(make_model(random_params(0, dtype=np.float32), jnp.float32))
  gd, theta = nnx.split(model)
  qd, phi = nnx.split(posterior())
  v = jnp.asarray(V16, jnp.float32)
  noise = losses.fit_gaussian(V16)
  for method in ("bimdsm", "vnce"):      # bissm and bidsm run in the tests above
    cfg = {"method": method, "noise": noise, "inner_steps": 2, "unroll_steps": 1}
    bism.validate(cfg)
    grads, _, _, metrics = jax.jit(lambda theta, phi: bism.bism_step_grads(
        gd, theta, qd, phi, TX.init(phi), TX, v, jax.random.key(0), cfg))(theta, phi)
    assert set(metrics) == ({"loss", "lower_loss", "log_z"} if method == "vnce"
                            else {"loss", "lower_loss"})
    assert all(np.all(np.isfinite(g)) for g in flat(grads).values()), method
  assert set(bism.METHODS.names()) == {"bissm", "bidsm", "bimdsm", "vnce"}
  with pytest.raises(ConfigError, match="valid names: bidsm"):
    bism.validate({"method": "bism"})
  with pytest.raises(ConfigError, match="loss.unroll_steps="):
    bism.validate({"method": "bidsm", "unroll_steps": -1})
  with pytest.raises(ConfigError, match="loss.lower="):
    bism.validate({"method": "bidsm", "lower": "elbo"})


class LinearGaussianModel(nnx.Module):
  """E(v, h) = 0.5 ||h - v A||^2 + 0.5 ||v||^2: the posterior p(h | v) = N(v A, I) is known."""

  def __init__(self, a):
    self.a = nnx.Param(jnp.asarray(a, jnp.float32))

  def energy(self, v, h):
    return 0.5 * jnp.sum((h - v @ self.a[...]) ** 2, -1) + 0.5 * jnp.sum(v ** 2, -1)


class LinearGaussianPosterior(nnx.Module):
  def __init__(self, k, log_std):
    self.k = nnx.Param(jnp.asarray(k, jnp.float32))
    self.log_std = nnx.Param(jnp.asarray(log_std, jnp.float32))

  def sample(self, v, rng):
    mean = v @ self.k[...]
    return mean + jnp.exp(self.log_std[...]) * jax.random.normal(rng, mean.shape)

  def log_prob(self, h, v):
    z = (h - v @ self.k[...]) * jnp.exp(-self.log_std[...])
    return jnp.sum(-0.5 * z ** 2 - self.log_std[...] - 0.5 * np.log(2 * np.pi), -1)


def test_posterior_fisher_lower_level_vanishes_only_at_the_posterior():
  a = np.random.RandomState(0).randn(D, M)
  model, v, key = LinearGaussianModel(a), jnp.asarray(V16, jnp.float32), jax.random.key(0)
  weight = jnp.ones(16)
  exact = bism.lower_objective(model, LinearGaussianPosterior(a, np.zeros(M)), v, key, weight,
                               "fisher")
  assert abs(float(exact)) < 1e-10
  for k, log_std in [(a + 0.1, np.zeros(M)), (a, np.full(M, 0.2))]:
    off = bism.lower_objective(model, LinearGaussianPosterior(k, log_std), v, key, weight,
                               "fisher")
    assert float(off) > 1e-3


def test_deep_eblvm_bimdsm_step_and_langevin():
  from ebm import deep, samplers

  @nnx.jit   # one compiled initialiser instead of one per layer
  def create():
    return (deep.DeepEBLVM((8, 8, 1), 3, channels=2, blocks_per_stage=1, num_stages=1,
                          rngs=nnx.Rngs(0)),
            posteriors.GaussianConvPosterior((8, 8, 1), 3, channels=(2, 2, 2), rngs=nnx.Rngs(1)))

  model, q = create()
  gd, theta = nnx.split(model)
  qd, phi = nnx.split(q)
  v = jax.random.uniform(jax.random.key(0), (4, 8, 8, 1))
  cfg = {"method": "bimdsm", "lower": "fisher", "inner_steps": 1, "unroll_steps": 0,
         "sigma_begin": 0.1, "sigma_end": 1.0, "sigma0": 0.1}
  tx = optax.adam(1e-4, b1=0.9, b2=0.95)
  grads, new_phi, _, metrics = jax.jit(lambda theta, phi: bism.bism_step_grads(
      gd, theta, qd, phi, tx.init(phi), tx, v, jax.random.key(1), cfg))(theta, phi)
  assert np.isfinite(float(metrics["loss"])) and np.isfinite(float(metrics["lower_loss"]))
  assert all(np.all(np.isfinite(g)) and g.shape == t.shape
             for g, t in zip(jax.tree.leaves(grads), jax.tree.leaves(theta)))
  assert any(np.any(a != b) for a, b in zip(jax.tree.leaves(new_phi), jax.tree.leaves(phi)))
  # Joint annealed Langevin over (v, h) runs and keeps shapes.
  x = jax.jit(lambda v: samplers.annealed_langevin(
      lambda x: model.energy(*x), (v, jnp.zeros((4, 3))), jax.random.key(2),
      jnp.asarray([1.0, 0.5, 0.0])))(v)
  assert x[0].shape == v.shape and x[1].shape == (4, 3) and np.all(np.isfinite(x[0]))
