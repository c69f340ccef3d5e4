"""L_inf gradient-sign attacks with one signature, and the losses they maximise.

Every attack in ATTACKS is called as

    ATTACKS[name](loss_fn, x, *, eps, step_size, num_steps, rng=None) -> x_adv

with x [n, ...] in [0, 1] and `loss_fn(x) -> [n]` the per-example loss of the whole batch, which the
attack increases for every example. A targeted attack passes the negated loss of its target (see
`targeted_loss`). The attack differentiates the SUM of the per-example losses, so each example gets
the gradient of its own loss only: examples are attacked independently as long as `loss_fn` couples
no examples (call batch-norm models with running averages, train=False, inside it). Each iterate is
projected with `project`, so |x_adv - x| <= eps elementwise and x_adv stays in [0, 1]. eps and
step_size may be traced floats; num_steps must be a Python int (it fixes the loop length).

The papers (Dong et al., arXiv 1708.05493 / 1901.09035) use FGSM, iterative least-likely class and
ensemble optimisation; the loss builders below give the variants (untargeted, targeted,
least-likely, ensemble, feature-level) as loss functions for any of the four attacks.
"""

from __future__ import annotations

import operator
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import optax

from common.registry import Registry

LossFn = Callable[[jax.Array], jax.Array]
LogitsFn = Callable[[jax.Array], jax.Array]

ATTACKS: Registry = Registry("attack")


def project(x_adv: jax.Array, x: jax.Array, eps) -> jax.Array:
  """Clip_{x, eps}: onto the L_inf ball of radius eps around x, then into the image box [0, 1].

  Both steps are clips, so for x in [0, 1] the result satisfies both constraints exactly.
  """
  return jnp.clip(jnp.clip(x_adv, x - eps, x + eps), 0.0, 1.0)


def input_gradient(loss_fn: LossFn, x: jax.Array) -> jax.Array:
  """grad_x sum_i loss_fn(x)_i [n, ...]: row i is the gradient of example i's own loss."""
  def total(z):
    loss = loss_fn(z)
    if loss.shape != (z.shape[0],):
      raise ValueError(f"loss_fn must return the per-example loss of shape ({z.shape[0]},), "
                       f"got {loss.shape}")
    return jnp.sum(loss)
  return jax.grad(total)(x)


def _steps(num_steps) -> int:
  steps = operator.index(num_steps)  # a traced value fails here: the loop length must be static
  if steps < 0:
    raise ValueError(f"num_steps={steps} must be >= 0")
  return steps


def _sign_ascent(loss_fn: LossFn, x: jax.Array, x0: jax.Array, eps, step_size,
                 num_steps: int) -> jax.Array:
  """num_steps projected gradient-sign steps from x0 (the basic iterative method)."""
  def body(_, xt):
    return project(xt + step_size * jnp.sign(input_gradient(loss_fn, xt)), x, eps)
  return jax.lax.fori_loop(0, _steps(num_steps), body, x0)


@ATTACKS.register("fgsm")
def fgsm(loss_fn: LossFn, x: jax.Array, *, eps, step_size=None, num_steps=None,
         rng=None) -> jax.Array:
  """FGSM (Goodfellow et al., 2015, Sec. 4): x* = Clip(x + eps sign(grad_x L(x))).

  One step of size eps; step_size, num_steps and rng are accepted for the shared signature and
  ignored.

  Args:
    loss_fn: x [n, ...] -> per-example loss [n] to increase.
    x: clean inputs [n, ...] in [0, 1].
    eps: L_inf budget (float, may be traced).

  Returns:
    x_adv [n, ...].
  """
  del step_size, num_steps, rng
  return project(x + eps * jnp.sign(input_gradient(loss_fn, x)), x, eps)


@ATTACKS.register("ifgsm")
def ifgsm(loss_fn: LossFn, x: jax.Array, *, eps, step_size, num_steps: int,
          rng=None) -> jax.Array:
  """I-FGSM / BIM (Kurakin et al., 2017, Sec. 2.2): x_{t+1} = Clip(x_t + alpha sign(grad L(x_t))).

  Starts at x; rng is accepted for the shared signature and ignored (use `pgd` for a random start).

  Args:
    loss_fn: x [n, ...] -> per-example loss [n] to increase.
    x: clean inputs [n, ...] in [0, 1].
    eps: L_inf budget; step_size: alpha; num_steps: static Python int.

  Returns:
    x_adv [n, ...].
  """
  del rng
  return _sign_ascent(loss_fn, x, x, eps, step_size, num_steps)


@ATTACKS.register("pgd")
def pgd(loss_fn: LossFn, x: jax.Array, *, eps, step_size, num_steps: int,
        rng: jax.Array | None = None) -> jax.Array:
  """PGD (Madry et al., 2018, Sec. 2.1): I-FGSM from a uniform random start in the eps-ball.

  Without rng the start is x itself, so the attack is deterministic and equals `ifgsm`.

  Args:
    loss_fn: x [n, ...] -> per-example loss [n] to increase.
    x: clean inputs [n, ...] in [0, 1].
    eps: L_inf budget; step_size: alpha; num_steps: static Python int.
    rng: a jax.random key for the random start, or None.

  Returns:
    x_adv [n, ...].
  """
  x0 = x
  if rng is not None:
    x0 = project(x + jax.random.uniform(rng, x.shape, x.dtype, -eps, eps), x, eps)
  return _sign_ascent(loss_fn, x, x0, eps, step_size, num_steps)


def _l1_normalise(g: jax.Array) -> jax.Array:
  """g / ||g||_1 per example (row); an all-zero row stays zero instead of dividing 0 by 0."""
  norm = jnp.sum(jnp.abs(g), axis=tuple(range(1, g.ndim)), keepdims=True)
  return g / jnp.maximum(norm, jnp.finfo(g.dtype).tiny)


@ATTACKS.register("mifgsm")
def mifgsm(loss_fn: LossFn, x: jax.Array, *, eps, step_size, num_steps: int, rng=None,
           decay: float = 1.0) -> jax.Array:
  """MI-FGSM (Dong et al., 2018, Algorithm 1):

      g_{t+1} = mu g_t + grad L(x_t) / ||grad L(x_t)||_1,
      x_{t+1} = Clip(x_t + alpha sign(g_{t+1})),

  with the L1 norm taken per example, so one example's loss scale never changes another's steps.

  Args:
    loss_fn: x [n, ...] -> per-example loss [n] to increase.
    x: clean inputs [n, ...] in [0, 1].
    eps: L_inf budget; step_size: alpha; num_steps: static Python int.
    rng: accepted for the shared signature and ignored.
    decay: momentum mu (1.0 in the paper).

  Returns:
    x_adv [n, ...].
  """
  del rng

  def body(_, carry):
    xt, g = carry
    g = decay * g + _l1_normalise(input_gradient(loss_fn, xt))
    return project(xt + step_size * jnp.sign(g), x, eps), g

  x_adv, _ = jax.lax.fori_loop(0, _steps(num_steps), body, (x, jnp.zeros_like(x)))
  return x_adv


# --- losses the attacks maximise ---------------------------------------------------------------


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """-log softmax(logits)[label] per example: logits [n, C], labels [n] -> [n]."""
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def untargeted_loss(logits_fn: LogitsFn, labels: jax.Array) -> LossFn:
  """Loss that moves x away from its true class: x -> CE(logits_fn(x), labels) [n]."""
  return lambda x: cross_entropy(logits_fn(x), labels)


def targeted_loss(logits_fn: LogitsFn, targets: jax.Array) -> LossFn:
  """Loss that moves x towards `targets` [n]: x -> -CE(logits_fn(x), targets) [n]."""
  return lambda x: -cross_entropy(logits_fn(x), targets)


def least_likely_targets(logits_fn: LogitsFn, x: jax.Array) -> jax.Array:
  """y_LL = argmin_y p(y | x) of the clean inputs [n] (Kurakin et al., 2017, Sec. 2.3)."""
  return jnp.argmin(jax.lax.stop_gradient(logits_fn(x)), axis=-1)


def least_likely_loss(logits_fn: LogitsFn, x: jax.Array) -> LossFn:
  """Iterative least-likely class: the targeted loss towards y_LL of the clean x (fixed once).

  With `ifgsm` this is Kurakin et al. (2017), Sec. 2.3: x_{t+1} = Clip(x_t - alpha sign(grad
  CE(x_t, y_LL))).
  """
  return targeted_loss(logits_fn, least_likely_targets(logits_fn, x))


def _weights(count: int, weights: Sequence[float] | None) -> list[float]:
  if count == 0:
    raise ValueError("an ensemble needs at least one model")
  weights = [1.0] * count if weights is None else [float(w) for w in weights]
  if len(weights) != count or min(weights) < 0 or sum(weights) <= 0:
    raise ValueError(f"expected {count} non-negative ensemble weights with a positive sum, "
                     f"got {weights}")
  total = sum(weights)
  return [w / total for w in weights]


def ensemble_logits(logits_fns: Sequence[LogitsFn],
                    weights: Sequence[float] | None = None) -> LogitsFn:
  """Ensemble in logits (Dong et al., 2018, Sec. 3.2): x -> sum_k w_k l_k(x), weights sum to 1."""
  ws = _weights(len(logits_fns), weights)
  return lambda x: sum(w * f(x) for w, f in zip(ws, logits_fns))


def ensemble_loss(loss_fns: Sequence[LossFn], weights: Sequence[float] | None = None) -> LossFn:
  """Ensemble in loss: x -> sum_k w_k L_k(x) [n], the weighted mean of several models' losses."""
  ws = _weights(len(loss_fns), weights)
  return lambda x: sum(w * f(x) for w, f in zip(ws, loss_fns))


def feature_loss(features_fn: Callable[[jax.Array], jax.Array], target: jax.Array) -> LossFn:
  """Feature-level attack: x -> -mean_j (phi(x)_j - target_j)^2 per example [n].

  Maximising it makes the representation phi(x) [n, ...] at a layer match `target` (same shape),
  e.g. another class's mean feature (`other_class_targets` with `consistency.class_means`).
  """
  def loss(x):
    diff = features_fn(x) - target
    return -jnp.mean(jnp.square(diff), axis=tuple(range(1, diff.ndim)))
  return loss


def other_class_targets(labels: jax.Array, num_classes: int, shift: int = 1) -> jax.Array:
  """(y + shift) mod C [n]: a deterministic other class for each example (shift not = 0 mod C)."""
  if shift % num_classes == 0:
    raise ValueError(f"shift={shift} maps every class to itself with {num_classes} classes")
  return (jnp.asarray(labels) + shift) % num_classes
