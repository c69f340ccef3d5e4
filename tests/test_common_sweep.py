"""The sweep launcher turns get_sweep() override dicts into main.py runs."""

import os
import subprocess
import sys

from common import sweep
from tests import helpers

SWEEP_CONFIG = '''
"""A two-run sweep over the learning rate. Command: python -m common.sweep --config=THIS --workdir=W"""
from configs.dpm import ddpm_mnist

def get_config(arg=None):
  return ddpm_mnist.get_config(arg)

def get_sweep(arg=None):
  return [{"optim.lr": 0.001, "seed": 1}, {"optim.lr": 0.002, "seed": 2}]
'''


def test_commands_carry_overrides_and_separate_workdirs(tmp_path):
  path = tmp_path / "lr_sweep.py"
  path.write_text(SWEEP_CONFIG)
  cmds = sweep.commands(f"{path}:smoke", str(tmp_path / "runs"))
  assert len(cmds) == 2
  assert "--config.optim.lr=0.001" in cmds[0] and "--config.seed=2" in cmds[1]
  workdirs = {c for cmd in cmds for c in cmd if c.startswith("--workdir=")}
  assert len(workdirs) == 2


def test_print_only_lists_one_command_per_run(tmp_path):
  path = tmp_path / "lr_sweep.py"
  path.write_text(SWEEP_CONFIG)
  result = subprocess.run([sys.executable, "-m", "common.sweep", f"--config={path}:smoke",
                           f"--workdir={tmp_path}/runs", "--print_only"], cwd=helpers.ROOT,
                          env=helpers.env(), capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, helpers.describe(result)
  lines = result.stdout.strip().splitlines()
  assert len(lines) == 2 and all("main.py" in l and "--config.optim.lr=" in l for l in lines)


def test_config_without_sweep_is_a_clear_error(tmp_path):
  result = subprocess.run([sys.executable, "-m", "common.sweep",
                           "--config=configs/dpm/ddpm_mnist.py", f"--workdir={tmp_path}"],
                          cwd=helpers.ROOT, env=helpers.env(), capture_output=True, text=True,
                          timeout=120)
  assert result.returncode == 1 and "defines no get_sweep()" in result.stderr
