"""VaES and VaGES: variational estimates of the score and of its gradient (arXiv 2010.08258).

../shared/papers/ebm.md (VaES / VaGES) and ../shared/papers/sources/vages.md. An EBLVM
p(v, h) = p~(v, h) / Z with log p~ = -E(v, h) has the marginal score and its parameter gradient

  s(v)             = grad_v log p(v) = E_{p(h|v)} [grad_v log p~(v, h)],              (the score)
  d s(v) / d theta = E_{p(h|v)} [d/dtheta grad_v log p~(v, h)]
                     + Cov_{p(h|v)} (grad_v log p~(v, h), grad_theta log p~(v, h)),  (its gradient)

the second because d/dtheta log p(h | v) = grad_theta log p~(v, h) - E_{p(h|v)} grad_theta log p~:
log Z cancels. VaES and VaGES replace p(h | v) by a variational q(h | v) and the expectations by
means over L particles h_1..h_L ~ q(. | v), drawn and held fixed (no gradient flows into them):

  VaES(v)      = 1/L sum_l grad_v log p~(v, h_l),
  VaGES(v) . z = 1/L sum_l d/dtheta [z . grad_v log p~(v, h_l)]
                 + 1/(L-1) sum_l (a_l - a_bar) grad_theta log p~(v, h_l),
  with a_l = z . grad_v log p~(v, h_l) and a_bar their mean over l,

the 1/(L-1) (the L/(L-1) rescaling of the plug-in covariance) making the covariance unbiased for
any L >= 2 (the official `biased_cov=False`). Both are exact in expectation when q = p(h | v), and
their bias is bounded by a divergence between q and p(h | v) (ebm.md).

A training loss l(s(v_1), ..., s(v_B)) of the scores (DSM, MDSM, KSD) has the theta-gradient
sum_b (dl/ds_b) . d s(v_b) / d theta; `vages_loss_grad` evaluates dl/ds at VaES on one particle set
(z) and the VaGES vector-Jacobian product on two more (expectation, covariance), independent of it,
as the official code does: with q = p(h | v) and l linear in each s_b (DSM, the pair terms of a KSD
U-statistic), the estimate is then unbiased.

Every function is pure and jittable. The model enters as `log_joint(theta, v, h) -> [B]`, the
unnormalised log p~(v, h) of independent examples (e.g. `lambda p, v, h: -grbm.energy(p, v, h)`, or
`lambda state, v, h: -nnx.merge(graphdef, state).energy(v, h)`); theta is any pytree. Particles are
[L, B, ...] arrays (`draw_particles`, `bernoulli_particles`).

Training (`vages_step_grads`, methods vages_dsm, vages_mdsm, vages_ksd of METHODS): per minibatch,
K plain optimiser steps on the posterior's phi (ebm.bism.lower_objective, the official -ELBO with
one particle by default, on inputs noised like the upper level's), then 3 L hard particles from the
updated q at the upper level's points and the VaGES theta-gradient of the loss: DSM and MDSM of
ebm/losses.py (z = dl/ds: (VaES + eps / sigma) / B; MDSM's (VaES / sigma_i + eps / sigma_0^2) /
(sigma_i B)), or the paired-halves KSD with an RBF kernel (ebm/ksd.py, bandwidth 0.1). No unroll:
unlike BiSM, the theta-gradient does not go through phi.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from common.errors import ConfigError
from common.registry import Registry
from ebm import bism, ksd, losses

PyTree = Any
LogJoint = Callable[[PyTree, jax.Array, jax.Array], jax.Array]


def _flat_dot(a: jax.Array, b: jax.Array) -> jax.Array:
  """Per-example inner product over all but the leading axis, [B]."""
  return jnp.sum((a * b).reshape(a.shape[0], -1), axis=-1)


# ---------------------------------------------------------------------------------------------
# Particles.


def draw_particles(sample: Callable[[jax.Array, jax.Array], jax.Array], v: jax.Array,
                   rng: jax.Array, num: int) -> jax.Array:
  """num independent draws h ~ q(. | v) from `sample(v, rng) -> [B, m]`, held fixed: [num, B, m]."""
  v = jax.lax.stop_gradient(v)
  return jax.lax.stop_gradient(jax.vmap(lambda k: sample(v, k))(jax.random.split(rng, num)))


def bernoulli_particles(logits: jax.Array, rng: jax.Array, num: int) -> jax.Array:
  """num binary draws of a factorised Bernoulli q(h | v) = prod_j Bernoulli(sigmoid(logits_j)).

  Args:
    logits: [B, m], e.g. `LinearBernoulliPosterior.logits(v)`; held fixed.
    rng: a key.
    num: L.

  Returns:
    [num, B, m] in {0, 1} (the logits' dtype). Hard samples, not the Gumbel-softmax relaxation:
    VaES / VaGES need no gradient through h, and a relaxed h is not a draw from q (for the GRBM,
    whose grad_v log p~ is linear in h, E[relaxed h] != sigmoid(logits) biases VaES).
  """
  logits = jax.lax.stop_gradient(logits)
  return jax.random.bernoulli(rng, jax.nn.sigmoid(logits), (num,) + logits.shape).astype(
      logits.dtype)


# ---------------------------------------------------------------------------------------------
# The estimators.


def joint_scores(log_joint: LogJoint, theta: PyTree, v: jax.Array, h: jax.Array) -> jax.Array:
  """grad_v log p~(v, h_l) for every particle, [L, B, ...] (h [L, B, ...] held fixed)."""
  h = jax.lax.stop_gradient(h)
  one = lambda hl: jax.grad(lambda x: jnp.sum(log_joint(theta, x, hl)))(v)
  return jax.vmap(one)(h)


def vaes(log_joint: LogJoint, theta: PyTree, v: jax.Array, h: jax.Array) -> jax.Array:
  """VaES: the score estimate 1/L sum_l grad_v log p~(v, h_l), h_l ~ q(. | v); [B, ...].

  Args:
    log_joint: (theta, v [B, ...], h [B, ...]) -> log p~(v, h) [B].
    theta: the model's parameters (any pytree); the estimate is differentiable in theta and v.
    v: [B, ...] where the score is wanted.
    h: [L, B, ...] particles from q(. | v) (no gradient flows into them).
  """
  return jnp.mean(joint_scores(log_joint, theta, v, h), axis=0)


def vages_surrogate(log_joint: LogJoint, theta: PyTree, v: jax.Array, z: jax.Array,
                    h_exp: jax.Array, h_cov: jax.Array, unbiased: bool = True) -> jax.Array:
  """A scalar whose theta-gradient is the VaGES estimate of sum_b z_b . d s(v_b) / d theta.

  The expectation term is sum_b z_b . VaES(v_b) on h_exp (differentiated through theta); the
  covariance term is sum_{l,b} stop_gradient(a_lb - a_bar_b) log p~(v_b, h_lb) / (L - 1) on h_cov,
  a_lb = z_b . grad_v log p~(v_b, h_lb) at fixed theta: its gradient is the sample covariance of
  a and grad_theta log p~ (the centring of a alone suffices, as sum_l (a_l - a_bar) = 0). Its value
  is not a loss; only its gradient is meaningful.

  Args:
    log_joint, theta: as `vaes`.
    v: [B, ...] (held fixed).
    z: [B, ...] the cotangent, e.g. dl/ds at VaES (held fixed).
    h_exp: [L, B, ...] particles for the expectation term.
    h_cov: [L', B, ...] particles for the covariance term, L' >= 2 when `unbiased`.
    unbiased: divide by L' - 1 (the L'/(L'-1) rescaling); False divides by L' (the plug-in).
  """
  v, z = jax.lax.stop_gradient(v), jax.lax.stop_gradient(z)
  num = h_cov.shape[0]
  if unbiased and num < 2:
    raise ValueError(f"the unbiased VaGES covariance needs at least 2 particles, got {num}")
  expectation = jnp.sum(_flat_dot(z, vaes(log_joint, theta, v, h_exp)))
  a = jax.vmap(lambda g: _flat_dot(z, g))(
      joint_scores(log_joint, jax.lax.stop_gradient(theta), v, h_cov))          # [L', B]
  centred = jax.lax.stop_gradient(a - jnp.mean(a, axis=0))
  log_p = jax.vmap(lambda hl: log_joint(theta, v, hl))(jax.lax.stop_gradient(h_cov))  # [L', B]
  covariance = jnp.sum(centred * log_p) / (num - 1 if unbiased else num)
  return expectation + covariance


def vages(log_joint: LogJoint, theta: PyTree, v: jax.Array, z: jax.Array, h_exp: jax.Array,
          h_cov: jax.Array, unbiased: bool = True) -> PyTree:
  """VaGES: the estimate of sum_b z_b . d s(v_b) / d theta (the paper's gradient of the score as a
  vector-Jacobian product), with the structure of theta. Arguments as `vages_surrogate`."""
  return jax.grad(vages_surrogate, argnums=1)(log_joint, theta, v, z, h_exp, h_cov, unbiased)


def vages_loss_grad(loss_of_scores: Callable[[jax.Array], jax.Array], log_joint: LogJoint,
                    theta: PyTree, v: jax.Array, h_z: jax.Array, h_exp: jax.Array,
                    h_cov: jax.Array, unbiased: bool = True) -> tuple[jax.Array, PyTree]:
  """A score-based loss and its VaGES theta-gradient (the VaGES-DSM / -MDSM / -KSD plug-in).

  Args:
    loss_of_scores: s [B, ...] -> scalar, the loss as a function of the scores at v (its noise and
      data closed over), e.g. DSM's mean_b 0.5 ||s_b + eps_b / sigma||^2.
    log_joint, theta, v: as `vaes`.
    h_z: [L, B, ...] particles for VaES, where dl/ds = z is evaluated.
    h_exp, h_cov: independent particle sets for the expectation and covariance terms.
    unbiased: as `vages_surrogate`.

  Returns:
    (loss at VaES on h_z, the VaGES estimate of d loss / d theta).
  """
  s_hat = jax.lax.stop_gradient(vaes(log_joint, theta, v, h_z))
  value, z = jax.value_and_grad(loss_of_scores)(s_hat)
  return value, vages(log_joint, theta, v, z, h_exp, h_cov, unbiased)


# ---------------------------------------------------------------------------------------------
# Training: the VaGES plug-ins for DSM, MDSM and KSD.

# The official settings (../shared/papers/sources/vages.md): L = 2 particles, K = 5 lower steps,
# the -ELBO lower level, KSD bandwidth 0.1.
DEFAULTS: dict[str, Any] = {
    "vages_particles": 2,
    "inner_steps": 5,
    "lower": "kl",
    "bandwidth": ksd.BANDWIDTH,
}


def setting(cfg: Mapping | None, key: str) -> Any:
  """cfg[key], else this module's DEFAULTS, else ebm.bism's (and so ebm.losses') defaults."""
  if cfg is not None and key in cfg:
    return cfg[key]
  return DEFAULTS[key] if key in DEFAULTS else bism.setting(None, key)


class VagesMethod(NamedTuple):
  """lower_inputs(v, rng, cfg) -> (inputs [B, ...], weights [B]) of the posterior's objective;
  upper(v, rng, cfg) -> (points [B, ...] where the scores are wanted, loss_of_scores)."""
  lower_inputs: Callable
  upper: Callable


def _sm_method(scheme_name: str) -> VagesMethod:
  scheme = losses.SCHEMES[scheme_name]

  def lower_inputs(v, rng, cfg):
    pert = scheme.perturb(v, rng, cfg)
    return pert.v, scheme.lower_weight(pert, cfg)

  def upper(v, rng, cfg):
    pert = scheme.perturb(v, rng, cfg)
    return pert.v, lambda s: jnp.mean(scheme.objective(lambda _: s, pert, cfg))

  return VagesMethod(lower_inputs, upper)


def _ksd_method() -> VagesMethod:
  def lower_inputs(v, rng, cfg):
    return v, jnp.ones(v.shape[:1], v.dtype)

  def upper(v, rng, cfg):
    return v, lambda s: ksd.ksd_paired(v, s, setting(cfg, "bandwidth"))

  return VagesMethod(lower_inputs, upper)


METHODS: Registry[VagesMethod] = Registry("VaGES method")
METHODS.add("vages_dsm", _sm_method("dsm"))
METHODS.add("vages_mdsm", _sm_method("mdsm"))
METHODS.add("vages_ksd", _ksd_method())


def posterior_particles(q, v: jax.Array, rng: jax.Array, num: int) -> jax.Array:
  """num particles from q(. | v), [num, B, m]: hard Bernoulli draws where q has `logits` (the
  linear Bernoulli posterior; see `bernoulli_particles`), else q.sample's (the Gaussian q)."""
  if hasattr(q, "logits"):
    return bernoulli_particles(q.logits(v), rng, num)
  return draw_particles(q.sample, v, rng, num)


def _lower_steps(method: VagesMethod, model, q_def, tx_phi, v, cfg, phi, opt_state, rng,
                 num_steps: int):
  """num_steps optax steps on phi of ebm.bism.lower_objective, fresh noise each; the model fixed."""
  def step(carry, key):
    phi, opt_state = carry
    noise_rng, sample_rng = jax.random.split(key)
    inputs, weight = method.lower_inputs(v, noise_rng, cfg)
    value, grads = jax.value_and_grad(lambda ph: bism.lower_objective(
        model, nnx.merge(q_def, ph), inputs, sample_rng, weight, setting(cfg, "lower")))(phi)
    updates, opt_state = tx_phi.update(grads, opt_state, phi)
    return (optax.apply_updates(phi, updates), opt_state), value

  return jax.lax.scan(step, (phi, opt_state), jax.random.split(rng, num_steps),
                      unroll=min(max(num_steps, 1), 10))


def vages_step_grads(model_def: nnx.GraphDef, theta: PyTree, q_def: nnx.GraphDef, phi: PyTree,
                     phi_opt_state: PyTree, tx_phi: optax.GradientTransformation, v: jax.Array,
                     rng: jax.Array, cfg: Mapping):
  """The VaGES theta-gradient of one minibatch and phi after its K plain steps.

  The signature and return value of ebm.bism.bism_step_grads, so the runner treats both alike.

  Args:
    model_def, theta: nnx.split(model); the model has `energy(v, h) -> [B]`.
    q_def, phi, phi_opt_state, tx_phi: the posterior, its optimiser state and optimiser.
    v: the data batch [B, ...] (B even for vages_ksd).
    rng: key for this minibatch.
    cfg: method, vages_particles L, inner_steps K, lower ("kl" or "fisher"), bandwidth (KSD) and
      the scheme's settings (ebm.losses.DEFAULTS).

  Returns:
    (theta_grads, phi_K, phi_opt_state_K, metrics): "loss" (the loss at VaES) and "lower_loss"
    (the mean lower objective over the K steps; absent if K = 0).
  """
  method = METHODS.get(cfg["method"], field="method")
  lower_rng, noise_rng, particle_rng = jax.random.split(rng, 3)
  frozen = nnx.merge(model_def, jax.lax.stop_gradient(theta))
  num_steps = setting(cfg, "inner_steps")
  (phi_k, opt_k), lower_values = _lower_steps(method, frozen, q_def, tx_phi, v, cfg, phi,
                                              phi_opt_state, lower_rng, num_steps)
  points, loss_of_scores = method.upper(v, noise_rng, cfg)
  num = setting(cfg, "vages_particles")
  h = posterior_particles(nnx.merge(q_def, phi_k), jax.lax.stop_gradient(points), particle_rng,
                          3 * num)
  log_joint = lambda th, x, hh: -nnx.merge(model_def, th).energy(x, hh)
  value, grads = vages_loss_grad(loss_of_scores, log_joint, theta, points, h[:num],
                                 h[num:2 * num], h[2 * num:])
  metrics = {"loss": value}
  if num_steps > 0:
    metrics["lower_loss"] = jnp.mean(lower_values)
  return grads, phi_k, opt_k, metrics


def validate(cfg: Mapping, prefix: str = "loss") -> None:
  """Checks a VaGES config; errors name `prefix.<field>`."""
  method = cfg.get("method") if cfg is not None else None
  METHODS.get(method, field="method")
  num = setting(cfg, "vages_particles")
  if not (isinstance(num, int) and num >= 2):
    raise ConfigError(f"{prefix}.vages_particles={num!r} is invalid: expected an integer >= 2 "
                      "(the unbiased covariance needs two particles)")
  steps = setting(cfg, "inner_steps")
  if not (isinstance(steps, int) and steps >= 0):
    raise ConfigError(f"{prefix}.inner_steps={steps!r} is invalid: expected an integer >= 0")
  if setting(cfg, "lower") not in ("kl", "fisher"):
    raise ConfigError(f"{prefix}.lower={setting(cfg, 'lower')!r} is invalid: "
                      "expected 'kl' or 'fisher'")
  losses.validate(cfg, method.removeprefix("vages_"), prefix)
