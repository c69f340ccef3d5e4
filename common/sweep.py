"""Sweeps are data: a config file's `get_sweep(arg=None)` returns a list of override dicts.

  python -m common.sweep --config=configs/x.py[:variant] --workdir=runs/x_sweep [--print_only]

runs `main.py` once per override dict, one after another, each in `workdir/<run name>`; with
--print_only it prints the per-run commands instead (one line each), to hand to a cluster scheduler
or to run on each host of a TPU pod (add --multihost there).
"""

from __future__ import annotations

import importlib.util
import inspect
import os
import re
import shlex
import subprocess
import sys
from typing import Any

import argparse

from common.errors import ConfigError

MAIN = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "main.py")


def load_sweep(config_arg: str) -> list[dict[str, Any]]:
  """The override dicts of `path[:variant]`'s get_sweep()."""
  path, _, variant = config_arg.partition(":")
  spec = importlib.util.spec_from_file_location("_sweep_config", path)
  if spec is None or not os.path.exists(path):
    raise ConfigError(f"--config={config_arg!r}: no such config file")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, "get_sweep"):
    raise ConfigError(f"{path} defines no get_sweep(): it is not a sweep")
  takes_arg = len(inspect.signature(module.get_sweep).parameters) > 0
  sweep = module.get_sweep(variant or None) if takes_arg else module.get_sweep()
  if not isinstance(sweep, list) or not all(isinstance(o, dict) for o in sweep):
    raise ConfigError(f"{path}: get_sweep() must return a list of override dicts")
  return sweep


def apply_overrides(config: Any, overrides: dict[str, Any]) -> Any:
  """Sets each dotted key of `overrides` in `config` (in place, as --config.a.b=v would); returns it."""
  for key, value in overrides.items():
    node = config
    *parts, last = key.split(".")
    for part in parts:
      node = node[part]
    node[last] = value
  return config


def _format_value(value: Any) -> str:
  if isinstance(value, (tuple, list)):
    return "(" + ",".join(_format_value(v) for v in value) + ("," if len(value) == 1 else "") + ")"
  return str(value)


def run_name(overrides: dict[str, Any]) -> str:
  """A readable, filesystem-safe name such as 'optim.lr=0.001,seed=1'."""
  name = ",".join(f"{k}={_format_value(v)}" for k, v in sorted(overrides.items())) or "base"
  return re.sub(r"[^A-Za-z0-9_.,=+-]", "_", name)


def commands(config_arg: str, workdir: str, mode: str = "train") -> list[list[str]]:
  out = []
  for overrides in load_sweep(config_arg):
    cmd = [sys.executable, MAIN, f"--config={config_arg}",
           f"--workdir={os.path.join(workdir, run_name(overrides))}", f"--mode={mode}"]
    cmd += [f"--config.{k}={_format_value(v)}" for k, v in overrides.items()]
    out.append(cmd)
  return out


def main(argv: list[str] | None = None):
  # argparse, not absl flags: importing this module must not define flags that clash with main.py's.
  parser = argparse.ArgumentParser(description="Run (or print) the runs of a config's get_sweep().")
  parser.add_argument("--config", required=True, help="config file with get_sweep(), ':variant' ok")
  parser.add_argument("--workdir", required=True, help="parent directory of the runs' workdirs")
  parser.add_argument("--print_only", action="store_true", help="print the commands, run nothing")
  parser.add_argument("--mode", default="train", help="passed to main.py --mode")
  args = parser.parse_args(argv)
  try:
    cmds = commands(args.config, args.workdir, args.mode)
  except ConfigError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
  for i, cmd in enumerate(cmds):
    line = shlex.join(cmd)
    if args.print_only:
      print(line)
      continue
    print(f"[sweep {i + 1}/{len(cmds)}] {line}", flush=True)
    result = subprocess.run(cmd, check=False)
    if result.returncode:
      print(f"[sweep] run {i + 1} failed with exit code {result.returncode}", file=sys.stderr)
      sys.exit(result.returncode)


if __name__ == "__main__":
  main()
