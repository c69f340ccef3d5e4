"""Every netdesign config runs its smoke variant through main.py's pieces, and once via the CLI."""

import glob
import importlib.util
import json
import os
import subprocess
import sys

import pytest

import main
from netdesign import checker

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(p for p in glob.glob(os.path.join(ROOT, "configs/netdesign/*.py"))
                 if not p.endswith("base.py"))
SCHEMA = {"vertices", "edges", "selected", "sinks", "spec", "objective", "bound", "status"}


def _module(path):
  spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


def test_every_scenario_is_present():
  names = {os.path.basename(p)[:-3] for p in CONFIGS}
  assert {"street", "floorplan", "game", "sweep"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: os.path.basename(p))
def test_smoke_run(path, tmp_path, caplog):
  config = _module(path).get_config("smoke")
  config.solver.threads = 2  # the suite runs on 2 cores
  family = main.load_family(config)
  family.validate(config)
  family.run(config, str(tmp_path), "train")
  nets = sorted(glob.glob(str(tmp_path / "network.json")) + glob.glob(str(tmp_path / "alt*.json")))
  assert len(nets) == 1 + config.alternatives.count
  selections = []
  for p in nets:
    with open(p) as f:
      net = json.load(f)
    assert set(net) == SCHEMA
    assert net["status"] == "optimal"
    report = checker.check(net)
    assert report.ok, (p, report.violations)
    assert net["objective"] == pytest.approx(report.metrics["objective_recomputed"], abs=1e-6)
    selections.append(set(net["selected"]))
    stem = p[:-len(".json")]
    assert os.path.getsize(stem + ".png") > 0 and os.path.getsize(stem + ".svg") > 0
  for a in range(len(selections)):  # alternatives differ by the no-good Hamming distance
    for b in range(a):
      assert len(selections[a] ^ selections[b]) >= config.alternatives.min_hamming
  with open(tmp_path / "results.json") as f:
    first = json.load(f)
  assert first["valid"]
  # The same command again finds its result instead of solving again.
  with caplog.at_level("INFO"):
    again = family.run(config, str(tmp_path), "train")
  assert "Already solved" in caplog.text and again == first


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: os.path.basename(p))
def test_full_config_validates(path):
  mod = _module(path)
  config = mod.get_config()
  main.load_family(config).validate(config)
  for override in getattr(mod, "get_sweep", lambda arg=None: [])(None):
    c = mod.get_config()
    for key, value in override.items():
      node = c
      *parts, last = key.split(".")
      for part in parts:
        node = node[part]
      assert last in node, key
      node[last] = value
    main.load_family(c).validate(c)


def test_cli_street_smoke(tmp_path):
  proc = subprocess.run(
      [sys.executable, "main.py", "--config=configs/netdesign/street.py:smoke",
       f"--workdir={tmp_path}", "--config.solver.threads=2"],
      cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  with open(tmp_path / "network.json") as f:
    net = json.load(f)
  assert net["status"] == "optimal" and checker.check(net).ok
  assert os.path.exists(tmp_path / "config.json")
  # --mode=eval re-checks the saved network with the independent validator (in-process: one
  # CLI start per test run is enough, each costs a JAX import).
  config = _module(os.path.join(ROOT, "configs/netdesign/street.py")).get_config("smoke")
  out = main.load_family(config).run(config, str(tmp_path), "eval")
  assert out["valid"] and os.path.exists(tmp_path / "check.json")
