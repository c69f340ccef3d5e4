"""Entry point: `python main.py --config=configs/<family>/<exp>.py[:variant] --workdir=DIR [--mode=...]`.

Kept thin on purpose: it reads the config, lets the family validate it, saves the resolved config in
the workdir and hands over to the family's `run(config, workdir, mode)`.
"""

from __future__ import annotations

import importlib
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from common import errors, io, logs, mesh

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file, optionally with ':variant' (e.g. ':smoke').",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and outputs.")
_MODE = flags.DEFINE_string("mode", "train", "What to run: train, eval or sample (family-specific).")
_MULTIHOST = flags.DEFINE_bool(
    "multihost", False, "Call jax.distributed.initialize() first (TPU pods, multi-node GPU).")
_CPU_DEVICES = flags.DEFINE_integer(
    "cpu_devices", None, "Devices to split the CPU backend into (simulated host devices). Default: "
    "common.mesh.default_cpu_devices (4 on 2 cores: 2x faster U-Net training there). No effect on "
    "GPU/TPU runs, nor when XLA_FLAGS sets --xla_force_host_platform_device_count.")
flags.mark_flags_as_required(["config", "workdir"])


def load_family(config):
  """Imports the family package named by config.family (e.g. 'dpm')."""
  name = config.get("family")
  if not name:
    raise errors.ConfigError("family is missing from the config: set config.family = '<package>'")
  try:
    return importlib.import_module(name)
  except ModuleNotFoundError as e:
    if e.name == name:
      raise errors.ConfigError(f"family={name!r} is not a package of this codebase") from None
    raise


def launch(config, workdir: str, mode: str = "train") -> None:
  """Validates `config`, saves it as workdir/config.json and runs its family in `mode`."""
  family = load_family(config)
  if hasattr(family, "validate"):
    family.validate(config)
  io.on_main_process(os.path.join(workdir, "config.json"),
                     lambda p: io.atomic_write_text(p, config.to_json_best_effort(indent=2)))
  family.run(config, workdir, mode)


_STARTED = []  # set once flags are parsed: later KeyError/AttributeError are bugs, not overrides


def main(argv):
  _STARTED.append(True)
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logs.quiet_library_logs()
  mesh.enable_compilation_cache()
  config = _CONFIG.value
  family = load_family(config)  # imports only: JAX's backends start after the CPU split below
  sizes = family.batch_sizes(config) if hasattr(family, "batch_sizes") else ()
  cpu_devices = _CPU_DEVICES.value or mesh.default_cpu_devices(sizes)
  if mesh.set_cpu_devices(cpu_devices):  # before anything initialises JAX's backends
    logging.info("CPU backend split into %d devices (--cpu_devices).", cpu_devices)
  if _MULTIHOST.value:
    mesh.initialize_distributed()
  try:
    launch(config, _WORKDIR.value, _MODE.value)
  except errors.USER_ERRORS as e:
    logging.error("%s: %s", type(e).__name__, e)
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)


def run():
  try:
    app.run(main)
  except (KeyError, AttributeError) as e:  # Unknown `--config.x=...` override raises during flag parsing.
    if _STARTED:
      raise
    print(f"error: bad config override: {e}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  run()
