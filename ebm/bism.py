"""Bi-level score matching (BiSM: BiSSM, BiDSM, BiMDSM) and variational NCE, pure and jittable.

../shared/papers/ebm.md (BiSM) and ../shared/papers/sources/bism.md. An EBLVM
p(v, h) ∝ exp(-E(v, h)) with a variational posterior q_phi(h | v) gets the score

  s(v; h) = grad_v [ -E(v, h) - log q_phi(h | v) ],  h ~ q_phi(. | v) reparameterised, held fixed
  under grad_v (drawn at stop_gradient(v)), which is grad_v log p(v) exactly when q = p(h | v).

Upper level: J(theta, phi) = an SM objective of ebm/losses.py (ssm, dsm, mdsm) with s in place of
the model score. Lower level: G(theta, phi) = E_q[E(v, h) + log q(h | v)] ("kl": KL(q || p(h | v))
up to a constant, the official `iwae` inner loss with one particle) or
E_q 0.5 ||grad_h (-E - log q)||^2 ("fisher": the posterior Fisher divergence, for continuous h),
evaluated on inputs noised like the upper level's (the clean data for BiSSM), weighted by
1 / sigma_i for BiMDSM.

One minibatch (`bism_step_grads`), as the official `criterions/bism.py::_update`:
  1. K plain optimiser steps on phi with theta frozen (not differentiated): phi_K, state_K;
  2. from (phi_K, state_K), N steps of the SAME optax optimiser inside the theta-gradient (the
     unroll: tx.update is pure, so jax.grad goes through Adam's moments and step count);
  3. the theta gradient of J(theta, phi_N(theta)).
The unrolled phi_1..phi_N and their optimiser states are discarded: phi and its optimiser state
keep their post-K (pre-unroll) values, as the official code restores q's state dict after the
unroll and `higher` differentiates a copy of the optimiser state.

Noise: every lower-level step and the upper level draw fresh noise of the same kind (the official
code calls its `_sample` in each of them); `shared_noise=True` evaluates all of them on the upper
level's noised batch instead (ebm.md's reading).

Variational NCE (method "vnce", the official VNCE criterion): the same K lower steps on phi, then
the theta (and log_z) gradient of the NCE objective with log p~(v) replaced by
-E(v, h) - log q(h | v) at one h ~ q for the data, and for the noise y by the importance-sampled
log mean_p exp(-E(y, h_p) - log q(h_p | y)) over `num_particles` draws h_p ~ q(. | y); q is held
fixed in that step (N = 0).

A note on Adam in the unroll: the derivative of Adam's sqrt(nu) is infinite where nu = 0, so a
parameter whose lower-level gradients are all exactly zero gives NaN theta-gradients. Use
`optax.adam(..., eps_root=1e-12)` (or similar) for tx_phi if that can happen.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from common.errors import ConfigError
from common.registry import Registry
from ebm import losses

PyTree = Any

# Official settings of the Gaussian-RBM runs (K = 5, N = 5; VNCE 5 particles).
DEFAULTS: dict[str, Any] = {
    "inner_steps": 5,
    "unroll_steps": 5,
    "lower": "kl",
    "shared_noise": False,
    "num_particles": 5,
}


def setting(cfg: Mapping | None, key: str) -> Any:
  """cfg[key], else this module's DEFAULTS, else ebm.losses.DEFAULTS."""
  if cfg is not None and key in cfg:
    return cfg[key]
  return DEFAULTS[key] if key in DEFAULTS else losses.setting(None, key)


# ---------------------------------------------------------------------------------------------
# Objectives.


def bism_score_fn(model, q, h: jax.Array) -> Callable[[jax.Array], jax.Array]:
  """v [B, ...] -> s(v; h) = grad_v [-E(v, h) - log q(h | v)], with h [B, m] held fixed."""
  def log_w(v):
    return jnp.sum(-model.energy(v, h) - q.log_prob(h, v))
  return jax.grad(log_w)


def lower_objective(model, q, v: jax.Array, rng: jax.Array, weight: jax.Array,
                    kind: str) -> jax.Array:
  """G(theta, phi) on inputs v [B, ...] with per-example weights [B], scalar.

  kind "kl": mean_b w_b [E(v_b, h_b) + log q(h_b | v_b)] with h_b ~ q(. | v_b) reparameterised;
  kind "fisher": mean_b w_b 0.5 ||grad_h [-E(v_b, h) - log q(h | v_b)] at h_b||^2.
  """
  h = q.sample(v, rng)
  if kind == "kl":
    per = model.energy(v, h) + q.log_prob(h, v)
  elif kind == "fisher":
    grad_h = jax.grad(lambda hh: jnp.sum(-model.energy(v, hh) - q.log_prob(hh, v)))(h)
    per = 0.5 * jnp.sum(grad_h.reshape(h.shape[0], -1) ** 2, axis=-1)
  else:
    raise ConfigError(f"loss.lower={kind!r} is invalid: expected 'kl' or 'fisher'")
  return jnp.mean(weight * per)


class BilevelMethod(NamedTuple):
  """lower_inputs(v, noise_rng, cfg) -> (inputs [B, ...], weights [B]) of G;
  upper(model, q, v, noise_rng, sample_rng, cfg) -> (loss, metrics) of the theta step."""
  lower_inputs: Callable
  upper: Callable


def _sm_method(scheme_name: str) -> BilevelMethod:
  scheme = losses.SCHEMES[scheme_name]

  def lower_inputs(v, rng, cfg):
    pert = scheme.perturb(v, rng, cfg)
    return pert.v, scheme.lower_weight(pert, cfg)

  def upper(model, q, v, noise_rng, sample_rng, cfg):
    pert = scheme.perturb(v, noise_rng, cfg)
    h = q.sample(jax.lax.stop_gradient(pert.v), sample_rng)
    value = jnp.mean(scheme.objective(bism_score_fn(model, q, h), pert, cfg))
    return value, {"loss": value}

  return BilevelMethod(lower_inputs, upper)


def vnce_objective(model, q, v: jax.Array, y: jax.Array, rng: jax.Array,
                   cfg: Mapping) -> jax.Array:
  """The variational NCE loss at data v [B, d] and noise y [nu B, d] with q held fixed; scalar.

  log p_model(v) ~ -E(v, h) - log q(h | v) - log_z at one h ~ q(. | v) (the lower bound of the
  data term) and, for the noise, log mean_p exp(-E(y, h_p) - log q(h_p | y)) - log_z over
  `num_particles` draws h_p ~ q(. | y). With q = p(h | v) both are exact, and the loss is NCE's.
  """
  noise, nu = losses.noise_of(cfg), int(setting(cfg, "nu"))
  particles = int(setting(cfg, "num_particles"))
  v_rng, y_rng = jax.random.split(rng)
  h_v = jax.lax.stop_gradient(q.sample(v, v_rng))
  log_q_v = jax.lax.stop_gradient(q.log_prob(h_v, v))
  h_y = jax.lax.stop_gradient(
      jax.vmap(lambda k: q.sample(y, k))(jax.random.split(y_rng, particles)))    # [P, nu B, m]
  log_q_y = jax.lax.stop_gradient(jax.vmap(lambda h: q.log_prob(h, y))(h_y))     # [P, nu B]
  log_w_y = jax.vmap(lambda h: -model.energy(y, h))(h_y) - log_q_y
  log_p_y = jax.nn.logsumexp(log_w_y, axis=0) - math.log(particles)
  shift = model.log_z[...] + math.log(nu)
  g_v = -model.energy(v, h_v) - log_q_v - shift - losses.gaussian_log_prob(noise, v)
  g_y = log_p_y - shift - losses.gaussian_log_prob(noise, y)
  return losses.nce_objective(g_v, g_y, nu)


def _vnce_method() -> BilevelMethod:
  def lower_inputs(v, rng, cfg):
    return v, jnp.ones(v.shape[:1], v.dtype)

  def upper(model, q, v, noise_rng, sample_rng, cfg):
    nu = int(setting(cfg, "nu"))
    y = losses.gaussian_sample(losses.noise_of(cfg), noise_rng, nu * v.shape[0], v.dtype)
    value = vnce_objective(model, q, v, y, sample_rng, cfg)
    return value, {"loss": value, "log_z": model.log_z[...]}

  return BilevelMethod(lower_inputs, upper)


METHODS: Registry[BilevelMethod] = Registry("bi-level method")
METHODS.add("bissm", _sm_method("ssm"))
METHODS.add("bidsm", _sm_method("dsm"))
METHODS.add("bimdsm", _sm_method("mdsm"))
METHODS.add("vnce", _vnce_method())


# ---------------------------------------------------------------------------------------------
# One minibatch.


def _lower_step(method: BilevelMethod, model_def, theta, q_def, tx_phi, v, cfg,
                shared_noise_rng, carry, key):
  """One optax step on phi from carry = (phi, opt_state); returns the new carry and G."""
  phi, opt_state = carry
  noise_rng, sample_rng = jax.random.split(key)
  if shared_noise_rng is not None:
    noise_rng = shared_noise_rng
  inputs, weight = method.lower_inputs(v, noise_rng, cfg)
  model = nnx.merge(model_def, theta)

  def g(phi):
    return lower_objective(model, nnx.merge(q_def, phi), inputs, sample_rng, weight,
                           setting(cfg, "lower"))

  value, grads = jax.value_and_grad(g)(phi)
  updates, opt_state = tx_phi.update(grads, opt_state, phi)
  return (optax.apply_updates(phi, updates), opt_state), value


def _run_lower(method, model_def, theta, q_def, tx_phi, v, cfg, shared, phi, opt_state, rng,
               num_steps: int):
  step = lambda carry, key: _lower_step(method, model_def, theta, q_def, tx_phi, v, cfg, shared,
                                        carry, key)
  # Unrolled (up to 10 steps a loop iteration): on a CPU a loop of tiny steps costs more than
  # their work (BiDSM K = N = 5 on the checkerboard GRBM: 2.5 -> 1.9 ms a step).
  return jax.lax.scan(step, (phi, opt_state), jax.random.split(rng, num_steps),
                      unroll=min(max(num_steps, 1), 10))


def bism_step_grads(model_def: nnx.GraphDef, theta: PyTree, q_def: nnx.GraphDef, phi: PyTree,
                    phi_opt_state: PyTree, tx_phi: optax.GradientTransformation, v: jax.Array,
                    rng: jax.Array, cfg: Mapping):
  """The theta gradient of one BiSM (or VNCE) minibatch and phi after its K plain steps.

  Args:
    model_def, theta: nnx.split(model) of the EBLVM; the model has `energy(v, h) -> [B]`
      (and `log_z` for "vnce").
    q_def, phi: nnx.split(posterior); it has `sample(v, rng)` and `log_prob(h, v)`.
    phi_opt_state: tx_phi's state for phi.
    tx_phi: the posterior's optax optimiser, used for both the plain and the unrolled steps.
    v: the data batch [B, ...].
    rng: key for this minibatch.
    cfg: method ("bissm", "bidsm", "bimdsm" or "vnce"), inner_steps K, unroll_steps N, lower
      ("kl" or "fisher"), shared_noise, and the scheme's settings (see ebm.losses.DEFAULTS).

  Returns:
    (theta_grads, phi_K, phi_opt_state_K, metrics): metrics has "loss" (the upper objective at
    phi_N) and "lower_loss" (the mean lower objective over the K plain steps; absent if K = 0).
  """
  method = METHODS.get(cfg["method"], field="method")
  k_rng, n_rng, noise_rng, sample_rng = jax.random.split(rng, 4)
  shared = noise_rng if setting(cfg, "shared_noise") else None
  frozen = jax.lax.stop_gradient(theta)
  (phi_k, opt_k), lower_values = _run_lower(method, model_def, frozen, q_def, tx_phi, v, cfg,
                                            shared, phi, phi_opt_state, k_rng,
                                            setting(cfg, "inner_steps"))

  def upper(theta):
    (phi_n, _), _ = _run_lower(method, model_def, theta, q_def, tx_phi, v, cfg, shared, phi_k,
                               opt_k, n_rng, setting(cfg, "unroll_steps"))
    return method.upper(nnx.merge(model_def, theta), nnx.merge(q_def, phi_n), v, noise_rng,
                        sample_rng, cfg)

  (_, metrics), grads = jax.value_and_grad(upper, has_aux=True)(theta)
  if setting(cfg, "inner_steps") > 0:
    metrics = dict(metrics, lower_loss=jnp.mean(lower_values))
  return grads, phi_k, opt_k, metrics


def upper_objective_at(model, q, v: jax.Array, rng: jax.Array, cfg: Mapping):
  """The upper objective with the given phi and no lower steps (evaluation; also K = N = 0 of
  `bism_step_grads` with the same rng): (loss, metrics)."""
  method = METHODS.get(cfg["method"], field="method")
  _, _, noise_rng, sample_rng = jax.random.split(rng, 4)
  return method.upper(model, q, v, noise_rng, sample_rng, cfg)


def validate(cfg: Mapping, prefix: str = "loss") -> None:
  """Checks a BiSM / VNCE config; errors name `prefix.<field>`."""
  method = cfg.get("method") if cfg is not None else None
  METHODS.get(method, field="method")
  for key in ("inner_steps", "unroll_steps"):
    value = setting(cfg, key)
    if not (isinstance(value, int) and value >= 0):
      raise ConfigError(f"{prefix}.{key}={value!r} is invalid: expected an integer >= 0")
  if setting(cfg, "lower") not in ("kl", "fisher"):
    raise ConfigError(f"{prefix}.lower={setting(cfg, 'lower')!r} is invalid: "
                      "expected 'kl' or 'fisher'")
  if method == "vnce":
    particles = setting(cfg, "num_particles")
    if not (isinstance(particles, int) and particles >= 1):
      raise ConfigError(f"{prefix}.num_particles={particles!r} is invalid: "
                        "expected an integer >= 1")
  losses.validate(cfg, method, prefix)
