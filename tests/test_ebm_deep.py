"""The deep EBLVM runner (ebm/deep_runner.py) against independent truth.

- the energy's input and latent gradients (what every loss differentiates) match central finite
  differences of the deep model's energy, and BiSM's score is grad_v of -E - log q;
- annealed Langevin on a closed-form Gaussian over a (v, h) pytree at temperature T samples the
  discretised chain's exact stationary mean and variance;
- on a tractable EBLVM (linear Gaussian: h ~ N(0, I), v | h ~ N(W h + b, s^2 I)) with q its exact
  posterior, BiSM's score equals the closed-form marginal score, VaES approaches it, and the VaGES
  step the runner registers gives the exact MDSM gradient within its Monte Carlo error;
- a few BiMDSM steps of the runner's program decrease the loss on a fixed batch;
- the runner (BiMDSM, smoke) writes the grid, the samples and results.json with its keys, and a
  rerun resumes and says so; bad config values raise ConfigError naming the field.
"""

import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import main
from common.errors import ConfigError
from configs.ebm import deep_mnist
from ebm import bism, deep, deep_runner, losses, posteriors, samplers, vages


def _tiny_model(shape=(8, 8, 1), hidden=3, key=0):
  return deep.DeepEBLVM(shape, hidden, channels=4, blocks_per_stage=1, num_stages=1,
                        rngs=nnx.Rngs(key))


def test_energy_gradients_match_finite_differences():
  model = _tiny_model()
  q = posteriors.GaussianConvPosterior((8, 8, 1), 3, channels=(4, 4, 4), rngs=nnx.Rngs(1))
  rng = np.random.default_rng(0)
  v = jnp.asarray(rng.uniform(size=(2, 8, 8, 1)), jnp.float32)
  h = jnp.asarray(rng.normal(size=(2, 3)), jnp.float32)
  grad_v = jax.grad(lambda x: jnp.sum(model.energy(x, h)))(v)
  grad_h = jax.grad(lambda y: jnp.sum(model.energy(v, y)))(h)
  score = bism.bism_score_fn(model, q, h)(v)

  def fd(f, x, u, eps=1e-2):   # central difference of a sum of per-example values, float64
    return (np.sum(np.asarray(f(x + eps * u), np.float64))
            - np.sum(np.asarray(f(x - eps * u), np.float64))) / (2 * eps)

  for i in range(3):
    u = jnp.asarray(rng.normal(size=v.shape), jnp.float32)
    w = jnp.asarray(rng.normal(size=h.shape), jnp.float32)
    for grad, f, x, d in ((grad_v, lambda x: model.energy(x, h), v, u),
                          (grad_h, lambda y: model.energy(v, y), h, w),
                          (score, lambda x: -model.energy(x, h) - q.log_prob(h, x), v, u)):
      exact = float(jnp.sum(grad * d))
      assert abs(fd(f, x, d) - exact) <= 2e-2 * abs(exact) + 1e-2, (fd(f, x, d), exact)


def test_annealed_langevin_samples_a_gaussian_pytree_at_temperature():
  # E = |v - m|^2 / (2 a^2) + |h - c|^2 / (2 b^2) at temperature T: per coordinate the chain is
  # x' = (1 - r) x + r mu + sqrt(T) s z, r = s^2 / (2 sigma^2), whose stationary law is Gaussian
  # with mean mu and variance T sigma^2 / (1 - r / 2).
  n, step, temp = 20_000, 0.1, 2.0
  m, a = jnp.asarray([0.5, -1.0]), jnp.asarray([0.4, 0.8])
  c, b = jnp.asarray([2.0]), jnp.asarray([0.6])
  energy = lambda x: (0.5 * jnp.sum(((x[0] - m) / a) ** 2, -1)
                      + 0.5 * jnp.sum(((x[1] - c) / b) ** 2, -1))
  x0 = (jnp.zeros((n, 2)), jnp.zeros((n, 1)))
  v, h = jax.jit(lambda x0: samplers.annealed_langevin(
      energy, x0, jax.random.key(3), jnp.full(1200, temp), step_size=step,
      denoise_sigma=None))(x0)
  for x, mu, sigma in ((v, m, a), (h, c, b)):
    x, sigma2 = np.asarray(x, np.float64), np.asarray(sigma, np.float64) ** 2
    var = temp * sigma2 / (1 - step ** 2 / (4 * sigma2))
    assert np.all(np.abs(x.mean(0) - np.asarray(mu)) < 4 * np.sqrt(var / n))
    assert np.all(np.abs(x.var(0) / var - 1) < 4 * np.sqrt(2 / n))
  # The paper's schedule ends noise-free at T = 0, then one denoising step.
  temps = samplers.paper_temperatures(100.0, 1.0, 5, 10, 5)
  assert temps.shape == (20,) and temps[0] == 100 and temps[-1] == 0


class LinearGaussian(nnx.Module):
  """E(v, h) = |h|^2 / 2 + |v - W h - b|^2 / (2 s^2): p(v) = N(b, W W^T + s^2 I) in closed form."""

  def __init__(self, W, b, s):
    self.W, self.b, self.log_s = nnx.Param(W), nnx.Param(b), nnx.Param(jnp.log(s))

  def energy(self, v, h):
    r = v - h @ self.W[...].T - self.b[...]
    return 0.5 * jnp.sum(h ** 2, -1) + 0.5 * jnp.sum(r ** 2, -1) / jnp.exp(2 * self.log_s[...])

  def score(self, v):
    W, s2 = self.W[...], jnp.exp(2 * self.log_s[...])
    cov = W @ W.T + s2 * jnp.eye(W.shape[0])
    return -jnp.linalg.solve(cov, (v - self.b[...]).T).T


class ExactPosterior(nnx.Module):
  """p(h | v) of LinearGaussian: N(S W^T (v - b) / s^2, S), S = (I + W^T W / s^2)^-1."""

  def __init__(self, W, b, s):
    self.W, self.b, self.s = nnx.Variable(W), nnx.Variable(b), nnx.Variable(jnp.asarray(s))

  def _moments(self, v):
    W, s2 = self.W[...], self.s[...] ** 2
    cov = jnp.linalg.inv(jnp.eye(W.shape[1]) + W.T @ W / s2)
    return (v - self.b[...]) @ W @ cov / s2, cov

  def mean(self, v):
    return self._moments(v)[0]

  def sample(self, v, rng):
    mean, cov = self._moments(v)
    return mean + jax.random.normal(rng, mean.shape) @ jnp.linalg.cholesky(cov).T

  def log_prob(self, h, v):
    mean, cov = self._moments(v)
    return jax.scipy.stats.multivariate_normal.logpdf(h, mean, cov)


def test_vaes_and_vages_with_the_exact_posterior_of_a_tractable_eblvm():
  rng = np.random.default_rng(1)
  W = jnp.asarray(rng.normal(size=(3, 2)), jnp.float32)
  b = jnp.asarray(rng.normal(size=3), jnp.float32)
  model, q = LinearGaussian(W, b, 0.7), ExactPosterior(W, b, 0.7)
  v = jnp.asarray(rng.normal(size=(16, 3)), jnp.float32)
  exact = np.asarray(model.score(v))
  # BiSM's score grad_v [-E(v, h) - log q(h | v)] is the marginal score at any h when q = p(h | v).
  h = q.sample(v, jax.random.key(0))
  np.testing.assert_allclose(bism.bism_score_fn(model, q, h)(v), exact, rtol=1e-4, atol=1e-4)
  # VaES: the mean of grad_v log p~(v, h_l) over many h_l ~ q.
  gd, theta = nnx.split(model)
  log_joint = lambda th, x, hh: -nnx.merge(gd, th).energy(x, hh)
  particles = vages.draw_particles(q.sample, v, jax.random.key(1), 4000)
  np.testing.assert_allclose(vages.vaes(log_joint, theta, v, particles), exact, atol=0.05)
  # The runner's VaGES-MDSM step (K = 0) against the exact MDSM gradient at the same noise.
  qd, phi = nnx.split(q)
  cfg = {"method": "vages_mdsm", "inner_steps": 0, "lower": "fisher", "vages_particles": 3000,
         "sigma_begin": 0.3, "sigma_end": 1.0, "sigma0": 0.3}
  key = jax.random.key(2)
  tx = optax.adam(1e-3)
  step_grads = deep_runner.METHODS["vages_mdsm"].step_grads
  grads, *_ = jax.jit(lambda th: step_grads(gd, th, qd, phi, tx.init(phi), tx, v, key, cfg))(theta)
  noise_rng = jax.random.split(key, 3)[1]    # as ebm.vages.vages_step_grads splits its key
  pert = losses.SCHEMES["mdsm"].perturb(v, noise_rng, cfg)
  exact_loss = lambda th: jnp.mean(losses.multiscale_objective(
      nnx.merge(gd, th).score(pert.v), pert.noise, pert.sigma, cfg["sigma0"]))
  truth = jax.grad(exact_loss)(theta)
  for g, t in zip(jax.tree.leaves(grads), jax.tree.leaves(truth)):
    g, t = np.asarray(g, np.float64), np.asarray(t, np.float64)
    assert np.linalg.norm(g - t) <= 0.1 * np.linalg.norm(t) + 1e-3, (g, t)


def _tiny_config(method="bimdsm"):
  c = deep_mnist.get_config("smoke")
  c.method = method
  c.data.pad_to = 8
  c.model.update(num_stages=1, channels=4)
  c.posterior.channels = (4, 4, 4)
  return c


def test_a_few_bimdsm_steps_decrease_the_loss_on_a_fixed_batch():
  c = _tiny_config("bimdsm")
  c.optim.lr = c.posterior_optim.lr = 3e-3
  c.optim.schedule = c.posterior_optim.schedule = "constant"
  deep_runner.validate(c)
  parts = deep_runner.make_parts(c, (8, 8, 1))
  program = deep_runner.make_program(c, parts)
  digits = np.zeros((8, 8, 8, 1), np.float32)
  digits[:, 2:6, 3:5] = 1.0                      # the same bar in every image
  v = jnp.asarray(digits)
  step = jax.jit(program.step)
  state = program.init(jax.random.key(0))
  values = []
  for _ in range(25):
    state, metrics = step(state, v, jax.random.key(5), None)   # the same noise every step
    values.append(float(metrics["loss"]))
  assert np.all(np.isfinite(values))
  assert np.mean(values[-5:]) < 0.95 * np.mean(values[:5]) and values[-1] < values[0], values
  assert "ema" in state and int(state["ema"]["step"]) == 25
  # Both sample inits run on the trained state and keep the model's shape.
  for init in ("q_mean", "joint"):
    c.sample.init = init
    x = deep_runner.make_sampler(c, parts)(deep_runner.sampling_params(state),
                                           state["posterior"].params, v, jax.random.key(6))
    assert x.shape == v.shape and np.all(np.isfinite(np.asarray(x)))


class _StubClassifier:
  """Stands in for common.classifier's (no training in this test); values are checked through."""

  class dataset:  # noqa: N801
    test = np.zeros((500, 28, 28, 1))

  def frechet_distance(self, images, split="train"):
    assert images.shape[1:] == (28, 28, 1) and split == "train"
    assert images.min() >= -1 and images.max() <= 1
    return 12.5

  def score(self, images):
    return {"classifier_score": 3.0, "classifier_score_std": 0.0, "mean_confidence": 0.7}

  def real_floor(self):
    return 1.25


def test_runner_writes_samples_and_results_and_a_rerun_resumes(tmp_path, caplog, monkeypatch):
  from common import classifier
  monkeypatch.setattr(classifier, "load_or_train", lambda name: _StubClassifier())
  c = deep_mnist.get_config("smoke")
  c.eval.fd = True
  workdir = str(tmp_path)
  main.launch(c, workdir, "train")
  with open(os.path.join(workdir, "results.json")) as f:
    results = json.load(f)
  for key in ("method", "step", "fd", "classifier_score", "real_floor", "num_samples"):
    assert key in results, key
  assert results["method"] == "bimdsm" and results["step"] == c.train.num_steps
  assert (results["fd"], results["classifier_score"], results["real_floor"]) == (12.5, 3.0, 1.25)
  assert results["num_samples"] == c.sample.num_samples
  name = f"samples_step_{c.train.num_steps:07d}"
  with np.load(os.path.join(workdir, name + ".npz")) as f:
    assert f["images"].shape == (c.sample.num_samples, 28, 28, 1) and f["images"].dtype == np.uint8
  from PIL import Image
  grid = Image.open(os.path.join(workdir, name + ".png"))
  side = math.ceil(math.sqrt(c.sample.num_grid))
  assert grid.size == (side * 30 + 2, math.ceil(c.sample.num_grid / side) * 30 + 2)
  mtime = os.path.getmtime(os.path.join(workdir, "results.json"))
  caplog.clear()
  with caplog.at_level("INFO"):
    main.launch(c, workdir, "train")
  assert "Already trained" in caplog.text and "already done" in caplog.text
  assert os.path.getmtime(os.path.join(workdir, "results.json")) == mtime


@pytest.mark.parametrize("field,value,expect", [
    ("method", "cd1", "method"),
    ("data.pad_to", 30, "data.pad_to"),
    ("data.name", "nope", "data.name"),
    ("posterior.channels", (4, 4), "posterior.channels"),
    ("sample.init", "prior", "sample.init"),
    ("sample.num_grid", 100, "sample.num_grid"),
    ("sample.step_size", 0.0, "sample.step_size"),
    ("loss.lower", "kl2", "loss.lower"),
    ("loss.sigma0", -1.0, "loss.sigma0"),
    ("train.num_seeds", 2, "train.num_seeds"),
    ("model.channels", 0, "model.channels"),
])
def test_bad_config_values_name_the_field(field, value, expect):
  c = deep_mnist.get_config("smoke")
  section, _, key = field.rpartition(".")
  (c[section] if section else c)[key] = value
  with pytest.raises(ConfigError, match=expect.replace(".", r"\.")):
    deep_runner.validate(c)


def test_bad_vages_and_fd_settings_name_the_field():
  c = deep_mnist.get_config("smoke")
  c.method, c.loss.vages_particles = "vages_mdsm", 1
  with pytest.raises(ConfigError, match=r"loss\.vages_particles"):
    deep_runner.validate(c)
  c = deep_mnist.get_config("smoke")
  c.data.name, c.eval.fd = "synthetic", True
  with pytest.raises(ConfigError, match=r"eval\.fd"):
    deep_runner.validate(c)
