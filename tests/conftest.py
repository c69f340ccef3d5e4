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


# The slowest tests (measured: `--durations`, a clean `.ci/run` on the 2-core container, 2026-12-03),
# longest first. Under `-n 2 --dist=worksteal` each worker starts with a contiguous half of the
# collection and steals from the back of the other's queue, so these are dealt alternately to the
# front of the two halves: both workers start on long tests and end on short ones, instead of one
# worker finishing a 150 s test while the other sits idle. The order of the other tests is kept.
SLOW_FIRST = (
    "test_dpm_main.py::test_killed_run_resumes_to_the_same_parameters",
    "test_common_multihost.py::test_two_processes_train_like_one_process",
    "test_smoke_variant_runs_and_a_rerun_resumes[configs/dpm/analytic_cifar10_cs.py]",
    "test_dpm_second_stage.py::test_unet_is_frozen_warm_started_and_never_differentiated",
    "test_smoke_variant_runs_and_a_rerun_resumes[configs/dpm/analytic_cifar10_ls.py]",
    "test_smoke_variant_runs_and_a_rerun_resumes[configs/dpm/analytic_mnist.py]",
    "test_common_train.py::test_sharded_step_over_8_devices_matches_one_device",
    "test_smoke_variant_runs_and_a_rerun_resumes[configs/ebm/fisher_grbm.py]",
    "test_smoke_variant_runs_and_a_rerun_resumes[configs/dpm/solver_imagenet64.py]",
    "test_smoke_variant_runs_and_a_rerun_resumes[configs/dpm/sn_npr_mnist.py]",
    "test_smoke_variant_runs_and_a_rerun_resumes[configs/dpm/solver_cifar10_continuous.py]",
    "test_smoke_variant_runs_and_a_rerun_resumes[configs/dpm/solver_mnist_continuous.py]",
)


def pytest_collection_modifyitems(session, config, items):
  rank = {}
  for item in items:
    for i, key in enumerate(SLOW_FIRST):
      if item.nodeid.endswith(key):
        rank[item.nodeid] = i
  slow = sorted((it for it in items if it.nodeid in rank), key=lambda it: rank[it.nodeid])
  rest = [it for it in items if it.nodeid not in rank]
  if not slow:
    return
  first, second = slow[0::2], slow[1::2]
  fill = max(len(items) // 2 - len(first), 0)
  items[:] = first + rest[:fill] + second + rest[fill:]
