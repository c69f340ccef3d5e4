"""UD hypergradients (bilevel/ud.py) and the implicit reference (bilevel/implicit.py) against truth.

Truths, all independent of the code under test: central finite differences of the unrolled
objective in float64; for ridge regression, the exact forward-mode sensitivity recursion of K
minibatch GD steps written out in numpy (d theta_{k+1}/d lambda from d theta_k/d lambda), numpy's
closed-form ridge optimum and its finite differences, which the UD hypergradient must approach at
large K; hand-written SGD updates for the outer optimiser; XLA's own buffer sizes for memory.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from bilevel import implicit, tasks, ud
from common.errors import ConfigError

RS = np.random.RandomState(0)
N, D, M = 24, 4, 10
X = RS.randn(N, D)
Y = X @ RS.randn(D) + 0.3 * RS.randn(N)
XV = RS.randn(M, D)
YV = XV @ RS.randn(D) * 0.5
LOG_PEN = np.log(np.array([0.1, 0.5, 1.0, 0.05]))


def ridge_minibatch_loss(theta, log_penalty, idx):
  return implicit.ridge_inner_loss(theta, log_penalty, jnp.asarray(X, theta.dtype)[idx],
                                   jnp.asarray(Y, theta.dtype)[idx])


def ridge_outer(theta):
  return implicit.validation_mse(theta, jnp.asarray(XV, theta.dtype), jnp.asarray(YV, theta.dtype))


def numpy_ud_ridge(idx, lr, wd):
  """theta_K and d L_val(theta_K) / d lambda by the forward sensitivity recursion, float64 numpy."""
  pen = np.exp(LOG_PEN)
  theta, jac = np.zeros(D), np.zeros((D, D))      # jac[i, j] = d theta_i / d lambda_j
  for b in idx:
    xb, yb = X[b], Y[b]
    grad = xb.T @ (xb @ theta - yb) / len(b) + pen * theta
    hess = xb.T @ xb / len(b) + np.diag(pen)
    jac = (1 - lr * wd) * jac - lr * (hess @ jac + np.diag(pen * theta))
    theta = (1 - lr * wd) * theta - lr * grad
  g_val = 2 * XV.T @ (XV @ theta - YV) / M
  return theta, jac.T @ g_val


# ---------------------------------------------------------------------------------------------
# A tiny nonlinear problem with pytree theta and hparams, integer batch leaves.

C = 3
XC = RS.randn(8, 2)
YC = RS.randint(0, C, 8)
XCV = RS.randn(5, 2)
YCV = RS.randint(0, C, 5)
K_TINY = 4
BATCHES = {"idx": RS.randint(0, 8, (K_TINY, 3)).astype(np.int32),
           "shift": RS.randn(K_TINY, 2)}


def tiny_inner(theta, hparams, batch):
  dtype = theta["w"].dtype
  x = jnp.asarray(XC, dtype)[batch["idx"]] + batch["shift"][None].astype(dtype)
  logits = jnp.tanh(x @ theta["w"] + theta["b"])
  weights = jax.nn.sigmoid(hparams["logits"][batch["idx"]])
  ce = tasks.cross_entropy(logits * 3.0, jnp.asarray(YC)[batch["idx"]])
  return jnp.mean(weights * ce) + 0.5 * jnp.exp(hparams["log_decay"]) * jnp.sum(theta["w"] ** 2)


def tiny_outer(theta):
  logits = jnp.tanh(jnp.asarray(XCV, theta["w"].dtype) @ theta["w"] + theta["b"])
  return jnp.mean(tasks.cross_entropy(logits * 3.0, jnp.asarray(YCV)))


def tiny_inputs(dtype):
  theta0 = {"w": jnp.asarray(np.linspace(-1, 1, 2 * C).reshape(2, C), dtype),
            "b": jnp.asarray([0.1, -0.2, 0.3], dtype)}
  hparams = {"logits": jnp.asarray(np.linspace(-1, 1, 8), dtype),
             "log_decay": jnp.asarray(-1.0, dtype)}
  batches = {"idx": jnp.asarray(BATCHES["idx"]), "shift": jnp.asarray(BATCHES["shift"], dtype)}
  return theta0, hparams, batches


def test_hypergradient_matches_central_differences_float64():
  with jax.enable_x64(True):
    theta0, hparams, batches = tiny_inputs(jnp.float64)
    flat, unravel = ravel_pytree(hparams)

    @jax.jit
    def objective(f):
      return tiny_outer(ud.unroll(tiny_inner, unravel(f), theta0, batches, 0.7, 0.2))

    eps = 1e-5
    fd = np.array([(objective(flat.at[i].add(eps)) - objective(flat.at[i].add(-eps))) / (2 * eps)
                   for i in range(flat.size)])
    for remat in ud.REMAT:
      value, grad = jax.jit(lambda h, r=remat: ud.hypergradient(
          tiny_inner, tiny_outer, h, theta0, batches, 0.7, 0.2, remat=r))(hparams)
      assert grad["logits"].shape == (8,) and grad["log_decay"].shape == ()
      np.testing.assert_allclose(value, objective(flat), rtol=1e-12)
      np.testing.assert_allclose(ravel_pytree(grad)[0], fd, rtol=1e-6, atol=1e-9)
    assert np.abs(fd).max() > 1e-3       # the check has something to detect


def test_ridge_minibatch_ud_matches_numpy_sensitivity_recursion():
  idx = np.random.RandomState(2).randint(0, N, (30, 6))
  theta_np, grad_np = numpy_ud_ridge(idx, lr=0.2, wd=0.05)
  with jax.enable_x64(True):
    args = (jnp.asarray(LOG_PEN), jnp.zeros(D), jnp.asarray(idx, jnp.int32), 0.2, 0.05)
    theta_k = ud.unroll(ridge_minibatch_loss, *args)
    value, grad = ud.hypergradient(ridge_minibatch_loss, ridge_outer, *args)
  np.testing.assert_allclose(theta_k, theta_np, rtol=1e-12)
  np.testing.assert_allclose(value, np.mean((XV @ theta_np - YV) ** 2), rtol=1e-12)
  np.testing.assert_allclose(grad, grad_np, rtol=1e-10, atol=1e-14)


def test_ud_approaches_implicit_differentiation_at_large_k():
  wd = 0.1
  full = lambda th, lam, _: implicit.ridge_inner_loss(th, lam, jnp.asarray(X), jnp.asarray(Y))
  with jax.enable_x64(True):
    lam = jnp.asarray(LOG_PEN)
    value_ift, grad_ift, theta_star = implicit.ridge_hypergradient(X, Y, XV, YV, lam, wd)
    ud_grad = jax.jit(lambda k: ud.hypergradient(full, ridge_outer, lam, jnp.zeros(D), k, 0.4, wd))
    value_big, grad_big = ud_grad(jnp.arange(1500))
    _, grad_small = ud_grad(jnp.arange(5))
  # Independent truth for the IFT code: numpy's closed-form optimum and its finite differences.
  def closed_form(lam_np):
    theta = np.linalg.solve(X.T @ X / N + np.diag(np.exp(lam_np) + wd), X.T @ Y / N)
    return theta, np.mean((XV @ theta - YV) ** 2)
  eps = 1e-6
  fd = [(closed_form(LOG_PEN + eps * e)[1] - closed_form(LOG_PEN - eps * e)[1]) / (2 * eps)
        for e in np.eye(D)]
  np.testing.assert_allclose(theta_star, closed_form(LOG_PEN)[0], rtol=1e-12)
  np.testing.assert_allclose(grad_ift, fd, rtol=1e-6, atol=1e-8)   # FD rounding ~1e-10
  np.testing.assert_allclose(value_big, value_ift, rtol=1e-10)
  np.testing.assert_allclose(grad_big, grad_ift, rtol=1e-9, atol=1e-12)
  assert np.abs(np.asarray(grad_small) - np.asarray(grad_ift)).max() > 1e-2   # K = 5 is far off


def test_dtype_contract_float32_never_promoted_and_float64_works():
  @jax.jit      # lr and wd are traced: a Python float is weakly typed, np.float64 is not
  def both(theta0, hparams, batches, lr, wd):
    return (ud.hypergradient(tiny_inner, tiny_outer, hparams, theta0, batches, lr, wd),
            ud.unroll(tiny_inner, hparams, theta0, batches, lr, wd))

  def run(dtype, lr, wd):
    return jax.tree.leaves(both(*tiny_inputs(dtype), lr, wd))

  assert {x.dtype for x in run(jnp.float32, 0.7, 0.2)} == {jnp.dtype("float32")}
  with jax.enable_x64(True):
    # float64 scalars (a numpy float64, a float64 0-d array) must not promote float32 theta.
    out32 = run(jnp.float32, np.float64(0.7), jnp.asarray(0.2, jnp.float64))
    out64 = run(jnp.float64, 0.7, 0.2)
  assert {x.dtype for x in out32} == {jnp.dtype("float32")}
  assert {x.dtype for x in out64} == {jnp.dtype("float64")}
  np.testing.assert_allclose(out32[1], out64[1], rtol=1e-4, atol=1e-6)


def test_jit_and_vmap_over_seeds_match_single_runs():
  _, hparams, batches = tiny_inputs(jnp.float32)
  seeds = jnp.asarray(np.random.RandomState(1).randn(3, 2, C), jnp.float32)
  theta0s = {"w": seeds, "b": jnp.zeros((3, C), jnp.float32)}
  lrs = jnp.asarray([0.3, 0.5, 0.7], jnp.float32)     # lr as a traced 0-d array per seed

  def one(theta0, lr):
    return ud.hypergradient(tiny_inner, tiny_outer, hparams, theta0, batches, lr, 0.1)

  values, grads = jax.jit(jax.vmap(one))(theta0s, lrs)
  single = jax.jit(one)
  for s in range(3):
    v, g = single(jax.tree.map(lambda a: a[s], theta0s), float(lrs[s]))
    np.testing.assert_allclose(values[s], v, rtol=1e-5)
    np.testing.assert_allclose(grads["logits"][s], g["logits"], rtol=1e-4, atol=1e-6)
  assert np.ptp(np.asarray(values)) > 1e-3             # the seeds really differ


def test_input_errors_are_clear():
  theta0, hparams, batches = tiny_inputs(jnp.float32)
  with pytest.raises(ValueError, match="no array leaves"):
    ud.unroll(tiny_inner, hparams, theta0, {}, 0.1)
  with pytest.raises(ValueError, match="common leading axis"):
    ud.unroll(tiny_inner, hparams, theta0, {"idx": batches["idx"], "shift": batches["shift"][:2]},
              0.1)
  with pytest.raises(TypeError, match="floating point"):
    ud.unroll(tiny_inner, hparams, {"w": jnp.zeros((2, C), jnp.int32), "b": theta0["b"]},
              batches, 0.1)
  with pytest.raises(ConfigError, match="remat=.*valid names: dots, none, sqrt, step"):
    ud.unroll(tiny_inner, hparams, theta0, batches, 0.1, remat="full")


def test_segment_length():
  assert [ud.segment_length(k) for k in (1, 2, 7, 12, 64, 100, 512)] == [1, 2, 1, 4, 8, 10, 16]


def test_outer_optimizer_is_coupled_weight_decay_sgd_with_momentum():
  lr, wd, mu = 0.5, 0.1, 0.9
  p0, g1, g2 = np.array([1.0, -2.0]), np.array([0.3, 0.4]), np.array([-0.1, 0.2])
  v1 = g1 + wd * p0                          # torch.optim.SGD: d_p = g + wd p; buf = mu buf + d_p
  p1 = p0 - lr * v1
  v2 = mu * v1 + g2 + wd * p1
  p2 = p1 - lr * v2
  opt = ud.outer_optimizer(lr, wd, mu)
  p, state = jnp.asarray(p0, jnp.float32), opt.init(jnp.asarray(p0, jnp.float32))
  for g in (g1, g2):
    updates, state = opt.update(jnp.asarray(g, jnp.float32), state, p)
    p = p + updates
  np.testing.assert_allclose(p, p2, rtol=1e-6)


def test_remat_peak_memory_at_k512():
  """XLA's temp buffers: without remat they grow as K x activations; with "sqrt" nearly flat."""
  b, d, h = 256, 32, 64
  x = jnp.asarray(np.random.RandomState(3).randn(b, d), jnp.float32)
  y = jnp.zeros(b, jnp.int32)
  theta0 = tasks.mlp_init(jax.random.key(0), (d, h, 10))
  inner = lambda th, lam, idx: tasks.reweight_inner_loss(th, lam, idx, x, y)
  outer = lambda th: tasks.classification_loss(th, x[:16], y[:16])

  def temp_mb(k, remat):
    fn = jax.jit(lambda lam, idx: ud.hypergradient(inner, outer, lam, theta0, idx, 0.1,
                                                   remat=remat))
    lowered = fn.lower(jnp.zeros(b), jnp.zeros((k, b), jnp.int32))
    return lowered.compile().memory_analysis().temp_size_in_bytes / 1e6

  none512, step512 = temp_mb(512, "none"), temp_mb(512, "step")
  sqrt64, sqrt512 = temp_mb(64, "sqrt"), temp_mb(512, "sqrt")
  theta_mb = sum(a.size for a in jax.tree.leaves(theta0)) * 4 / 1e6
  assert none512 > 10 * step512                        # per-step activations are not stored
  assert step512 > 0.9 * 512 * theta_mb                # "step" keeps one theta per step ...
  assert sqrt512 < 2 * sqrt64                          # ... "sqrt" only ~2 sqrt(K) of them
