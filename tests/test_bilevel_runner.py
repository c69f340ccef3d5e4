"""The bilevel runner (bilevel/experiment.py, methods.py, results.py) end to end on tiny settings.

Truths: a numpy reimplementation of the inner SGD steps (hand-written backprop of the ELU MLP with
weighted cross-entropy) and float64 central finite differences of its unrolled objective for the
first UD outer update, computed from the run's own checkpointed split and theta_0 and the stream's
minibatches; for random search, the recorded best candidate retrained by numpy with exactly K
steps (and not K - 1 or K + 1); for the meter, the swapped run's first update by the same numpy
code on S'; an uninterrupted run for a resumed one, a one-device run for a 4-device run.
"""

import json
import os

import numpy as np
import pytest
from scipy import special

from bilevel import data as data_lib, experiment, methods, results
from common import train as train_lib
from common.errors import ConfigError, DataError
from configs.bilevel import base
from tests import helpers


def tiny(**train):
  """Reweighting on digits: 40 train, 8 val, MLP 64-8-10, K = 3, batch 8."""
  c = base.smoke(base.digits(base.get_config()))
  c.train.update(num_steps=3, log_every=1, ckpt_every=10, num_seeds=1, tensorboard=False)
  c.train.update(train)
  return c


def restored(c, workdir):
  run = experiment.Run(c, data_lib.load_pool(c.data))
  state, consts, _ = train_lib.restore(run.program, c, workdir, keys=methods.keys)
  return run, state, np.asarray(consts["x"], np.float64)


# ---------------------------------------------------------------------------------------------
# numpy reference: K inner SGD steps of the weighted-CE ELU MLP and the validation loss.


def elu(z):
  return np.where(z > 0, z, np.expm1(np.minimum(z, 0)))


def forward(theta, x):
  z1 = x @ theta[0]["w"] + theta[0]["b"]
  return z1, elu(z1) @ theta[1]["w"] + theta[1]["b"]


def sgd(theta, lam, x, y, batches, lr, wd):
  """theta_K from theta: batches [K, B] positions; weights sigmoid(lam); coupled decay wd."""
  theta = [{k: np.asarray(v, np.float64) for k, v in layer.items()} for layer in theta]
  for idx in batches:
    xb, yb, s = x[idx], y[idx], special.expit(lam[idx])
    z1, logits = forward(theta, xb)
    dz2 = special.softmax(logits, axis=1)
    dz2[np.arange(len(idx)), yb] -= 1
    dz2 *= s[:, None] / len(idx)
    h = elu(z1)
    dz1 = (dz2 @ theta[1]["w"].T) * np.where(z1 > 0, 1.0, np.exp(np.minimum(z1, 0)))
    grads = [{"w": xb.T @ dz1, "b": dz1.sum(0)}, {"w": h.T @ dz2, "b": dz2.sum(0)}]
    theta = [{k: (1 - lr * wd) * layer[k] - lr * g[k] for k in layer}
             for layer, g in zip(theta, grads)]
  return theta


def ce(theta, x, y):
  logits = forward(theta, x)[1]
  return -special.log_softmax(logits, axis=1)[np.arange(len(y)), y]


def split_arrays(state, x_pool, swap=False):
  """The run's split (numpy), with the meter's S' when `swap`."""
  split = {k: np.asarray(v) for k, v in state["split"].items()}
  if swap:
    j = int(state["swap"])
    split["val"], split["val_y"] = split["val"].copy(), split["val_y"].copy()
    split["val"][j], split["val_y"][j] = split["pool"][0], split["pool_y"][0]
  return {p: (x_pool[split[p]], split[f"{p}_y"]) for p in ("train", "val", "test", "mval")}


def numpy_hypergrad(c, theta0, data, batch, lam, eps=1e-5):
  x, y = data["train"]
  xv, yv = data["val"][0][batch["val"]], data["val"][1][batch["val"]]
  loss = lambda l: ce(sgd(theta0, l, x, y, batch["inner"].T, c.inner.lr, c.inner.weight_decay),
                      xv, yv).mean()
  grad = np.array([(loss(lam + eps * e) - loss(lam - eps * e)) / (2 * eps)
                   for e in np.eye(len(lam))])
  return loss(lam), grad


def stream_batch(c, step, seed=0):
  return methods.index_batches(c.data.seed, c.seed + seed, step, c.data.num_train,
                               c.data.num_val, c.data.batch_size, c.data.val_batch_size,
                               c.inner.num_steps)


# ---------------------------------------------------------------------------------------------


def test_run_writes_results_whose_gap_is_test_minus_val(tmp_path):
  c = tiny(num_seeds=2, num_steps=4, tensorboard=True)
  out = experiment.run(c, str(tmp_path))
  on_disk = results.read(str(tmp_path))
  assert json.loads(json.dumps(out)) == on_disk and on_disk["schema"] == "bilevel-results/1"
  run = on_disk["runs"]["main"]
  assert run["workdir"] == "." and run["steps"] == [1, 2, 3, 4]
  assert run["setting"]["num_inner"] == 3 and run["setting"]["num_val"] == 8
  for key in ("val_loss", "val_full_loss", "test_loss", "gap", "gap_full", "mval_loss",
              "test_error", "inner_steps", "grad_norm", "weight_clean", "weight_noisy"):
    assert len(run["mean"][key]) == 4 and np.all(np.isfinite(run["mean"][key])), key
    assert np.shape(run["seeds"][key]) == (2, 4) and len(run["stderr"][key]) == 4
  m, seeds = run["mean"], run["seeds"]
  np.testing.assert_allclose(m["gap"], np.subtract(m["test_loss"], m["val_loss"]), atol=1e-6)
  np.testing.assert_allclose(seeds["gap"], np.subtract(seeds["test_loss"], seeds["val_loss"]),
                             atol=1e-6)
  np.testing.assert_allclose(m["gap_full"], np.subtract(m["test_loss"], m["val_full_loss"]),
                             atol=1e-6)
  np.testing.assert_array_equal(m["inner_steps"], [3, 6, 9, 12])
  assert np.ptp(np.asarray(seeds["test_loss"])[:, 0]) > 0       # seeds differ (own splits)
  assert run["final"]["test_loss"] == m["test_loss"][-1]
  assert run["best_test"]["test_loss"] == min(m["test_loss"])
  assert os.listdir(tmp_path / "tensorboard")
  assert {"losses.png", "gap.png"} <= set(os.listdir(tmp_path / "figures"))


def test_first_ud_step_matches_numpy_unrolled_sgd_and_finite_differences(tmp_path):
  c = tiny(num_steps=1)
  out = experiment.run(c, str(tmp_path))["runs"]["main"]["mean"]
  run, state, x_pool = restored(c, str(tmp_path))
  data, batch = split_arrays(state, x_pool), stream_batch(c, 0)
  theta0 = [{k: np.asarray(v) for k, v in layer.items()} for layer in state["theta0"]]
  lam0 = np.zeros(c.data.num_train)
  value, grad = numpy_hypergrad(c, theta0, data, batch, lam0)
  theta_k = sgd(theta0, lam0, *data["train"], batch["inner"].T, c.inner.lr, 0.0)
  np.testing.assert_allclose(out["val_loss"][0], value, rtol=1e-5)
  np.testing.assert_allclose(out["test_loss"][0], ce(theta_k, *data["test"]).mean(), rtol=1e-5)
  np.testing.assert_allclose(out["mval_loss"][0], ce(theta_k, *data["mval"]).mean(), rtol=1e-5)
  np.testing.assert_allclose(out["grad_norm"][0], np.linalg.norm(grad), rtol=1e-3)
  lam1 = np.asarray(state["run"]["hparams"])
  np.testing.assert_allclose(lam1, -c.outer.lr * grad, rtol=1e-3, atol=1e-4 * np.abs(lam1).max())
  assert np.count_nonzero(lam1) > 10       # the inner batches touched these examples


def test_random_search_keeps_the_best_of_candidates_trained_exactly_k_steps(tmp_path):
  c = tiny(num_steps=5)
  c.method = "random_search"
  out = experiment.run(c, str(tmp_path))["runs"]["main"]["mean"]
  np.testing.assert_allclose(out["val_loss"], np.minimum.accumulate(out["trial_val_loss"]),
                             rtol=1e-6)
  np.testing.assert_array_equal(out["inner_steps"], 3 * np.arange(1, 6))   # UD's budget
  _, state, x_pool = restored(c, str(tmp_path))
  best = state["run"]
  b = int(best["best_index"])
  data, batch = split_arrays(state, x_pool), stream_batch(c, b)
  lam = np.asarray(best["hparams"], np.float64)
  assert np.abs(lam).max() > 1 and out["best_index"][-1] == b
  theta0 = [{k: np.asarray(v) for k, v in layer.items()} for layer in state["theta0"]]
  cols = batch["inner"].T
  val = lambda k: ce(sgd(theta0, lam, *data["train"], np.concatenate([cols, cols])[:k],
                         c.inner.lr, 0.0), *data["val"]).mean()
  np.testing.assert_allclose(out["val_loss"][-1], val(3), rtol=1e-5)
  for k in (2, 4):                                   # one inner step fewer or more is visible
    assert abs(val(k) - out["val_loss"][-1]) > 1e-3
  theta = sgd(theta0, lam, *data["train"], batch["inner"].T, c.inner.lr, 0.0)
  np.testing.assert_allclose(best["theta"][0]["w"], theta[0]["w"], rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(out["test_loss"][-1], ce(theta, *data["test"]).mean(), rtol=1e-5)


def test_stability_pair_runs_on_s_and_s_prime_with_the_same_randomness(tmp_path):
  c = tiny(num_steps=2, ckpt_every=1)
  c.data.val_batch_size = c.data.num_val    # every step sees the swapped example
  plain = experiment.run(c, str(tmp_path / "plain"))["runs"]["main"]["mean"]
  c.stability.enabled = True
  c.plots = ("curves", "stability")
  out = experiment.run(c, str(tmp_path / "pair"))["runs"]["main"]["mean"]
  for key in ("val_loss", "test_loss", "mval_loss", "gap"):   # run A is the plain run
    np.testing.assert_allclose(out[key], plain[key], rtol=1e-6)
  assert out["beta"][0] == 0 and out["beta_error"][0] == 0   # both start from lambda_0
  assert out["beta"][1] > 1e-6
  assert os.path.exists(tmp_path / "pair" / "figures" / "stability.png")
  run = experiment.Run(c, data_lib.load_pool(c.data))
  state, consts, _ = train_lib.restore(run.program, c, str(tmp_path / "pair"), step=1,
                                       keys=methods.keys)
  x_pool = np.asarray(consts["x"], np.float64)
  theta0 = [{k: np.asarray(v) for k, v in layer.items()} for layer in state["theta0"]]
  lams = np.asarray(state["run"]["hparams"])
  assert lams.shape == (2, c.data.num_train) and np.abs(lams[0] - lams[1]).max() > 1e-6
  for which, swap in ((0, False), (1, True)):   # run B's first update is numpy's on S'
    data = split_arrays(state, x_pool, swap)
    _, grad = numpy_hypergrad(c, theta0, data, stream_batch(c, 0), np.zeros(c.data.num_train))
    np.testing.assert_allclose(lams[which], -c.outer.lr * grad, rtol=1e-3,
                               atol=1e-4 * np.abs(lams).max())


def final_hparams(c, workdir):
  return np.asarray(restored(c, workdir)[1]["run"]["hparams"])


def test_resumed_and_sharded_runs_equal_an_uninterrupted_one_device_run(tmp_path):
  c = tiny(num_steps=4, ckpt_every=2)
  experiment.run(c, str(tmp_path / "full"))
  experiment.run(tiny(num_steps=2, ckpt_every=2), str(tmp_path / "resumed"))
  experiment.run(c, str(tmp_path / "resumed"))          # the same command, two steps further
  want = final_hparams(c, str(tmp_path / "full"))
  np.testing.assert_allclose(final_hparams(c, str(tmp_path / "resumed")), want, rtol=1e-6)
  assert results.read(str(tmp_path / "resumed"))["runs"]["main"]["steps"] == [1, 2, 3, 4]
  sharded = tiny(num_steps=4, ckpt_every=2)
  sharded.num_devices = 0                                 # the batches split over 4 devices
  experiment.run(sharded, str(tmp_path / "sharded"))
  np.testing.assert_allclose(final_hparams(c, str(tmp_path / "sharded")), want, rtol=1e-4,
                             atol=1e-6)


def test_variants_are_stages_with_their_own_settings(tmp_path):
  c = tiny(num_steps=2)
  c.variants = {"k2": {"inner": {"num_steps": 2}}, "rs": {"method": "random_search"}}
  out = experiment.run(c, str(tmp_path))
  assert set(out["runs"]) == {"k2", "rs"} and out["runs"]["k2"]["workdir"] == "k2"
  assert out["runs"]["k2"]["mean"]["inner_steps"] == [2, 4]
  assert out["runs"]["rs"]["setting"]["method"] == "random_search"
  assert os.path.isdir(tmp_path / "rs" / "checkpoints")
  assert experiment.batch_sizes(c) == (8, 8, 8, 8)
  replot = experiment.run(c, str(tmp_path), "plot")
  assert replot == out


@pytest.mark.parametrize("override,message", [
    ({"method": "bogus"}, "method='bogus' is not a known bilevel method; valid names: "
     "random_search, ud"),
    ({"task": "ridge"}, "task='ridge' is not a known bilevel task"),
    ({"inner.num_steps": 0}, "inner.num_steps=0 is invalid: expected a number > 0"),
    ({"inner.remat": "full"}, "inner.remat='full' is not a known rematerialisation scheme"),
    ({"data.val_batch_size": 12}, "data.val_batch_size=12 is invalid: expected at most the "
     "validation set's size m=8"),
    ({"data.name": "cifar10"}, "data.name='cifar10' is not a known bilevel dataset"),
    ({"outer.weight_decay": -1.0}, "outer.weight_decay=-1.0 is invalid"),
    ({"variants": {"k0": {"inner": {"num_steps": 0}}}}, "variants.k0: inner.num_steps=0"),
    ({"variants": {"x": {"inner": {"steps": 5}}}}, "variants.x.inner.steps is not a field"),
    ({"plots": ("curves", "pie")}, "plots='pie' is not a known bilevel plot"),
])
def test_bad_fields_are_clear_errors(override, message):
  c = tiny()
  for key, value in override.items():
    *parts, last = key.split(".")
    node = c
    for part in parts:
      node = node[part]
    node[last] = value
  with pytest.raises(ConfigError) as info:
    experiment.validate(c)
  assert message in str(info.value)


def test_split_and_data_errors_name_the_problem(tmp_path):
  c = tiny()
  c.data.num_test = 5000                                 # digits has 1,797 examples
  with pytest.raises(DataError, match="data.name='digits' cannot hold the split"):
    experiment.run(c, str(tmp_path))
  c = tiny()
  c.data.update(name="omniglot", tfds_data_dir=str(tmp_path), cache=False)
  with pytest.raises(DataError, match="tfds build omniglot --file_format=array_record"):
    data_lib.load_pool(c.data)


def test_index_batches_are_shuffled_epochs_and_a_function_of_the_step():
  a = methods.index_batches(0, 1, 5, num_train=10, num_val=8, batch_size=4, val_batch_size=3,
                            num_inner=6)
  assert a["inner"].shape == (4, 6) and a["inner"].dtype == np.int32
  flat = a["inner"].T.reshape(-1)                         # inner step k is column k
  np.testing.assert_array_equal(np.sort(flat[:10]), np.arange(10))
  np.testing.assert_array_equal(np.sort(flat[10:20]), np.arange(10))
  assert len(np.unique(a["val"])) == 3 and a["val"].max() < 8
  b = methods.index_batches(0, 1, 5, 10, 8, 4, 3, 6)
  c = methods.index_batches(0, 1, 6, 10, 8, 4, 3, 6)
  np.testing.assert_array_equal(a["inner"], b["inner"])
  assert not np.array_equal(a["inner"], c["inner"])


def test_main_py_reports_a_bad_field_without_a_traceback(tmp_path):
  result = helpers.run_main("--config=configs/bilevel/reweight_k.py:smoke",
                            "--config.inner.lr=-1", f"--workdir={tmp_path}")
  assert result.returncode == 1, helpers.describe(result)
  assert "error: inner.lr=-1.0 is invalid: expected a number > 0" in result.stderr
  assert "Traceback" not in result.stderr and not os.path.exists(tmp_path / "checkpoints")
