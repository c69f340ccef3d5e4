"""The VaES Fisher-divergence estimator (ebm/fisher.py) against independent truth.

Truths: Stein's identity E_D[f . s_D + tr grad f] = 0 for the data N(0, I), by which the critic
objective at f* = s_theta - s_D is the exact Fisher divergence 0.5 E ||s_D - s_theta||^2 and any
other critic f* + g is lower by 0.5 E ||g||^2 (Monte Carlo on many points, within NUM_SE standard
errors, with a check that the test has the power to fail); the critic's Jacobian by jax.jacfwd and
the exact mean of the Hutchinson term over all 2^d Rademacher probes; a numpy float64
transcription of the GRBM score for the exported models; and a short real run whose estimates
must rank the scales and match the exact value at the largest scale.
"""

import itertools
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import main
from common.errors import ConfigError
from configs.ebm import fisher_grbm
from ebm import fisher, grbm

NUM_SE = 4.0


def random_grbm(d, m, scale=0.8, seed=0):
  rs = np.random.RandomState(seed)
  arrays = (scale * rs.randn(d, m), scale * rs.randn(d), scale * rs.randn(m), np.ones(d))
  return grbm.GRBMParams(*(jnp.asarray(a, jnp.float32) for a in arrays))


def exact_trace(f, v):
  """tr grad f(v_b) for every row by the full Jacobian, [B]."""
  jac = jax.vmap(jax.jacfwd(lambda x: f(x[None])[0]))(v)
  return jnp.trace(jac, axis1=-2, axis2=-1)


def objective_exact_trace(f, score, v):
  """The critic objective with the exact trace (no probe), [B]."""
  fv = f(v)
  return jnp.sum(fv * score, -1) + exact_trace(f, v) - 0.5 * jnp.sum(fv ** 2, -1)


def within_se(x, truth=0.0, num_se=NUM_SE):
  x = np.asarray(x, np.float64)
  return abs(x.mean() - truth) <= num_se * x.std(ddof=1) / math.sqrt(len(x))


def all_signs(d):
  return jnp.asarray(list(itertools.product((-1.0, 1.0), repeat=d)), jnp.float32)


# ---------------------------------------------------------------------------------------------
# The variational form.


def test_objective_at_the_optimal_critic_is_the_exact_fisher_divergence():
  d = 3
  p = random_grbm(d, 4)
  v = jax.random.normal(jax.random.key(0), (100_000, d))
  f_star = fisher.oracle_critic(p)
  score = grbm.score(p, v)
  objective = objective_exact_trace(f_star, score, v)
  exact = fisher.exact_fisher_terms(p, v)
  np.testing.assert_allclose(exact, 0.5 * jnp.sum((-v - score) ** 2, -1), rtol=1e-6)
  assert float(exact.mean()) > 1.0
  # per point the two differ by the Stein term f* . s_D + tr grad f*, mean 0 under N(0, I)
  assert within_se(objective - exact), float((objective - exact).mean())
  # power: under data N(0, 1.5^2 I) that is no longer the data score, and the check fails
  wide = 1.5 * v
  gap = objective_exact_trace(f_star, grbm.score(p, wide), wide) - fisher.exact_fisher_terms(
      p, wide)
  assert not within_se(gap)


def test_any_other_critic_is_lower_by_half_its_squared_distance():
  d = 3
  p = random_grbm(d, 4, seed=1)
  v = jax.random.normal(jax.random.key(1), (100_000, d))
  score = grbm.score(p, v)
  f_star = fisher.oracle_critic(p)
  best = objective_exact_trace(f_star, score, v)
  rs = np.random.RandomState(2)
  a, b = jnp.asarray(0.3 * rs.randn(d, d), jnp.float32), jnp.asarray(rs.randn(d), jnp.float32)
  mlp = fisher.Critic(d, 3, "elu", rngs=nnx.Rngs(3))
  for g in (lambda x: x @ a + b, mlp):
    other = objective_exact_trace(lambda x, g=g: f_star(x) + g(x), score, v)
    half_sq = 0.5 * jnp.sum(g(v) ** 2, -1)
    assert float(other.mean()) < float(best.mean())
    # objective(f* + g) - objective(f*) = -0.5 ||g||^2 + (the Stein term of g, mean 0)
    assert within_se(other - best + half_sq)


def test_hutchinson_trace_is_unbiased_for_the_critic():
  d = 4
  f = fisher.Critic(d, 3, "elu", rngs=nnx.Rngs(0))
  v = jax.random.normal(jax.random.key(0), (16, d))
  score = jax.random.normal(jax.random.key(1), (16, d))
  truth = objective_exact_trace(f, score, v)
  # exactly: the mean over all 2^d Rademacher probes of eps^T J eps is tr J
  per_probe = jax.vmap(lambda e: fisher.critic_objective(f, score, v, jnp.broadcast_to(
      e, v.shape)))(all_signs(d))
  np.testing.assert_allclose(per_probe.mean(0), truth, rtol=1e-5, atol=1e-5)
  # in Monte Carlo, for both probe distributions of the registry, one probe per point
  for name in fisher.PROJECTIONS:
    keys = jax.random.split(jax.random.key(2), 4000)
    draws = jax.vmap(lambda k: fisher.critic_objective(
        f, score, v, fisher.PROJECTIONS[name](k, v.shape, v.dtype)))(keys)
    mean, se = draws.mean(0), draws.std(0, ddof=1) / math.sqrt(draws.shape[0])
    assert np.all(np.abs(mean - truth) <= NUM_SE * se), (name, mean, truth, se)


def test_vaes_with_the_exact_posterior_is_unbiased_for_the_score():
  d, m = 3, 4
  p = random_grbm(d, m, seed=4)
  v = jax.random.normal(jax.random.key(0), (5, d))

  class Exact:  # the posterior q = p(h | v)
    def logits(self, x):
      return p.c + x @ p.W

  draws = fisher.vaes_score(p, Exact(), v, jax.random.key(1), 20_000)
  np.testing.assert_allclose(draws, grbm.score(p, v), atol=0.05)


# ---------------------------------------------------------------------------------------------
# A short real run and its exports.


def small_config():
  c = fisher_grbm.get_config("smoke")
  c.data.update(dim=8, num_train=2000, num_val=200, num_test=1000)
  c.model.num_hidden = 8
  c.fisher.perturbations = (0.0, 0.5, 1.0)
  c.train.update(num_steps=1500, log_every=500, ckpt_every=1500)
  c.eval.update(every=1500, num_probes=4)
  return c


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("fisher")
  main.launch(small_config(), str(workdir), "train")
  return workdir


def test_a_short_run_ranks_the_scales_and_tracks_the_exact_value(run_dir):
  with open(run_dir / "results.json") as f:
    r = json.load(f)
  est, err, exact = map(np.asarray, (r["estimate"], r["stderr"], r["exact"]))
  assert r["perturbation"] == [0.0, 0.5, 1.0]
  assert np.all(np.diff(exact) > 0) and exact[0] == 0.0
  assert np.all(np.diff(est) > 3 * (err[1:] + err[:-1])), (est, err)
  assert abs(est[0]) < 0.05 * exact[1]
  # the largest scale within a few standard errors or 10 %: the critic's objective is a lower
  # bound up to noise, so a short run sits slightly below the truth
  assert abs(est[-1] - exact[-1]) <= max(NUM_SE * (err[-1] + r["exact_stderr"][-1]),
                                         0.1 * exact[-1]), (est, exact)
  # the exact-score ablation agrees too
  assert np.all(np.abs(np.asarray(r["estimate_exact_score"]) - exact) <= 0.1 * exact + 0.2)


def test_exports_have_the_pinned_keys_and_recompute_the_exact_values(run_dir):
  with open(run_dir / "results.json") as f:
    r = json.load(f)
  for key in ("perturbation", "exact", "estimate", "stderr"):
    assert len(r[key]) == 3, key
  assert (run_dir / "fisher.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  z = np.load(run_dir / "fisher.npz")
  for key in ("train", "val", "test", "perturbation", "W", "b", "c", "sigma"):
    assert key in z.files, key
  assert z["W"].shape == (3, 8, 8) and z["test"].shape == (1000, 8)
  np.testing.assert_allclose(z["perturbation"], r["perturbation"], rtol=1e-6)
  np.testing.assert_allclose(z["W"][2], 2 * z["W"][1], rtol=1e-5)   # one direction, scaled
  v = z["test"].astype(np.float64)
  for i in range(3):
    W, b, c, sigma = (z[k][i].astype(np.float64) for k in ("W", "b", "c", "sigma"))
    hidden = 1.0 / (1.0 + np.exp(-(c + v @ W)))
    s_model = -(v - b) / sigma ** 2 + hidden @ W.T
    exact = np.mean(0.5 * np.sum((-v - s_model) ** 2, 1))
    np.testing.assert_allclose(r["exact"][i], exact, rtol=1e-4, atol=1e-6)


def test_a_rerun_says_it_is_done_and_writes_the_same_numbers(run_dir, caplog):
  with open(run_dir / "results.json") as f:
    before = json.load(f)
  with caplog.at_level("INFO"):
    main.launch(small_config(), str(run_dir), "train")
  assert "Already trained" in caplog.text
  with open(run_dir / "results.json") as f:
    assert json.load(f) == before


# ---------------------------------------------------------------------------------------------
# Config errors.


@pytest.mark.parametrize("field,value", [
    ("fisher.perturbations", ()), ("fisher.perturbations", (0.0, -0.2)),
    ("fisher.score", "exactly"), ("fisher.particles", 0), ("fisher.inner_steps", -1),
    ("fisher.projection", "sphere"), ("fisher.lower", "elbo"), ("critic.activation", "gelu2"),
    ("critic.num_layers", 0), ("data.name", "checkerboard"), ("data.dim", 0),
    ("model.num_hidden", 0), ("data.batch_size", 10 ** 6), ("train.num_seeds", 2),
    ("eval.num_probes", 0), ("optim.lr", -1.0),
])
def test_bad_config_values_name_the_field(field, value):
  c = fisher_grbm.get_config("smoke")
  block, name = field.split(".")
  c[block][name] = value
  with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
    fisher.validate(c)


def test_configs_validate():
  for arg in (None, "smoke"):
    fisher.validate(fisher_grbm.get_config(arg))
