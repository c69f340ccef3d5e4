"""The common case as a Program: one NNX model, one optax optimiser, an EMA of its parameters.

  program = supervised(model, loss_fn, tx, ema_decay=0.999, trainable=nnx.PathContains("head"))
  state = train.fit(program, config, workdir, data)
  model = program.model(state, program.consts)           # EMA parameters

`loss_fn(model, batch, rng) -> (loss, metrics)`. The model's variables are split three ways: the
trainable parameters (`trainable`, default every nnx.Param) live in the state with their optimiser
state and EMA; the other parameters are frozen and passed to the step as consts (never changed, no
optimiser state, not saved: a warm start puts them there at every start, `train.init_target=
consts.frozen.<path>`); every other NNX variable (batch statistics) is carried in `state.extra`,
updated by the forward pass, and saved with the parameters.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import optax
from flax import nnx, struct

from common import optim
from common.train import Program

LossFn = Callable[[nnx.Module, Any, jax.Array], tuple[jax.Array, Mapping[str, jax.Array]]]


@struct.dataclass
class TrainState:
  """Everything that changes during supervised training; saved whole in checkpoints."""
  step: jax.Array
  params: nnx.State
  opt_state: optax.OptState
  ema_params: nnx.State
  extra: nnx.State


class Supervised(Program):
  """A Program with the model's structure, to rebuild the model from a state."""

  def __init__(self, graphdef: nnx.GraphDef, filters: tuple[Any, ...], **kwargs):
    super().__init__(**kwargs)
    self.graphdef, self.filters = graphdef, filters

  def model(self, state: TrainState, consts: Any = None, ema: bool = True) -> nnx.Module:
    """The model with the state's (EMA by default) trainable parameters."""
    consts = self.consts if consts is None else consts
    return nnx.merge(self.graphdef, state.ema_params if ema else state.params, consts["frozen"],
                     state.extra)


def _trainable_filter(trainable: Any) -> Any:
  return nnx.Param if trainable is None else nnx.All(nnx.Param, trainable)


def trainable_from_config(paths: str) -> Any:
  """`train.trainable`: '' (every parameter) or comma-separated path parts, e.g. 'head'."""
  parts = [p.strip() for p in str(paths or "").split(",") if p.strip()]
  if not parts:
    return None
  return nnx.Any(*[nnx.PathContains(p) for p in parts]) if len(parts) > 1 else nnx.PathContains(
      parts[0])


def supervised(model: nnx.Module, loss_fn: LossFn, tx: optax.GradientTransformation, *,
               ema_decay: float, lr_fn: optax.Schedule | None = None, trainable: Any = None,
               finite: tuple[str, ...] = ("loss", "grad_norm")) -> Supervised:
  """The Program of one model trained by `tx` on `loss_fn` (see the module docstring).

  Args:
    model: the initialised model (its arrays are copied into the initial state).
    loss_fn: (model, batch, rng) -> (loss, metrics).
    tx: the optimiser of the trainable parameters.
    ema_decay: the EMA's decay (warmed up, see common.optim.ema_decay_at).
    lr_fn: the learning-rate schedule, logged as metrics['lr'] when given.
    trainable: an NNX filter of the parameters to train (None: all of them).
    finite: metrics checked for finiteness every step.
  """
  filters = (_trainable_filter(trainable), nnx.Param, ...)
  graphdef, params, frozen, extra = nnx.split(model, *filters)
  copy = lambda tree: jax.tree.map(jnp.copy, tree)
  params, frozen, extra = copy(params), copy(frozen), copy(extra)

  def init(key: jax.Array) -> TrainState:
    del key  # the model is built by the caller
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                      ema_params=copy(params), extra=extra)

  def step(state: TrainState, batch: Any, rng: jax.Array, consts: Any):
    def loss_of(p):
      # Fresh Variables at this trace level: the forward pass may update the batch statistics.
      fresh = lambda tree: jax.tree.map(lambda x: x, tree)
      net = nnx.merge(graphdef, p, fresh(consts["frozen"]), fresh(state.extra))
      loss, metrics = loss_fn(net, batch, rng)
      return loss, (metrics, nnx.split(net, *filters)[3])

    (loss, (metrics, new_extra)), grads = jax.value_and_grad(loss_of, has_aux=True)(state.params)
    updated = optim.ParamSet(state.params, state.opt_state).apply(grads, tx)
    ema = optim.ema_update(state.ema_params, updated.params, state.step, ema_decay)
    metrics = {**metrics, "loss": loss, "grad_norm": optax.tree.norm(grads)}
    if lr_fn is not None:
      metrics["lr"] = lr_fn(state.step)
    return TrainState(state.step + 1, updated.params, updated.opt_state, ema, new_extra), metrics

  return Supervised(graphdef, filters, init=init, step=step, consts={"frozen": frozen},
                    finite=finite)
