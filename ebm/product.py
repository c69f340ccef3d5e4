"""Cascaded boosting combined with multiplicative boosting: a product of the stack's models.

The components are the boosted models of the kept stack cut at each stage, p^(k)(x) = the cascade
of stages 1..k (ebm.cascade; p^(1) is the first RBM alone), all exactly evaluable (RBM stacks whose
likelihood ebm.cascade enumerates). Multiplicative boosting (Grover & Ermon 2018) combines models
as a normalised product with exponents alpha_k,

  p_alpha(x) = prod_k p^(k)(x)^{alpha_k} / Z(alpha),   log p_alpha(x) = alpha . L(x) - log Z(alpha),

L(x) = (log p^(1)(x), ..., log p^(K)(x)). Z(alpha) is estimated by importance sampling with the
defensive mixture r(x) = (1/K) sum_k p^(k)(x) as proposal (exact ancestral draws, exact density):

  Z(alpha) ~= (1/S) sum_s exp(alpha . L(x_s) - log r(x_s)),   x_s ~ r,

with the delta-method standard error of log Z, se = std(w) / (sqrt(S) mean(w)), and the effective
sample size (sum w)^2 / sum w^2. The exponents are learned by maximum likelihood on the training
set through the shared loop (`common.train.fit`, stage `product` under the workdir): the loss
-mean_batch alpha . L(x) + log Z_IS(alpha) over a fixed pool of product.num_pool draws of r, whose
gradient is the self-normalised estimate of E_data L - E_{p_alpha} L. The reported log Z uses a
fresh pool of product.num_eval draws (not the one the exponents were fitted to) and, where the
visible space has at most product.max_exact_visible binary units, the exact log Z by enumeration
of all 2^d inputs, with the exact test log-likelihood at the learned alpha and at alpha = 1.

Exponents are unconstrained reals (a finite binary space keeps every product normalisable).
Not done here: Grover & Ermon's reweighting of the training data for each new component (the
components are the cascade's own cuts, trained by ebm.boost).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from scipy.special import logsumexp
from absl import logging

from common import checks, optim, train as train_lib
from common.errors import ConfigError
from ebm import cascade, grbm


def validate(config) -> None:
  """config.product, checked when product.enabled."""
  if tuple(set(config.boost.stack)) != ("rbm",):
    raise ConfigError(f"boost.stack={tuple(config.boost.stack)!r} is invalid with "
                      "product.enabled: the product's components need exact likelihoods, so every "
                      "stage must be an 'rbm'")
  for field in ("product.num_steps", "product.num_pool", "product.num_eval"):
    checks.integer(config, field)
  checks.in_range(config, "product.max_exact_visible", 0, 24)
  checks.in_range(config, "product.init_alpha", -10.0, 10.0)
  optim.validate(config, "product.optim")


def component_log_liks(fitted: Sequence[Any], x: np.ndarray, batch_size: int) -> np.ndarray:
  """L(x) [N, K]: log p^(k)(x) of the stack cut at k = 1..K, by ebm.cascade's enumeration."""
  cols = []
  for k in range(1, len(fitted) + 1):
    vals = [np.asarray(cascade.exact_log_likelihood(fitted[:k], jnp.asarray(x[i:i + batch_size])),
                       np.float64) for i in range(0, len(x), batch_size)]
    cols.append(np.concatenate(vals))
  return np.stack(cols, axis=1)


def sample_cut(fitted: Sequence[Any], key: jax.Array, n: int) -> jax.Array:
  """n exact binary draws of x from the cascade `fitted` (top marginal, then each p_k(. | h))."""
  h = fitted[-1].sample(jax.random.fold_in(key, len(fitted)), n)
  for k in range(len(fitted) - 2, -1, -1):
    h = fitted[k].sample_visible(h, jax.random.fold_in(key, k))
  return h


def proposal_pool(fitted: Sequence[Any], key: jax.Array, n: int, batch_size: int
                  ) -> tuple[np.ndarray, np.ndarray]:
  """n i.i.d. draws of the mixture r: (L(x_s) [n, K], log r(x_s) [n])."""
  num = len(fitted)
  which = np.asarray(jax.random.randint(jax.random.fold_in(key, 0), (n,), 0, num))
  x = np.zeros((n, fitted[0].p.W.shape[0]), np.float32)
  for k in range(num):
    rows = np.flatnonzero(which == k)
    if len(rows):
      x[rows] = np.asarray(sample_cut(fitted[:k + 1], jax.random.fold_in(key, k + 1), len(rows)))
  logs = component_log_liks(fitted, x, batch_size)
  return logs, logsumexp(logs, axis=1) - math.log(num)


def is_log_z(alpha: np.ndarray, pool_logs: np.ndarray, pool_log_r: np.ndarray) -> dict[str, float]:
  """The importance-sampling estimate of log Z(alpha), its standard error and the ESS."""
  log_w = pool_logs @ np.asarray(alpha, np.float64) - pool_log_r
  w = np.exp(log_w - log_w.max())
  s = len(w)
  mean = w.mean()
  return {"log_z": float(math.log(mean) + log_w.max()),
          "stderr": float(w.std(ddof=1) / (math.sqrt(s) * mean)),
          "ess": float(w.sum() ** 2 / np.sum(w ** 2)), "num_samples": int(s)}


def exact_log_z(alpha: np.ndarray, all_logs: np.ndarray) -> float:
  """log Z(alpha) = logsumexp_x alpha . L(x) over every input, all_logs [2^d, K]."""
  return float(logsumexp(all_logs @ np.asarray(alpha, np.float64)))


def program(train_logs: np.ndarray, pool_logs: np.ndarray, pool_log_r: np.ndarray, cfg,
            num_steps: int) -> train_lib.Program:
  """The exponents' maximum-likelihood program on index batches of the training set."""
  tx, k = optim.make_optimizer(cfg.optim, num_steps), train_logs.shape[1]
  consts = {"data": jnp.asarray(train_logs, jnp.float32),
            "pool": jnp.asarray(pool_logs, jnp.float32),
            "log_r": jnp.asarray(pool_log_r, jnp.float32)}

  def init(key):
    return {"alpha": optim.ParamSet.create(jnp.full((k,), float(cfg.init_alpha)), tx)}

  def step(state, idx, key, consts):
    def loss(alpha):
      log_z = jax.nn.logsumexp(consts["pool"] @ alpha - consts["log_r"]) - math.log(
          consts["pool"].shape[0])
      return log_z - jnp.mean(consts["data"][idx] @ alpha)

    value, grad = jax.value_and_grad(loss)(state["alpha"].params)
    return ({"alpha": state["alpha"].apply(grad, tx)},
            {"loss": value, "grad_norm": jnp.linalg.norm(grad)})

  return train_lib.Program(init, step, consts=consts)


def _exact(fitted: Sequence[Any], alpha: np.ndarray, test_logs: np.ndarray, d: int
           ) -> dict[str, Any]:
  """The exact log Z and test log-likelihoods (learned alpha, alpha = 1) by enumerating the 2^d
  inputs, and each component's log Z (0 for a normalised cut: a check of the enumeration)."""
  all_logs = component_log_liks(fitted, np.asarray(grbm.hidden_states(0, 2 ** d, d)), 4096)
  ones = np.ones_like(alpha)
  lz, lz1 = exact_log_z(alpha, all_logs), exact_log_z(ones, all_logs)
  return {"log_z_exact": lz, "log_z_exact_alpha1": lz1,
          "component_log_z_exact": [exact_log_z(e, all_logs) for e in np.eye(len(alpha))],
          "test_log_likelihood_exact": float(np.mean(test_logs @ alpha) - lz),
          "test_log_likelihood_exact_alpha1": float(np.mean(test_logs @ ones) - lz1)}


def run(stack, fitted: list, get_states) -> dict[str, Any]:
  """Learns the exponents of the product of the kept stack's cuts; results.json's `product`."""
  from ebm import boost                                        # the runner imports this module
  cfg, pc = stack.config, stack.config.product
  if not cascade.exact_possible(fitted, cfg.eval):
    raise ConfigError("product.enabled=True is invalid for this stack: the cascade's exact "
                      "likelihood cannot be enumerated (eval.max_exact, eval.max_exact_joint)")
  bs, key = int(cfg.eval.batch_size), jax.random.fold_in(stack.key, 141421)
  train_logs = component_log_liks(fitted, stack.data.train, bs)
  test_logs = component_log_liks(fitted, stack.data.test, bs)
  pool = proposal_pool(fitted, jax.random.fold_in(key, 1), int(pc.num_pool), bs)
  steps, batch = int(pc.num_steps), int(cfg.data.batch_size)
  stage = train_lib.Stage(
      "product", lambda done: program(train_logs, *pool, pc, steps),
      lambda start, i: boost.index_stream(len(train_logs), batch, cfg.seed + i, 1000, start),
      train={"num_steps": steps})
  states = get_states([stack.stage(j) for j in range(len(fitted))] + [stage])
  alpha = np.asarray(jax.device_get(states["product"]["alpha"].params), np.float64)
  ones = np.ones_like(alpha)
  fresh = proposal_pool(fitted, jax.random.fold_in(key, 2), int(pc.num_eval), bs)
  est, est_ones = is_log_z(alpha, *fresh), is_log_z(ones, *fresh)
  out = {"alpha": alpha.tolist(), "components": [f"stages 1..{k}" for k in
                                                 range(1, len(fitted) + 1)],
         "log_z_is": est["log_z"], "log_z_is_stderr": est["stderr"], "ess": est["ess"],
         "num_eval": est["num_samples"], "log_z_is_alpha1": est_ones["log_z"],
         "log_z_is_alpha1_stderr": est_ones["stderr"],
         "test_log_likelihood_is": float(np.mean(test_logs @ alpha) - est["log_z"]),
         "component_test_log_likelihood": test_logs.mean(0).tolist(),
         "log_z_exact": None, "log_z_exact_alpha1": None, "test_log_likelihood_exact": None,
         "test_log_likelihood_exact_alpha1": None}
  d = stack.data.train.shape[1]
  if d <= int(pc.max_exact_visible):
    out.update(_exact(fitted, alpha, test_logs, d))
  logging.info("product of %d cut(s), alpha %s: log Z = %.4f +- %.4f by importance sampling "
               "(ESS %.0f of %d), exact %s; test log-likelihood %.4f (exact %s, alpha = 1: %s)",
               len(alpha), np.round(alpha, 4).tolist(), est["log_z"], est["stderr"], est["ess"],
               est["num_samples"], out["log_z_exact"], out["test_log_likelihood_is"],
               out["test_log_likelihood_exact"], out["test_log_likelihood_exact_alpha1"])
  return out
