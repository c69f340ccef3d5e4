"""The one training loop of the codebase: NNX model + optax in a pure, jitted, donated train step.

A family supplies a model, `loss_fn(model, batch, rng) -> (loss, metrics)`, a Dataset and optional
evaluation hooks; this module does the rest: optimiser with warmup/decay and clipping, EMA of the
parameters, batch sharding over the device mesh, fail-fast NaN checks, progress lines, metrics,
checkpoints every `train.ckpt_every` steps and at the end, and resumption from the latest checkpoint.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from typing import Any, Callable, Iterable, Mapping

import jax
import jax.numpy as jnp
import optax
from absl import logging
from flax import nnx, struct

from common import checks, mesh as mesh_lib
from common.checkpoint import Checkpointer
from common.errors import CheckpointError, NonFiniteError
from common.metrics import MetricWriter
from common.registry import Registry

LossFn = Callable[[nnx.Module, Any, jax.Array], tuple[jax.Array, Mapping[str, jax.Array]]]
LR_SCHEDULES: Registry = Registry("learning-rate schedule")
OPTIMIZERS: Registry = Registry("optimizer")


@struct.dataclass
class TrainState:
  """Everything that changes during training; a pytree, saved whole in checkpoints."""
  step: jax.Array
  params: nnx.State
  opt_state: optax.OptState
  ema_params: nnx.State


@dataclasses.dataclass
class Hook:
  """Runs `fn(state, step) -> metrics | None` every `every` steps and after the last step."""
  every: int
  fn: Callable[[TrainState, int], Mapping[str, Any] | None]


def validate(config) -> None:
  """Checks the shared `train`, `optim` and `data.batch_size` fields; errors name the field."""
  for field in ("train.num_steps", "train.log_every", "train.ckpt_every", "optim.lr",
                "data.batch_size"):
    checks.positive(config, field)
  checks.positive(config, "optim.warmup_steps", allow_zero=True)
  checks.positive(config, "optim.grad_clip", allow_zero=True)
  checks.in_range(config, "train.ema_decay", 0.0, 1.0)
  LR_SCHEDULES.get(config.optim.schedule, field="optim.schedule")
  OPTIMIZERS.get(config.optim.name, field="optim.name")


@LR_SCHEDULES.register("constant")
def _constant(lr: float, num_steps: int) -> optax.Schedule:
  del num_steps
  return optax.constant_schedule(lr)


@LR_SCHEDULES.register("cosine")
def _cosine(lr: float, num_steps: int) -> optax.Schedule:
  return optax.cosine_decay_schedule(lr, max(num_steps, 1))


@LR_SCHEDULES.register("linear")
def _linear(lr: float, num_steps: int) -> optax.Schedule:
  return optax.linear_schedule(lr, 0.0, max(num_steps, 1))


OPTIMIZERS.add("adam", lambda lr, c: optax.adam(lr, b1=c.b1, b2=c.b2, eps=c.eps))
OPTIMIZERS.add("adamw", lambda lr, c: optax.adamw(lr, b1=c.b1, b2=c.b2, eps=c.eps,
                                                  weight_decay=c.weight_decay))
OPTIMIZERS.add("sgd", lambda lr, c: optax.sgd(lr, momentum=c.get("momentum", 0.0) or None))


def learning_rate(optim, num_steps: int) -> optax.Schedule:
  """Linear warmup over `optim.warmup_steps`, then the named decay over the remaining steps."""
  decay = LR_SCHEDULES.get(optim.schedule, field="optim.schedule")(
      optim.lr, num_steps - optim.warmup_steps)
  if optim.warmup_steps == 0:
    return decay
  warmup = optax.linear_schedule(0.0, optim.lr, optim.warmup_steps)
  return optax.join_schedules([warmup, decay], [optim.warmup_steps])


def make_optimizer(optim, num_steps: int) -> optax.GradientTransformation:
  lr = learning_rate(optim, num_steps)
  opt = OPTIMIZERS.get(optim.name, field="optim.name")(lr, optim)
  return optax.chain(optax.clip_by_global_norm(optim.grad_clip), opt) if optim.grad_clip else opt


def init_state(model: nnx.Module, tx: optax.GradientTransformation) -> tuple[nnx.GraphDef, TrainState]:
  graphdef, params = nnx.split(model, nnx.Param)
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                     ema_params=jax.tree.map(jnp.copy, params))
  return graphdef, state


def ema_decay_at(step: jax.Array, decay: float) -> jax.Array:
  """EMA decay warmed up as min(decay, (1 + step) / (10 + step)) so short runs are not biased to init."""
  step = step.astype(jnp.float32)
  return jnp.minimum(decay, (1.0 + step) / (10.0 + step))


def make_train_step(graphdef: nnx.GraphDef, loss_fn: LossFn, tx: optax.GradientTransformation,
                    ema_decay: float, lr_fn: optax.Schedule):
  """The pure step (state, batch, rng) -> (state, metrics); rng is folded with the step inside."""

  def train_step(state: TrainState, batch: Any, rng: jax.Array):
    rng = jax.random.fold_in(rng, state.step)

    def loss_of(params):
      return loss_fn(nnx.merge(graphdef, params), batch, rng)

    (loss, metrics), grads = jax.value_and_grad(loss_of, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    decay = ema_decay_at(state.step, ema_decay)
    ema = jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, state.ema_params, params)
    metrics = {**metrics, "loss": loss, "grad_norm": optax.global_norm(grads),
               "lr": lr_fn(state.step)}
    return TrainState(state.step + 1, params, opt_state, ema), metrics

  return train_step


def _format_eta(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


class Trainer:
  """Runs training for a family. See the module docstring."""

  def __init__(self, config, workdir: str, model: nnx.Module, loss_fn: LossFn,
               mesh: jax.sharding.Mesh | None = None):
    self.config = config
    self.workdir = workdir
    self.mesh = mesh or mesh_lib.make_mesh()
    num_steps = config.train.num_steps
    self.tx = make_optimizer(config.optim, num_steps)
    self.graphdef, state = init_state(model, self.tx)
    self.state = mesh_lib.replicate(state, self.mesh)
    self.checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"),
                                     config.train.get("keep_checkpoints", 3))
    step_fn = make_train_step(self.graphdef, loss_fn, self.tx, config.train.ema_decay,
                              learning_rate(config.optim, num_steps))
    rep = mesh_lib.replicated(self.mesh)
    self._step = jax.jit(step_fn, donate_argnums=0, out_shardings=(rep, rep))

  def model(self, ema: bool = True) -> nnx.Module:
    """The model with the current (EMA by default) parameters."""
    return nnx.merge(self.graphdef, self.state.ema_params if ema else self.state.params)

  def restore_latest(self) -> int:
    """Loads the newest checkpoint, if any; returns the step to continue from (0 if none)."""
    step = self.checkpointer.latest_step()
    if step is None:
      return 0
    self.state = self.checkpointer.restore(step, self.state)
    logging.info("Restored checkpoint %s", self.checkpointer.step_dir(step))
    return int(self.state.step)

  def _check_finite(self, step: int, metrics: Mapping[str, Any]) -> None:
    loss, grad_norm = float(metrics["loss"]), float(metrics["grad_norm"])
    if math.isfinite(loss) and math.isfinite(grad_norm):
      return
    good = self.checkpointer.last_good_step()
    last = self.checkpointer.step_dir(good) if good is not None else "none (no checkpoint yet)"
    raise NonFiniteError(f"non-finite training at step {step}: loss={loss}, grad_norm={grad_norm}. "
                         f"Last good checkpoint: {last}")

  def train(self, data: Iterable[Any] | Callable[[int], Iterable[Any]],
            hooks: Iterable[Hook] = (), rng: jax.Array | None = None) -> TrainState:
    """Trains up to `train.num_steps`, resuming from the latest checkpoint in the workdir.

    Args:
      data: a function start_step -> iterator of this process's numpy batches.
      hooks: evaluation hooks, run on the EMA/current state every `hook.every` steps and at the end.
      rng: the training key (dropout, diffusion noise); folded with the step inside the step.
    """
    cfg = self.config.train
    start = self.restore_latest()
    rng = jax.random.key(self.config.seed) if rng is None else rng
    writer = MetricWriter(self.workdir, cfg.get("tensorboard", True))
    hooks = list(hooks)
    if start >= cfg.num_steps:
      logging.info("Already trained to step %d (train.num_steps=%d).", start, cfg.num_steps)
      return self.state
    batches = iter(data(start))
    logging.info("Training steps %d..%d on %d device(s), global batch %d.", start, cfg.num_steps,
                 self.mesh.size, self.config.data.batch_size)
    t_start, t_log, sums, n_sum = time.time(), time.time(), {}, 0
    for step in range(start + 1, cfg.num_steps + 1):
      batch = mesh_lib.shard_batch(next(batches), self.mesh)
      self.state, metrics = self._step(self.state, batch, rng)
      metrics = jax.device_get(metrics)  # One host sync per step: NaN check, no CPU deadlock.
      self._check_finite(step, metrics)
      for k, v in metrics.items():
        sums[k] = sums.get(k, 0.0) + float(v)
      n_sum += 1
      if step == start + 1:
        logging.info("First step (compilation included) took %.1fs.", time.time() - t_start)
        t_log = time.time()
      if step % cfg.log_every == 0 or step == cfg.num_steps:
        now = time.time()
        rate = n_sum / max(now - t_log, 1e-9)
        means = {k: v / n_sum for k, v in sums.items()}
        writer.write(step, {**means, "steps_per_sec": rate})
        logging.info("step %d/%d  loss %.4f  |  %.2f steps/s  ETA %s", step, cfg.num_steps,
                     means["loss"], rate, _format_eta((cfg.num_steps - step) / max(rate, 1e-9)))
        t_log, sums, n_sum = now, {}, 0
      last = step == cfg.num_steps
      if step % cfg.ckpt_every == 0 or last:
        self.checkpointer.save(step, self.state)
      for hook in hooks:
        if step % hook.every == 0 or last:
          out = hook.fn(self.state, step)
          if out:
            writer.write(step, out)
    writer.close()
    return self.state


def restore_for_inference(config, workdir: str, model: nnx.Module) -> tuple[nnx.Module, int]:
  """The EMA model of the latest checkpoint in `workdir` (for --mode=eval / sample)."""
  tx = make_optimizer(config.optim, config.train.num_steps)
  graphdef, state = init_state(model, tx)
  checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"))
  step = checkpointer.latest_step()
  if step is None:
    raise CheckpointError(f"no checkpoint in {os.path.join(workdir, 'checkpoints')}: "
                          "train first (--mode=train) with the same --workdir")
  state = checkpointer.restore(step, state)
  return nnx.merge(graphdef, state.ema_params), int(state.step)
