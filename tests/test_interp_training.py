"""The three training modes of interp/training.py against independent truth.

Truths: with eps = 0 the adversarial example is the clean input, so the batch-norm statistics of
[x; x*] equal those of x, the distance term is exactly 0 and the consistent (and adversarial) loss
is twice the standard loss, with twice its gradient, whatever lambda_c; with eps > 0 the in-step x*
equals an eval-mode attack recomputed outside the step (so the attack never sees train-mode batch
statistics), the adversarial loss is CE(x) + CE(x*) recomputed by hand, and consistent minus
adversarial is exactly lambda_c times the reported distance.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs.interp import consistency_digits
from interp import attacks, consistency, models, training

RS = np.random.RandomState(0)
IMAGES = RS.uniform(-1, 1, size=(8, 8, 8, 1)).astype(np.float32)
LABELS = np.arange(8, dtype=np.int32) % 10


def _config(eps=0.2, lambda_c=0.5):
  c = consistency_digits.get_config("smoke")
  c.attack.update(eps=eps, step_size=0.05, num_steps=3, random_start=True)
  c.consistent.lambda_c = lambda_c
  return c


def _trained_model(config):
  """A model whose batch statistics are not the initial ones (a few train-mode passes), so
  train-mode and eval-mode normalisation differ."""
  model = training.build_model(config, seed=3)
  for i in range(3):
    model(jnp.asarray(training.to_unit(IMAGES)) * (1 + i), train=True)
  return nnx.split(model)


def _loss(mode, config, split, lambda_c=None):
  graphdef, state = split
  batch = {"image": jnp.asarray(IMAGES), "label": jnp.asarray(LABELS)}
  if lambda_c is not None:
    batch["lambda_c"] = jnp.float32(lambda_c)
  fn = training.loss_fn(mode, config)

  def value(params):
    model = nnx.merge(graphdef, params, nnx.filter_state(state, nnx.BatchStat), copy=True)
    return fn(model, batch, jax.random.key(7))

  params = nnx.filter_state(state, nnx.Param)
  (loss, metrics), grads = jax.value_and_grad(value, has_aux=True)(params)
  return float(loss), {k: float(v) for k, v in metrics.items()}, grads


def test_eps_zero_makes_the_consistent_term_vanish():
  config = _config(eps=0.0)
  split = _trained_model(config)
  standard, _, g_std = _loss("standard", config, split)
  for mode, lam in (("adversarial", 0.0), ("consistent", 0.5), ("consistent", 10.0)):
    loss, metrics, grads = _loss(mode, config, split, lam)
    assert metrics["distance"] == 0.0
    np.testing.assert_allclose(metrics["ce_adv"], metrics["ce_clean"], rtol=1e-6)
    np.testing.assert_allclose(loss, 2 * standard, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(g_std)):
      # atol: biases before batch norm have a zero gradient up to rounding
      np.testing.assert_allclose(np.asarray(a), 2 * np.asarray(b), rtol=1e-4, atol=1e-5)


def test_modes_differ_as_designed():
  config = _config(eps=0.2)
  split = _trained_model(config)
  graphdef, state = split
  x, y = training.to_unit(jnp.asarray(IMAGES)), jnp.asarray(LABELS)
  standard, m_std, _ = _loss("standard", config, split)
  adversarial, m_adv, _ = _loss("adversarial", config, split, 0.0)
  consistent, m_con, _ = _loss("consistent", config, split, 0.5)

  # standard: the train-mode cross-entropy of the clean batch, recomputed here
  logits, _, _ = models.apply(graphdef, state, x, train=True)
  np.testing.assert_allclose(standard, float(jnp.mean(attacks.cross_entropy(logits, y))),
                             rtol=1e-5)
  # the attack of the step, redone outside it with eval-mode (running-average) statistics
  eval_logits = lambda z: models.apply(graphdef, state, z, train=False)[0]
  x_adv = attacks.ATTACKS["pgd"](attacks.untargeted_loss(eval_logits, y), x, eps=0.2,
                                 step_size=0.05, num_steps=3, rng=jax.random.key(7))
  logits2, feats, _ = models.apply(graphdef, state, jnp.concatenate([x, x_adv]), train=True)
  ce = attacks.cross_entropy(logits2, jnp.concatenate([y, y]))
  distance = float(jnp.mean(consistency.representation_distance(feats["fc1"][:8],
                                                                 feats["fc1"][8:])))
  np.testing.assert_allclose(m_adv["ce_clean"], float(jnp.mean(ce[:8])), rtol=1e-5)
  np.testing.assert_allclose(m_adv["ce_adv"], float(jnp.mean(ce[8:])), rtol=1e-5)
  np.testing.assert_allclose(adversarial, m_adv["ce_clean"] + m_adv["ce_adv"], rtol=1e-6)
  np.testing.assert_allclose(m_adv["distance"], distance, rtol=1e-5)
  # the same x* for both adversarial modes; only the distance term differs
  assert m_con["ce_adv"] == m_adv["ce_adv"] and m_con["distance"] == m_adv["distance"]
  np.testing.assert_allclose(consistent - adversarial, 0.5 * distance, rtol=1e-5)
  assert m_adv["ce_adv"] > m_adv["ce_clean"] and distance > 0


def test_programs_init_independent_seeds_shared_across_modes():
  config = _config()
  keys = jnp.stack([jax.random.key(0), jax.random.key(1)])
  inits = {m: jax.vmap(training.program(config, m).init)(keys) for m in training.TRAINING_MODES}
  kernel = lambda s: np.asarray(s.params["conv1"]["kernel"][...])
  std = kernel(inits["standard"])
  assert np.abs(std[0] - std[1]).max() > 0.1  # two seeds, two models
  for mode in ("adversarial", "consistent"):
    np.testing.assert_array_equal(kernel(inits[mode]), std)  # paired across modes
  np.testing.assert_array_equal(kernel(inits["standard"]), std)
  # lambda_c is a step constant, not part of the compiled program
  assert float(training.program(config, "consistent").consts["lambda_c"]) == 0.5
  assert float(training.program(config, "adversarial").consts["lambda_c"]) == 0.0
  assert "lambda_c" not in training.program(config, "standard").consts


@pytest.mark.parametrize("loss", ["untargeted", "least_likely"])
def test_adversarial_from_a_config_block(loss):
  config = _config()
  config.attack.loss = loss
  graphdef, state = _trained_model(config)
  logits_fn = lambda z: models.apply(graphdef, state, z)[0]
  x, y = training.to_unit(jnp.asarray(IMAGES)), jnp.asarray(LABELS)
  x_adv = jax.jit(lambda z: training.adversarial(logits_fn, z, y, config.attack,
                                                 jax.random.key(1)))(x)
  assert np.all(np.abs(np.asarray(x_adv - x)) <= 0.2 + 1e-7)
  target = (attacks.untargeted_loss(logits_fn, y) if loss == "untargeted" else
            attacks.least_likely_loss(logits_fn, x))
  assert float(jnp.mean(target(x_adv))) > float(jnp.mean(target(x)))


def test_normalized_distance():
  rs = np.random.RandomState(4)
  a, b = rs.uniform(size=(3, 2, 5)), rs.uniform(size=(3, 2, 5))
  got = np.asarray(training.normalized_distance(jnp.asarray(a), 7.0 * jnp.asarray(b)))
  cos = np.sum(a * b, axis=(1, 2)) / np.linalg.norm(a.reshape(3, -1), axis=1) / np.linalg.norm(
      b.reshape(3, -1), axis=1)
  np.testing.assert_allclose(got, 2 - 2 * cos, rtol=1e-5)  # scale-free: phi(x*) times 7
  np.testing.assert_allclose(np.asarray(training.normalized_distance(a, 3.0 * a)), 0, atol=1e-6)
  grad = jax.grad(lambda v: jnp.sum(training.normalized_distance(v, jnp.ones((1, 4)))))(
      jnp.zeros((1, 4)))
  assert np.all(np.isfinite(np.asarray(grad)))  # a dead layer gives no NaN


def test_normalized_consistent_loss_at_eps_zero():
  config = _config(eps=0.0)
  config.consistent.distance = "normalized"
  split = _trained_model(config)
  standard, _, _ = _loss("standard", config, split)
  loss, metrics, _ = _loss("consistent", config, split, 3.0)
  assert abs(metrics["distance"]) < 1e-6
  np.testing.assert_allclose(loss, 2 * standard, rtol=1e-5)
