"""Every experiment config: it loads, and its `:smoke` variant runs end to end through main.launch.

The smoke runs share this test process (its compiled programs, and main.py's default split of the
CPU into devices, set in conftest.py) instead of a main.py subprocess each; the command line itself
is tested once per family (test_dpm_main.py, test_netdesign_configs.py)."""

import glob
import importlib
import json
import os

import pytest

import main
from tests import helpers

CONFIGS = sorted(
    os.path.relpath(p, helpers.ROOT)
    for p in glob.glob(os.path.join(helpers.ROOT, "configs", "*", "*.py"))
    if os.path.basename(p) not in ("base.py", "__init__.py"))


def _module(path):
  return importlib.import_module(path[:-3].replace(os.sep, "."))


def test_there_are_configs():
  assert "configs/dpm/ddpm_mnist.py" in CONFIGS and "configs/dpm/ddpm_cifar10.py" in CONFIGS


@pytest.mark.parametrize("path", CONFIGS)
def test_config_documents_itself_and_validates(path):
  module = _module(path)
  doc = module.__doc__ or ""
  assert "Command:" in doc and "python main.py" in doc, f"{path}: docstring needs the command"
  for arg in (None, "smoke"):
    config = module.get_config(arg)
    family = importlib.import_module(config.family)
    family.validate(config)


# netdesign's smoke runs, with checks of their network.json and rerun, are in
# test_netdesign_configs.py.
RERUN = ("Already trained", "Restored checkpoint", "already done", "Already solved")


@pytest.mark.parametrize("path", [p for p in CONFIGS if not p.startswith("configs/netdesign")])
def test_smoke_variant_runs_and_a_rerun_resumes(path, tmp_path, caplog):
  config = _module(path).get_config("smoke")
  main.launch(config, str(tmp_path), "train")
  with open(tmp_path / "config.json") as f:
    assert json.load(f)["family"] == config.family
  outputs = set(os.listdir(tmp_path)) - {"config.json"}
  assert outputs, f"{path}:smoke wrote nothing but its config"
  caplog.clear()
  with caplog.at_level("INFO"):
    main.launch(config, str(tmp_path), "train")  # the same command again
  assert any(word in caplog.text for word in RERUN), f"{path}: a rerun says nothing of resuming"
  if config.family == "dpm" and config.reports:   # the reports are not recomputed either
    assert "already done from this config" in caplog.text, f"{path}: a rerun redid its reports"
