"""One outer step of each bilevel method as a pure function, and the Program that the shared loop
trains: the hyperparameters (with the outer optimiser's state) are the trained state.

Methods (bilevel.md, "Algorithms"; chosen by `config.method`):
- "ud": reset theta to the fixed theta_0, K inner SGD steps on the step's K training minibatches,
  the loss on the step's validation minibatch, its hypergradient through all K steps, one outer SGD
  step on lambda (bilevel.ud.ud_outer_step). Recorded at (lambda_t, theta_K(lambda_t)), before the
  update; "val_loss" is the minibatch loss (the official UD gap's "val loss").
- "random_search": the cross-validation baseline with the same inner budget: a candidate lambda
  from the task's prior, K inner SGD steps from the same theta_0 on the step's minibatches (no
  hypergradient), its loss on the FULL validation set; the best so far is kept and recorded, and
  "val_loss" is its full validation loss (the official random-search gap's).

Both record at every outer step: "val_loss" (the loss being optimised), "val_full_loss" and
"val_error" (the whole validation set), "test_loss", "test_error", "gap" = test_loss - val_loss,
"gap_full" = test_loss - val_full_loss, "mval_loss", "mval_error" (the second validation set,
never optimised on), "inner_steps" (inner SGD steps so far) and the task's hyperparameter
summaries ("weight_clean", "weight_noisy" for reweighting).

With `stability.enabled` the Program carries two runs with identical randomness (theta_0, the
minibatches, the random-search candidates) on validation sets S and S' that differ in one example
(a seeded position replaced by an unseen example of the seed's pool), and also records the meter
"beta" = mean over test points z of |l(A(S), z) - l(A(S'), z)| (bilevel.md, "Theory") and
"beta_error", the same for the 0-1 loss; the other metrics are those of the run on S.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from bilevel import tasks, ud
from common.registry import Registry
from common.train import Program

PyTree = Any

METHODS: Registry = Registry("bilevel method")

# The init key carries its seed in its second word (see `keys`), so that init can pick the seed's
# own split; the first word tags it.
_SEED_TAG = 0x62696C76


def keys(seed: int) -> tuple[jax.Array, jax.Array]:
  """(init key, step key) of seed `seed`: the init key encodes the seed (`seed_of`)."""
  init = jax.random.wrap_key_data(np.asarray([_SEED_TAG, seed], np.uint32), impl="threefry2x32")
  return init, jax.random.split(jax.random.key(seed))[1]


def seed_of(key: jax.Array) -> jax.Array:
  """The seed an init key of `keys` was made for (int32, traceable)."""
  return jax.random.key_data(key)[..., 1].astype(jnp.int32)


@dataclasses.dataclass(frozen=True)
class Setting:
  """The static hyperparameters of one run.

  Attributes:
    task: a bilevel.tasks task (Reweighting or FeatureLearning).
    num_inner: K, inner SGD steps per outer step.
    lr, weight_decay: inner learning rate eta and inner (coupled) weight decay wd_l.
    remat: the rematerialisation scheme of the unrolled steps (bilevel.ud.REMAT).
    outer: the outer optimiser (bilevel.ud.outer_optimizer: SGD with coupled decay wd_h).
  """
  task: Any
  num_inner: int
  lr: float
  weight_decay: float
  remat: str
  outer: optax.GradientTransformation


def gather(x_pool: jax.Array, split: dict[str, jax.Array]) -> dict[str, tuple]:
  """{part: (x [n, D], y [n])} of the seed's split, from positions into the pool."""
  return {name: (x_pool[split[name]], split[f"{name}_y"]) for name in tasks.PARTS}


def evaluate(setting: Setting, theta: PyTree, hparams: PyTree, data: dict[str, tuple]
             ) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
  """Losses and 0-1 errors on the whole val, test and mval sets; per-point test values too.

  Returns:
    (metrics, per_point) with per_point {"loss": [n_test], "error": [n_test]} for the meter.
  """
  metrics, per_point = {}, {}
  for part, name in (("val", "val_full"), ("test", "test"), ("mval", "mval")):
    x, y = data[part]
    logits = setting.task.logits(theta, hparams, x)
    ce = tasks.cross_entropy(logits, y)
    wrong = (jnp.argmax(logits, -1) != y).astype(ce.dtype)
    metrics[f"{name}_loss"] = jnp.mean(ce)
    metrics[f"{name.split('_')[0]}_error"] = jnp.mean(wrong)
    if part == "test":
      per_point = {"loss": ce, "error": wrong}
  return metrics, per_point


def _inner(setting: Setting, data: dict[str, tuple]) -> Callable:
  x, y = data["train"]
  return functools.partial(setting.task.inner_loss, x=x, y=y)


def _outer_loss(setting: Setting, x: jax.Array, y: jax.Array) -> Callable:
  return lambda theta, hparams: jnp.mean(
      tasks.cross_entropy(setting.task.logits(theta, hparams, x), y))


# ---------------------------------------------------------------------------------------------
# Methods: init(setting, key, theta0, hparams0) -> run state; step(setting, run, theta0, data,
# batch, key, t) -> (run, (theta, hparams) to record, metrics with "val_loss").


@dataclasses.dataclass(frozen=True)
class Method:
  init: Callable
  step: Callable
  finite: tuple[str, ...]


def _ud_init(setting: Setting, key, theta0, hparams0) -> dict:
  del key, theta0
  return {"hparams": hparams0, "opt_state": setting.outer.init(hparams0)}


def _ud_step(setting: Setting, run: dict, theta0, data, batch, key, t):
  """One UD outer step (bilevel.ud.ud_outer_step) on the step's K minibatches and val minibatch."""
  del key, t
  val_x, val_y = data["val"]
  pos = batch["val"]
  hparams, opt_state, theta_k, m = ud.ud_outer_step(
      _inner(setting, data), _outer_loss(setting, val_x[pos], val_y[pos]), setting.outer,
      run["hparams"], run["opt_state"], theta0, batch["inner"].T, setting.lr,
      setting.weight_decay, remat=setting.remat)
  metrics = {"val_loss": m["loss"], "grad_norm": m["hypergrad_norm"]}
  return {"hparams": hparams, "opt_state": opt_state}, (theta_k, run["hparams"]), metrics


def _rs_init(setting: Setting, key, theta0, hparams0) -> dict:
  del setting, key
  copy = lambda tree: jax.tree.map(jnp.copy, tree)  # not theta0's buffers: the state is donated
  return {"best_val": jnp.asarray(jnp.inf, jnp.float32), "best_index": jnp.asarray(-1, jnp.int32),
          "hparams": copy(hparams0), "theta": copy(theta0)}


def _rs_step(setting: Setting, run: dict, theta0, data, batch, key, t):
  """Trial t: a candidate from the prior, K plain inner SGD steps, its full validation loss."""
  candidate = setting.task.prior(key)
  theta = ud.unroll(_inner(setting, data), candidate, theta0, batch["inner"].T, setting.lr,
                    setting.weight_decay, remat="none")   # no gradient: nothing to store
  value = _outer_loss(setting, *data["val"])(theta, candidate)
  better = value < run["best_val"]                          # a NaN candidate is never kept
  new = {"best_val": value, "best_index": jnp.asarray(t, jnp.int32), "hparams": candidate,
         "theta": theta}
  run = jax.tree.map(lambda a, b: jnp.where(better, a, b), new, run)
  metrics = {"val_loss": run["best_val"], "trial_val_loss": value,
             "best_index": run["best_index"].astype(jnp.float32)}
  return run, (run["theta"], run["hparams"]), metrics


METHODS.add("ud", Method(_ud_init, _ud_step, ("loss", "grad_norm")))
METHODS.add("random_search", Method(_rs_init, _rs_step, ("loss",)))


# ---------------------------------------------------------------------------------------------
# The Program.


def _record(setting: Setting, method_metrics: dict, theta, hparams, data, split) -> tuple:
  metrics, per_point = evaluate(setting, theta, hparams, data)
  metrics.update(method_metrics)
  metrics["gap"] = metrics["test_loss"] - metrics["val_loss"]
  metrics["gap_full"] = metrics["test_loss"] - metrics["val_full_loss"]
  metrics.update(setting.task.hparam_metrics(hparams, split))
  return metrics, per_point


def _swapped(split: dict, position: jax.Array) -> dict:
  """S': the validation example at `position` replaced by the first example of the pool."""
  return {**split, "val": split["val"].at[position].set(split["pool"][0]),
          "val_y": split["val_y"].at[position].set(split["pool_y"][0])}


def program(setting: Setting, method: Method, splits: dict[str, np.ndarray], x_pool: np.ndarray,
            first_seed: int, stability: bool = False) -> Program:
  """The Program of one run (or of a stability pair).

  Args:
    setting: the run's static hyperparameters.
    method: METHODS entry.
    splits: {part: [S, n]} stacked per-seed splits (seeds first_seed .. first_seed + S - 1).
    x_pool: [N, D] float32, every example (the Program's consts).
    stability: carry two runs, on S and on S' (see the module docstring).
  """
  stacked = {k: np.asarray(v) for k, v in splits.items()}

  def init(key):
    index = seed_of(key) - first_seed
    split = {k: jnp.asarray(v)[index] for k, v in stacked.items()}
    theta0, hparams0 = setting.task.init(jax.random.fold_in(key, 0))
    run = method.init(setting, jax.random.fold_in(key, 1), theta0, hparams0)
    state = {"step": jnp.zeros((), jnp.int32), "split": split, "theta0": theta0, "run": run}
    if stability:
      m = stacked["val"].shape[1]
      state["run"] = jax.tree.map(lambda a: jnp.stack([a, a]), run)
      state["swap"] = jax.random.randint(jax.random.fold_in(key, 2), (), 0, m, jnp.int32)
    return state

  def one(run, split, theta0, t, batch, key, x):
    data = gather(x, split)
    run, (theta, hparams), m = method.step(setting, run, theta0, data, batch, key, t)
    return run, _record(setting, m, theta, hparams, data, split)

  def step(state, batch, key, consts):
    t, args = state["step"], (state["theta0"], state["step"], batch, key, consts["x"])
    if stability:
      splits_ab = jax.tree.map(lambda a, b: jnp.stack([a, b]), state["split"],
                               _swapped(state["split"], state["swap"]))
      run, (metrics, per_point) = jax.vmap(one, in_axes=(0, 0) + (None,) * 5)(
          state["run"], splits_ab, *args)
      metrics = jax.tree.map(lambda a: a[0], metrics)
      metrics["beta"] = jnp.mean(jnp.abs(per_point["loss"][0] - per_point["loss"][1]))
      metrics["beta_error"] = jnp.mean(jnp.abs(per_point["error"][0] - per_point["error"][1]))
    else:
      run, (metrics, _) = one(state["run"], state["split"], *args)
    metrics["loss"] = metrics["val_loss"]
    metrics["inner_steps"] = ((t + 1) * setting.num_inner).astype(jnp.float32)
    return {**state, "step": t + 1, "run": run}, metrics

  return Program(init=init, step=step, consts={"x": jnp.asarray(x_pool, jnp.float32)},
                 finite=method.finite)


def index_batches(data_seed: int, seed: int, step: int, num_train: int, num_val: int,
                  batch_size: int, val_batch_size: int, num_inner: int) -> dict[str, np.ndarray]:
  """The minibatches of outer step `step` (0-based) of seed `seed`: a pure function of the three.

  Returns:
    {"inner": int32 [B, K] positions into the training part (column k is inner step k's batch;
    batch-major so that the leading axis is the one sharded over devices), drawn as consecutive
    shuffled epochs; "val": int32 [B_val] positions into the validation part, without repeats}.
  """
  rng = np.random.default_rng([data_seed, seed, step])
  total = batch_size * num_inner
  epochs = [rng.permutation(num_train) for _ in range(-(-total // num_train))]
  inner = np.concatenate(epochs)[:total].reshape(num_inner, batch_size)
  val = rng.permutation(num_val)[:val_batch_size]
  return {"inner": np.ascontiguousarray(inner.T, np.int32), "val": val.astype(np.int32)}
