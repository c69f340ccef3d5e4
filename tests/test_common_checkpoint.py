"""Checkpoints: round trip, and corrupt or partial checkpoints are reported, never loaded."""

import glob
import os

import jax.numpy as jnp
import numpy as np
import pytest

from common.checkpoint import Checkpointer
from common.errors import CheckpointError


def _state(scale=1.0):
  return {"w": jnp.arange(4096, dtype=jnp.float32).reshape(64, 64) * scale, "b": jnp.ones(7) * scale}


def _saved(tmp_path):
  ckpt = Checkpointer(str(tmp_path / "checkpoints"), max_to_keep=3)
  ckpt.save(1, _state(1.0))
  ckpt.save(2, _state(2.0))
  return ckpt


def test_round_trip_and_latest(tmp_path):
  ckpt = _saved(tmp_path)
  assert ckpt.latest_step() == 2
  restored = ckpt.restore(2, _state(0.0))
  np.testing.assert_array_equal(restored["w"], _state(2.0)["w"])
  np.testing.assert_array_equal(ckpt.restore(1, _state(0.0))["b"], _state(1.0)["b"])


def test_an_unfinished_save_is_never_taken_for_a_checkpoint(tmp_path):
  ckpt = _saved(tmp_path)
  # What a kill during a save leaves: orbax writes into a temporary directory and renames it when
  # the save is complete.
  os.rename(ckpt.step_dir(2), ckpt.step_dir(2) + ".orbax-checkpoint-tmp-1796193224")
  ckpt = Checkpointer(str(tmp_path / "checkpoints"))
  assert ckpt.latest_step() == 1 and ckpt.last_good_step() == 1
  assert [os.path.basename(p) for p in ckpt.unfinished()] == ["2.orbax-checkpoint-tmp-1796193224"]
  np.testing.assert_array_equal(ckpt.restore(1, _state(0.0))["b"], _state(1.0)["b"])
  with pytest.raises(CheckpointError, match=r"no checkpoint .*checkpoints/2"):
    ckpt.restore(2, _state(0.0))


def _data_files(step_dir):
  files = [f for f in glob.glob(os.path.join(step_dir, "state", "**", "*"), recursive=True)
           if os.path.isfile(f) and os.sep + "d" + os.sep in f]
  assert files, "expected array data files in the checkpoint"
  return files


def test_corrupt_bytes_are_detected(tmp_path):
  ckpt = _saved(tmp_path)
  for path in _data_files(ckpt.step_dir(2)):
    with open(path, "r+b") as f:
      data = bytearray(f.read())
      for i in range(len(data) // 2, len(data), 7):
        data[i] ^= 0xFF
      f.seek(0)
      f.write(data)
  with pytest.raises(CheckpointError, match=r"checkpoints/2 is corrupt"):
    ckpt.restore(2, _state(0.0))


def test_truncated_checkpoint_is_detected(tmp_path):
  ckpt = _saved(tmp_path)
  for path in _data_files(ckpt.step_dir(2)):
    with open(path, "r+b") as f:
      f.truncate(max(os.path.getsize(path) // 3, 1))
  with pytest.raises(CheckpointError, match=r"checkpoints/2 is corrupt"):
    ckpt.restore(2, _state(0.0))


def test_shape_mismatch_is_reported(tmp_path):
  ckpt = _saved(tmp_path)
  with pytest.raises(CheckpointError, match="corrupt or incompatible"):
    ckpt.restore(2, {"w": jnp.zeros((8, 8)), "b": jnp.zeros(7)})


def test_raw_restore_verifies_without_the_state_types(tmp_path):
  from flax import struct

  @struct.dataclass
  class State:
    step: jnp.ndarray
    params: dict

  ckpt = Checkpointer(str(tmp_path / "checkpoints"))
  state = State(jnp.int32(3), {"b": jnp.ones(2), "a": {"k": jnp.arange(3.0)}})
  ckpt.save(3, state)
  raw = ckpt.restore_raw(3)
  assert set(raw) == {"step", "params"}
  np.testing.assert_array_equal(raw["params"]["a"]["k"], np.arange(3.0))
  typed = ckpt.restore(3, state)
  assert isinstance(typed, State) and int(typed.step) == 3
