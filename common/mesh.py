"""Device mesh over all devices with one `data` axis; batch sharding and multi-host helpers."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def initialize_distributed() -> None:
  """Connects the processes of a multi-host job (TPU pod, multi-node GPU).

  On Cloud TPU and SLURM the coordinator is discovered from the environment; elsewhere set
  JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID.
  """
  jax.distributed.initialize()


def is_main_process() -> bool:
  return jax.process_index() == 0


def make_mesh(devices: list[Any] | None = None) -> Mesh:
  """A 1-D mesh named `data` over the given devices (default: all devices of all hosts)."""
  devices = jax.devices() if devices is None else devices
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) dimension split over the data axis."""
  return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def local_batch_size(global_batch_size: int) -> int:
  """The slice of the global batch this process loads."""
  return global_batch_size // jax.process_count()


def shard_batch(batch: Any, mesh: Mesh) -> Any:
  """Turns this process's numpy slice of a global batch into global arrays sharded over `data`."""
  sharding = batch_sharding(mesh)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)),
                      batch)


def replicate(tree: Any, mesh: Mesh) -> Any:
  return jax.device_put(tree, replicated(mesh))


def enable_compilation_cache(directory: str | None = None) -> None:
  """Keeps compiled XLA programs on disk so a rerun (or resume) skips recompilation.

  The directory is $JAX_COMPILATION_CACHE_DIR if set, else ~/.cache/jax-papers/xla.
  """
  import os
  if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    return  # JAX reads the environment itself.
  base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
  jax.config.update("jax_compilation_cache_dir", directory or os.path.join(base, "jax-papers", "xla"))
