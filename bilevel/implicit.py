"""Implicit differentiation (IFT) reference: ridge regression with per-feature penalties.

Inner problem (bilevel.md, "Optional reference"), lambda in R^d are log-penalties:

  theta*(lambda) = argmin_theta ||X theta - y||^2 / (2n) + 0.5 sum_j (exp(lambda_j) + wd) theta_j^2,

where wd is the inner weight decay (gradient descent with coupled decay wd on the first two terms
has exactly this fixed point). The optimum solves H theta* = X^T y / n with
H = X^T X / n + diag(exp(lambda) + wd). Outer loss: validation MSE
L(theta) = ||X_v theta - y_v||^2 / n_v. Differentiating H theta* = b in lambda_j gives
d theta*/d lambda_j = -exp(lambda_j) theta*_j H^{-1} e_j, hence

  dL/d lambda_j = -exp(lambda_j) theta*_j (H^{-1} grad L(theta*))_j,

two linear solves with one Cholesky factor. UD with K inner GD steps converges to this as K grows.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax.scipy.linalg import cho_factor, cho_solve


def ridge_inner_loss(theta: jax.Array, log_penalty: jax.Array, x: jax.Array, y: jax.Array
                     ) -> jax.Array:
  """||x theta - y||^2 / (2n) + 0.5 sum_j exp(lambda_j) theta_j^2; x [n, d], y [n], theta [d]."""
  resid = x @ theta - y
  return 0.5 * jnp.mean(resid ** 2) + 0.5 * jnp.sum(jnp.exp(log_penalty) * theta ** 2)


def validation_mse(theta: jax.Array, x_val: jax.Array, y_val: jax.Array) -> jax.Array:
  """||x_val theta - y_val||^2 / n_val; x_val [m, d], y_val [m]."""
  return jnp.mean((x_val @ theta - y_val) ** 2)


def _hessian(x: jax.Array, log_penalty: jax.Array, weight_decay: Any) -> jax.Array:
  n = x.shape[0]
  diag = jnp.exp(log_penalty) + jnp.asarray(weight_decay, x.dtype)
  return x.T @ x / n + jnp.diag(diag)


def ridge_solution(x: jax.Array, y: jax.Array, log_penalty: jax.Array,
                   weight_decay: Any = 0.0) -> jax.Array:
  """theta*(lambda) [d] of the inner problem (closed form, Cholesky solve)."""
  factor = cho_factor(_hessian(x, log_penalty, weight_decay))
  return cho_solve(factor, x.T @ y / x.shape[0])


def ridge_hypergradient(x: jax.Array, y: jax.Array, x_val: jax.Array, y_val: jax.Array,
                        log_penalty: jax.Array, weight_decay: Any = 0.0
                        ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """The exact hypergradient of validation MSE at the inner optimum (implicit function theorem).

  Args:
    x: [n, d] training inputs; y: [n] targets.
    x_val: [m, d] validation inputs; y_val: [m] targets.
    log_penalty: [d] lambda, the per-feature log ridge penalties.
    weight_decay: inner weight decay wd added to every penalty.

  Returns:
    (L(theta*), dL/dlambda [d], theta* [d]).
  """
  factor = cho_factor(_hessian(x, log_penalty, weight_decay))
  theta = cho_solve(factor, x.T @ y / x.shape[0])
  value, g = jax.value_and_grad(validation_mse)(theta, x_val, y_val)
  adjoint = cho_solve(factor, g)              # H is symmetric, so H^{-T} g = H^{-1} g
  return value, -jnp.exp(log_penalty) * theta * adjoint, theta
