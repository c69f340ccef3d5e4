"""The Frey-face GRBM path: AIS against enumeration, the frey_rawface.mat loader, the image runner.

Truths: log Z of a GRBM with 12 hidden units enumerated here in float64 numpy (the Gaussian
integral over v for each of the 4,096 hidden states, written again from the energy, not with
ebm.grbm); the file layout of frey_rawface.mat (variable 'ff', column i = face i, 28 rows of 20
pixels one after the other) on a synthetic file written by scipy; for the runner, the log-likelihood
of its exported grbm.npz recomputed with that numpy enumeration on test digits read independently
(raw 0..16 values / 16), and the argmin of the validation losses it logged. The Frey file itself is
not on this machine, so the runner runs on the offline stand-in `digits` (the `:smoke` config).
"""

import itertools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.io
from ml_collections import ConfigDict

import main
from common import data as data_lib
from common.errors import ConfigError, DataError
from configs.ebm import grbm_checkerboard, grbm_freyface
from ebm import ais, experiment, grbm
from tests import helpers


def numpy_log_z(params) -> float:
  """log Z of E = sum (v - b)^2 / (2 sigma^2) - c^T h - v^T W h: for each binary h, the integral
  over v is a Gaussian one, exp(c^T h + b^T W h + ||sigma W h||^2 / 2) (2 pi)^(d/2) prod sigma."""
  W, b, c, sigma = (np.asarray(params[k], np.float64) for k in ("W", "b", "c", "sigma"))
  hs = np.array(list(itertools.product([0.0, 1.0], repeat=len(c))))
  wh = hs @ W.T
  terms = hs @ c + wh @ b + 0.5 * np.sum((sigma * wh) ** 2, 1)
  return float(np.logaddexp.reduce(terms) + 0.5 * len(b) * np.log(2 * np.pi)
               + np.sum(np.log(sigma)))


def numpy_neg_free_energy(params, v: np.ndarray) -> np.ndarray:
  W, b, c, sigma = (np.asarray(params[k], np.float64) for k in ("W", "b", "c", "sigma"))
  v = np.asarray(v, np.float64)
  return -0.5 * np.sum(((v - b) / sigma) ** 2, 1) + np.sum(np.logaddexp(0, c + v @ W), 1)


def faces_like_grbm(d=40, m=12, seed=0):
  """A GRBM of pixel-like scale, b in [0.2, 0.8], sigma in [0.15, 0.4], W ~ N(0, 1.5^2): log Z
  about 46 against the base's -13, so the anneal has far to go."""
  rs = np.random.RandomState(seed)
  return {"W": 1.5 * rs.randn(d, m), "b": rs.uniform(0.2, 0.8, d), "c": rs.uniform(-1, 1, m),
          "sigma": rs.uniform(0.15, 0.4, d)}


def test_ais_log_z_and_log_likelihood_match_enumeration():
  """12 hidden units, d = 40 (4,096 states): AIS (the Frey-face estimator, fewer chains) within 3
  standard errors of the numpy enumeration, far from its own starting point, and the AIS test
  log-likelihood within the same error of the exact one."""
  params = faces_like_grbm()
  p = grbm.GRBMParams(*(jnp.asarray(params[k], jnp.float32) for k in ("W", "b", "c", "sigma")))
  truth = numpy_log_z(params)
  assert abs(float(grbm.log_z(p)) - truth) < 1e-3
  res = ais.ais_log_z(p, jax.random.key(0), num_chains=400, num_betas=1000)
  se = float(res.stderr)
  assert 0 < se < 0.05, se
  assert abs(float(res.log_z) - truth) < 3 * se, (float(res.log_z), truth, se)
  # The anneal does work: the base's log Z is many error bars away from the target's.
  assert abs(float(ais.base_log_z(p)) - truth) > 100 * se
  assert 50 < float(res.ess) <= 400
  # The runner's AIS evaluation (batched -F, its own key): the log-likelihood and its error bar.
  v = np.random.RandomState(1).uniform(0, 1, (300, 40)).astype(np.float32)
  exact_ll = float(np.mean(numpy_neg_free_energy(params, v))) - truth
  out = experiment.evaluate_ais(p, v, 128, jax.random.key(5), 400, 1000)
  assert out["log_z_method"] == "ais" and out["test_log_likelihood_ais_stderr"] < 0.05
  assert out["log_z_stderr"] == out["test_log_likelihood_ais_stderr"]
  assert abs(out["test_log_likelihood"] - exact_ll) < 3 * out["log_z_stderr"] + 1e-3, (
      out, exact_ll)
  assert out["test_log_likelihood"] + out["log_z"] == pytest.approx(exact_ll + truth, abs=1e-3)
  assert out["test_log_likelihood_exact"] == pytest.approx(exact_ll, abs=1e-3)


# ---------------------------------------------------------------------------------------------
# The loader.

N_FACES = 1965


def write_frey(path, ff=None, key="ff", seed=0):
  """A synthetic frey_rawface.mat: uint8 'ff' [560, 1965] (face i = column i)."""
  if ff is None:
    ff = np.random.RandomState(seed).randint(0, 256, size=(560, N_FACES)).astype(np.uint8)
  scipy.io.savemat(str(path), {key: ff})
  return ff


def _frey(**kw):
  return data_lib.get_dataset(ConfigDict(dict(name="frey_face", **kw)))


def test_frey_loader_reads_the_file_layout_and_split(tmp_path):
  ff = write_frey(tmp_path / "frey_rawface.mat")
  ds = _frey(path=str(tmp_path / "frey_rawface.mat"))
  assert ds.shape == (28, 20, 1) and ds.num_levels == 256
  assert (len(ds.train), len(ds.validation), len(ds.test)) == (1400, 300, 265)
  # File order: train = faces 0..1399, validation = 1400..1699, test = 1700..1964; face i's pixel
  # (r, c) is ff[20 r + c, i].
  for split, first in ((ds.train, 0), (ds.validation, 1400), (ds.test, 1700)):
    for j in (0, len(split) - 1):
      np.testing.assert_array_equal(split[np.array([j])][0, :, :, 0],
                                    ff[:, first + j].reshape(28, 20))
  r, c, i = 27, 3, 1777
  assert ds.test[np.array([i - 1700])][0, r, c, 0] == ff[20 * r + c, i]
  # The runner's visible vectors: x / 255 in [0, 1], 560 of them per face.
  v = experiment.unit_vectors(ds, next(ds.eval_batches("validation", 300)))
  assert v.shape == (300, 560) and v.min() >= 0.0 and v.max() <= 1.0
  np.testing.assert_allclose(v, ff[:, 1400:1700].T / 255.0, atol=1e-6)


def test_frey_loader_finds_the_file_by_env_var_then_cache(tmp_path, monkeypatch):
  ff = write_frey(tmp_path / "elsewhere.mat", seed=1)
  monkeypatch.setenv("FREY_FACE_PATH", str(tmp_path / "elsewhere.mat"))
  np.testing.assert_array_equal(_frey().train[np.array([5])][0, :, :, 0], ff[:, 5].reshape(28, 20))
  monkeypatch.delenv("FREY_FACE_PATH")
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
  os.makedirs(tmp_path / "cache" / "jax-papers")
  ff2 = write_frey(tmp_path / "cache" / "jax-papers" / "frey_rawface.mat", seed=2)
  np.testing.assert_array_equal(_frey().train[np.array([5])][0, :, :, 0],
                                ff2[:, 5].reshape(28, 20))
  # data.path wins over both.
  monkeypatch.setenv("FREY_FACE_PATH", str(tmp_path / "elsewhere.mat"))
  np.testing.assert_array_equal(
      _frey(path=str(tmp_path / "cache" / "jax-papers" / "frey_rawface.mat")).train[
          np.array([5])][0, :, :, 0], ff2[:, 5].reshape(28, 20))


@pytest.mark.parametrize("case,message", [
    ("missing", r"not found\. Expected the standard file frey_rawface\.mat"),
    ("not_mat", "is not a readable MATLAB file"),
    ("no_ff", "has no variable 'ff'"),
    ("shape", r"'ff' has shape \[1965, 560\], expected \[560, 1965\]"),
    ("float", r"'ff' holds float64 values .* expected 8-bit pixels 0\.\.255"),
])
def test_frey_loader_errors_name_the_file_and_the_fix(tmp_path, case, message):
  path = tmp_path / "frey_rawface.mat"
  if case == "not_mat":
    path.write_bytes(b"<html>404 Not Found</html>" * 10)
  elif case == "no_ff":
    write_frey(path, key="faces")
  elif case == "shape":
    write_frey(path, ff=np.zeros((N_FACES, 560), np.uint8))
  elif case == "float":
    write_frey(path, ff=np.random.RandomState(0).uniform(0, 1, (560, N_FACES)))
  with pytest.raises(DataError, match=message) as info:
    _frey(path=str(path))
  text = str(info.value)
  assert str(path) in text and data_lib.FREY_FACE_URL in text and "data.path" in text


def test_missing_frey_file_through_main_is_one_line(tmp_path):
  """main.py with the full config and no file: exit 1, the message, no traceback, no training."""
  missing = tmp_path / "nowhere" / "frey_rawface.mat"
  result = helpers.run_main("--config=configs/ebm/grbm_freyface.py",
                            f"--workdir={tmp_path / 'run'}", f"--config.data.path={missing}",
                            timeout=120)
  assert result.returncode == 1, helpers.describe(result)
  assert f"Frey-face file {missing} not found" in result.stderr
  assert "Traceback" not in result.stderr
  assert not os.path.exists(tmp_path / "run" / "checkpoints")


# ---------------------------------------------------------------------------------------------
# The runner on the stand-in.


def _digits_test_points() -> np.ndarray:
  """The digits test split as the runner must see it: raw levels 0..16 / 16, flattened."""
  ds = data_lib.get_dataset(ConfigDict(dict(name="digits")))
  return np.asarray(ds.test[np.arange(len(ds.test))], np.float64).reshape(len(ds.test), -1) / 16


def _logged(workdir, key):
  rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  return {r["step"]: r[key] for r in rows if key in r}


def test_runner_on_the_stand_in_exports_ais_results_and_resumes(tmp_path, caplog):
  """DSM, 6 steps, one seed: results.json's keys; its log-likelihood against the numpy
  enumeration of grbm.npz on independently read test digits (AIS, 200 chains x 500 betas, within
  3 standard errors); the kept
  model is the logged validation argmin; a rerun is 'Already trained' with the same numbers, and
  --mode=eval rewrites them."""
  config = grbm_freyface.get_config("smoke")
  config.method = "dsm"
  config.train.update(num_seeds=1)
  workdir = str(tmp_path)
  main.launch(config, workdir, "train")
  with open(tmp_path / "results.json") as f:
    res = json.load(f)
  for key in ("method", "test_log_likelihood", "step", "test_log_likelihood_ais_stderr",
              "log_z", "log_z_stderr", "log_z_method", "selected_step", "val_loss"):
    assert key in res, key
  assert res["method"] == "dsm" and res["step"] == 6 and res["log_z_method"] == "ais"
  assert res["dataset"] == "digits" and res["num_visible"] == 64 and res["num_val"] == 200
  with np.load(tmp_path / "grbm.npz") as f:
    params = {k: f[k] for k in f.files}
  assert sorted(params) == ["W", "b", "c", "sigma"] and params["W"].shape == (64, 12)
  v = _digits_test_points()
  assert res["num_test"] == len(v)
  log_z = numpy_log_z(params)
  exact_ll = float(np.mean(numpy_neg_free_energy(params, v))) - log_z
  assert res["log_z_exact"] == pytest.approx(log_z, abs=2e-3)
  assert res["test_log_likelihood_exact"] == pytest.approx(exact_ll, abs=2e-3)
  se = res["test_log_likelihood_ais_stderr"]
  assert 0 < se < 0.05 and res["log_z_stderr"] == se
  assert abs(res["test_log_likelihood"] - exact_ll) < 3 * se, (res, exact_ll)
  # Selection: the kept step is the argmin of the logged validation losses, and grbm.npz is it.
  val = _logged(workdir, "val_loss")
  assert sorted(val) == [3, 6]
  assert res["selected_step"] == min(val, key=val.get)
  assert res["val_loss"] == pytest.approx(val[res["selected_step"]], rel=1e-6)
  with np.load(tmp_path / "best" / "seed0.npz") as f:
    assert int(f["step"]) == res["selected_step"]
    np.testing.assert_array_equal(f["W"], params["W"])

  caplog.clear()
  with caplog.at_level("INFO"):
    main.launch(config, workdir, "train")
  assert "Already trained to step 6" in caplog.text
  with open(tmp_path / "results.json") as f:
    again = json.load(f)
  assert again["test_log_likelihood"] == res["test_log_likelihood"]
  experiment.run(config, workdir, "eval")
  with open(tmp_path / "results.json") as f:
    assert json.load(f)["test_log_likelihood"] == pytest.approx(res["test_log_likelihood"],
                                                                 abs=1e-5)

  # A kept model other than the last: the export evaluates and writes it, and reports the last.
  rs = np.random.RandomState(0)
  other = grbm.GRBMParams(*(np.asarray(params[k] * (1 + 0.2 * rs.randn(*params[k].shape)),
                                       np.float32) for k in ("W", "b", "c", "sigma")))
  store = experiment.BestStore(workdir)
  assert not store.offer(0, other, 3, res["val_loss"] + 1.0)      # worse: refused
  assert store.offer(0, other, 3, res["val_loss"] - 1.0)
  assert experiment.BestStore(workdir).load(0)[1:] == (3, pytest.approx(res["val_loss"] - 1.0))
  picked = experiment.run(config, workdir, "eval")
  assert picked["selected_step"] == 3 and picked["step"] == 6
  with np.load(tmp_path / "grbm.npz") as f:
    np.testing.assert_array_equal(f["W"], other.W)
    exported = {k: f[k] for k in f.files}
  other_ll = float(np.mean(numpy_neg_free_energy(exported, v))) - numpy_log_z(exported)
  assert picked["test_log_likelihood_exact"] == pytest.approx(other_ll, abs=2e-3)
  assert abs(picked["test_log_likelihood"] - other_ll) < 3 * picked[
      "test_log_likelihood_ais_stderr"] + 1e-3
  assert picked["final_test_log_likelihood"] == pytest.approx(res["test_log_likelihood"],
                                                              abs=1e-5)


@pytest.mark.parametrize("field,value,message", [
    ("data.name", "mnist_5k", "data.name='mnist_5k' is invalid"),
    ("eval.select", "best", "eval.select='best' is not a known model selection; valid names: "
                            "final, val_loss"),
    ("eval.ais_chains", 1, "eval.ais_chains=1 is invalid: expected an integer >= 2"),
    ("eval.ais_betas", 0, "eval.ais_betas=0 is invalid"),
    ("data.num_val", 0, "data.num_val=0 is invalid with eval.select='val_loss'"),
    ("data.num_val", -3, "data.num_val=-3 is invalid"),
    ("method", "cd1", "eval.select='val_loss' is invalid for method='cd1'"),
])
def test_bad_fields_name_the_field(field, value, message):
  config = grbm_freyface.get_config("smoke")
  if "." in field:
    section, name = field.split(".")
    config[section][name] = value
  else:
    config[field] = value
  with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")):
    experiment.validate(config)


def test_selection_needs_a_validation_split_and_a_feasible_hold_out():
  config = grbm_checkerboard.get_config("smoke")
  config.eval.select = "val_loss"
  with pytest.raises(ConfigError, match="eval.select='val_loss' is invalid for "
                                        "data.name='checkerboard'"):
    experiment.validate(config)
  config = grbm_freyface.get_config("smoke")
  config.data.num_val = 5000
  experiment.validate(config)
  with pytest.raises(ConfigError, match=r"data\.num_val=5000 is invalid: 'digits' has 1597"):
    experiment.setup(config)


def test_full_config_is_the_official_setting():
  c = grbm_freyface.get_config()
  experiment.validate(c)
  assert (c.data.name, c.model.num_hidden, c.data.batch_size, c.train.num_steps) == (
      "frey_face", 400, 100, 20_000)
  assert (c.optim.lr, c.optim.schedule, c.optim.b2) == (2e-4, "constant", 0.95)
  assert (c.loss.sigma, c.loss.unroll_steps, c.loss.inner_steps) == (0.3, 5, 5)
  assert (c.eval.ais_chains, c.eval.ais_betas, c.eval.select) == (2000, 2000, "val_loss")
  assert c.train.num_steps // c.eval.every == 10           # "best of 10 checkpoints"
  sweep = grbm_freyface.get_sweep()
  bidsm = {(o["loss.inner_steps"], o["loss.unroll_steps"]) for o in sweep if o["method"] == "bidsm"}
  assert bidsm == {(5, 0), (5, 1), (5, 5), (5, 10), (0, 5), (1, 5), (10, 5)}
  assert {o["method"] for o in sweep} == {"bidsm", "dsm", "cd1"}
  for override in sweep:          # every run of the sweep is a valid config
    config = grbm_freyface.get_config()
    for key, value in override.items():
      node = config
      *parts, last = key.split(".")
      for part in parts:
        node = node[part]
      node[last] = value
    experiment.validate(config)
