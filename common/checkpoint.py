"""Orbax checkpoints under `workdir/checkpoints`, verified on restore.

Each checkpoint holds the train state and a small JSON item with the step and a SHA-256 fingerprint
of every array in the state. A step directory without orbax's commit marker, one that fails to load,
or one whose arrays do not match their fingerprint is reported as a CheckpointError naming the
directory; it is never loaded silently.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from common.errors import CheckpointError

COMMIT_MARKER = "commit_success.txt"


def fingerprint(tree: Any) -> str:
  """SHA-256 over the paths, dtypes, shapes and bytes of all leaves (replicated arrays)."""
  h = hashlib.sha256()
  for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
    if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
      leaf = leaf.addressable_data(0)
    arr = np.asarray(leaf)
    h.update(jax.tree_util.keystr(path).encode())
    h.update(f"{arr.dtype}{arr.shape}".encode())
    h.update(np.ascontiguousarray(arr).tobytes())
  return h.hexdigest()


class Checkpointer:
  """Keeps the last `max_to_keep` checkpoints of a train state in `directory`."""

  def __init__(self, directory: str, max_to_keep: int = 3):
    self.directory = os.path.abspath(directory)
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                             enable_async_checkpointing=False))

  def step_dir(self, step: int) -> str:
    return os.path.join(self.directory, str(step))

  def _step_dirs(self) -> list[int]:
    if not os.path.isdir(self.directory):
      return []
    return sorted(int(d) for d in os.listdir(self.directory) if d.isdigit())

  def latest_step(self) -> int | None:
    """The newest step directory, committed or not (an uncommitted one is reported on restore)."""
    steps = self._step_dirs()
    return steps[-1] if steps else None

  def last_good_step(self) -> int | None:
    """The newest committed checkpoint (for messages after a failure)."""
    committed = [s for s in self._step_dirs()
                 if os.path.exists(os.path.join(self.step_dir(s), COMMIT_MARKER))]
    return committed[-1] if committed else None

  def save(self, step: int, state: Any) -> None:
    meta = {"step": int(step), "fingerprint": fingerprint(state)}
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=True)
    self._manager.wait_until_finished()

  def restore(self, step: int, like: Any) -> Any:
    """Restores the state saved at `step`, shaped and sharded like `like`, and verifies it."""
    path = self.step_dir(step)
    if not os.path.exists(os.path.join(path, COMMIT_MARKER)):
      raise CheckpointError(
          f"checkpoint {path} is partial (no {COMMIT_MARKER}: the run was stopped while saving); "
          "delete that directory to resume from the previous checkpoint")
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
    try:
      restored = self._manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
    except Exception as e:  # orbax/tensorstore raise many types for unreadable files.
      raise CheckpointError(f"checkpoint {path} is corrupt or incompatible and was not loaded: "
                            f"{type(e).__name__}: {str(e).splitlines()[0][:300]}") from None
    expected = (restored.meta or {}).get("fingerprint")
    if expected != fingerprint(restored.state):
      raise CheckpointError(f"checkpoint {path} is corrupt: its arrays do not match the "
                            "fingerprint saved with them; it was not loaded")
    return restored.state

  def close(self) -> None:
    self._manager.close()
