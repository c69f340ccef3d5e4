"""The extensions of cascaded boosting (ebm.semisup, ebm.product) against independent truth.

Truths: semi-supervised EM and the labelled mixture's densities written here in numpy and scipy
from their definitions (with the fully labelled step's closed form: class means and maximum-
likelihood covariances); p(y | x) and p(x) of a VAE + labelled-mixture model by quadrature over
a grid of its 2-d latent space; the product of a two-RBM stack's cuts normalised by brute-force
enumeration of all 2^16 inputs, its components summed in numpy from the energy alone.
"""

import itertools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ml_collections import ConfigDict
from scipy.special import logsumexp
from scipy.stats import multivariate_normal, norm

from common.errors import ConfigError
from configs.ebm import boost_product_bars, boost_semisup_mnist
from ebm import boost, meta, product, semisup
from ebm.grbm import BinaryRBMParams

EVAL = ConfigDict(dict(batch_size=500, num_samples=4, max_exact=20, max_exact_joint=24,
                       ais_chains=10, ais_betas=10, gibbs_steps=10, iw_samples=4))


def random_mixture(rng, k, dim, mean_scale=1.5):
  a = rng.normal(size=(k, dim, dim)) * 0.4
  cov = a @ np.transpose(a, (0, 2, 1)) + 0.3 * np.eye(dim)
  w = rng.dirichlet(np.ones(k))
  return {"weights": w, "means": rng.normal(size=(k, dim)) * mean_scale,
          "chol": np.linalg.cholesky(cov)}


def np_comp_log_joint(p, x):
  """log w_k N(x; mu_k, L_k L_k^T), [N, K], by scipy."""
  return np.stack([np.log(w) + multivariate_normal(m, l @ l.T).logpdf(x)
                   for w, m, l in zip(p["weights"], p["means"], p["chol"])], axis=1)


def np_semisup_em_step(p, x, y, per_class, reg):
  """One semi-supervised EM step from the definitions: responsibilities over allowed components."""
  comp = np_comp_log_joint(p, x)
  comp_class = np.arange(comp.shape[1]) // per_class
  allowed = (y[:, None] < 0) | (comp_class[None] == y[:, None])
  comp = np.where(allowed, comp, -np.inf)
  objective = logsumexp(comp, axis=1).mean()
  r = np.exp(comp - logsumexp(comp, axis=1, keepdims=True))
  nk = r.sum(0)
  means = (r.T @ x) / nk[:, None]
  covs = [(r[:, k, None] * (x - means[k])).T @ (x - means[k]) / nk[k] + reg * np.eye(x.shape[1])
          for k in range(len(nk))]
  return {"weights": nk / nk.sum(), "means": means, "chol": np.linalg.cholesky(covs)}, objective


def as_jax(p):
  return {k: jnp.asarray(v, jnp.float32) for k, v in p.items()}


# ---------------------------------------------------------------------------------------------
# Semi-supervised boosting.


def test_semisupervised_em_step_matches_numpy_and_increases_the_objective():
  rng = np.random.default_rng(0)
  x = np.concatenate([rng.normal(size=(60, 3)) + 2, rng.normal(size=(60, 3)) - 2,
                      rng.normal(size=(60, 3)) * 0.5])
  truth_y = np.repeat([0, 1, 2], 60)
  y = np.where(rng.random(180) < 0.2, truth_y, -1).astype(np.int32)
  p = random_mixture(rng, 6, 3)                                   # 3 classes x 2 components
  mask = jnp.asarray(semisup.label_log_mask(y, 3, 2))
  new, value = meta.em_step(as_jax(p), jnp.asarray(x, jnp.float32), 1e-3, mask)
  true_new, true_value = np_semisup_em_step(p, x, y, 2, 1e-3)
  assert float(value) == pytest.approx(true_value, rel=1e-4)
  for k in ("weights", "means", "chol"):
    np.testing.assert_allclose(np.asarray(new[k]), true_new[k], atol=2e-4)
  values, state = [], as_jax(p)
  for _ in range(15):
    state, v = meta.em_step(state, jnp.asarray(x, jnp.float32), 1e-3, mask)
    values.append(float(v))
  assert all(b >= a - 1e-4 for a, b in zip(values, values[1:])) and values[-1] > values[0] + 0.1
  top = semisup.FittedLabelledGMM(state, 3)
  lj = np.asarray(top.log_joint(jnp.asarray(x, jnp.float32)))
  comp = np_comp_log_joint({k: np.asarray(v, np.float64) for k, v in state.items()}, x)
  np.testing.assert_allclose(lj, logsumexp(comp.reshape(180, 3, 2), axis=2), atol=2e-3)
  np.testing.assert_allclose(np.asarray(top.elbo(jnp.asarray(x, jnp.float32))),
                             logsumexp(comp, axis=1), atol=2e-3)


def test_fully_labelled_step_is_the_class_means_and_covariances():
  rng = np.random.default_rng(1)
  x = rng.normal(size=(90, 2)) * [1.0, 0.3] + rng.normal(size=(90, 2))
  y = rng.integers(0, 3, 90).astype(np.int32)
  spec = semisup.LabelledGMMSpec(ConfigDict(dict(components_per_class=1, reg=1e-6)), 2, 3, y, 0)
  program = spec.program(x.astype(np.float32), 1, 1)
  state, _ = program.step(program.init(jax.random.key(0)), None, jax.random.key(0),
                          program.consts)
  for c in range(3):
    xc = x[y == c]
    np.testing.assert_allclose(np.asarray(state["means"][c]), xc.mean(0), atol=1e-5)
    cov = np.asarray(state["chol"][c] @ state["chol"][c].T)
    np.testing.assert_allclose(cov, np.cov(xc, rowvar=False, bias=True), atol=1e-4)
    assert float(state["weights"][c]) == pytest.approx(np.mean(y == c), abs=1e-6)


def test_balanced_labels():
  labels = np.repeat(np.arange(10), 40)[np.random.default_rng(2).permutation(400)]
  idx = semisup.choose_labelled(labels, 100, 10, seed=0)
  assert len(set(idx)) == 100 and np.all(np.bincount(labels[idx], minlength=10) == 10)
  odd = semisup.choose_labelled(labels, 25, 10, seed=0)
  assert sorted(np.bincount(labels[odd], minlength=10)) == [2] * 5 + [3] * 5
  y = semisup.partial_labels(labels, idx)
  assert np.sum(y >= 0) == 100 and np.all(y[idx] == labels[idx])
  with pytest.raises(ConfigError, match="semisup.num_labels"):
    semisup.choose_labelled(labels, 500, 10, seed=0)


def _tiny_vae(seed=0, dim=6):
  cfg = ConfigDict(dict(hidden=8, depth=1, decoder="bernoulli", sigma=0.5, kl_weight=1.0,
                        optim=dict()))
  spec = meta.VAESpec(cfg, dim, 2, True)
  params = jax.device_get(meta.nnx.state(spec.make(jax.random.key(seed))))
  return meta.FittedVAE(spec.graphdef, params, EVAL, 2)


def test_vae_and_rbm_posterior_densities():
  rng = np.random.default_rng(3)
  vae = _tiny_vae()
  v = jnp.asarray(rng.integers(0, 2, (5, 6)), jnp.float32)
  z = jnp.asarray(rng.normal(size=(5, 2)), jnp.float32)
  mu, logvar = (np.asarray(a, np.float64) for a in vae._post(vae.params, v))
  truth = norm(mu, np.exp(0.5 * logvar)).logpdf(np.asarray(z)).sum(1)
  np.testing.assert_allclose(np.asarray(vae.log_posterior(v, z)), truth, atol=1e-4)
  W, b, c = rng.normal(size=(6, 4)), rng.normal(size=6), rng.normal(size=4)
  rbm = meta.FittedRBM.create(BinaryRBMParams(W, b, c), jax.random.key(0), EVAL)
  h = rng.integers(0, 2, (5, 4)).astype(np.float64)
  a = c + np.asarray(v) @ W
  truth = np.sum(h * a - np.logaddexp(0, a), 1)
  np.testing.assert_allclose(np.asarray(rbm.log_posterior(v, jnp.asarray(h, jnp.float32))),
                             truth, atol=1e-4)


def test_class_posterior_by_importance_sampling_matches_quadrature():
  """p(x, y) = int p(x | z) p(z, y) dz of a VAE decoder with 2-d z and a labelled mixture, on a
  401 x 401 grid over [-8, 8]^2, against ebm.semisup.classify's importance sampling. The
  mixture's components are narrower than the encoder's posteriors (as a fitted top is beside a
  trained encoder's), so the importance weights are bounded; their spread still needs 200,000
  draws for 0.03."""
  rng = np.random.default_rng(4)
  vae = _tiny_vae(seed=1)
  p = random_mixture(rng, 4, 2, mean_scale=0.8)                   # 2 classes x 2 components
  p["chol"] = p["chol"] * 0.5
  top = semisup.FittedLabelledGMM(as_jax(p), 2)
  x = np.asarray(list(itertools.product([0.0, 1.0], repeat=6)))[rng.choice(64, 6, replace=False)]
  g = np.linspace(-8, 8, 401)
  zz = np.stack(np.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2)
  dz = (g[1] - g[0]) ** 2
  log_pz_y = logsumexp(np_comp_log_joint(p, zz).reshape(-1, 2, 2), axis=2)          # [G, 2]
  log_px_z = np.stack([np.asarray(vae.log_conditional(
      jnp.broadcast_to(jnp.asarray(xi, jnp.float32), (len(zz), 6)),
      jnp.asarray(zz, jnp.float32)), np.float64) for xi in x])                     # [B, G]
  log_pxy = logsumexp(log_px_z[:, :, None] + log_pz_y[None], axis=1) + np.log(dz)  # [B, 2]
  true_log_px = logsumexp(log_pxy, axis=1)
  true_log_py = log_pxy - true_log_px[:, None]
  log_py, log_px = semisup.classify([vae], top, x.astype(np.float32), jax.random.key(5), 200_000)
  np.testing.assert_allclose(np.exp(log_py), np.exp(true_log_py), atol=0.03)
  np.testing.assert_allclose(log_px, true_log_px, atol=0.03)


# ---------------------------------------------------------------------------------------------
# Multiplicative boosting of the cascade.


def np_free_log_p(W, b, c, X):
  """log p(x) of a binary RBM on every row of X, log Z by summing over all hidden states."""
  H = np.asarray(list(itertools.product([0.0, 1.0], repeat=len(c))))
  V = np.asarray(list(itertools.product([0.0, 1.0], repeat=len(b))))
  neg_f = lambda v: v @ b + np.sum(np.logaddexp(0, c + v @ W), 1)
  if len(c) <= len(b):
    log_z = logsumexp(H @ c + np.sum(np.logaddexp(0, b + H @ W.T), 1))
  else:
    log_z = logsumexp(neg_f(V))
  return neg_f(X) - log_z


def product_config():
  c = boost_product_bars.get_config("smoke")
  c.rbm.update(num_steps=500, cd_steps=5, init_std=0.1)
  c.rbm.optim.lr = 0.5
  c.product.update(num_steps=300, num_pool=20_000, num_eval=50_000)
  c.product.optim.lr = 0.05
  c.eval.num_images = 0
  return c


def test_product_log_z_matches_enumeration_and_learned_exponents_help(tmp_path):
  config = product_config()
  boost.validate(config)
  results = boost.run(config, str(tmp_path))
  with open(tmp_path / "results.json") as f:
    prod = json.load(f)["product"]
  assert results["num_stages"] == 2 and len(prod["alpha"]) == 2
  with np.load(tmp_path / "stack.npz") as f:
    s = {k: np.asarray(f[k], np.float64) for k in f.files}
  X = np.asarray(list(itertools.product([0.0, 1.0], repeat=16)))
  log_p1 = np_free_log_p(s["W1"], s["b1"], s["c1"], X)
  H = np.asarray(list(itertools.product([0.0, 1.0], repeat=6)))
  a = s["b1"] + H @ s["W1"].T                                          # [2^6, 16]
  log_cond = X @ a.T - np.sum(np.logaddexp(0, a), 1)[None]             # log p_1(x | h)
  log_p2h = np_free_log_p(s["W2"], s["b2"], s["c2"], H)                # stage 2's marginal
  log_p12 = logsumexp(log_cond + log_p2h[None], axis=1)
  L = np.stack([log_p1, log_p12], 1)
  assert np.allclose(logsumexp(L, axis=0), 0.0, atol=1e-4)            # each cut is normalised
  alpha = np.asarray(prod["alpha"])
  true_log_z = logsumexp(L @ alpha)
  assert prod["log_z_exact"] == pytest.approx(true_log_z, abs=1e-3)
  assert 0 < prod["log_z_is_stderr"] < 0.05
  assert abs(prod["log_z_is"] - true_log_z) < 4 * prod["log_z_is_stderr"] + 1e-4
  assert abs(prod["log_z_is_alpha1"] - logsumexp(L.sum(1))) < 4 * prod["log_z_is_alpha1_stderr"] \
      + 1e-4
  test = np.asarray([int("".join(str(int(v)) for v in row), 2) for row in
                     boost.bars_and_stripes(4)])                         # rows of X
  learned = np.mean(L[test] @ alpha) - true_log_z
  ones = np.mean(L[test].sum(1)) - logsumexp(L.sum(1))
  assert prod["test_log_likelihood_exact"] == pytest.approx(learned, abs=1e-3)
  assert prod["test_log_likelihood_exact_alpha1"] == pytest.approx(ones, abs=1e-3)
  assert learned > ones + 1e-3
  assert learned >= L[test].mean(0).max() - 2e-3


# ---------------------------------------------------------------------------------------------
# Config errors.


@pytest.mark.parametrize("module,field,value,match", [
    (boost_semisup_mnist, "semisup.num_labels", (0, 100), "semisup.num_labels"),
    (boost_semisup_mnist, "semisup.components_per_class", 0, "semisup.components_per_class"),
    (boost_semisup_mnist, "semisup.num_samples", 0, "semisup.num_samples"),
    (boost_semisup_mnist, "semisup.reg", -1.0, "semisup.reg"),
    (boost_semisup_mnist, "boost.stack", ("rbm",), "boost.stack"),
    (boost_semisup_mnist, "boost.codes", "resample", "boost.codes"),
    (boost_product_bars, "product.num_pool", 0, "product.num_pool"),
    (boost_product_bars, "product.max_exact_visible", 30, "product.max_exact_visible"),
    (boost_product_bars, "product.num_steps", 0, "product.num_steps"),
    (boost_product_bars, "product.optim", ConfigDict(dict(name="adamw")), "product.optim"),
])
def test_bad_extension_values_name_the_field(module, field, value, match):
  config = module.get_config("smoke")
  block, key = field.split(".")
  config[block][key] = value
  with pytest.raises(ConfigError, match=match):
    boost.validate(config)


def test_product_needs_an_rbm_stack():
  config = boost_product_bars.get_config("smoke")
  config.boost.stack = ("rbm", "vae")
  with pytest.raises(ConfigError, match="boost.stack"):
    boost.validate(config)


def test_exact_rbm_draws_follow_the_enumerated_marginal():
  """The inverse-CDF sampler the product's proposal uses: frequencies of 200,000 draws of h
  against p(h) summed in numpy from the energy."""
  rng = np.random.default_rng(7)
  W, b, c = rng.normal(size=(5, 3)) * 1.5, rng.normal(size=5), rng.normal(size=3)
  p = BinaryRBMParams(*(jnp.asarray(a, jnp.float32) for a in (W, b, c)))
  draws = np.asarray(meta._exact_hidden_draws(p, jax.random.key(0), 200_000))
  H = np.asarray(list(itertools.product([0.0, 1.0], repeat=3)))
  log_ph = H @ c + np.sum(np.logaddexp(0, b + H @ W.T), 1)
  truth = np.exp(log_ph - logsumexp(log_ph))
  freq = np.array([np.mean(np.all(draws == h, axis=1)) for h in H])
  tol = 4 * np.sqrt(truth * (1 - truth) / 200_000) + 1e-4            # 4 binomial std errors
  assert np.all(np.abs(freq - truth) <= tol), (freq, truth)
