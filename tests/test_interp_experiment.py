"""The interp runner end to end on tiny settings, results.json, and clear errors for bad fields.

Truths: the real-image consistency and clean accuracy in results.json recomputed here from the
restored models by an eager forward pass and a plain NumPy sort; hand-computed consistency of a
constructed layer with a dead neuron; a rerun of the report reproduces results.json exactly.
"""

import json
import os

import numpy as np
import pytest
from flax import nnx

from common.errors import ConfigError
from common.sweep import apply_overrides
from configs.interp import consistency_digits
from interp import experiment, report
from tests import helpers

MODES = ["standard", "adversarial", "consistent"]
PER_SEED = {"seed", "clean_accuracy", "white_box_accuracy", "transfer_accuracy",
            "representation_distance", "relative_distance", "pool_adversarial_accuracy",
            "consistency", "live_neurons"}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("interp"))
  config = consistency_digits.get_config("smoke")
  experiment.run(config, workdir, "train")
  with open(os.path.join(workdir, "results.json")) as f:
    return config, workdir, json.load(f)


def test_results_schema(trained):
  config, workdir, results = trained
  assert list(results["modes"]) == MODES
  assert results["num_seeds"] == 2 and results["k"] == 4 and results["layer"] == "fc1"
  assert results["pool"] == {"split": "train", "num_examples": 64}
  assert results["test_examples"] == 200
  assert results["similarities"] == ["identity", "features"]
  a = np.array(results["similarity_matrices"]["features"])
  assert a.shape == (10, 10) and np.allclose(np.diag(a), 1) and np.allclose(a, a.T)
  for mode in MODES:
    r = results["modes"][mode]
    assert r["step"] == config.train.num_steps
    assert [s["seed"] for s in r["seeds"]] == [0, 1]
    for seed in r["seeds"]:
      assert set(seed) == PER_SEED
      for key in ("clean_accuracy", "white_box_accuracy", "transfer_accuracy"):
        assert 0 <= seed[key] <= 1
      for layer in ("fc1", "conv2"):
        for sim in ("identity", "features"):
          for part in report.SETS:
            # purity over k = 4 inputs lies in [1/4, 1]; A >= I entrywise raises it
            assert 0.25 - 1e-6 <= seed["consistency"][layer][sim][part] <= 1 + 1e-6
    values = [s["clean_accuracy"] for s in r["seeds"]]
    np.testing.assert_allclose(r["summary"]["clean_accuracy"]["mean"], np.mean(values))
    np.testing.assert_allclose(r["summary"]["clean_accuracy"]["stderr"],
                               np.std(values, ddof=1) / np.sqrt(2))
    for layer in ("fc1", "conv2"):
      assert os.path.isfile(os.path.join(workdir, results["pictures"][mode][layer]))
  with open(os.path.join(workdir, "results.md")) as f:
    table = f.read()
  assert all(f"| {mode} |" in table for mode in MODES)


def test_numbers_recomputed_from_the_restored_models(trained):
  config, workdir, results = trained
  setup = experiment.Setup(config)
  states = setup.restore(workdir)
  pool_x, pool_y = report.split_arrays(setup.data, "train", 64, config.report.seed)
  test_x, test_y = report.split_arrays(setup.data, "test")
  for mode in ("standard", "consistent"):
    for i, state in enumerate(states[mode][0]):
      model = nnx.merge(setup.graphdef, state, copy=True)
      record = results["modes"][mode]["seeds"][i]
      clean = np.mean(np.argmax(np.asarray(model(test_x)), 1) == test_y)
      np.testing.assert_allclose(record["clean_accuracy"], clean)
      acts = np.asarray(model(pool_x, return_features=True)[1]["fc1"])
      top = np.argsort(-acts, axis=0, kind="stable")[:4].T           # [U, k], ties to lower index
      live = np.sort(acts, axis=0)[-4] > 0
      purity = [np.sum(np.bincount(pool_y[t], minlength=10) ** 2) / 16 for t in top]
      assert record["live_neurons"]["fc1"] == live.sum()
      np.testing.assert_allclose(record["consistency"]["fc1"]["identity"]["real"],
                                 np.mean(np.array(purity)[live]), rtol=1e-6)


def test_report_rerun_is_identical_and_train_rerun_skips_it(trained, caplog):
  config, workdir, results = trained
  again = experiment.run(config, workdir, "report")
  again = json.loads(json.dumps(again))
  assert again["modes"] == results["modes"]
  with caplog.at_level("INFO"):
    assert experiment.run(config, workdir, "train") == {}
  assert "Already trained" in caplog.text and "Report already done" in caplog.text


def test_probe_pool_is_a_seeded_subset():
  config = consistency_digits.get_config("smoke")
  data = experiment.Setup(config).data
  x, y = report.split_arrays(data, "train", 300, seed=1)
  x_all, y_all = report.split_arrays(data, "train")
  assert len(y) == 300 and len(np.unique(y)) == 10 and len(y_all) == 1597
  for xi, yi in zip(x[:20], y[:20]):  # real examples with their own labels
    assert yi in y_all[(x_all == xi).all(axis=(1, 2, 3))]
  np.testing.assert_array_equal(report.split_arrays(data, "train", 300, seed=1)[1], y)
  assert x.min() >= 0 and x.max() <= 1


def test_layer_consistency_by_hand():
  # 6 inputs of classes 0,0,1,1,2,2; neuron 0 prefers class 0 on real and class 2 once adversarial;
  # neuron 1 never fires on real images (dead: left out of the means)
  labels = np.array([0, 0, 1, 1, 2, 2])
  real = np.array([[5, 0], [4, 0], [1, 0], [0, 0], [0, 0], [0, 0]], np.float32)
  adv = np.array([[2, 1], [0, 1], [0, 1], [0, 1], [3, 1], [0, 1]], np.float32)
  out = report.layer_consistency(real, adv, labels, {"identity": np.eye(3)}, k=2)
  assert out["live"] == 1
  # real top-2 {0, 1}: classes 0, 0 -> 1; adversarial top-2 {4, 0}: classes 2, 0 -> 0.5;
  # union top-2: real 0 (5) and real 1 (4) -> 1
  assert out["mean"]["identity"] == {"real": 1.0, "adversarial": 0.5, "union": 1.0}


def test_summary_with_a_missing_value():
  records = [{"seed": 0, "a": 1.0, "b": None, "c": {"d": 2.0}},
             {"seed": 1, "a": 3.0, "b": None, "c": {"d": 4.0}}]
  s = report.summarise(records)
  assert s["a"] == {"mean": 2.0, "stderr": 1.0} and s["b"] == {"mean": None, "stderr": None}
  assert s["c/d"]["mean"] == 3.0
  assert report.summarise(records[:1])["a"] == {"mean": 1.0, "stderr": None}


@pytest.mark.parametrize("overrides, message", [
    ({"train.modes": ("standard", "robust")}, "train.modes='robust' is not a known training mode"),
    ({"train.modes": ()}, "train.modes is empty"),
    ({"consistent.lambda_c": 0.0}, "consistent.lambda_c=0.0 is invalid"),
    ({"attack.name": "cw"}, "attack.name='cw' is not a known attack; valid names: fgsm"),
    ({"report.attack.loss": "targeted"}, "report.attack.loss='targeted' is not a known attack"),
    ({"attack.eps": 1.5}, "attack.eps=1.5 is invalid"),
    ({"model.layer": "conv3"}, "model.layer='conv3' is invalid"),
    ({"report.layers": ("fc2",)}, "report.layers has 'fc2'"),
    ({"report.similarities": ("wordnet",)}, "report.similarities='wordnet' is not a known"),
    ({"train.modes": ("consistent",)}, "report.reference_mode='standard' is invalid"),
    ({"report.similarities": ("file",), "report.similarity_path": "/nope.npy"},
     "report.similarity_path='/nope.npy': no such file"),
    ({"report.num_examples": 3}, "report.num_examples=3 is invalid"),
    ({"data.name": "two_moons"}, "data.name='two_moons' is not a known interp model preset"),
    ({"report.split": "val"}, "report.split='val' is invalid"),
])
def test_bad_fields_are_clear_errors(overrides, message):
  config = apply_overrides(consistency_digits.get_config("smoke"), overrides)
  with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
    experiment.validate(config)


def test_main_reports_a_bad_field_without_traceback(tmp_path):
  result = helpers.run_main("--config=configs/interp/consistency_digits.py:smoke",
                            "--config.train.modes=standard,robust", f"--workdir={tmp_path}")
  assert result.returncode == 1, helpers.describe(result)
  assert "train.modes='robust' is not a known training mode" in result.stderr
  assert "Traceback" not in result.stderr
