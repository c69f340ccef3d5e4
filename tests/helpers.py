"""Helpers for tests that run main.py (or other scripts) in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# One XLA compilation cache for the whole test session: subprocesses reuse each other's programs.
CACHE = os.environ.get("TEST_XLA_CACHE", os.path.join(ROOT, ".pytest_cache", "xla"))

# A U-Net small enough to compile in seconds, on the 8x8 digits.
TINY_DPM = [
    "--config.data.name=digits", "--config.data.batch_size=16",
    "--config.model.ch=8", "--config.model.ch_mult=(1,2)", "--config.model.num_res_blocks=1",
    "--config.model.attn_resolutions=(4,)", "--config.model.num_groups=4",
    "--config.sample.num_samples=8", "--config.sample.eval_steps=3", "--config.sample.num_steps=3",
    "--config.eval.num_examples=32", "--config.eval.batch_size=16",
]


def apply_overrides(config, args=TINY_DPM):
  """Applies `--config.section.field=value` overrides (as TINY_DPM's) to `config` in place, for
  tests that run a family in-process instead of through main.py's flags."""
  for arg in args:
    key, value = arg[len("--config."):].split("=")
    section, field = key.split(".")
    old = config[section][field]
    config[section][field] = (tuple(int(v) for v in value.strip("()").split(",") if v)
                              if isinstance(old, tuple) else type(old)(value))
  return config


# Tests compile many small programs and run each a few times: XLA's CPU backend without its LLVM
# optimisation passes compiles them about twice as fast, which halves the suite's CPU time
# (measured: 243 s -> 136 s user CPU on the U-Net tests and one smoke config). The programs are
# the same; only their machine code is less optimised (rounding may differ in the last bits, and
# every test that compares two runs gives both the same flags).
FAST_COMPILE = "--xla_backend_optimization_level=0"


def xla_flags(devices: int | None) -> str:
  """XLA_FLAGS of a test subprocess: fast compilation, and `devices` simulated CPU devices (None:
  main.py's own default split, as a user's command gets)."""
  if devices is None:
    return FAST_COMPILE
  return f"--xla_force_host_platform_device_count={devices} {FAST_COMPILE}"


def env(devices: int | None = 1) -> dict[str, str]:
  e = dict(os.environ)
  e["PYTHONPATH"] = ROOT + os.pathsep + e.get("PYTHONPATH", "")
  e["JAX_COMPILATION_CACHE_DIR"] = CACHE
  e["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
  e["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
  e["JAX_PLATFORMS"] = "cpu"
  e["XLA_FLAGS"] = xla_flags(devices)  # replaces the test process's own device count
  return e


def run_main(*args: str, timeout: float = 600, devices: int | None = None
             ) -> subprocess.CompletedProcess:
  """main.py as a user runs it: by default with its own CPU device split."""
  return subprocess.run([sys.executable, os.path.join(ROOT, "main.py"), *args], cwd=ROOT,
                        env=env(devices), capture_output=True, text=True, timeout=timeout)


def run_python(code: str, timeout: float = 600, devices: int = 1) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env(devices),
                        capture_output=True, text=True, timeout=timeout)


def describe(result: subprocess.CompletedProcess) -> str:
  return f"exit {result.returncode}\nstdout:\n{result.stdout[-3000:]}\nstderr:\n{result.stderr[-5000:]}"
