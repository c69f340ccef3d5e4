"""Orbax checkpoints of any train-state pytree, verified on restore.

Each checkpoint holds the state and a small JSON item with the step and a SHA-256 fingerprint of
every array in the state. A step directory that orbax has not finalised, one that fails to load, or
one whose arrays do not match their fingerprint is reported as a CheckpointError naming the
directory; it is never loaded silently.

The fingerprint (version 2) hashes each leaf under its path written as plain names ('params/conv_in/
bias/value'), so a checkpoint restored without its Python types (nested dicts, for a warm start
from another run) verifies the same way as one restored into its own state class.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from common.errors import CheckpointError

FINGERPRINT_VERSION = 2


def _key_name(key: Any) -> str:
  for attr in ("name", "key", "idx"):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def path_name(path: tuple[Any, ...]) -> str:
  """A pytree key path as 'a/b/0/c', the same for dataclass fields, dict keys and list indices."""
  return "/".join(_key_name(k) for k in path)


def _host(leaf: Any) -> np.ndarray:
  if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
    leaf = leaf.addressable_data(0)
  return np.asarray(leaf)


def fingerprint(tree: Any, version: int = FINGERPRINT_VERSION) -> str:
  """SHA-256 over the paths, dtypes, shapes and bytes of all leaves (replicated arrays).

  Version 1 (checkpoints written before the shared loop took any pytree) named paths by
  `jax.tree_util.keystr`; it can only be checked against a state restored into its own types.
  """
  h = hashlib.sha256()
  leaves = jax.tree_util.tree_leaves_with_path(tree)
  if version == 1:
    named = [(jax.tree_util.keystr(path), leaf) for path, leaf in leaves]
  else:  # canonical order: dicts flatten sorted, dataclasses and namedtuples in field order
    named = sorted(((path_name(path), leaf) for path, leaf in leaves), key=lambda t: t[0])
  for name, leaf in named:
    arr = _host(leaf)
    h.update(name.encode())
    h.update(f"{arr.dtype}{arr.shape}".encode())
    h.update(np.ascontiguousarray(arr).tobytes())
  return h.hexdigest()


def abstract(tree: Any, sharding: jax.sharding.Sharding | None = None) -> Any:
  """ShapeDtypeStructs of `tree` (arrays or ShapeDtypeStructs), placed with `sharding` if given."""
  def leaf(x):
    return jax.ShapeDtypeStruct(x.shape, x.dtype,
                                sharding=sharding if sharding is not None else getattr(
                                    x, "sharding", None))
  return jax.tree.map(leaf, tree)


class Checkpointer:
  """Keeps the last `max_to_keep` checkpoints of a train state in `directory`."""

  def __init__(self, directory: str, max_to_keep: int = 3):
    self.directory = os.path.abspath(directory)
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                             enable_async_checkpointing=False),
        item_handlers={"state": ocp.StandardCheckpointHandler(),
                       "meta": ocp.JsonCheckpointHandler()})

  def step_dir(self, step: int) -> str:
    return os.path.join(self.directory, str(step))

  def _step_dirs(self) -> list[int]:
    if not os.path.isdir(self.directory):
      return []
    return sorted(int(d) for d in os.listdir(self.directory) if d.isdigit())

  def is_finalized(self, step: int) -> bool:
    return ocp.step.is_path_finalized(self.step_dir(step))

  def unfinished(self) -> list[str]:
    """Directories of saves that never finished (orbax writes a temporary directory and renames
    it, or on cloud storage marks it committed, when a save is complete)."""
    if not os.path.isdir(self.directory):
      return []
    paths = [os.path.join(self.directory, d) for d in sorted(os.listdir(self.directory))]
    return [p for p in paths if os.path.isdir(p) and ocp.utils.is_tmp_checkpoint(p)]

  def latest_step(self) -> int | None:
    """The newest step directory, finalised or not (an unfinished one is reported on restore)."""
    steps = self._step_dirs()
    return steps[-1] if steps else None

  def last_good_step(self) -> int | None:
    """The newest finalised checkpoint (for messages after a failure)."""
    done = [s for s in self._step_dirs() if self.is_finalized(s)]
    return done[-1] if done else None

  def save(self, step: int, state: Any) -> None:
    meta = {"step": int(step), "fingerprint": fingerprint(state),
            "fingerprint_version": FINGERPRINT_VERSION}
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=True)
    self._manager.wait_until_finished()

  def _check_finalized(self, step: int) -> str:
    path = self.step_dir(step)
    if not os.path.isdir(path):
      raise CheckpointError(f"no checkpoint {path}")
    if not self.is_finalized(step):
      raise CheckpointError(
          f"checkpoint {path} is partial (orbax never finalised it: the run was stopped while "
          "saving); delete that directory to resume from the previous checkpoint")
    return path

  def _restore(self, step: int, target: Any) -> tuple[Any, dict]:
    path = self._check_finalized(step)
    try:
      restored = self._manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()))
    except Exception as e:  # orbax/tensorstore raise many types for unreadable files.
      raise CheckpointError(f"checkpoint {path} is corrupt or incompatible and was not loaded: "
                            f"{type(e).__name__}: {str(e).splitlines()[0][:300]}") from None
    return restored.state, dict(restored.meta or {})

  @staticmethod
  def _verify(path: str, state: Any, meta: dict, typed: bool) -> None:
    version = meta.get("fingerprint_version", 1)
    if version == 1 and not typed:
      raise CheckpointError(f"checkpoint {path} was written by an older version of this code; "
                            "resume its own run once (which re-saves it) before loading it elsewhere")
    if meta.get("fingerprint") != fingerprint(state, version):
      raise CheckpointError(f"checkpoint {path} is corrupt: its arrays do not match the "
                            "fingerprint saved with them; it was not loaded")

  def restore(self, step: int, like: Any) -> Any:
    """Restores the state saved at `step` shaped, typed and sharded like `like` (arrays or
    ShapeDtypeStructs, e.g. from `abstract(jax.eval_shape(init, key), sharding)`), verified."""
    state, meta = self._restore(step, abstract(like))
    self._verify(self.step_dir(step), state, meta, typed=True)
    return state

  def restore_raw(self, step: int) -> Any:
    """The state saved at `step` as nested dicts of numpy arrays (no target types), verified."""
    path = self._check_finalized(step)
    try:
      metadata = self._manager.item_metadata(step)["state"]
    except Exception as e:
      raise CheckpointError(f"checkpoint {path} has no readable state metadata: "
                            f"{type(e).__name__}: {str(e).splitlines()[0][:300]}") from None
    one = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=one),
                          _plain(metadata))
    state, meta = self._restore(step, target)
    state = jax.tree.map(np.asarray, state)
    self._verify(path, state, meta, typed=False)
    return state

  def close(self) -> None:
    self._manager.close()


def _plain(metadata: Any) -> Any:
  """Orbax's tree metadata as plain nested dicts/lists (its TreeMetadata wraps the tree)."""
  return getattr(metadata, "tree", metadata)
