"""The GRBM runner end to end: main.py, the pinned exports against an independent numpy evaluation,
resume, the vmapped seeds against single-seed runs, and config errors that name the field.

Truths: the test log-likelihood of grbm.npz recomputed in numpy (log sum_h exp(-E(v, h)) over the
2^m states, log Z by trapezoid quadrature of the joint over a 2-D grid, no closed form), and a run
of one seed alone for the seeds of a vmapped run.
"""

import itertools
import json
import os

import numpy as np
import pytest

import main
from common.errors import ConfigError
from configs.ebm import grbm_checkerboard
from ebm import experiment
from tests import helpers

CONFIG = "configs/ebm/grbm_checkerboard.py:smoke"


def numpy_log_likelihood(params, v: np.ndarray) -> float:
  """Mean log p(v) of the pinned GRBM E = sum (v - b)^2 / (2 sigma^2) - c^T h - v^T W h, d = 2."""
  W, b, c, sigma = (np.asarray(params[k], np.float64) for k in ("W", "b", "c", "sigma"))
  hs = np.array(list(itertools.product([0.0, 1.0], repeat=len(c))))          # [2^m, m]

  def log_joint(x):                                                           # [N, 2^m]
    quad = 0.5 * np.sum(((x - b) / sigma) ** 2, axis=1)
    return -quad[:, None] + hs @ c + (x @ W) @ hs.T

  means = b + sigma ** 2 * (hs @ W.T)                                         # E[v | h]
  lo, hi = means.min(0) - 9 * sigma, means.max(0) + 9 * sigma
  axes = [np.linspace(lo[i], hi[i], 1201) for i in range(2)]
  gx, gy = np.meshgrid(*axes, indexing="ij")
  grid = np.stack([gx.ravel(), gy.ravel()], 1)
  lj = log_joint(grid)
  shift = lj.max()
  dens = np.exp(lj - shift).sum(1).reshape(gx.shape)
  z = np.trapezoid(np.trapezoid(dens, axes[1], axis=1), axes[0])
  log_z = np.log(z) + shift
  lv = log_joint(np.asarray(v, np.float64))
  m = lv.max(1, keepdims=True)
  return float(np.mean(np.log(np.exp(lv - m).sum(1)) + m[:, 0]) - log_z)


def _test_points(config) -> np.ndarray:
  from common import data as data_lib
  ds = data_lib.get_dataset(config.data)
  return np.asarray(ds.test[np.arange(len(ds.test))], np.float32)


def test_bidsm_smoke_through_main_exports_and_rerun(tmp_path):
  """A bi-level run (two parameter sets) through main.py: schema, numpy truth, rerun."""
  workdir = str(tmp_path / "run")
  result = helpers.run_main(f"--config={CONFIG}", f"--workdir={workdir}",
                            "--config.method=bidsm", timeout=300)
  assert result.returncode == 0, helpers.describe(result)
  with open(os.path.join(workdir, "results.json")) as f:
    res = json.load(f)
  assert res["method"] == "bidsm" and res["step"] == 6 and res["num_seeds"] == 2
  assert isinstance(res["test_log_likelihood"], float)
  with np.load(os.path.join(workdir, "grbm.npz")) as f:
    params = {k: f[k] for k in f.files}
  assert sorted(params) == ["W", "b", "c", "sigma"]
  d, m = 2, 4
  assert params["W"].shape == (d, m) and params["b"].shape == (d,)
  assert params["c"].shape == (m,) and params["sigma"].shape == (d,)
  assert np.all(params["sigma"] > 0)
  config = grbm_checkerboard.get_config("smoke")
  test = _test_points(config)
  assert len(test) == res["num_test"] == config.data.num_test
  assert numpy_log_likelihood(params, test) == pytest.approx(res["test_log_likelihood"],
                                                             abs=2e-4)
  # The second seed's own export reproduces its row.
  with np.load(os.path.join(workdir, "seeds", "1", "grbm.npz")) as f:
    second = {k: f[k] for k in f.files}
  assert res["seeds"][1]["seed"] == 1
  assert numpy_log_likelihood(second, test) == pytest.approx(
      res["seeds"][1]["test_log_likelihood"], abs=2e-4)
  assert not np.allclose(second["W"], params["W"])
  lls = [r["test_log_likelihood"] for r in res["seeds"]]
  assert res["test_log_likelihood_mean"] == pytest.approx(np.mean(lls))
  assert res["test_log_likelihood_stderr"] == pytest.approx(np.std(lls, ddof=1) / np.sqrt(2))
  assert res["true_test_log_likelihood"] == pytest.approx(np.log(2))

  again = helpers.run_main(f"--config={CONFIG}", f"--workdir={workdir}",
                           "--config.method=bidsm", timeout=300)
  assert again.returncode == 0, helpers.describe(again)
  assert "Already trained to step 6" in again.stderr
  with open(os.path.join(workdir, "results.json")) as f:
    assert json.load(f)["test_log_likelihood"] == res["test_log_likelihood"]


def _smoke(method, **train):
  config = grbm_checkerboard.get_config("smoke")
  config.method = method
  config.train.update(train)
  return config


def test_resume_continues_and_eval_mode_reproduces(tmp_path, caplog):
  """PCD (a carried chain in the state): 6 steps, then the same workdir asked for 9; --mode=eval
  rewrites the same numbers from the checkpoint."""
  workdir = str(tmp_path)
  main.launch(_smoke("pcd1", num_steps=6), workdir, "train")
  caplog.clear()
  with caplog.at_level("INFO"):
    main.launch(_smoke("pcd1", num_steps=9), workdir, "train")
  assert "Restored checkpoint" in caplog.text and "Training steps 6..9" in caplog.text
  with open(os.path.join(workdir, "results.json")) as f:
    trained = json.load(f)
  assert trained["step"] == 9
  experiment.run(_smoke("pcd1", num_steps=9), workdir, "eval")
  with open(os.path.join(workdir, "results.json")) as f:
    evaluated = json.load(f)
  assert evaluated["test_log_likelihood"] == pytest.approx(trained["test_log_likelihood"],
                                                           abs=1e-6)


def test_vmapped_seeds_equal_single_seed_runs(tmp_path):
  """Seed index 1 of a 2-seed NCE run = a run of seed 1 alone (its own init and minibatches)."""
  both = experiment.run(_smoke("nce", num_seeds=2), str(tmp_path / "both"), "train")
  config = _smoke("nce", num_seeds=1)
  config.seed = 1
  alone = experiment.run(config, str(tmp_path / "alone"), "train")
  assert alone["seed"] == 1
  assert alone["test_log_likelihood"] == pytest.approx(both["seeds"][1]["test_log_likelihood"],
                                                       abs=1e-4)
  with np.load(tmp_path / "both" / "seeds" / "1" / "grbm.npz") as a, \
       np.load(tmp_path / "alone" / "grbm.npz") as b:
    for k in ("W", "b", "c", "sigma"):
      np.testing.assert_allclose(a[k], b[k], atol=1e-5)


@pytest.mark.parametrize("field,value,message", [
    ("method", "sm", "method='sm' is not a known EBM training method"),
    ("loss.sigma", -0.1, "loss.sigma=-0.1 is invalid"),
    ("loss.unroll_steps", -1, "loss.unroll_steps=-1 is invalid"),
    ("model.num_hidden", 30, "model.num_hidden=30 is invalid"),
    ("optim.lr", 0.0, "optim.lr=0.0 is invalid"),
    ("data.name", "mnist_5k", "data.name='mnist_5k' is invalid"),
])
def test_bad_config_names_the_field(field, value, message):
  config = grbm_checkerboard.get_config("smoke")
  config.method = "bidsm"
  node = config
  *parts, last = field.split(".")
  for part in parts:
    node = node[part]
  node[last] = value
  with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")):
    experiment.validate(config)


def test_exact_ml_loss_is_the_negative_log_likelihood():
  """The `ml` reference's loss = -mean log p(v) of the numpy grid evaluation."""
  import jax
  import jax.numpy as jnp
  from flax import nnx
  from ebm import grbm, losses
  model = grbm.GRBM(2, 4, rngs=nnx.Rngs(3))
  model.log_sigma[...] = jnp.asarray([-0.7, -0.3])
  v = _test_points(grbm_checkerboard.get_config("smoke"))[:200]
  value, _ = losses.LOSSES["ml"].loss(model, jnp.asarray(v), jax.random.key(0), None)
  params = {k: np.asarray(x) for k, x in model.params()._asdict().items()}
  assert float(value) == pytest.approx(-numpy_log_likelihood(params, v), abs=1e-4)


def test_sweep_covers_every_pinned_method():
  sweep = grbm_checkerboard.get_sweep()
  names = [o["method"] for o in sweep]
  assert set(grbm_checkerboard.METHOD_NAMES) <= set(names)
  assert set(names) <= set(experiment.METHODS.names())
  assert all(o["train.num_seeds"] == 5 for o in sweep)
  for name in names:
    config = grbm_checkerboard.get_config()
    config.method = name
    experiment.validate(config)
