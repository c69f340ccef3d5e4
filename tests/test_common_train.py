"""The shared training loop (common/train.py, common/supervised.py, common/optim.py).

Each test checks the loop against an independent truth: an uninterrupted run (resume, stages), the
initial arrays (frozen parts), one-by-one runs (vmapped seeds), the source checkpoint (warm start).
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from ml_collections import ConfigDict

from common import checkpoint, mesh as mesh_lib, metrics, optim, train as train_lib
from common.errors import ConfigError, NonFiniteError
from common.supervised import supervised
from tests import helpers

W_TRUE = np.array([[1.0], [-2.0], [0.5]], np.float32)


def _config(**train):
  return ConfigDict(dict(
      seed=0,
      data=dict(batch_size=8),
      optim=dict(name="adam", lr=0.2, warmup_steps=0, schedule="constant", b1=0.9, b2=0.999,
                 eps=1e-8, weight_decay=0.0, grad_clip=0.0),
      train=dict(dict(num_steps=6, log_every=2, ckpt_every=2, ema_decay=0.9, keep_checkpoints=5,
                      tensorboard=True), **train)))


def _regression_batches(start, seed=0):
  """Batch of step t is a function of (seed, t), so a resumed stream continues the same data."""
  for step in range(start + 1, 10**9):
    x = np.random.default_rng([seed, step]).normal(size=(8, 3)).astype(np.float32)
    yield np.concatenate([x, x @ W_TRUE], 1)


def _mse(model, batch, rng):
  return jnp.mean((model(batch[:, :3]) - batch[:, 3:]) ** 2), {}


def _linear_program(config, **kwargs):
  tx = optim.make_optimizer(config.optim, config.train.num_steps)
  return supervised(nnx.Linear(3, 1, rngs=nnx.Rngs(0)), _mse, tx,
                    ema_decay=config.train.ema_decay, **kwargs)


def _leaves(tree):
  return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(tree))]


def _assert_identical(a, b):
  la, lb = _leaves(a), _leaves(b)
  assert len(la) == len(lb) and la
  for x, y in zip(la, lb):
    np.testing.assert_array_equal(x, y)


class _Killed(Exception):
  pass


def _dies_at(data, step_to_die):
  """A data stream that ends the run (as a kill would) when step `step_to_die` asks for its batch."""
  def batches(start, seed=0):
    for step, b in zip(range(start + 1, 10**9), data(start, seed)):
      if step == step_to_die:
        raise _Killed(step)
      yield b
  return batches


def test_trains_writes_metrics_and_tensorboard(tmp_path):
  config = _config()
  state = train_lib.fit(_linear_program(config), config, str(tmp_path), _regression_batches)
  records = metrics.read_metrics(str(tmp_path))
  assert [r["step"] for r in records] == [2, 4, 6]
  assert records[-1]["loss"] < records[0]["loss"]
  assert {"loss", "grad_norm", "steps_per_sec"} <= set(records[0])
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(tmp_path / "tensorboard"))
  assert int(state.step) == 6
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2", "4", "6"]


def test_non_finite_loss_stops_with_step_and_last_checkpoint(tmp_path):
  def loss_fn(model, batch, rng):
    loss, m = _mse(model, batch, rng)
    return jnp.where(batch[0, 0] > 1e5, jnp.nan, loss), m  # a data marker poisons step 5

  def batches(start, seed=0):
    for step, b in zip(range(start + 1, 100), _regression_batches(start)):
      if step == 5:
        b = b.copy()
        b[0, 0] = 1e6
      yield b

  config = _config()
  program = supervised(nnx.Linear(3, 1, rngs=nnx.Rngs(0)), loss_fn, optax.adam(0.1), ema_decay=0.9)
  with pytest.raises(NonFiniteError, match=r"step 5: loss=nan.*checkpoints/4"):
    train_lib.fit(program, config, str(tmp_path), batches)
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2", "4"]  # the bad state is never saved


def test_ema_and_warmup():
  np.testing.assert_allclose(float(optim.ema_decay_at(jnp.array(0), 0.999)), 0.1)
  np.testing.assert_allclose(float(optim.ema_decay_at(jnp.array(10**6), 0.999)), 0.999)
  o = _config().optim
  o.update(warmup_steps=10, schedule="cosine")
  lr = optim.learning_rate(o, 110)
  np.testing.assert_allclose([lr(0), lr(5), lr(10), lr(60), lr(110)],
                             [0.0, 0.1, 0.2, 0.1, 0.0], atol=1e-7)


@pytest.mark.parametrize("field,value,match", [
    ("optim.lr", -1e-3, r"optim.lr=-0.001 is invalid: expected a number > 0"),
    ("optim.schedule", "exp", r"optim.schedule='exp' is not a known learning-rate schedule"),
    ("train.ema_decay", 1.5, r"train.ema_decay=1.5 is invalid"),
    ("train.num_seeds", 0, r"train.num_seeds=0 is invalid"),
    ("train.init_from", "/nonexistent", r"train.init_from='/nonexistent' is invalid"),
])
def test_bad_values_name_the_field(field, value, match):
  config = _config(num_seeds=1, init_from="")
  section, key = field.split(".")
  config[section][key] = value
  with pytest.raises(ConfigError, match=match):
    train_lib.validate(config)
    optim.validate(config)


# ------------------------------------------------------------------------------------------------
# A step over any pytree: two parameter sets, two optimisers


def _two_optimiser_program():
  """Least squares with two parameter sets, w (Adam) and b (SGD with momentum), in one step."""
  tx_w, tx_b = optax.adam(0.05), optax.sgd(0.02, momentum=0.9)

  def init(key):
    kw, kb = jax.random.split(key)
    w, b = jax.random.normal(kw, (3, 1)), jax.random.normal(kb, (1,))
    return {"w": optim.ParamSet.create(w, tx_w), "b": optim.ParamSet.create(b, tx_b),
            "count": jnp.zeros((), jnp.int32)}

  def step(state, batch, rng, consts):
    noise = 0.01 * jax.random.normal(rng, (batch.shape[0], 1))  # the folded key is used

    def loss(w, b):
      return jnp.mean((batch[:, :3] @ w + b - batch[:, 3:] - noise) ** 2)

    value, (gw, gb) = jax.value_and_grad(loss, argnums=(0, 1))(state["w"].params, state["b"].params)
    new = {"w": state["w"].apply(gw, tx_w), "b": state["b"].apply(gb, tx_b),
           "count": state["count"] + 1}
    return new, {"loss": value, "grad_norm/w": optax.tree.norm(gw),
                 "grad_norm/b": optax.tree.norm(gb)}

  return train_lib.Program(init=init, step=step)


def test_two_optimisers_killed_after_a_checkpoint_resume_bit_identical(tmp_path):
  config = _config(num_steps=12, ckpt_every=5, log_every=4)
  full = train_lib.fit(_two_optimiser_program(), config, str(tmp_path / "full"),
                       _regression_batches)
  killed = str(tmp_path / "killed")
  with pytest.raises(_Killed):
    train_lib.fit(_two_optimiser_program(), config, killed, _dies_at(_regression_batches, 8))
  assert sorted(os.listdir(os.path.join(killed, "checkpoints"))) == ["5"]
  resumed = train_lib.fit(_two_optimiser_program(), config, killed, _regression_batches)
  assert int(resumed["count"]) == 12
  _assert_identical(full, resumed)
  assert not np.allclose(np.asarray(full["w"].params), 0)  # it trained


def test_the_example_in_conventions_runs(tmp_path):
  with open(os.path.join(helpers.ROOT, "CONVENTIONS.md")) as f:
    text = f.read()
  code = text.split("```python\n", 1)[1].split("```", 1)[0]
  scope = {"config": _config(num_steps=40, ckpt_every=40, log_every=40),
           "workdir": str(tmp_path), "data": _regression_batches}
  exec(compile(code, "CONVENTIONS.md", "exec"), scope)
  assert metrics.read_metrics(str(tmp_path))[-1]["loss"] < 1.0
  assert float(jnp.abs(scope["state"]["w"].params - W_TRUE).max()) < 1.0


def test_finite_metrics_match_prefixes_and_unknown_names_fail(tmp_path):
  config = _config(finite_metrics=("loss", "grad_norm", "typo"))
  with pytest.raises(ConfigError, match=r"train.finite_metrics names 'typo'"):
    train_lib.fit(_two_optimiser_program(), config, str(tmp_path), _regression_batches)


# ------------------------------------------------------------------------------------------------
# Frozen parts, warm starts, batch statistics


class _BaseHead(nnx.Module):
  def __init__(self, width=4, seed=0):
    self.base = nnx.Linear(3, width, rngs=nnx.Rngs(seed))
    self.norm = nnx.BatchNorm(width, momentum=0.5, rngs=nnx.Rngs(seed))
    self.head = nnx.Linear(width, 1, rngs=nnx.Rngs(seed + 1))

  def __call__(self, x):
    return self.head(self.norm(nnx.relu(self.base(x))))


def _head_program(config, width=4, seed=0):
  return supervised(_BaseHead(width, seed), _mse, optax.adam(0.05), ema_decay=0.9,
                    trainable=nnx.PathContains("head"))


def test_frozen_base_is_bit_identical_while_the_head_learns(tmp_path):
  config = _config(num_steps=8, ckpt_every=4)
  program = _head_program(config)
  initial = _BaseHead()
  state = train_lib.fit(program, config, str(tmp_path), _regression_batches)
  model = program.model(state, ema=False)
  _assert_identical(nnx.state(model.base), nnx.state(initial.base))
  assert not np.allclose(np.asarray(model.head.kernel[...]), np.asarray(initial.head.kernel[...]))
  # Only the head has parameters and optimiser state in the train state.
  names = {checkpoint.path_name(p) for p, _ in jax.tree_util.tree_leaves_with_path(state)}
  assert not any("base" in n for n in names) and any(n.startswith("opt_state") for n in names)
  # Batch statistics are carried, changed by training, and restored from the checkpoint.
  assert not np.allclose(np.asarray(model.norm.mean[...]), 0)
  restored, _, step = train_lib.restore(program, config, str(tmp_path))
  assert step == 8
  _assert_identical(restored.extra, state.extra)


def test_warm_start_loads_another_runs_parameters_into_the_frozen_part(tmp_path):
  config = _config(num_steps=4, ckpt_every=4)
  source = str(tmp_path / "source")
  src_program = supervised(_BaseHead(seed=3), _mse, optax.adam(0.05), ema_decay=0.9)
  src_state = train_lib.fit(src_program, config, source, _regression_batches)
  warm = _config(num_steps=4, ckpt_every=4, init_from=source, init_source="ema_params/base",
                 init_target="consts.frozen.base")
  program = _head_program(warm)
  state = train_lib.fit(program, warm, str(tmp_path / "warm"), _regression_batches)
  _, consts, _ = train_lib.restore(program, warm, str(tmp_path / "warm"))
  _assert_identical(consts["frozen"]["base"], src_state.ema_params["base"])
  assert not np.allclose(np.asarray(consts["frozen"]["base"]["kernel"][...]),
                         np.asarray(_BaseHead().base.kernel[...]))
  del state


def test_warm_start_from_other_shapes_fails_at_start_naming_the_parameter(tmp_path):
  config = _config(num_steps=2, ckpt_every=2)
  source = str(tmp_path / "source")
  train_lib.fit(supervised(_BaseHead(width=5), _mse, optax.adam(0.05), ema_decay=0.9), config,
                source, _regression_batches)
  warm = _config(num_steps=2, init_from=source, init_source="ema_params/base",
                 init_target="consts.frozen.base")
  with pytest.raises(ConfigError, match=r"parameter '(bias|kernel)/value' has shape \((3, )?5,?\) in "
                     r"train.init_from=.* but \((3, )?4,?\) in this model \(frozen/base/"):
    train_lib.fit(_head_program(warm), warm, str(tmp_path / "warm"), _regression_batches)
  assert not os.path.exists(tmp_path / "warm" / "checkpoints" / "1")


# ------------------------------------------------------------------------------------------------
# Stages


def _stages(data_for_stage2=_regression_batches):
  first = lambda done: _two_optimiser_program()

  def second(done):
    previous = done["first"]  # the final state of stage 1 starts stage 2
    program = _two_optimiser_program()
    return train_lib.Program(init=lambda key: previous, step=program.step)

  return [train_lib.Stage("first", first, _regression_batches, train={"num_steps": 6}),
          train_lib.Stage("second", second, data_for_stage2, train={"num_steps": 10})]


def test_two_stage_run_killed_in_stage_2_resumes_there_without_retraining_stage_1(
    tmp_path, caplog):
  config = _config(ckpt_every=3, log_every=3)
  full = train_lib.fit_stages(_stages(), config, str(tmp_path / "full"))
  killed = str(tmp_path / "killed")
  with pytest.raises(_Killed):
    train_lib.fit_stages(_stages(_dies_at(_regression_batches, 8)), config, killed)
  stage1_log = metrics.read_metrics(os.path.join(killed, "first"))
  with caplog.at_level("INFO"):
    resumed = train_lib.fit_stages(_stages(), config, killed)
  assert "stage 'first': Already trained to step 6" in caplog.text
  assert metrics.read_metrics(os.path.join(killed, "first")) == stage1_log  # not retrained
  assert "Restored checkpoint" in caplog.text and os.path.join("second", "checkpoints", "6") in \
      caplog.text
  assert int(resumed["second"]["count"]) == 6 + 10  # stage 2 continues from stage 1's state
  _assert_identical(full["second"], resumed["second"])


# ------------------------------------------------------------------------------------------------
# Seeds in one program


def test_vmapped_seeds_match_seeds_run_one_by_one(tmp_path, caplog):
  config = _config(num_steps=6, ckpt_every=6, num_seeds=3)
  with caplog.at_level("INFO"):
    together = train_lib.fit(_two_optimiser_program(), config, str(tmp_path / "vmap"),
                             _regression_batches)
  assert "3 seeds vmapped" in caplog.text
  for i in range(3):
    single = _config(num_steps=6, ckpt_every=6)
    single.seed = config.seed + i
    alone = train_lib.fit(_two_optimiser_program(), single, str(tmp_path / f"seed{i}"),
                          lambda start, seed, i=i: _regression_batches(start, seed + i))
    for a, b in zip(_leaves(alone), _leaves(jax.tree.map(lambda x: x[i], together))):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  record = metrics.read_metrics(str(tmp_path / "vmap"))[-1]
  per_seed = [record[f"loss/seed{i}"] for i in range(3)]
  assert len(set(per_seed)) == 3  # independent initialisations and data
  np.testing.assert_allclose(record["loss"], np.mean(per_seed), rtol=1e-6)
  np.testing.assert_allclose(record["loss_stderr"], np.std(per_seed, ddof=1) / np.sqrt(3),
                             rtol=1e-6)


def test_a_nan_in_one_seed_names_the_seed_and_the_last_checkpoint(tmp_path):
  program = _two_optimiser_program()

  def step(state, batch, rng, consts):
    new, m = program.step(state, batch, rng, consts)
    return new, {**m, "loss": jnp.where(batch[0, 0] > 1e5, jnp.nan, m["loss"])}

  def batches(start, seed=0):
    for step, b in zip(range(start + 1, 100), _regression_batches(start, seed)):
      if seed == 1 and step == 5:
        b = b.copy()
        b[0, 0] = 1e6
      yield b

  config = _config(num_steps=8, ckpt_every=2, num_seeds=2)
  with pytest.raises(NonFiniteError, match=r"step 5 \(seed index \[1\]\).*checkpoints/4"):
    train_lib.fit(train_lib.Program(program.init, step), config, str(tmp_path), batches)


# ------------------------------------------------------------------------------------------------
# Devices


def test_restore_places_the_state_on_the_mesh(tmp_path):
  config = _config(num_steps=2, ckpt_every=2)
  program = _linear_program(config)
  train_lib.fit(program, config, str(tmp_path), _regression_batches)
  mesh = mesh_lib.make_mesh()
  state, _, _ = train_lib.restore(program, config, str(tmp_path), mesh)
  for leaf in jax.tree.leaves(state):
    assert leaf.sharding.device_set == set(mesh.devices.flat), leaf.sharding
  assert jax.device_count() > 1, "the test process runs on main.py's default device split"


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
  setup = experiment.Setup(config)
  batches = lambda s, seed: setup.data.train_batches(16, 0, s)
  state = train_lib.fit(setup.program, config, tempfile.mkdtemp(), batches, mesh=mesh,
                        keys=experiment.keys)
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
