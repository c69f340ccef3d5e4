"""Every experiment config: it loads, and its `:smoke` variant runs end to end through main.py."""

import glob
import importlib
import json
import os

import pytest

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


@pytest.mark.parametrize("path", CONFIGS)
def test_smoke_variant_runs(path, tmp_path):
  result = helpers.run_main(f"--config={path}:smoke", f"--workdir={tmp_path}")
  assert result.returncode == 0, helpers.describe(result)
  with open(tmp_path / "config.json") as f:
    assert json.load(f)["family"] == _module(path).get_config("smoke").family
  outputs = set(os.listdir(tmp_path)) - {"config.json"}
  assert outputs, f"{path}:smoke wrote nothing but its config"
