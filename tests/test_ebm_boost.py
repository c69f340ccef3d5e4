"""Cascaded boosting (ebm.meta, ebm.cascade, ebm.boost) against independent truth.

Truths: brute-force numpy sums over every binary state of tiny RBM stacks (log Z over the joint,
the factorial posteriors, the hidden and visible marginals, the boosted p(x) = sum_h p_1(x | h)
p_2(h)), written here from the energy E(v, h) = -b^T v - c^T h - v^T W h alone; the exact log Z
for AIS; scipy's mixture density and scikit-learn's EM for the Gaussian mixture.
"""

import itertools
import json
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ml_collections import ConfigDict

from common.errors import ConfigError
from configs.ebm import boost_bars
from ebm import boost, cascade, meta
from ebm.grbm import BinaryRBMParams

EVAL = ConfigDict(dict(batch_size=500, num_samples=4000, max_exact=20, max_exact_joint=24,
                       ais_chains=400, ais_betas=1000, gibbs_steps=100, iw_samples=10))


# ---------------------------------------------------------------------------------------------
# Brute force in numpy, from the energy.


def states(n: int) -> np.ndarray:
  return np.array(list(itertools.product([0.0, 1.0], repeat=n)))


def lse(a, axis=None):
  m = np.max(a, axis=axis, keepdims=True)
  out = m + np.log(np.sum(np.exp(a - m), axis=axis, keepdims=True))
  return np.squeeze(out, axis=axis) if axis is not None else out.item()


def np_rbm(W, b, c):
  """log Z, log p(v) and log p(h) of one binary RBM by summing the joint over (v, h)."""
  W, b, c = (np.asarray(x, np.float64) for x in (W, b, c))
  V, H = states(len(b)), states(len(c))
  joint = (V @ b)[:, None] + (H @ c)[None] + V @ W @ H.T                  # [2^d, 2^m]
  log_z = lse(joint)
  log_pv = lambda v: lse((v @ b)[:, None] + (H @ c)[None] + v @ W @ H.T, 1) - log_z
  log_ph = lambda h: lse((V @ b)[:, None] + (h @ c)[None] + V @ W @ h.T, 0) - log_z
  return log_z, log_pv, log_ph


def np_log_q(W, c, v, H):
  """log q(h | v) of the factorial posterior, [B, S]."""
  a = c + v @ W                                                            # [B, m]
  return a @ H.T - np.sum(np.logaddexp(0, a), 1)[:, None]


def np_log_cond(W, b, v, H):
  """log p(v | h) of an RBM, [B, S]."""
  a = b + H @ W.T                                                          # [S, d]
  return v @ a.T - np.sum(np.logaddexp(0, a), 1)[None]


def random_rbm(rng, d, m, scale=1.5):
  return BinaryRBMParams(*(jnp.asarray(x, jnp.float32) for x in (
      scale * rng.normal(size=(d, m)), rng.normal(size=d), rng.normal(size=m))))


def np_params(p):
  return tuple(np.asarray(x, np.float64) for x in p)


def two_stage_truth(p1, p2, x):
  """(bound, exact log p(x)) per example of a two-RBM stack, brute force."""
  (W1, b1, c1), (W2, b2, c2) = np_params(p1), np_params(p2)
  _, log_p1x, log_p1h = np_rbm(W1, b1, c1)
  _, log_p2v, _ = np_rbm(W2, b2, c2)
  H = states(len(c1))
  q = np.exp(np_log_q(W1, c1, x, H))                                       # [B, S]
  bound = log_p1x(x) + q @ (log_p2v(H) - log_p1h(H))
  exact = lse(np_log_cond(W1, b1, x, H) + log_p2v(H)[None], 1)
  return bound, exact


# ---------------------------------------------------------------------------------------------
# The data.


def test_bars_and_stripes_are_the_30_distinct_patterns():
  x = boost.bars_and_stripes(4)
  assert x.shape == (30, 16) and set(np.unique(x)) == {0.0, 1.0}
  assert len({tuple(r) for r in x}) == 30
  imgs = x.reshape(-1, 4, 4)
  rows_const = np.all(imgs == imgs[:, :, :1], axis=(1, 2))
  cols_const = np.all(imgs == imgs[:, :1, :], axis=(1, 2))
  assert np.all(rows_const | cols_const)
  assert rows_const.sum() == 16 and cols_const.sum() == 16        # blank and full are both


# ---------------------------------------------------------------------------------------------
# The stack maths against brute force.


def _fitted(p, max_exact=20):
  cfg = ConfigDict(dict(EVAL.to_dict(), max_exact=max_exact))
  return meta.FittedRBM.create(p, jax.random.key(0), cfg)


def test_log_z_by_either_side_and_ais_match_brute_force():
  rng = np.random.default_rng(0)
  p = random_rbm(rng, 12, 9, scale=0.4)
  truth = np_rbm(*np_params(p))[0]
  assert float(meta.exact_log_z(p)) == pytest.approx(truth, abs=1e-3)                 # h side
  assert float(meta.exact_log_z(meta.transpose(p))) == pytest.approx(truth, abs=1e-3)
  wide = random_rbm(rng, 7, 13, scale=0.4)                                            # v side
  assert float(meta.exact_log_z(wide)) == pytest.approx(np_rbm(*np_params(wide))[0], abs=1e-3)
  f = _fitted(p, max_exact=4)                   # 9 and 12 units > 4: AIS
  assert f.log_z_info["method"] == "ais" and not f.exact
  assert abs(f.log_z_info["log_z"] - truth) < max(0.05, 4 * f.log_z_info["stderr"])


def test_two_stage_bound_and_exact_likelihood_equal_their_closed_forms():
  rng = np.random.default_rng(1)
  p1, p2 = random_rbm(rng, 6, 5), random_rbm(rng, 5, 4)
  x = states(6)[rng.choice(64, 12, replace=False)]
  stack = [_fitted(p1), _fitted(p2)]
  terms = cascade.bound_terms(stack, jnp.asarray(x, jnp.float32), jax.random.key(0), EVAL)
  assert terms[0]["exact"] and terms[1]["exact"]
  bound = np.asarray(terms[0]["value"]) + np.asarray(terms[1]["value"])
  exact = np.asarray(cascade.exact_log_likelihood(stack, jnp.asarray(x, jnp.float32)))
  true_bound, true_exact = two_stage_truth(p1, p2, x)
  np.testing.assert_allclose(bound, true_bound, atol=2e-4)
  np.testing.assert_allclose(exact, true_exact, atol=2e-4)
  assert np.all(true_exact >= true_bound - 1e-9) and np.all(exact >= bound - 1e-4)


def test_enumeration_in_chunks_matches(monkeypatch):
  rng = np.random.default_rng(2)
  p1, p2 = random_rbm(rng, 7, 6), random_rbm(rng, 6, 3)      # shapes used nowhere else
  x = jnp.asarray(states(7)[:9], jnp.float32)
  whole = cascade.exact_log_likelihood([_fitted(p1), _fitted(p2)], x)
  monkeypatch.setattr(cascade, "CHUNK", 8)                    # 2^6 states in 8 chunks
  jax.clear_caches()
  chunked = cascade.exact_log_likelihood([_fitted(p1), _fitted(p2)], x)
  terms = cascade.bound_terms([_fitted(p1), _fitted(p2)], x, jax.random.key(0), EVAL)
  jax.clear_caches()
  np.testing.assert_allclose(chunked, whole, atol=1e-4)
  np.testing.assert_allclose(np.asarray(terms[0]["value"] + terms[1]["value"]),
                             two_stage_truth(p1, p2, np.asarray(x))[0], atol=2e-4)


def test_three_stage_exact_likelihood_and_monte_carlo_bound():
  rng = np.random.default_rng(3)
  ps = [random_rbm(rng, 5, 4), random_rbm(rng, 4, 3), random_rbm(rng, 3, 3)]
  (W1, b1, c1), (W2, b2, c2), (W3, b3, c3) = (np_params(p) for p in ps)
  x = states(5)[rng.choice(32, 8, replace=False)]
  H1, H2 = states(4), states(3)
  _, log_p1x, log_p1h = np_rbm(W1, b1, c1)
  _, log_p2v, log_p2h = np_rbm(W2, b2, c2)
  _, log_p3v, _ = np_rbm(W3, b3, c3)
  # p(x) = sum_{h1, h2} p1(x | h1) p2(h1 | h2) p3(h2)
  inner = lse(np_log_cond(W2, b2, H1, H2) + log_p3v(H2)[None], 1)             # [2^4]
  true_exact = lse(np_log_cond(W1, b1, x, H1) + inner[None], 1)
  q1 = np.exp(np_log_q(W1, c1, x, H1))                                        # [B, 2^4]
  q12 = q1 @ np.exp(np_log_q(W2, c2, H1, H2))                                 # q(h2 | x)
  true_bound = (log_p1x(x) + q1 @ (log_p2v(H1) - log_p1h(H1))
                + q12 @ (log_p3v(H2) - log_p2h(H2)))
  stack = [_fitted(p) for p in ps]
  xj = jnp.asarray(x, jnp.float32)
  np.testing.assert_allclose(cascade.exact_log_likelihood(stack, xj), true_exact, atol=2e-4)
  summary = cascade.summarise_terms([cascade.bound_terms(stack, xj, jax.random.key(4), EVAL)])
  assert summary[1]["exact"] and not summary[2]["exact"]
  mc = sum(t["mean"] for t in summary)
  assert abs(mc - true_bound.mean()) < 4 * summary[2]["stderr"] + 1e-4
  assert true_exact.mean() >= true_bound.mean()


def test_a_bad_top_stage_has_a_negative_increment_and_is_refused():
  """Data drawn from RBM 1 itself (weights p_1(x) over all x) and a uniform RBM (zero
  parameters) on top: the mean increment is -KL(p_1(h) || uniform) < 0 exactly (the aggregate
  posterior of p_1's own data is p_1(h)), and the stopping rule refuses the stage."""
  rng = np.random.default_rng(5)
  p1 = random_rbm(rng, 6, 5, scale=1.0)
  zero = BinaryRBMParams(jnp.zeros((5, 4)), jnp.zeros(5), jnp.zeros(4))
  x = states(6)
  terms = cascade.bound_terms([_fitted(p1), _fitted(zero)], jnp.asarray(x, jnp.float32),
                              jax.random.key(0), EVAL)
  _, log_p1x, log_p1h = np_rbm(*np_params(p1))
  weights = np.exp(log_p1x(x))
  increment = float(weights @ np.asarray(terms[1]["value"], np.float64))
  p_h = np.exp(log_p1h(states(5)))
  kl_to_uniform = float(np.sum(p_h * (np.log(p_h) + 5 * np.log(2.0))))
  assert increment == pytest.approx(-kl_to_uniform, abs=2e-4) and increment < -0.01
  assert not cascade.accept(increment, 0.0) and cascade.accept(0.01, 0.0)


def test_gmm_density_against_scipy_and_em_against_sklearn():
  from scipy.stats import multivariate_normal
  from sklearn.mixture import GaussianMixture
  rng = np.random.default_rng(6)
  x = np.concatenate([rng.normal(size=(150, 2)) * 0.3 + [1, 1], rng.normal(size=(150, 2))
                      * [0.5, 0.2] - 1]).astype(np.float32)
  spec = meta.GMMSpec(ConfigDict(dict(num_components=2, reg=1e-6)), 2, 0, False)
  program = spec.program(x, 1, 1)
  state = program.init(jax.random.key(0))
  for _ in range(60):
    state, metrics = program.step(state, None, jax.random.key(0), program.consts)
  fitted = spec.load(state, jax.random.key(0), EVAL)
  p = {k: np.asarray(v, np.float64) for k, v in fitted.p.items()}
  dens = sum(w * multivariate_normal(m, l @ l.T).pdf(x)
             for w, m, l in zip(p["weights"], p["means"], p["chol"]))
  np.testing.assert_allclose(np.asarray(fitted.elbo(jnp.asarray(x))), np.log(dens), atol=1e-3)
  sk = GaussianMixture(2, covariance_type="full", reg_covar=1e-6, random_state=0).fit(x)
  assert float(np.mean(fitted.elbo(jnp.asarray(x)))) == pytest.approx(sk.score(x), abs=1e-3)


# ---------------------------------------------------------------------------------------------
# The runner: exports against brute force, the stopping rule, resume, config errors.


def tiny_config(**overrides):
  c = boost_bars.get_config("smoke")
  c.boost.num_latent = (6, 16)                    # 16 >= 16 visible pixels: transposed start
  c.rbm.update(num_steps=500, cd_steps=5, init_std=0.1)
  c.rbm.optim.lr = 0.5
  c.eval.num_images = 4
  for key, value in overrides.items():
    block, field = key.split(".")
    c[block][field] = value
  return c


def _np_stack(path):
  with np.load(path) as f:
    return {k: np.asarray(f[k], np.float64) for k in f.files}


def test_runner_exports_match_brute_force_and_a_rerun_resumes(tmp_path, caplog):
  config = tiny_config()
  results = boost.run(config, str(tmp_path))
  with open(tmp_path / "results.json") as f:
    saved = json.load(f)
  assert saved["num_stages"] == 2 and [s["accepted"] for s in saved["stages"]] == [True, True]
  assert saved["stages"][1]["increment"] > 0 and saved["stages"][1]["increment_exact"]
  s = _np_stack(tmp_path / "stack.npz")
  assert sorted(s) == ["W1", "W2", "b1", "b2", "c1", "c2"]
  assert s["W1"].shape == (16, 6) and s["b1"].shape == (16,) and s["c1"].shape == (6,)
  assert s["W2"].shape == (6, 16) and s["b2"].shape == (6,) and s["c2"].shape == (16,)
  x = boost.bars_and_stripes(4).astype(np.float64)
  p1, p2 = ((s[f"W{k}"], s[f"b{k}"], s[f"c{k}"]) for k in (1, 2))
  true_bound, true_exact = two_stage_truth(p1, p2, x)
  assert saved["exact_log_likelihood"] == pytest.approx(true_exact.mean(), abs=2e-4)
  assert saved["bound"] == pytest.approx(true_bound.mean(), abs=2e-4)
  assert saved["exact_log_likelihood"] >= saved["bound"] - 1e-6
  single = np_rbm(*p1)[1](x).mean()
  assert saved["single_stage_exact_log_likelihood"] == pytest.approx(single, abs=2e-4)
  assert saved["bound"] == pytest.approx(single + saved["stages"][1]["increment"], abs=1e-6)
  assert (tmp_path / "samples_stage2.png").exists() and results["num_stages"] == 2
  caplog.clear()
  with caplog.at_level(logging.INFO):
    again = boost.run(config, str(tmp_path))
  assert "Already trained" in caplog.text
  assert again["bound"] == pytest.approx(saved["bound"], abs=1e-6)


def test_runner_refuses_an_untrained_second_stage(tmp_path):
  config = tiny_config(**{"boost.num_steps": (500, 1), "rbm.init": "random"})
  results = boost.run(config, str(tmp_path))
  first, second = results["stages"]
  assert second["increment"] < 0 and second["select_increment"] < 0 and not second["accepted"]
  assert results["num_stages"] == 1 and results["bound"] == first["bound"]
  assert results["exact_log_likelihood"] == pytest.approx(first["exact_log_likelihood"])
  assert sorted(_np_stack(tmp_path / "stack.npz")) == ["W1", "b1", "c1"]


def test_a_vae_and_gmm_stack_runs_on_binarised_digits(tmp_path):
  config = boost_bars.get_config("smoke")
  config.data.update(name="digits", num_train=200, num_test=40, batch_size=20)
  config.boost.update(stack=("rbm", "vae", "gmm"), num_latent=(12, 3, 1), num_steps=(20, 30, 5),
                      codes="resample")
  config.vae.update(hidden=16, depth=1)
  config.gmm.num_components = 3
  config.eval.update(num_samples=4, iw_samples=5, num_images=4)
  boost.validate(config)
  results = boost.run(config, str(tmp_path))
  stages = results["stages"]
  assert len(stages) >= 2 and stages[1]["kind"] == "vae" and not stages[1]["increment_exact"]
  assert all(np.isfinite(s["increment"]) and np.isfinite(s["increment_stderr"]) for s in stages)
  assert results["exact_log_likelihood"] is None or results["num_stages"] == 1
  assert os.path.exists(tmp_path / "samples_stage1.png")


@pytest.mark.parametrize("field,value,match", [
    ("boost.stack", ("vae", "rbm"), "boost.stack"),
    ("boost.stack", ("gmm", "vae"), "boost.stack"),
    ("boost.stack", ("rbm", "flow"), "boost.stack=.*valid names"),
    ("boost.num_latent", (4, 5, 6), "boost.num_latent"),
    ("boost.num_latent", (0,), "boost.num_latent"),
    ("boost.num_steps", (10, 0), "boost.num_steps"),
    ("boost.codes", "binary", "boost.codes"),
    ("boost.threshold", -0.5, "boost.threshold"),
    ("rbm.init", "xavier", "rbm.init"),
    ("rbm.cd_steps", 0, "rbm.cd_steps"),
    ("eval.max_exact", 30, "eval.max_exact"),
    ("data.name", "bars", "data.name"),
    ("train.num_seeds", 2, "train.num_seeds"),
])
def test_bad_config_values_name_the_field(field, value, match):
  config = boost_bars.get_config("smoke")
  block, key = field.split(".")
  config[block][key] = value
  with pytest.raises(ConfigError, match=match):
    boost.validate(config)
