"""The stability meter, the whole UD outer optimisation as one pure function, and random search.

Uniform stability on the validation set (bilevel.md, "Theory"): swapping one validation example
changes the loss at any point by at most beta, and E[test risk - validation risk] <= beta. The meter
measures it directly: run the outer optimisation A twice with identical randomness on S_val and
S'_val (one example swapped) and average |l(A(S), z) - l(A(S'), z)| over test points z.

The generalisation gap is recorded differently for the two algorithms in the official code
(stability_ho.md, "Evaluation protocol"); both are kept:
- UD (`ud_gap`): test loss at (lambda_t, theta_K(lambda_t)) minus the loss on the ONE validation
  minibatch of outer step t, both before lambda is updated.
- Random search (`rs_gap`): test loss of the best candidate so far minus its FULL validation loss
  (the loss that selected it).
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from bilevel import tasks, ud

PyTree = Any


# ---------------------------------------------------------------------------------------------
# The meter.


def mean_abs_change(run_fn: Callable[[PyTree, jax.Array], jax.Array], val_a: PyTree,
                    val_b: PyTree, rng: jax.Array, vectorize: bool = True) -> jax.Array:
  """Mean over test points of |l(A(S_a), z) - l(A(S_b), z)| with the same randomness rng.

  Args:
    run_fn: run_fn(val, rng) -> per-test-point losses [..., n_test] after the outer optimisation
      (e.g. [T, n_test] for the curve over outer steps). A scalar return gives |change of the mean
      test loss|, a lower bound of the per-point quantity.
    val_a, val_b: validation sets, pytrees with equal shapes (leading axis m).
    rng: the randomness of A (minibatches, initialisation), shared by both runs.
    vectorize: run both as one vmapped program (run_fn must be vmappable), else one after the other.

  Returns:
    [...] (run_fn's output without its last axis), or a scalar.
  """
  if vectorize:
    both = jax.tree.map(lambda a, b: jnp.stack([a, b]), val_a, val_b)
    out = jax.vmap(run_fn, in_axes=(0, None))(both, rng)
    loss_a, loss_b = out[0], out[1]
  else:
    loss_a, loss_b = run_fn(val_a, rng), run_fn(val_b, rng)
  diff = jnp.abs(loss_a - loss_b)
  return diff if diff.ndim == 0 else jnp.mean(diff, axis=-1)


def replace_example(val: PyTree, index: Any, example: PyTree) -> PyTree:
  """S' = S with example `index` replaced by `example` (leaves of example lack the leading axis)."""
  return jax.tree.map(lambda v, e: v.at[index].set(e), val, example)


def stability(run_fn: Callable[[PyTree, jax.Array], jax.Array], val: PyTree, pool: PyTree,
              rng: jax.Array, num_pairs: int, vectorize: bool = True) -> dict[str, jax.Array]:
  """Estimates beta: the meter averaged over num_pairs random swaps and run seeds.

  Pair p replaces a uniformly drawn position of val by the p-th example of pool (fresh examples
  from the same distribution) and runs both sets with run seed fold_in(rng, p).

  Returns:
    {"mean": [...], "stderr": [...], "per_pair": [num_pairs, ...]}.
  """
  swap_key, run_key = jax.random.split(rng)
  m = jax.tree.leaves(val)[0].shape[0]
  positions = jax.random.randint(swap_key, (num_pairs,), 0, m)
  per_pair = []
  for p in range(num_pairs):
    swapped = replace_example(val, positions[p], jax.tree.map(lambda x: x[p], pool))
    per_pair.append(mean_abs_change(run_fn, val, swapped, jax.random.fold_in(run_key, p),
                                    vectorize))
  per_pair = jnp.stack(per_pair)
  stderr = jnp.std(per_pair, axis=0, ddof=1) / jnp.sqrt(num_pairs) if num_pairs > 1 else (
      jnp.full_like(per_pair[0], jnp.nan))
  return {"mean": jnp.mean(per_pair, axis=0), "stderr": stderr, "per_pair": per_pair}


# ---------------------------------------------------------------------------------------------
# Gap definitions.


def ud_gap(test_loss: jax.Array, val_batch_loss: jax.Array) -> jax.Array:
  """UD gap_t: test loss at theta_K(lambda_t) minus that step's validation-minibatch loss."""
  return test_loss - val_batch_loss


def rs_gap(best_test_loss: jax.Array, best_val_loss: jax.Array) -> jax.Array:
  """Random-search gap_t: test loss of the best candidate so far minus its full validation loss."""
  return best_test_loss - best_val_loss


# ---------------------------------------------------------------------------------------------
# UD: the whole outer optimisation.


def ud_trajectory(inner_loss: ud.InnerLoss,
                  outer_loss: Callable[[PyTree, PyTree, PyTree], jax.Array],
                  eval_fn: Callable[[PyTree, PyTree], dict[str, jax.Array]], hparams0: PyTree,
                  theta0: PyTree, val: PyTree, rng: jax.Array, *, num_outer: int, num_inner: int,
                  num_train: int, batch_size: int, val_batch_size: int, lr: Any,
                  optimizer: optax.GradientTransformation, weight_decay: Any = 0.0,
                  remat: str = "step") -> tuple[PyTree, dict[str, jax.Array]]:
  """T UD outer steps as one lax.scan: pure, jittable and vmappable (seeds, validation sets).

  Outer step t draws K training minibatches (indices, epochs without repeats) and one validation
  minibatch from fold_in(rng, t), resets theta to theta0, and updates lambda by `optimizer`. (The
  official loaders continue one shuffled stream across outer steps instead; drawing per step keeps
  step t a pure function of (rng, t), so two runs on swapped validation sets see the same batches.)

  Args:
    inner_loss: inner_loss(theta, hparams, idx [B]) with the training data bound.
    outer_loss: outer_loss(theta, hparams, val_batch) -> scalar; val_batch has val's structure.
    eval_fn: eval_fn(theta_K, hparams) -> dict of arrays recorded at every step (before the update),
      e.g. test loss, the never-optimised mval loss, or per-test-point losses for the meter.
    val: the validation set, a pytree with leading axis m.
    num_outer, num_inner: T and K. num_train, batch_size: inner minibatches. val_batch_size: the
      outer minibatch (m for the full set).

  Returns:
    (lambda_T, records) with records[name] of shape [T, ...]: "val_batch_loss", "hypergrad_norm"
    and eval_fn's entries, plus "gap" (`ud_gap`) when eval_fn returns "test_loss".
  """
  m = jax.tree.leaves(val)[0].shape[0]

  def outer_step(carry, t):
    hparams, opt_state = carry
    key = jax.random.fold_in(rng, t)
    k_in, k_val = jax.random.split(key)
    idx = tasks.epoch_indices(k_in, num_train, batch_size, num_inner)
    val_idx = tasks.epoch_indices(k_val, m, val_batch_size, 1)[0]
    batch = jax.tree.map(lambda v: v[val_idx], val)
    hparams, opt_state, theta_k, metrics = ud.ud_outer_step(
        inner_loss, lambda th, h: outer_loss(th, h, batch), optimizer, hparams, opt_state, theta0,
        idx, lr, weight_decay, remat=remat)
    record = {"val_batch_loss": metrics["loss"], "hypergrad_norm": metrics["hypergrad_norm"],
              **eval_fn(theta_k, carry[0])}
    if "test_loss" in record:
      record["gap"] = ud_gap(record["test_loss"], record["val_batch_loss"])
    return (hparams, opt_state), record

  init = (hparams0, optimizer.init(hparams0))
  (hparams, _), records = jax.lax.scan(outer_step, init, jnp.arange(num_outer))
  return hparams, records


# ---------------------------------------------------------------------------------------------
# Random search (the cross-validation baseline).


def random_search(sample_fn: Callable[[jax.Array], PyTree],
                  train_fn: Callable[[PyTree, jax.Array], PyTree],
                  val_fn: Callable[[PyTree, PyTree], jax.Array],
                  eval_fn: Callable[[PyTree, PyTree], dict[str, jax.Array]],
                  rng: jax.Array, num_trials: int) -> tuple[tuple[PyTree, PyTree], dict]:
  """T candidates, each trained with the same inner budget, the best kept by full validation loss.

  Trial t (bilevel.md, "CV baseline"): lambda_t = sample_fn(k), theta_t = train_fn(lambda_t, k')
  (K inner SGD steps from theta_0, no hypergradient), v_t = val_fn(theta_t, lambda_t) on the FULL
  validation set. A NaN v_t is never selected; until a finite one appears the records hold trial
  0 (a NaN val_loss).

  Returns:
    ((best lambda, best theta), records) with records of shape [T]: "trial_val_loss" (v_t),
    "val_loss" (best v so far), "best_index", eval_fn's entries for the best-so-far candidate,
    and "gap" (`rs_gap`) when eval_fn returns "test_loss".
  """
  def trial(key):
    k_sample, k_train = jax.random.split(key)
    hparams = sample_fn(k_sample)
    theta = train_fn(hparams, k_train)
    return val_fn(theta, hparams), hparams, theta, eval_fn(theta, hparams)

  def step(carry, t):
    value, hparams, theta, metrics = trial(jax.random.fold_in(rng, t))
    better = value < carry["val"]
    new = {"val": value, "index": t, "hparams": hparams, "theta": theta}
    carry = jax.tree.map(lambda a, b: jnp.where(better, a, b), new, carry)
    return carry, (value, carry["index"], metrics)

  shapes = jax.eval_shape(trial, rng)
  init = {"val": jnp.asarray(jnp.inf, shapes[0].dtype), "index": jnp.asarray(0),
          "hparams": jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes[1]),
          "theta": jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes[2])}
  best, (values, best_index, metrics) = jax.lax.scan(step, init, jnp.arange(num_trials))
  records = {"trial_val_loss": values, "val_loss": values[best_index], "best_index": best_index,
             **jax.tree.map(lambda a: a[best_index], metrics)}
  if "test_loss" in records:
    records["gap"] = rs_gap(records["test_loss"], records["val_loss"])
  return (best["hparams"], best["theta"]), records
