"""The three training modes of the consistency papers, as losses for the shared training loop.

With x* an adversarial example of x made inside the step (eval-mode batch statistics, parameters
held fixed) and phi the ReLU activation of the chosen layer:

  standard     L = CE(f(x), y)
  adversarial  L = CE(f(x), y) + CE(f(x*), y)                                   (lambda_c = 0)
  consistent   L = CE(f(x), y) + CE(f(x*), y) + lambda_c mean_i ||phi(x_i) - phi(x*_i)||^2

(or, with consistent.distance = 'normalized', the distance of phi / ||phi||: ours, see DISTANCES)

(arXiv 1708.05493 / 1901.09035: adversarial training with the consistent loss; lambda_c = 0 is the
ablation that separates the consistent term from adversarial training). The clean and adversarial
halves go through ONE train-mode forward pass, so batch norm normalises them with the same batch
statistics and phi(x), phi(x*) are comparable.

`program(config, mode, image_shape)` is a `common.supervised` Program whose `init(key)` builds the
CNN from the key, so `train.num_seeds` vmapped seeds are independently initialised models (the
transfer attacks and ensembles need them).
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import nnx

from common import optim
from common.registry import Registry
from common.supervised import Supervised, TrainState, supervised
from interp import attacks, consistency, models

# (logits_fn, x, y) -> the per-example loss the attack increases.
ATTACK_LOSSES: Registry = Registry("attack loss")
ATTACK_LOSSES.add("untargeted", lambda logits_fn, x, y: attacks.untargeted_loss(logits_fn, y))
ATTACK_LOSSES.add("least_likely", lambda logits_fn, x, y: attacks.least_likely_loss(logits_fn, x))


def normalized_distance(phi_x: jax.Array, phi_adv: jax.Array) -> jax.Array:
  """||phi(x)/|phi(x)| - phi(x*)/|phi(x*)|||^2 per example [n] (= 2 - 2 cos): the squared
  distance with the representation's scale divided out. The norm is sqrt(|v|^2 + 1e-12), whose
  gradient stays finite at v = 0 (an example whose ReLU layer is all zero)."""
  unit = lambda v: v / jnp.sqrt(jnp.sum(v * v, axis=1, keepdims=True) + 1e-12)
  flat = lambda v: v.reshape(v.shape[0], -1)
  return consistency.representation_distance(unit(flat(phi_x)), unit(flat(phi_adv)))


# The distance of the consistent term, per example [n]: 'squared' is the papers' ||phi(x) -
# phi(x*)||^2, which a network can also lower by shrinking phi; 'normalized' cannot be.
DISTANCES: Registry = Registry("representation distance")
DISTANCES.add("squared", consistency.representation_distance)
DISTANCES.add("normalized", normalized_distance)

# mode -> weight lambda_c of the consistent term (None: no adversarial examples at all).
TRAINING_MODES: Registry = Registry("training mode")
TRAINING_MODES.add("standard", lambda config: None)
TRAINING_MODES.add("adversarial", lambda config: 0.0)
TRAINING_MODES.add("consistent", lambda config: float(config.consistent.lambda_c))


def to_unit(images: jax.Array) -> jax.Array:
  """common.data images in [-1, 1] -> the attacks' box [0, 1]."""
  return (images + 1.0) / 2.0


def adversarial(logits_fn: Callable[[jax.Array], jax.Array], x: jax.Array, y: jax.Array,
                attack, rng: jax.Array | None) -> jax.Array:
  """x* = ATTACKS[attack.name] on the loss ATTACK_LOSSES[attack.loss], from a config block.

  Args:
    logits_fn: x [n, ...] -> logits [n, C]; must couple no examples (eval-mode batch norm).
    x: inputs [n, ...] in [0, 1]; y: their classes [n].
    attack: a block with name, loss, eps, step_size, num_steps, random_start.
    rng: key of PGD's random start (used only when attack.random_start).

  Returns:
    x* [n, ...] with |x* - x| <= eps, in [0, 1].
  """
  loss = ATTACK_LOSSES.get(attack.loss, field="attack.loss")(logits_fn, x, y)
  return attacks.ATTACKS.get(attack.name, field="attack.name")(
      loss, x, eps=attack.eps, step_size=attack.step_size, num_steps=int(attack.num_steps),
      rng=rng if attack.random_start else None)


def frozen_logits_fn(model: nnx.Module) -> Callable[[jax.Array], jax.Array]:
  """Eval-mode logits of `model` with its variables held constant (no gradient to the
  parameters, batch statistics unchanged): what the in-step attack differentiates."""
  graphdef, state = nnx.split(model)
  state = jax.lax.stop_gradient(state)
  return lambda z: models.apply(graphdef, state, z)[0]


def loss_fn(mode: str, config) -> Callable:
  """The supervised loss (model, batch, rng) -> (loss, metrics) of a training mode.

  The batch is {"image": [n, H, W, C] in [-1, 1], "label": [n]}, and for the adversarial modes
  also "lambda_c" (a scalar, put there by `program`'s step from its consts).
  """
  adversarial_mode = TRAINING_MODES.get(mode, field="train.modes")(config) is not None
  layer = config.model.layer
  distance_fn = DISTANCES.get(config.consistent.distance, field="consistent.distance")

  def loss(model, batch, rng):
    x, y = to_unit(batch["image"]), batch["label"]
    if not adversarial_mode:
      logits = model(x, train=True)
      ce = jnp.mean(attacks.cross_entropy(logits, y))
      return ce, {"ce_clean": ce, "accuracy": _accuracy(logits, y)}
    # The attack sees the parameters of this step, before the train-mode pass moves the batch
    # statistics; x* is a constant of the loss (no gradient through the attack).
    x_adv = jax.lax.stop_gradient(adversarial(frozen_logits_fn(model), x, y, config.attack, rng))
    logits, feats = model(jnp.concatenate([x, x_adv]), train=True, return_features=True)
    n = x.shape[0]
    ce_clean = jnp.mean(attacks.cross_entropy(logits[:n], y))
    ce_adv = jnp.mean(attacks.cross_entropy(logits[n:], y))
    phi = feats[layer]
    distance = jnp.mean(distance_fn(phi[:n], phi[n:]))
    total = ce_clean + ce_adv + batch["lambda_c"] * distance
    return total, {"ce_clean": ce_clean, "ce_adv": ce_adv, "distance": distance,
                   "accuracy": _accuracy(logits[:n], y), "adv_accuracy": _accuracy(logits[n:], y)}

  return loss


def _accuracy(logits: jax.Array, y: jax.Array) -> jax.Array:
  return jnp.mean((jnp.argmax(logits, -1) == y).astype(jnp.float32))


def build_model(config, seed: Any = 0) -> models.CNN:
  """The CNN of the config: the preset of data.name, model.channels / model.hidden if set."""
  m = config.model
  return models.build_model(config.data.name, batch_norm=m.batch_norm, seed=seed,
                            channels=tuple(m.channels) or None, hidden=m.hidden or None,
                            field="data.name")


def initial_model(config, key: jax.Array) -> models.CNN:
  """build_model in one compiled program (eager construction dispatches dozens of small ops,
  seconds on a busy CPU)."""
  graphdef, state = jax.jit(lambda k: nnx.split(build_model(config, k)))(key)
  return nnx.merge(graphdef, state)


def program(config, mode: str, model: models.CNN | None = None) -> Supervised:
  """The Program of one training mode: supervised(...) with an init that builds the CNN from its
  key (so vmapped seeds are independent models, not copies of one initialisation).

  Args:
    config: the experiment config.
    mode: a name in TRAINING_MODES.
    model: a model of the config's architecture (its structure only is used); built if None.
  """
  num_steps = config.train.num_steps
  tx = optim.make_optimizer(config.optim, num_steps)
  model = model if model is not None else initial_model(config, jax.random.key(0))
  prog = supervised(model, loss_fn(mode, config), tx, ema_decay=config.train.ema_decay,
                    lr_fn=optim.learning_rate(config.optim, num_steps))

  @jax.jit
  def init(key: jax.Array) -> TrainState:
    _, params, _, extra = nnx.split(build_model(config, key), *prog.filters)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                      ema_params=jax.tree.map(jnp.copy, params), extra=extra)

  prog.init = init
  lambda_c = TRAINING_MODES.get(mode, field="train.modes")(config)
  if lambda_c is not None:  # a step argument: adversarial and consistent compile to one program
    base_step = prog.step
    prog.step = lambda state, batch, rng, consts: base_step(
        state, {**batch, "lambda_c": consts["lambda_c"]}, rng, consts)
    prog.consts = {**prog.consts, "lambda_c": jnp.asarray(lambda_c, jnp.float32)}
  return prog
