"""Turns any trained diffusion network into the noise predictor eps(x_t, t) that DPM-Solver integrates.

Parameterisations (VP, x_t = alpha_t x_0 + sigma_t eps), each converted to eps:
  noise:   eps = out
  x_start: eps = (x_t - alpha_t out) / sigma_t
  v:       eps = alpha_t out + sigma_t x_t          (v = alpha_t eps - sigma_t x_0)
  score:   eps = -sigma_t out                        (out = grad log q_t(x_t))
Guidance:
  uncond:          eps(x, t)
  classifier:      eps(x, t) - scale * sigma_t * grad_x log p(c | x_t)   (Dhariwal & Nichol 2021)
  classifier-free: eps_u + scale * (eps_c - eps_u), one network call on the doubled batch (Ho & Salimans)
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from common.registry import Registry
from dpm.solver.schedule import NoiseScheduleVP

ModelFn = Callable[[jax.Array, jax.Array], jax.Array]

MODEL_TYPES: Registry = Registry("model type")
MODEL_TYPES.add("noise", lambda out, x, alpha, sigma: out)
MODEL_TYPES.add("x_start", lambda out, x, alpha, sigma: (x - alpha * out) / sigma)
MODEL_TYPES.add("v", lambda out, x, alpha, sigma: alpha * out + sigma * x)
MODEL_TYPES.add("score", lambda out, x, alpha, sigma: -sigma * out)

GUIDANCE_TYPES: Registry = Registry("guidance type")
for _name in ("uncond", "classifier", "classifier-free"):
  GUIDANCE_TYPES.add(_name, _name)


def expand_to(v: jax.Array, x: jax.Array) -> jax.Array:
  """Reshapes per-sample values [B] (or a scalar) to broadcast against x [B, ...]."""
  v = jnp.asarray(v, x.dtype)
  return v.reshape(v.shape + (1,) * (x.ndim - v.ndim)) if v.ndim else v


def model_wrapper(model: Callable[..., Any], noise_schedule: NoiseScheduleVP,
                  model_type: str = "noise", model_kwargs: dict | None = None,
                  guidance_type: str = "uncond", condition: Any = None,
                  unconditional_condition: Any = None, guidance_scale: float = 1.0,
                  classifier_fn: Callable[..., jax.Array] | None = None,
                  classifier_kwargs: dict | None = None) -> ModelFn:
  """Wraps `model` into model_fn(x [B, ...], t [] or [B]) -> eps [B, ...] in continuous time.

  Args:
    model: called as model(x, t_input, **model_kwargs), or model(x, t_input, cond, **model_kwargs) for
      classifier-free guidance, where t_input = noise_schedule.model_time(t) has shape [B]:
      1000 (t - 1/N) for discrete-time models, t for continuous-time ones.
    noise_schedule: the schedule the model was trained with.
    model_type: "noise", "x_start", "v" or "score" (module docstring).
    model_kwargs: extra keyword arguments of the model.
    guidance_type: "uncond", "classifier" or "classifier-free".
    condition: the condition (pytree with a leading batch axis) for guided sampling.
    unconditional_condition: the "null" condition for classifier-free guidance.
    guidance_scale: s in the guidance formulas; 1 means no guidance.
    classifier_fn: classifier(x, t_input, condition, **classifier_kwargs) -> log p(c | x_t), shape [B].
    classifier_kwargs: extra keyword arguments of the classifier.

  Returns:
    The noise predictor model_fn(x, t_continuous).
  """
  to_noise = MODEL_TYPES.get(model_type, field="model_type")
  GUIDANCE_TYPES.get(guidance_type, field="guidance_type")
  model_kwargs = dict(model_kwargs or {})
  classifier_kwargs = dict(classifier_kwargs or {})
  if guidance_type == "classifier" and classifier_fn is None:
    raise ValueError("guidance_type='classifier' needs classifier_fn")

  def noise_pred(x, t, cond=None):
    t_input = noise_schedule.model_time(t)
    out = model(x, t_input, **model_kwargs) if cond is None else model(x, t_input, cond,
                                                                       **model_kwargs)
    alpha = expand_to(noise_schedule.marginal_alpha(t), x)
    sigma = expand_to(noise_schedule.marginal_std(t), x)
    return to_noise(out, x, alpha, sigma)

  def cond_grad(x, t):
    t_input = noise_schedule.model_time(t)
    log_prob = lambda x_in: jnp.sum(classifier_fn(x_in, t_input, condition, **classifier_kwargs))
    return jax.grad(log_prob)(x)

  def model_fn(x, t_continuous):
    t = jnp.broadcast_to(jnp.asarray(t_continuous, x.dtype), x.shape[:1])
    if guidance_type == "uncond":
      return noise_pred(x, t)
    if guidance_type == "classifier":
      sigma = expand_to(noise_schedule.marginal_std(t), x)
      return noise_pred(x, t) - guidance_scale * sigma * cond_grad(x, t)
    if guidance_scale == 1.0 or unconditional_condition is None:
      return noise_pred(x, t, cond=condition)
    both = lambda u, c: jnp.concatenate([u, c], axis=0)
    c_in = jax.tree.map(both, unconditional_condition, condition)
    eps_u, eps_c = jnp.split(noise_pred(both(x, x), both(t, t), cond=c_in), 2, axis=0)
    return eps_u + guidance_scale * (eps_c - eps_u)

  return model_fn
