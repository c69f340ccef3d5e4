"""Shared test setup: import from the repository root; one XLA compilation cache for the session.

The cache is shared with the subprocesses that tests start (tests/helpers.py), so a program compiled
once (a U-Net train step, an initializer) is reused by every later test that needs it.
"""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

os.environ.setdefault("TEST_XLA_CACHE", os.path.join(ROOT, ".pytest_cache", "xla"))
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.environ["TEST_XLA_CACHE"])
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

from tests import helpers  # noqa: E402  (after sys.path is set)

# Before JAX reads it: fast compilation, and the CPU split into main.py's default device count, so
# that in-process runs (the config smoke tests, the loop's tests) shard as a user's runs do.
if helpers.FAST_COMPILE not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + helpers.FAST_COMPILE).strip()
if "xla_force_host_platform_device_count" not in os.environ["XLA_FLAGS"]:
  from common import mesh  # noqa: E402  (imports jax; its backends start later)
  os.environ["XLA_FLAGS"] += f" --xla_force_host_platform_device_count={mesh.default_cpu_devices()}"
