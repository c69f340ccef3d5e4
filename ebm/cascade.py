"""The boosted model of a stack of meta-models: its decomposable bound, exact likelihood, sampling.

Stages m_1 .. m_n (ebm.meta fitted models), m_k modelling h_{k-1} (h_0 = x) with latents h_k. The
boosted model replaces each stage's prior by the stage above (../shared/papers/ebm.md):

  p(x) = sum_{h_1..h_{n-1}} p_1(x | h_1) p_2(h_1 | h_2) ... p_{n-1}(h_{n-2} | h_{n-1}) p_n(h_{n-1}),

and with q(h_1..h_{n-1} | x) = prod_k q_k(h_k | h_{k-1}) the decomposable lower bound is

  log p(x) >= ELBO_1(x) + sum_{k>=2} Delta_k(x),
  Delta_k(x) = E_{q(h_{k-1} | x)} [ELBO_k(h_{k-1}) - log p_{k-1}(h_{k-1})]          (the increment).

A stage helps (the bound of the stack with it beats the one without) exactly when its mean
increment is positive: the stopping rule `accept`. For RBMs, q_k is the exact factorial posterior
over BINARY h_k and ELBO_k(h) = log p_k(h) (log Z known), so Delta_2 = E_{q_1(h_1 | x)}[log p_2(h_1)
- log p_1(h_1)] is a sum over the 2^{n_1} states of h_1 weighted by a product of Bernoullis:
`bound_terms` enumerates it when n_1 <= eval.max_exact, and estimates the other increments by
Monte Carlo over eval.num_samples draws of the chain h_1, h_2, ... ~ q (standard errors reported).
`exact_log_likelihood` sums the boosted model out by messages from the top,
  log m_{n-1}(h) = log p_n(h),  log m_{k-1}(h) = logsumexp_{h'} [log p_k(h | h') + log m_k(h')],
  log p(x) = logsumexp_{h_1} [log p_1(x | h_1) + log m_1(h_1)],
which needs every stage to be an RBM with its log Z enumerated, 2^{n_1} states per example and
2^{n_{k-1} + n_k} per message.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ebm import grbm, meta
from ebm.grbm import BinaryRBMParams

CHUNK = 2 ** 14     # states per enumeration chunk: memory O(CHUNK * (batch + units))


def _num_chunks(m: int) -> tuple[int, int]:
  chunk = min(CHUNK, 2 ** m)
  return chunk, 2 ** m // chunk


@jax.jit
def _factorial_expectation_rbm(p_low: BinaryRBMParams, log_z_low, p_up: BinaryRBMParams,
                               log_z_up, logits: jax.Array) -> jax.Array:
  """sum_h q(h) [log p_up(h) - log p_low^prior(h)] for factorial q = Bernoulli(sigmoid(logits)),
  logits [B, n]; p_low's hidden units and p_up's visible units are h. Returns [B]."""
  n = logits.shape[-1]
  chunk, count = _num_chunks(n)
  norm = jnp.sum(jax.nn.softplus(logits), axis=-1)                                   # [B]

  def one(k):
    h = grbm.hidden_states(k * chunk, chunk, n, logits.dtype)                        # [S, n]
    g = meta.rbm_log_prob(p_up, h, log_z_up) - meta.rbm_log_prior(p_low, h, log_z_low)
    log_q = logits @ h.T - norm[:, None]                                             # [B, S]
    return jnp.exp(log_q) @ g

  return jnp.sum(jax.lax.map(one, jnp.arange(count, dtype=jnp.int32)), axis=0)


@jax.jit
def _visible_log_lik(p: BinaryRBMParams, log_m: jax.Array, v: jax.Array) -> jax.Array:
  """logsumexp_h [log p(v | h) + log_m(h)] over the 2^m hidden states of p, v [B, d] -> [B]."""
  m = p.c.shape[-1]
  chunk, count = _num_chunks(m)

  def one(k):
    h = grbm.hidden_states(k * chunk, chunk, m, v.dtype)
    a = p.b + h @ p.W.T                                                              # [S, d]
    lp = v @ a.T - jnp.sum(jax.nn.softplus(a), axis=-1)                              # [B, S]
    return jax.nn.logsumexp(lp + jax.lax.dynamic_slice_in_dim(log_m, k * chunk, chunk), -1)

  return jax.nn.logsumexp(jax.lax.map(one, jnp.arange(count, dtype=jnp.int32)), axis=0)


_rbm_log_prob = jax.jit(meta.rbm_log_prob)


def _all_states_map(fn, n: int) -> jax.Array:
  """fn(states [S, n]) -> [S] over the 2^n states in index order (grbm.hidden_states), [2^n]."""
  chunk, count = _num_chunks(n)
  return jnp.concatenate([fn(grbm.hidden_states(k * chunk, chunk, n)) for k in range(count)])


def exact_possible(fitted: Sequence[Any], eval_cfg) -> bool:
  """Whether `exact_log_likelihood` can enumerate this stack (see the module docstring)."""
  if not all(f.kind == "rbm" and f.exact for f in fitted):
    return False
  sizes = [f.p.W.shape[1] for f in fitted]
  if len(fitted) > 1 and sizes[0] > eval_cfg.max_exact:
    return False
  return all(a + b <= eval_cfg.max_exact_joint for a, b in zip(sizes[:-2], sizes[1:-1]))


def exact_log_likelihood(fitted: Sequence[Any], x: jax.Array) -> jax.Array:
  """log p(x) of the boosted RBM stack by enumeration, [B] (check `exact_possible` first)."""
  top = fitted[-1]
  if len(fitted) == 1:
    return top.elbo(x)
  n_top = top.p.W.shape[0]
  log_m = _all_states_map(lambda h: _rbm_log_prob(top.p, h, top.log_z), n_top)
  for f in fitted[-2:0:-1]:                        # stages n-1 .. 2: message down to h_{k-1}
    d = f.p.W.shape[0]
    log_m = _all_states_map(lambda v, f=f, log_m=log_m: _visible_log_lik(f.p, log_m, v), d)
  return _visible_log_lik(fitted[0].p, log_m, x)


def _exact_increment(low: Any, up: Any, eval_cfg) -> bool:
  return (low.kind == "rbm" and up.kind == "rbm" and low.exact and up.exact
          and low.p.W.shape[1] <= eval_cfg.max_exact)


def bound_terms(fitted: Sequence[Any], x: jax.Array, key: jax.Array, eval_cfg
                ) -> list[dict[str, Any]]:
  """Per-example terms of the decomposable bound for one batch x [B, d].

  Returns, for each stage k = 1..n, {"value": [B] (ELBO_1 for k = 1, Delta_k after), "var": [B]
  the Monte Carlo variance of that per-example estimate (0 where exact), "exact": bool}. The
  increments of stages 3.. (and of stage 2 when it cannot be enumerated) share one set of
  eval.num_samples chains h_1, h_2, ... ~ q(. | x), binary for RBMs.
  """
  s = int(eval_cfg.num_samples)
  b = x.shape[0]
  chains = []                                   # chains[k-1]: h_k draws [s, B, n_k]
  h = jnp.broadcast_to(x, (s,) + x.shape).reshape(s * b, -1)
  for k, f in enumerate(fitted[:-1]):
    h = f.posterior_sample(h, jax.random.fold_in(key, 2 * k))
    chains.append(h.reshape(s, b, -1))
  terms = []
  for k, f in enumerate(fitted):
    e_key = jax.random.fold_in(key, 2 * k + 1)
    if k == 0:
      vals = (jnp.broadcast_to(f.elbo(x), (1, b)) if f.exact
              else f.elbo(jnp.broadcast_to(x, (s,) + x.shape).reshape(s * b, -1), e_key
                          ).reshape(s, b))
    elif k == 1 and _exact_increment(fitted[0], f, eval_cfg):
      low = fitted[0]
      vals = _factorial_expectation_rbm(low.p, low.log_z, f.p, f.log_z,
                                        low.posterior_logits(x))[None]
    else:
      hk = chains[k - 1].reshape(s * b, -1)
      vals = (f.elbo(hk, e_key) - fitted[k - 1].log_prior(hk)).reshape(s, b)
    n = vals.shape[0]
    var = jnp.var(vals, axis=0, ddof=1) / n if n > 1 else jnp.zeros((b,))
    terms.append({"value": jnp.mean(vals, 0), "var": var, "exact": n == 1})
  return terms


def summarise_terms(batches: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
  """Means over examples of per-batch `bound_terms`, with standard errors of the Monte Carlo
  estimate (over the chains, for the fixed examples): per stage {"mean", "stderr", "exact"}."""
  out = []
  for k in range(len(batches[0])):
    value = np.concatenate([np.asarray(t[k]["value"], np.float64) for t in batches])
    var = np.concatenate([np.asarray(t[k]["var"], np.float64) for t in batches])
    out.append({"mean": float(value.mean()), "stderr": float(math.sqrt(var.sum()) / len(value)),
                "exact": all(t[k]["exact"] for t in batches)})
  return out


def accept(increment: float, threshold: float) -> bool:
  """The stopping rule: keep a stage only while its mean increment exceeds `threshold` (>= 0)."""
  return bool(increment > threshold)


def ancestral_sample(fitted: Sequence[Any], key: jax.Array, n: int) -> jax.Array:
  """n draws from the boosted model, top down: h_{n-1} ~ p_n, h_{k-1} ~ p_k(. | h_k), then x's
  mean E[x | h_1] under stage 1 (a draw from p_1 itself for a one-stage stack); [n, d]."""
  h = fitted[-1].sample(jax.random.fold_in(key, len(fitted)), n)
  if len(fitted) == 1:
    return h
  for k in range(len(fitted) - 2, 0, -1):
    h = fitted[k].sample_visible(h, jax.random.fold_in(key, k))
  return fitted[0].visible_mean(h)
