"""Unrolled differentiation (UD): the hypergradient through K inner SGD steps.

The bilevel problem of ../shared/papers/bilevel.md ("Algorithms", UD): starting every outer step
from the SAME theta_0, run K inner steps

  theta_{k+1} = (1 - eta wd_l) theta_k - eta grad_theta l_in(theta_k, lambda, z_k),

evaluate the outer loss L_out(theta_K) and differentiate it with respect to lambda by reverse mode
through all K steps (no truncation). The outer update is coupled-weight-decay SGD on lambda
(`outer_optimizer`). The outer weight decay belongs to that optimiser, not to the hypergradient.

The K steps are a `lax.scan`. Reverse mode through a scan stores, per step, whatever the body's
linearisation needs (activations and intermediates of the forward and backward pass of l_in). With
`jax.checkpoint` on the body only the carry theta_k is stored and the step is recomputed on the way
back ("step", the default). "dots" saves the matmul outputs of each step instead (activations, not
parameters: less memory than "step" when a weight matrix outweighs a batch of activations, and less
recomputation). "sqrt" checkpoints segments of about sqrt(K) steps as well, so only about
2 sqrt(K) copies of theta are alive at once, at the price of one more forward recomputation.
benchmarks/bilevel_ud.py measures all four.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from jax import lax

from common.registry import Registry

PyTree = Any
InnerLoss = Callable[[PyTree, PyTree, PyTree], jax.Array]

REMAT: Registry = Registry("rematerialisation scheme")


def num_steps(inner_batches: PyTree) -> int:
  """K, the common leading length of the leaves of `inner_batches`."""
  leaves = jax.tree.leaves(inner_batches)
  if not leaves:
    raise ValueError("inner_batches has no array leaves: pass at least one array with a leading "
                     "axis of length K (e.g. jnp.arange(K) for full-batch steps)")
  lengths = {int(jnp.shape(x)[0]) if jnp.ndim(x) else -1 for x in leaves}
  if len(lengths) != 1 or -1 in lengths:
    raise ValueError(f"the leaves of inner_batches need one common leading axis K; got lengths "
                     f"{sorted(lengths)} (-1: a scalar leaf)")
  return lengths.pop()


def _check_theta(theta0: PyTree) -> None:
  for leaf in jax.tree.leaves(theta0):
    if not jnp.issubdtype(jnp.result_type(leaf), jnp.inexact):
      raise TypeError(f"theta0 leaves must be floating point (they are differentiated); got a "
                      f"{jnp.result_type(leaf)} leaf of shape {jnp.shape(leaf)}")


def sgd_step(inner_loss: InnerLoss, hparams: PyTree, theta: PyTree, batch: PyTree,
             lr: Any, weight_decay: Any = 0.0) -> PyTree:
  """One inner step theta <- (1 - lr wd) theta - lr grad_theta inner_loss(theta, hparams, batch).

  lr and weight_decay are cast to each theta leaf's dtype, so a Python float or a float64 array
  never promotes float32 parameters.
  """
  grads = jax.grad(inner_loss)(theta, hparams, batch)

  def update(t, g):
    eta = jnp.asarray(lr, t.dtype)
    decay = jnp.asarray(weight_decay, t.dtype)
    return (1 - eta * decay) * t - eta * g.astype(t.dtype)
  return jax.tree.map(update, theta, grads)


@REMAT.register("none")
def _scan_plain(step: Callable, theta0: PyTree, batches: PyTree) -> PyTree:
  """Plain scan: reverse mode stores every step's residuals (memory grows with K x activations)."""
  return lax.scan(lambda th, b: (step(th, b), None), theta0, batches)[0]


@REMAT.register("step")
def _scan_step(step: Callable, theta0: PyTree, batches: PyTree) -> PyTree:
  """jax.checkpoint on the body: only theta_k is stored per step; the step is recomputed."""
  # A scan body is never CSE'd with its recomputation, so prevent_cse only costs speed here.
  body = jax.checkpoint(lambda th, b: (step(th, b), None), prevent_cse=False)
  return lax.scan(body, theta0, batches)[0]


@REMAT.register("dots")
def _scan_dots(step: Callable, theta0: PyTree, batches: PyTree) -> PyTree:
  """jax.checkpoint on the body saving matmul outputs: stores activations, recomputes the rest.

  For an MLP whose first weight matrix is larger than a batch of its outputs (784 x 256 weights,
  100 x 256 activations) this stores less than "step" does and skips most of the recomputation.
  """
  body = jax.checkpoint(lambda th, b: (step(th, b), None), prevent_cse=False,
                        policy=jax.checkpoint_policies.dots_with_no_batch_dims_saveable)
  return lax.scan(body, theta0, batches)[0]


def segment_length(k: int) -> int:
  """The largest divisor of k not above ceil(sqrt(k)) (1 for prime k, which then gains nothing)."""
  top = math.isqrt(k - 1) + 1 if k > 1 else 1
  return max(s for s in range(1, top + 1) if k % s == 0)


@REMAT.register("sqrt")
def _scan_sqrt(step: Callable, theta0: PyTree, batches: PyTree) -> PyTree:
  """Two-level checkpointing: K/s checkpointed segments of s checkpointed steps, s ~ sqrt(K)."""
  k = num_steps(batches)
  s = segment_length(k)
  segments = jax.tree.map(lambda x: jnp.reshape(x, (k // s, s) + jnp.shape(x)[1:]), batches)
  body = jax.checkpoint(lambda th, seg: (_scan_step(step, th, seg), None), prevent_cse=False)
  return lax.scan(body, theta0, segments)[0]


def unroll(inner_loss: InnerLoss, hparams: PyTree, theta0: PyTree, inner_batches: PyTree,
           lr: Any, weight_decay: Any = 0.0, *, remat: str = "step") -> PyTree:
  """theta_K: K inner SGD steps from theta0, differentiable with respect to hparams and theta0.

  Args:
    inner_loss: inner_loss(theta, hparams, batch) -> scalar l_in.
    hparams: lambda, any pytree.
    theta0: the fixed initial inner parameters, any pytree of floating arrays.
    inner_batches: pytree whose leaves have leading axis K (float data, integer labels or indices);
      step k sees the k-th slice of every leaf.
    lr: inner learning rate eta, Python float or 0-d array.
    weight_decay: inner (coupled) weight decay wd_l.
    remat: "step" (jax.checkpoint on the scan body), "dots" (the same, saving matmul outputs),
      "sqrt" (two levels) or "none" (a plain scan).

  Returns:
    theta_K, same structure and dtypes as theta0.
  """
  _check_theta(theta0)
  num_steps(inner_batches)
  scan = REMAT.get(remat, field="remat")
  return scan(lambda th, b: sgd_step(inner_loss, hparams, th, b, lr, weight_decay),
              theta0, inner_batches)


def solve_and_hypergrad(inner_loss: InnerLoss, outer_loss: Callable[[PyTree, PyTree], jax.Array],
                        hparams: PyTree, theta0: PyTree, inner_batches: PyTree, lr: Any,
                        weight_decay: Any = 0.0, *, remat: str = "step"
                        ) -> tuple[jax.Array, PyTree, PyTree]:
  """The UD hypergradient when the outer loss also depends on lambda directly.

  Feature learning needs this form: L_out(theta_K, lambda) evaluates the head theta_K on features
  that lambda computes, so d/dlambda has a direct term besides the one through theta_K.

  Args:
    outer_loss: outer_loss(theta, hparams) -> scalar.
    (the rest as in `unroll`.)

  Returns:
    (L_out(theta_K, lambda), theta_K, dL_out/dlambda with the structure of hparams).
  """
  def objective(h):
    theta_k = unroll(inner_loss, h, theta0, inner_batches, lr, weight_decay, remat=remat)
    return outer_loss(theta_k, h), theta_k

  (value, theta_k), grad = jax.value_and_grad(objective, has_aux=True)(hparams)
  return value, theta_k, grad


def hypergradient(inner_loss: InnerLoss, outer_loss: Callable[[PyTree], jax.Array],
                  hparams: PyTree, theta0: PyTree, inner_batches: PyTree, lr: Any,
                  weight_decay: Any = 0.0, *, remat: str = "step") -> tuple[jax.Array, PyTree]:
  """UD: outer_loss(theta_K) and its gradient with respect to hparams through all K inner steps.

  theta_{k+1} = (1 - lr wd) theta_k - lr grad_theta inner_loss(theta_k, hparams, batch_k) from
  theta0 (bilevel.md, UD). Traces inside jax.jit and jax.vmap; dtypes follow the inputs.

  Args:
    inner_loss: inner_loss(theta, hparams, batch) -> scalar.
    outer_loss: outer_loss(theta) -> scalar (close over the validation batch).
    hparams: lambda, any pytree of floating arrays.
    theta0: any pytree of floating arrays.
    inner_batches: pytree with leading axis K on every leaf; integer leaves are fine.
    lr, weight_decay: scalars, cast to the theta leaves' dtype.
    remat: rematerialisation scheme, see `unroll`.

  Returns:
    (outer_value, grad) with grad shaped like hparams.
  """
  value, _, grad = solve_and_hypergrad(inner_loss, lambda th, _: outer_loss(th), hparams, theta0,
                                       inner_batches, lr, weight_decay, remat=remat)
  return value, grad


def outer_optimizer(lr: float, weight_decay: float = 0.0,
                    momentum: float = 0.0) -> optax.GradientTransformation:
  """SGD on lambda with coupled weight decay wd_h (the decay is added to the gradient first).

  The same update as torch.optim.SGD(lr, momentum, weight_decay) without dampening or Nesterov.
  """
  return optax.chain(optax.add_decayed_weights(weight_decay),
                     optax.sgd(lr, momentum=momentum if momentum else None))


def ud_outer_step(inner_loss: InnerLoss, outer_loss: Callable[[PyTree, PyTree], jax.Array],
                  optimizer: optax.GradientTransformation, hparams: PyTree, opt_state: Any,
                  theta0: PyTree, inner_batches: PyTree, lr: Any, weight_decay: Any = 0.0, *,
                  remat: str = "step") -> tuple[PyTree, Any, PyTree, dict[str, jax.Array]]:
  """One UD outer iteration: reset to theta0, K inner steps, one optimiser step on lambda.

  Returns:
    (new hparams, new opt_state, theta_K of the OLD hparams, metrics). metrics["loss"] is the outer
    loss before the update: the "val loss" of the official UD gap (stability_ho.md, "Evaluation
    protocol"); evaluate test losses at the returned theta_K and the old hparams to match it.
  """
  value, theta_k, grad = solve_and_hypergrad(inner_loss, outer_loss, hparams, theta0,
                                             inner_batches, lr, weight_decay, remat=remat)
  updates, opt_state = optimizer.update(grad, opt_state, hparams)
  metrics = {"loss": value, "hypergrad_norm": optax.tree.norm(grad)}
  return optax.apply_updates(hparams, updates), opt_state, theta_k, metrics
