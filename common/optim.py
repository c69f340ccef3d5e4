"""Optimisers from config, and the small pieces a training step is built of.

`make_optimizer(config.optim, num_steps)` gives an optax transformation with linear warmup, a named
decay and optional global-norm clipping. `ParamSet` holds one parameter set with its optimiser state
(a step with two models and two optimisers holds two of them); `ema_update` keeps an exponential
moving average. All are pytrees or pure functions, so they live inside a jitted, donated step.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct

from common import checks
from common.registry import Registry

LR_SCHEDULES: Registry = Registry("learning-rate schedule")
OPTIMIZERS: Registry = Registry("optimizer")


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


def validate(config, prefix: str = "optim") -> None:
  """Checks an optimiser block (`config.<prefix>`); errors name the field."""
  checks.positive(config, f"{prefix}.lr")
  checks.positive(config, f"{prefix}.warmup_steps", allow_zero=True)
  checks.positive(config, f"{prefix}.grad_clip", allow_zero=True)
  optim = checks.get_field(config, prefix)
  LR_SCHEDULES.get(optim.schedule, field=f"{prefix}.schedule")
  OPTIMIZERS.get(optim.name, field=f"{prefix}.name")


def learning_rate(optim, num_steps: int) -> optax.Schedule:
  """Linear warmup over `optim.warmup_steps`, then the named decay over the remaining steps."""
  decay = LR_SCHEDULES.get(optim.schedule, field="optim.schedule")(
      optim.lr, num_steps - optim.warmup_steps)
  if optim.warmup_steps == 0:
    return decay
  warmup = optax.linear_schedule(0.0, optim.lr, optim.warmup_steps)
  return optax.join_schedules([warmup, decay], [optim.warmup_steps])


def make_optimizer(optim, num_steps: int) -> optax.GradientTransformation:
  """The optimiser of an `optim` config block for a run of `num_steps` steps."""
  lr = learning_rate(optim, num_steps)
  opt = OPTIMIZERS.get(optim.name, field="optim.name")(lr, optim)
  return optax.chain(optax.clip_by_global_norm(optim.grad_clip), opt) if optim.grad_clip else opt


@struct.dataclass
class ParamSet:
  """One parameter set and the state of the optimiser that updates it."""
  params: Any
  opt_state: Any

  @classmethod
  def create(cls, params: Any, tx: optax.GradientTransformation) -> "ParamSet":
    return cls(params=params, opt_state=tx.init(params))

  def apply(self, grads: Any, tx: optax.GradientTransformation) -> "ParamSet":
    """One optimiser step on `grads` (same structure as params)."""
    updates, opt_state = tx.update(grads, self.opt_state, self.params)
    return ParamSet(optax.apply_updates(self.params, updates), opt_state)


def ema_decay_at(step: jax.Array, decay: float) -> jax.Array:
  """EMA decay warmed up as min(decay, (1 + step) / (10 + step)) so short runs are not biased to init."""
  step = jnp.asarray(step).astype(jnp.float32)
  return jnp.minimum(decay, (1.0 + step) / (10.0 + step))


def ema_update(ema: Any, params: Any, step: jax.Array, decay: float) -> Any:
  """ema <- d ema + (1 - d) params with the warmed-up decay d of `ema_decay_at`."""
  d = ema_decay_at(step, decay)
  return jax.tree.map(lambda e, p: d * e + (1.0 - d) * p, ema, params)
