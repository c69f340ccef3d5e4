"""interp attacks and models against independent truth.

Truths: exact float32 bounds of the L_inf ball and the image box; on a linear logistic model the
closed-form worst case over the box (a vertex, found here by enumerating all 2^d vertices); a NumPy
float64 transcription of I-FGSM and MI-FGSM (Dong et al., 2018, Algorithm 1) on a loss with an
analytic gradient; and a batch-wide-normalised MI-FGSM that a per-example normalisation must not
equal.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from common.errors import ConfigError
from interp import attacks, models
from interp.attacks import ATTACKS

NAMES = ("fgsm", "ifgsm", "pgd", "mifgsm")
STEPS = 4


def _inputs() -> np.ndarray:
  """Six 8x8 images, including exact 0 / 1 pixels and images near 0 and near 1 everywhere."""
  rs = np.random.RandomState(0)
  x = rs.uniform(size=(6, 8, 8, 1)).astype(np.float32)
  x[0, ::2] = 0.0
  x[0, 1::2] = 1.0
  x[1] = 1e-3
  x[2] = 1.0 - 1e-3
  x[3] = 1.0
  return x


X = _inputs()
Y = np.array([0, 1, 2, 3, 4, 5])
MODEL = models.build_model("digits", batch_norm=True, channels=(4, 8), hidden=16, seed=0)
LOGITS = models.logits_fn(MODEL)
LOSS = attacks.untargeted_loss(LOGITS, Y)
LOSS_JIT = jax.jit(LOSS)


@jax.jit
def _run_all(x, eps, step_size, rng):
  """Every attack on the CNN, in one compiled program; eps and step_size are traced."""
  out = {name: ATTACKS[name](LOSS, x, eps=eps, step_size=step_size, num_steps=STEPS)
         for name in NAMES}
  out["pgd_rng"] = ATTACKS["pgd"](LOSS, x, eps=eps, step_size=step_size, num_steps=STEPS,
                                  rng=rng)
  return out


def _assert_in_budget(x_adv, x, eps):
  """The exact float32 bounds the projection clips to: [x - eps, x + eps] and [0, 1]."""
  x_adv, x, eps = np.asarray(x_adv), np.asarray(x, np.float32), np.float32(eps)
  assert x_adv.dtype == np.float32
  assert np.all(x_adv >= np.maximum(x - eps, 0.0)) and np.all(x_adv <= np.minimum(x + eps, 1.0))
  assert np.all((x_adv >= 0.0) & (x_adv <= 1.0))


@pytest.fixture(scope="module")
def cnn_runs():
  return {eps: _run_all(X, eps, eps / 3, jax.random.key(1)) for eps in (0.05, 0.2)}


def test_registry_names_and_error():
  assert ATTACKS.names() == sorted(NAMES)
  with pytest.raises(ConfigError, match="fgsm, ifgsm, mifgsm, pgd"):
    ATTACKS["nope"]


@pytest.mark.parametrize("eps", [0.05, 0.2])
def test_budget_box_and_loss_raised_on_cnn(cnn_runs, eps):
  base = np.asarray(LOSS_JIT(X))
  for name, x_adv in cnn_runs[eps].items():
    _assert_in_budget(x_adv, X, eps)
    gain = np.asarray(LOSS_JIT(x_adv)) - base
    assert np.all(gain > 0), (name, eps, gain)
  # the budget is used: FGSM moves every interior pixel whose gradient is non-zero by eps
  moved = np.abs(np.asarray(cnn_runs[eps]["fgsm"]) - X)
  assert np.isclose(moved.max(), eps, rtol=1e-5)


def test_jit_matches_eager(cnn_runs):
  eager = ATTACKS["fgsm"](LOSS, jnp.asarray(X), eps=0.05, step_size=None, num_steps=None)
  np.testing.assert_array_equal(np.asarray(eager), np.asarray(cnn_runs[0.05]["fgsm"]))


def test_pgd_start_and_determinism(cnn_runs):
  run = cnn_runs[0.05]
  # without an rng PGD starts at x: it is I-FGSM, bit for bit
  np.testing.assert_array_equal(np.asarray(run["pgd"]), np.asarray(run["ifgsm"]))
  x = jnp.asarray(X)
  start = lambda rng: ATTACKS["pgd"](LOSS, x, eps=0.1, step_size=0.01, num_steps=0, rng=rng)
  np.testing.assert_array_equal(np.asarray(start(None)), X)
  a, b, c = start(jax.random.key(3)), start(jax.random.key(3)), start(jax.random.key(4))
  _assert_in_budget(a, X, 0.1)
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert np.mean(np.asarray(a) != X) > 0.5 and np.mean(np.asarray(a) != np.asarray(c)) > 0.5


# --- linear logistic model: the worst case over the box in closed form ------------------------


D = 6
W = np.array([0.8, -1.3, 0.5, -0.2, 2.0, -0.7], np.float32)
B = np.float32(0.1)
XL = np.array([[0.5, 0.5, 0.5, 0.5, 0.5, 0.5],
               [0.0, 1.0, 0.01, 0.99, 1.0, 0.0],
               [1.0, 0.0, 0.97, 0.02, 0.0, 1.0],
               [0.3, 0.9, 0.1, 0.6, 0.45, 0.05]], np.float32)
YL = np.array([1.0, -1.0, 1.0, -1.0], np.float32)


def _logistic_loss(x):
  """log(1 + exp(-y (w.x + b))) per example: x [n, D] -> [n]."""
  return jax.nn.softplus(-YL * (x @ W + B))


def _vertex_max(x, eps):
  """max of the logistic loss over the box [max(0, x - eps), min(1, x + eps)], by enumeration of
  its 2^D vertices (a convex function's maximum over a box lies at a vertex)."""
  lo, hi = np.maximum(x - eps, 0.0), np.minimum(x + eps, 1.0)
  corners = np.array(list(itertools.product([0, 1], repeat=D)), bool)
  best = []
  for i in range(len(x)):
    pts = np.where(corners, hi[i], lo[i]).astype(np.float64)
    best.append(np.max(np.logaddexp(0.0, -YL[i] * (pts @ W + B))))
  return np.array(best)


@jax.jit
def _linear_attacks(x, eps):
  kw = dict(eps=eps, step_size=eps / 4, num_steps=6)  # 6 steps of eps/4: the box is reached
  out = {name: ATTACKS[name](_logistic_loss, x, **kw) for name in NAMES}
  out["pgd_rng"] = ATTACKS["pgd"](_logistic_loss, x, eps=eps, step_size=eps / 4, num_steps=10,
                                  rng=jax.random.key(0))  # from anywhere in the ball: 2 eps
  return out


@pytest.mark.parametrize("eps", [0.03, 0.25])
def test_linear_model_closed_form(eps):
  out = _linear_attacks(XL, eps)
  # worst case of y (w.x + b) over the box: each coordinate to the bound against y sign(w)
  closed = np.clip(XL - np.float32(eps) * YL[:, None] * np.sign(W), 0.0, 1.0)
  np.testing.assert_array_equal(np.asarray(out["fgsm"]), closed)
  np.testing.assert_allclose(np.asarray(_logistic_loss(out["fgsm"])), _vertex_max(XL, eps),
                             rtol=1e-5)
  for name, x_adv in out.items():
    np.testing.assert_array_equal(np.asarray(x_adv), closed, err_msg=name)


# --- the iterative updates against a NumPy transcription -------------------------------------


A_COEF = np.random.RandomState(5).uniform(0.5, 1.5, size=(3, 5))
B_COEF = np.random.RandomState(6).uniform(2.0, 9.0, size=(3, 5))
X0 = np.random.RandomState(7).uniform(size=(3, 5))


def _wavy_loss(x, scale=None):
  """sum_j a_j sin(b_j x_j) per example: gradients change sign inside the box."""
  loss = jnp.sum(A_COEF * jnp.sin(B_COEF * x), axis=1)
  return loss if scale is None else loss * scale


def _numpy_attack(x, eps, alpha, steps, decay=None):
  """I-FGSM (decay None) or MI-FGSM with per-example L1 normalisation, in float64 NumPy."""
  xt, g = x.copy(), np.zeros_like(x)
  for _ in range(steps):
    grad = A_COEF * B_COEF * np.cos(B_COEF * xt)
    if decay is None:
      g = grad
    else:
      g = decay * g + grad / np.abs(grad).sum(1, keepdims=True)
    xt = np.clip(np.clip(xt + alpha * np.sign(g), x - eps, x + eps), 0.0, 1.0)
  return xt


def test_iterative_updates_match_numpy_transcription():
  with jax.enable_x64(True):
    x = jnp.asarray(X0, jnp.float64)
    kw = dict(eps=0.3, step_size=0.07, num_steps=9)
    ifgsm = np.asarray(ATTACKS["ifgsm"](_wavy_loss, x, **kw))
    mi = np.asarray(ATTACKS["mifgsm"](_wavy_loss, x, **kw))
    mi_half = np.asarray(ATTACKS["mifgsm"](_wavy_loss, x, decay=0.5, **kw))
  np.testing.assert_allclose(ifgsm, _numpy_attack(X0, 0.3, 0.07, 9), atol=1e-12)
  np.testing.assert_allclose(mi, _numpy_attack(X0, 0.3, 0.07, 9, decay=1.0), atol=1e-12)
  np.testing.assert_allclose(mi_half, _numpy_attack(X0, 0.3, 0.07, 9, decay=0.5), atol=1e-12)
  assert np.abs(mi - ifgsm).max() > 0.05  # momentum changes the path on this loss


def _batch_normalised_mifgsm(x, eps, alpha, steps, scale):
  """The wrong variant: one L1 norm over the whole batch couples the examples."""
  xt, g = x.copy(), np.zeros_like(x)
  for _ in range(steps):
    grad = scale[:, None] * A_COEF * B_COEF * np.cos(B_COEF * xt)
    g = g + grad / np.abs(grad).sum()
    xt = np.clip(np.clip(xt + alpha * np.sign(g), x - eps, x + eps), 0.0, 1.0)
  return xt


def test_mifgsm_normalises_per_example():
  scale = np.array([1000.0, 1.0, 1.0])
  with jax.enable_x64(True):
    x = jnp.asarray(X0, jnp.float64)
    kw = dict(eps=0.3, step_size=0.07, num_steps=9)
    plain = np.asarray(ATTACKS["mifgsm"](_wavy_loss, x, **kw))
    scaled = np.asarray(ATTACKS["mifgsm"](lambda z: _wavy_loss(z, jnp.asarray(scale)), x, **kw))
  np.testing.assert_array_equal(scaled[1:], plain[1:])
  np.testing.assert_allclose(scaled[0], plain[0], atol=1e-12)
  # the check has power: a batch-wide norm lets example 0's scale change the others' result
  coupled = _batch_normalised_mifgsm(X0, 0.3, 0.07, 9, scale)
  uncoupled = _batch_normalised_mifgsm(X0, 0.3, 0.07, 9, np.ones(3))
  assert np.abs(coupled[1:] - uncoupled[1:]).max() > 0.05


def test_num_steps_must_be_static():
  with pytest.raises(TypeError):
    jax.jit(lambda n: ATTACKS["ifgsm"](_logistic_loss, XL, eps=0.1, step_size=0.1,
                                       num_steps=n))(3)


def test_loss_must_be_per_example():
  with pytest.raises(ValueError, match="per-example"):
    ATTACKS["fgsm"](lambda z: jnp.sum(_logistic_loss(z)), XL, eps=0.1, step_size=0, num_steps=0)


# --- loss builders ------------------------------------------------------------------------------


@jax.jit
def _variants(x):
  logits = LOGITS(x)
  kw = dict(eps=0.2, step_size=0.01, num_steps=STEPS)  # small steps: ascent without overshoot
  ll = attacks.least_likely_targets(LOGITS, x)
  x_ll = ATTACKS["ifgsm"](attacks.least_likely_loss(LOGITS, x), x, **kw)
  _, feats = MODEL(x, return_features=True)
  target = jnp.roll(feats["fc1"], 3, axis=0)  # a dissimilar example's representation
  phi = lambda z: MODEL(z, return_features=True)[1]["fc1"]
  x_feat = ATTACKS["ifgsm"](attacks.feature_loss(phi, target), x, **kw)
  return logits, ll, x_ll, target, phi(x), phi(x_feat)


def test_least_likely_and_feature_attacks():
  logits, ll, x_ll, target, phi_x, phi_adv = (np.asarray(a) for a in _variants(X))
  np.testing.assert_array_equal(ll, np.argmin(logits, axis=1))
  logp = lambda lg: lg[np.arange(len(ll)), ll] - np.logaddexp.reduce(lg, axis=1)
  np.testing.assert_allclose(np.asarray(attacks.least_likely_loss(LOGITS, X)(X)), logp(logits),
                             rtol=1e-5)
  # The target class gains, except on image 1 (1e-3 everywhere): there every pre-activation of the
  # random ReLU net is ~1e-3, so a 0.01 step crosses its kinks and first-order ascent can fail.
  gained = logp(np.asarray(LOGITS(x_ll))) - logp(logits)
  assert np.all(np.delete(gained, 1) > 0), gained
  _assert_in_budget(x_ll, X, 0.2)
  before = np.sum((phi_x - target) ** 2, axis=1)
  after = np.sum((phi_adv - target) ** 2, axis=1)
  assert np.all(after < before), (before, after)


def test_ensembles_are_weighted_means():
  f1 = lambda x: x @ np.eye(D, 3, dtype=np.float32)
  f2 = lambda x: 2.0 * (x @ np.eye(D, 3, k=1, dtype=np.float32))
  ens = attacks.ensemble_logits([f1, f2], weights=[1.0, 3.0])
  np.testing.assert_allclose(np.asarray(ens(XL)), 0.25 * f1(XL) + 0.75 * f2(XL), rtol=1e-6)
  l1 = attacks.untargeted_loss(f1, np.zeros(4, int))
  l2 = attacks.targeted_loss(f2, np.ones(4, int))
  np.testing.assert_allclose(np.asarray(attacks.ensemble_loss([l1, l2])(XL)),
                             0.5 * (l1(XL) + l2(XL)), rtol=1e-6)
  with pytest.raises(ValueError):
    attacks.ensemble_logits([f1, f2], weights=[1.0])
  np.testing.assert_array_equal(np.asarray(attacks.other_class_targets(np.arange(10), 10)),
                                (np.arange(10) + 1) % 10)


# --- models -------------------------------------------------------------------------------------


def test_model_features_masks_and_batch_stats():
  x = jnp.asarray(X)
  logits, feats = MODEL(x, return_features=True)
  assert logits.shape == (6, 10)
  assert {k: v.shape for k, v in feats.items()} == {
      "conv1": (6, 8, 8, 4), "conv2": (6, 4, 4, 8), "fc1": (6, 16)}
  mask = jnp.ones(8).at[3].set(0.0)
  _, masked = MODEL(x, return_features=True, masks={"conv2": mask})
  assert np.all(np.asarray(masked["conv2"][..., 3]) == 0)
  np.testing.assert_array_equal(np.asarray(masked["conv1"]), np.asarray(feats["conv1"]))
  np.testing.assert_array_equal(np.asarray(models.neuron_activations(feats["conv2"])),
                                np.asarray(feats["conv2"]).max(axis=(1, 2)))
  graphdef, state = nnx.split(MODEL)
  _, _, trained = models.apply(graphdef, state, x, train=True)
  _, _, evaluated = models.apply(graphdef, state, x, train=False)
  mean = lambda st: np.asarray(st["bn1"]["mean"][...])
  assert np.abs(mean(trained) - mean(state)).max() > 0  # batch statistics moved
  np.testing.assert_array_equal(mean(evaluated), mean(state))
  with pytest.raises(ConfigError, match="layer="):
    models.num_units(MODEL, "conv3")


def test_attack_inside_a_jitted_training_step():
  """The shape a training step will take: x* made inside the step by an eval-mode attack, then a
  train-mode loss whose gradient reaches the parameters and whose batch statistics update."""
  graphdef, params, rest = nnx.split(MODEL, nnx.Param, ...)

  @jax.jit
  def step(state, batch, rng):
    params, rest = state
    x, y = batch
    eval_logits = lambda z: models.apply(graphdef, (params, rest), z)[0]
    x_adv = ATTACKS["pgd"](attacks.untargeted_loss(eval_logits, y), x, eps=0.1, step_size=0.05,
                           num_steps=2, rng=rng)

    def loss_fn(p):
      logits, _, new = models.apply(graphdef, (p, rest), jnp.concatenate([x, x_adv]), train=True)
      return jnp.mean(attacks.cross_entropy(logits, jnp.concatenate([y, y]))), new

    (loss, new), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    metrics = {"loss": loss, "x_adv": x_adv, "grads": grads}
    return (params, nnx.filter_state(new, nnx.BatchStat)), metrics

  (_, new_rest), metrics = step((params, rest), (X, Y), jax.random.key(0))
  assert np.isfinite(float(metrics["loss"]))
  _assert_in_budget(metrics["x_adv"], X, 0.1)
  assert max(float(jnp.abs(g).max()) for g in jax.tree_util.tree_leaves(metrics["grads"])) > 0
  moved = [float(jnp.abs(a - b).max()) for a, b in zip(jax.tree_util.tree_leaves(new_rest),
                                                       jax.tree_util.tree_leaves(rest))]
  assert max(moved) > 0
