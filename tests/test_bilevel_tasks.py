"""bilevel/tasks.py, and the stability meter and random search of bilevel/stability.py.

Truths: counting and set identities on the splits, a chi-square test of the random labels, numpy
forward passes and cross-entropies, float64 central finite differences of each task's unrolled
objective, a closed-form outer optimisation whose stability is known exactly, and for random search
the running minimum of the trial losses and a retraining of the returned winner.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree
from scipy import special, stats

from bilevel import implicit, stability, tasks, ud


# ---------------------------------------------------------------------------------------------
# Splits.


def test_noisy_label_split_randomises_exactly_the_second_half_deterministically():
  n, c = 30000, 10
  x = np.arange(n)[:, None]                            # each example's identity
  y = np.arange(n) % c
  sizes = dict(num_train=20001, num_val=300, num_test=500, num_mval=300, num_classes=c)
  split = tasks.noisy_label_split(x, y, seed=3, **sizes)
  again = tasks.noisy_label_split(x, y, seed=3, **sizes)
  other = tasks.noisy_label_split(x, y, seed=4, **sizes)
  for key in split:
    np.testing.assert_array_equal(split[key], again[key])
  assert not np.array_equal(split["train_y"], other["train_y"])
  ids = np.concatenate([split[f"{s}_x"][:, 0] for s in ("train", "val", "test", "mval")])
  assert len(ids) == len(np.unique(ids)) == 20001 + 300 + 500 + 300
  for s in ("train", "val", "test", "mval"):
    np.testing.assert_array_equal(y[split[f"{s}_x"][:, 0]],
                                  split["train_y_clean" if s == "train" else f"{s}_y"])
  corrupted = split["train_corrupted"]
  assert corrupted.sum() == 20001 // 2 and corrupted[-10000:].all() and not corrupted[:10001].any()
  np.testing.assert_array_equal(split["train_y"][~corrupted], split["train_y_clean"][~corrupted])
  noisy, clean = split["train_y"][corrupted], split["train_y_clean"][corrupted]
  # Uniform random labels, independent of the truth: 1/c of them coincide with it.
  assert stats.chisquare(np.bincount(noisy, minlength=c)).pvalue > 1e-3
  agree = np.mean(noisy == clean)
  assert abs(agree - 1 / c) < 4 * np.sqrt(0.09 / len(noisy))
  with pytest.raises(ValueError, match="needs 30001 examples"):
    tasks.noisy_label_split(x, y, seed=0, num_train=29001, num_val=300, num_test=500, num_mval=200)


def test_class_split_counts_order_and_labels():
  y = np.repeat(np.arange(12), 20)[np.random.RandomState(0).permutation(240)]
  x = np.arange(240)[:, None]
  split = tasks.class_split(x, y, seed=1, num_classes=5, counts=(3, 1, 4, 2))
  chosen = []
  for name, count in zip(("train", "val", "test", "mval"), (3, 1, 4, 2)):
    np.testing.assert_array_equal(split[f"{name}_y"], np.repeat(np.arange(5), count))
  for new in range(5):
    orig = np.unique(y[split["train_x"][split["train_y"] == new, 0]])
    assert len(orig) == 1
    chosen.append(orig[0])
    in_order = np.flatnonzero(y == orig[0])         # the class's examples in dataset order
    got = np.concatenate([split[f"{s}_x"][split[f"{s}_y"] == new, 0]
                          for s in ("train", "val", "test", "mval")])
    np.testing.assert_array_equal(got, in_order[:10])
  assert len(set(chosen)) == 5
  with pytest.raises(ValueError, match="needs 21"):
    tasks.class_split(x, y, seed=1, num_classes=2, counts=(20, 1))


def test_epoch_indices_are_shuffled_epochs():
  idx = np.asarray(tasks.epoch_indices(jax.random.key(0), 10, 4, 7))   # 28 = 2 epochs + 8
  assert idx.shape == (7, 4) and idx.dtype == np.int32
  flat = idx.reshape(-1)
  np.testing.assert_array_equal(np.sort(flat[:10]), np.arange(10))
  np.testing.assert_array_equal(np.sort(flat[10:20]), np.arange(10))
  assert len(np.unique(flat[20:])) == 8


# ---------------------------------------------------------------------------------------------
# MLP and losses.


def numpy_mlp(params, x, final=False):
  for i, layer in enumerate(params):
    x = x @ np.asarray(layer["w"], np.float64) + np.asarray(layer["b"], np.float64)
    if final or i < len(params) - 1:
      x = np.where(x > 0, x, np.expm1(np.minimum(x, 0)))
  return x


def test_mlp_init_and_forward_against_numpy():
  params = tasks.mlp_init(jax.random.key(0), (784, 256, 10))
  assert [(l["w"].shape, l["b"].shape) for l in params] == [((784, 256), (256,)),
                                                            ((256, 10), (10,))]
  w = np.asarray(params[0]["w"])
  bound = 1 / np.sqrt(784)
  assert np.abs(w).max() <= bound and abs(w.std() - bound / np.sqrt(3)) < 0.01 * bound
  x = np.random.RandomState(0).rand(5, 784).astype(np.float32)
  np.testing.assert_allclose(tasks.mlp_apply(params, x), numpy_mlp(params, x), rtol=1e-4,
                             atol=1e-5)
  np.testing.assert_allclose(tasks.features(params[:1], x), numpy_mlp(params[:1], x, final=True),
                             rtol=1e-4, atol=1e-5)


def test_losses_against_numpy():
  rs = np.random.RandomState(1)
  logits = rs.randn(6, 4).astype(np.float32)
  labels = np.array([0, 3, 1, 1, 2, 3])
  ce = -special.log_softmax(logits.astype(np.float64), axis=1)[np.arange(6), labels]
  np.testing.assert_allclose(tasks.cross_entropy(jnp.asarray(logits), jnp.asarray(labels)), ce,
                             rtol=1e-5)
  np.testing.assert_allclose(tasks.error_rate(logits, labels), 5 / 6, rtol=1e-6)

  params = tasks.mlp_init(jax.random.key(1), (3, 5, 4))
  x, y = rs.rand(9, 3).astype(np.float32), rs.randint(0, 4, 9)
  lam, idx = rs.randn(9).astype(np.float32), np.array([2, 2, 7, 0])
  logp = special.log_softmax(numpy_mlp(params, x[idx]), axis=1)
  want = np.mean(special.expit(lam[idx]) * -logp[np.arange(4), y[idx]])
  np.testing.assert_allclose(tasks.reweight_inner_loss(params, lam, idx, x, y), want, rtol=1e-5)
  logp_all = special.log_softmax(numpy_mlp(params, x), axis=1)
  np.testing.assert_allclose(tasks.classification_loss(params, x, y),
                             np.mean(-logp_all[np.arange(9), y]), rtol=1e-5)
  prior = np.asarray(tasks.reweight_prior(jax.random.key(2), 4000))
  assert prior.min() >= -5 and prior.max() <= 5 and abs(prior.mean()) < 0.3


def central_differences(f, flat, eps=1e-5):
  return np.array([(f(flat.at[i].add(eps)) - f(flat.at[i].add(-eps))) / (2 * eps)
                   for i in range(flat.size)])


def test_reweighting_and_feature_learning_hypergradients_match_finite_differences():
  rs = np.random.RandomState(2)
  with jax.enable_x64(True):
    x, y = jnp.asarray(rs.rand(8, 3)), jnp.asarray(rs.randint(0, 3, 8))
    xv, yv = jnp.asarray(rs.rand(5, 3)), jnp.asarray(rs.randint(0, 3, 5))
    idx = jnp.asarray(rs.randint(0, 8, (3, 4)), jnp.int32)               # K = 3, B = 4

    # Reweighting: lambda = per-example logits, theta = MLP 3-4-3.
    theta0 = tasks.mlp_init(jax.random.key(0), (3, 4, 3), jnp.float64)
    inner = functools.partial(tasks.reweight_inner_loss, x=x, y=y)
    outer = lambda th: tasks.classification_loss(th, xv, yv)
    lam = jnp.asarray(rs.randn(8))
    _, grad = jax.jit(lambda l: ud.hypergradient(inner, outer, l, theta0, idx, 0.8, 0.01))(lam)
    f = jax.jit(lambda l: outer(ud.unroll(inner, l, theta0, idx, 0.8, 0.01)))
    fd = central_differences(f, lam)
    np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=1e-10)
    unseen = np.setdiff1d(np.arange(8), np.asarray(idx))      # never in a batch: zero gradient
    assert np.all(np.asarray(grad)[unseen] == 0) and np.abs(fd).max() > 1e-4

    # Feature learning: lambda = extractor 3 -> 4 (ELU), theta = head 4-3; the outer loss uses
    # lambda directly, which `hypergradient` (outer_loss(theta) only) could not see.
    extractor = tasks.feature_prior(jax.random.key(1), (3, 4), jnp.float64)
    head0 = tasks.mlp_init(jax.random.key(2), (4, 3), jnp.float64)
    inner_fl = functools.partial(tasks.feature_inner_loss, x=x, y=y)
    outer_fl = lambda th, ex: tasks.feature_outer_loss(th, ex, xv, yv)
    _, _, grad_fl = jax.jit(lambda e: ud.solve_and_hypergrad(inner_fl, outer_fl, e, head0, idx,
                                                             0.8))(extractor)
    flat, unravel = ravel_pytree(extractor)
    f_fl = jax.jit(lambda e: outer_fl(ud.unroll(inner_fl, unravel(e), head0, idx, 0.8),
                                      unravel(e)))
    np.testing.assert_allclose(ravel_pytree(grad_fl)[0], central_differences(f_fl, flat),
                               rtol=1e-6, atol=1e-10)


# ---------------------------------------------------------------------------------------------
# Stability meter: a closed-form outer optimisation.

ETA, T = 0.3, 5
TEST_Z = np.linspace(-2.0, 2.0, 7)


def mean_fit(test_z):
  """A run_fn: T GD steps on lambda for mean_i (lambda - v_i)^2 / 2 from lambda_0 ~ N(0, 1),
  returning the absolute losses |lambda_t - z| of the test points at every t, [T, n_test]."""
  def run(val, rng):
    def step(lam, _):
      lam = lam - ETA * (lam - jnp.mean(val))
      return lam, jnp.abs(lam - jnp.asarray(test_z))
    return jax.lax.scan(step, jax.random.normal(rng), None, length=T)[1]
  return run


def closed_form_lambda(val, lam0):
  t = np.arange(1, T + 1)[:, None]
  return (1 - ETA) ** t * lam0 + (1 - (1 - ETA) ** t) * np.mean(val)


def test_meter_is_zero_for_identical_sets_and_matches_closed_form():
  rng, run = jax.random.key(5), mean_fit(TEST_Z)
  val = jnp.asarray(np.random.RandomState(0).randn(20))
  assert np.all(np.asarray(stability.mean_abs_change(run, val, val, rng)) == 0)
  swapped = stability.replace_example(val, 3, jnp.asarray(4.0))
  lam0 = float(jax.random.normal(rng))
  want = np.mean(np.abs(np.abs(closed_form_lambda(val, lam0) - TEST_Z)
                        - np.abs(closed_form_lambda(swapped, lam0) - TEST_Z)), axis=-1)
  for vectorize in (True, False):
    got = stability.mean_abs_change(run, val, swapped, rng, vectorize=vectorize)
    assert got.shape == (T,)
    np.testing.assert_allclose(got, want, rtol=1e-5)
  assert np.all(np.diff(want) > 0)                     # the change grows with T here


def test_stability_estimate_scales_as_one_over_m():
  """On a constant validation set every swap moves mean(v) by p / m; with the test points far
  from every lambda_t the loss change is exactly (1 - (1 - eta)^t) |p| / m, whatever lambda_0."""
  pool = jnp.asarray([1.0, -2.0, 0.5, 3.0])
  decay = 1 - (1 - ETA) ** np.arange(1, T + 1)
  means = {}
  for m in (10, 40):
    with jax.enable_x64(True):          # float32 would lose the ~1e-2 change against losses ~50
      est = stability.stability(jax.jit(mean_fit([50.0, 60.0])), jnp.zeros(m),
                                pool.astype(jnp.float64), jax.random.key(0), len(pool))
    np.testing.assert_allclose(est["per_pair"], np.abs(np.asarray(pool))[:, None] * decay / m,
                               rtol=1e-9)
    assert np.all(np.asarray(est["stderr"]) > 0)
    means[m] = np.asarray(est["mean"])
  np.testing.assert_allclose(means[10] / means[40], 4.0, rtol=1e-9)


# ---------------------------------------------------------------------------------------------
# UD outer trajectory and random search on ridge regression.

RS = np.random.RandomState(7)
N, D, M = 16, 3, 8
X, XV, XT = RS.randn(N, D), RS.randn(M, D), RS.randn(20, D)
W = RS.randn(D)
Y, YV, YT = X @ W + 0.5 * RS.randn(N), XV @ W + 0.5 * RS.randn(M), XT @ W + 0.5 * RS.randn(20)
K_IN, LR_IN = 60, 0.3


def numpy_ridge_gd(lam, xv, yv):
  """theta_K and dL_val/dlambda for K full-batch GD steps from 0 (forward sensitivities)."""
  pen = np.exp(lam)
  theta, jac = np.zeros(D), np.zeros((D, D))
  hess = X.T @ X / N + np.diag(pen)
  for _ in range(K_IN):
    jac = jac - LR_IN * (hess @ jac + np.diag(pen * theta))
    theta = theta - LR_IN * (X.T @ (X @ theta - Y) / N + pen * theta)
  return theta, jac.T @ (2 * xv.T @ (xv @ theta - yv) / len(yv))


def ridge_inner(theta, lam, idx):
  return implicit.ridge_inner_loss(theta, lam, jnp.asarray(X, theta.dtype)[idx],
                                   jnp.asarray(Y, theta.dtype)[idx])


def ridge_val(theta, lam, val):
  return implicit.validation_mse(theta, val["x"], val["y"])


def test_ud_trajectory_is_outer_gd_on_the_exact_unrolled_gradient():
  """Full batches (a permutation of all examples) make UD deterministic: lambda follows outer SGD
  with coupled decay on numpy's exact K-step gradient; the meter is 0 on identical sets."""
  lr_out, wd_out, num_outer = 0.5, 0.05, 4
  with jax.enable_x64(True):
    val = {"x": jnp.asarray(XV), "y": jnp.asarray(YV)}
    eval_fn = lambda th, lam: {"test_loss": implicit.validation_mse(th, XT, YT),
                               "test_losses": (XT @ th - YT) ** 2}
    run = jax.jit(lambda lam0, val, rng: stability.ud_trajectory(
        ridge_inner, ridge_val, eval_fn, lam0, jnp.zeros(D), val, rng, num_outer=num_outer,
        num_inner=K_IN, num_train=N, batch_size=N, val_batch_size=M, lr=LR_IN,
        optimizer=ud.outer_optimizer(lr_out, wd_out)))
    lam0 = jnp.zeros(D)
    lam_t, rec = run(lam0, val, jax.random.key(0))
    lam = np.zeros(D)
    for t in range(num_outer):
      theta, grad = numpy_ridge_gd(lam, XV, YV)
      np.testing.assert_allclose(rec["val_batch_loss"][t], np.mean((XV @ theta - YV) ** 2),
                                 rtol=1e-10)
      np.testing.assert_allclose(rec["test_loss"][t], np.mean((XT @ theta - YT) ** 2), rtol=1e-10)
      lam = lam - lr_out * (grad + wd_out * lam)
    np.testing.assert_allclose(lam_t, lam, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(rec["gap"], rec["test_loss"] - rec["val_batch_loss"], rtol=1e-12)
    assert np.abs(lam).max() > 1e-2

    per_point = lambda v, rng: run(lam0, v, rng)[1]["test_losses"]
    same = stability.mean_abs_change(per_point, val, val, jax.random.key(1), vectorize=False)
    swapped = stability.replace_example(val, 2, {"x": jnp.asarray(XT[0]), "y": jnp.asarray(YT[0])})
    moved = stability.mean_abs_change(per_point, val, swapped, jax.random.key(1), vectorize=False)
  assert same.shape == (num_outer,) and np.all(np.asarray(same) == 0)
  assert np.all(np.asarray(moved)[1:] > 1e-6)       # lambda_0 is shared; later steps differ


def test_random_search_keeps_the_best_full_validation_loss():
  num_trials = 12
  test_loss = lambda th: jnp.mean((jnp.asarray(XT, th.dtype) @ th - YT) ** 2)
  sample = lambda k: jax.random.uniform(k, (D,), minval=-4.0, maxval=1.5)
  train = lambda lam, k: ud.unroll(ridge_inner, lam, jnp.zeros(D), jnp.arange(N)[None].repeat(
      K_IN, 0), LR_IN)
  # Candidates with lambda_0 > 0 "diverge" (NaN): they must never be selected.
  val_fn = lambda th, lam: jnp.where(lam[0] > 0, jnp.nan, implicit.validation_mse(th, XV, YV))
  eval_fn = lambda th, lam: {"test_loss": test_loss(th), "lam": lam}
  (best_lam, best_theta), rec = jax.jit(lambda rng: stability.random_search(
      sample, train, val_fn, eval_fn, rng, num_trials))(jax.random.key(3))
  trial = np.asarray(rec["trial_val_loss"], np.float64)
  # With this key trial 0 is NaN (nothing selected yet: the record is NaN) and so is a later one.
  assert np.isnan(trial[0]) and np.isnan(trial[2:]).any()
  np.testing.assert_allclose(rec["val_loss"], np.fmin.accumulate(trial), rtol=1e-6)
  assert len(np.unique(np.asarray(rec["best_index"]))) > 2        # it improved more than once
  for t in range(1, num_trials):
    # Each step's best candidate, retrained by numpy from its recorded lambda.
    theta, _ = numpy_ridge_gd(np.asarray(rec["lam"][t], np.float64), XV, YV)
    np.testing.assert_allclose(rec["val_loss"][t], np.mean((XV @ theta - YV) ** 2), rtol=1e-4)
    np.testing.assert_allclose(rec["test_loss"][t], np.mean((XT @ theta - YT) ** 2), rtol=1e-4)
  np.testing.assert_allclose(best_lam, rec["lam"][-1])
  retrained = numpy_ridge_gd(np.asarray(best_lam, np.float64), XV, YV)[0]
  np.testing.assert_allclose(best_theta, retrained, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(rec["gap"], rec["test_loss"] - rec["val_loss"], rtol=1e-6)
