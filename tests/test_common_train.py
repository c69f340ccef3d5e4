"""The shared training loop: fail-fast NaN checks, metrics files, EMA, schedule, sharding."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from ml_collections import ConfigDict

from common import metrics, train as train_lib
from common.errors import ConfigError, NonFiniteError
from tests import helpers


def _config(**train):
  return ConfigDict(dict(
      seed=0,
      data=dict(batch_size=8),
      optim=dict(name="adam", lr=0.2, warmup_steps=0, schedule="constant", b1=0.9, b2=0.999,
                 eps=1e-8, weight_decay=0.0, grad_clip=0.0),
      train=dict(num_steps=6, log_every=2, ckpt_every=2, ema_decay=0.9, keep_checkpoints=5,
                 tensorboard=True, **train)))


def _regression_batches(start):
  rng = np.random.default_rng(start)
  while True:
    x = rng.normal(size=(8, 3)).astype(np.float32)
    yield np.concatenate([x, x @ np.array([[1.0], [-2.0], [0.5]], np.float32)], 1)


def _mse(model, batch, rng, nan_after=None):
  pred = model(batch[:, :3])
  loss = jnp.mean((pred - batch[:, 3:]) ** 2)
  return loss, {}


def test_trains_writes_metrics_and_tensorboard(tmp_path):
  trainer = train_lib.Trainer(_config(), str(tmp_path), nnx.Linear(3, 1, rngs=nnx.Rngs(0)), _mse)
  state = trainer.train(_regression_batches)
  records = metrics.read_metrics(str(tmp_path))
  assert [r["step"] for r in records] == [2, 4, 6]
  assert records[-1]["loss"] < records[0]["loss"]
  assert {"loss", "grad_norm", "lr", "steps_per_sec"} <= set(records[0])
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(tmp_path / "tensorboard"))
  assert int(state.step) == 6
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2", "4", "6"]


def test_non_finite_loss_stops_with_step_and_last_checkpoint(tmp_path):
  def loss_fn(model, batch, rng):
    loss, m = _mse(model, batch, rng)
    # Poison the loss from step 5 on (the step counter is folded into rng; use a data marker).
    return jnp.where(batch[0, 0] > 1e5, jnp.nan, loss), m

  def batches(start):
    for step, b in zip(range(start + 1, 100), _regression_batches(start)):
      if step == 5:
        b = b.copy()
        b[0, 0] = 1e6
      yield b

  trainer = train_lib.Trainer(_config(), str(tmp_path), nnx.Linear(3, 1, rngs=nnx.Rngs(0)), loss_fn)
  with pytest.raises(NonFiniteError, match=r"step 5: loss=nan.*checkpoints/4"):
    trainer.train(batches)
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2", "4"]  # the bad state is never saved


def test_ema_and_warmup():
  np.testing.assert_allclose(float(train_lib.ema_decay_at(jnp.array(0), 0.999)), 0.1)
  np.testing.assert_allclose(float(train_lib.ema_decay_at(jnp.array(10**6), 0.999)), 0.999)
  optim = _config().optim
  optim.update(warmup_steps=10, schedule="cosine")
  lr = train_lib.learning_rate(optim, 110)
  np.testing.assert_allclose([lr(0), lr(5), lr(10), lr(60), lr(110)],
                             [0.0, 0.1, 0.2, 0.1, 0.0], atol=1e-7)


@pytest.mark.parametrize("field,value,match", [
    ("optim.lr", -1e-3, r"optim.lr=-0.001 is invalid: expected a number > 0"),
    ("optim.schedule", "exp", r"optim.schedule='exp' is not a known learning-rate schedule"),
    ("train.ema_decay", 1.5, r"train.ema_decay=1.5 is invalid"),
])
def test_bad_values_name_the_field(field, value, match):
  config = _config(eval_every=1)
  section, key = field.split(".")
  config[section][key] = value
  with pytest.raises(ConfigError, match=match):
    train_lib.validate(config)


SHARDING_CHECK = r"""
import jax, numpy as np, tempfile
from common import mesh as mesh_lib, train as train_lib
from configs.dpm import ddpm_mnist
from dpm import experiment
assert jax.device_count() == 8, jax.devices()
config = ddpm_mnist.get_config("smoke")
config.data.update(name="digits", batch_size=16)
config.model.update(ch=8, ch_mult=(1, 2), attn_resolutions=(4,), num_groups=4, dropout=0.1)
config.train.update(num_steps=3, ckpt_every=100)
setup = experiment.Setup(config)
results = []
for devices in (jax.devices(), jax.devices()[:1]):
  mesh = mesh_lib.make_mesh(devices)
  trainer = train_lib.Trainer(config, tempfile.mkdtemp(), experiment.build_model(config, (8, 8, 1), 0),
                              setup.loss_fn, mesh)
  batches = lambda s: setup.data.train_batches(16, 0, s)
  state = trainer.train(batches, rng=jax.random.key(0))
  results.append(jax.device_get(state.params))
  print("devices", mesh.size, "params sharding", jax.tree.leaves(state.params)[0].sharding)
diffs = jax.tree.leaves(jax.tree.map(lambda a, b: float(np.max(np.abs(a - b))), *results))
scale = max(float(np.max(np.abs(x))) for x in jax.tree.leaves(results[1]))
print("MAXDIFF", max(diffs), "SCALE", scale)
"""


def test_sharded_step_over_8_devices_matches_one_device():
  result = helpers.run_python(SHARDING_CHECK, devices=8)
  assert result.returncode == 0, helpers.describe(result)
  line = [l for l in result.stdout.splitlines() if l.startswith("MAXDIFF")][0]
  maxdiff, scale = float(line.split()[1]), float(line.split()[3])
  assert maxdiff < 1e-5 * max(scale, 1.0), line
