"""DPMSolver: singlestep, multistep and adaptive DPM-Solver / DPM-Solver++ compiled into one program.

Every sampling loop is a lax.fori_loop (fixed steps, the order of each step picked by lax.switch) or a
lax.while_loop (adaptive), traced once and compiled by XLA with the model inside: no host round trip
per step. The batch may be sharded over devices (jit over a Mesh); the only cross-sample coupling is
the adaptive solver's error norm, a max over the batch that XLA turns into an all-reduce.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from common.registry import Registry
from dpm.solver import plan
from dpm.solver import updates as up
from dpm.solver.schedule import NoiseScheduleVP
from dpm.solver.wrapper import expand_to

ALGORITHMS: Registry = Registry("algorithm type")
ALGORITHMS.add(up.NOISE, up.NOISE)
ALGORITHMS.add(up.DATA, up.DATA)

# Adaptive step-size control (paper Alg. 4-5, Appendix C): initial step in lambda, safety factor,
# tolerance on reaching t_end, and a cap on evaluations so a diverging model cannot loop forever.
ADAPTIVE_H_INIT = 0.05
ADAPTIVE_THETA = 0.9
ADAPTIVE_T_ERR = 1e-5
ADAPTIVE_MAX_NFE = 10_000


def _take(points: up.Point, i) -> up.Point:
  return jax.tree.map(lambda a: a[i], points)


def dynamic_threshold(x0: jax.Array, ratio: float = 0.995, max_val: float = 1.0) -> jax.Array:
  """Imagen's dynamic thresholding: clip x0 to the per-sample quantile s of |x0|, s >= max_val,
  and divide by s."""
  flat = jnp.abs(x0).reshape(x0.shape[0], -1)
  s = expand_to(jnp.maximum(jnp.quantile(flat, ratio, axis=1), max_val), x0)
  return jnp.clip(x0, -s, s) / s


class DPMSolver:
  """DPM-Solver (noise prediction) and DPM-Solver++ (data prediction) for VP diffusion models.

  Args:
    model_fn: noise predictor eps(x [B, ...], t [B]) in continuous time, e.g. from `model_wrapper`.
    noise_schedule: the NoiseScheduleVP of the model.
    algorithm_type: "dpmsolver" (integrates eps; Lu et al. 2022) or "dpmsolver++" (integrates
      x0 = (x - sigma eps) / alpha; Lu et al. 2022b, better for guided sampling).
    correcting_x0_fn: None, "dynamic_thresholding", or a function (x0, t) -> x0 applied to every data
      prediction. Only the data-prediction algorithm (and denoise_to_zero) uses data predictions.
    correcting_xt_fn: None or a function (x_t, t, step) -> x_t applied after every fixed step.
    thresholding_max_val: dynamic thresholding never clips below this magnitude.
    dynamic_thresholding_ratio: the per-sample quantile of |x0| used as the clip value (Imagen).
  """

  def __init__(self, model_fn: Callable[[jax.Array, jax.Array], jax.Array],
               noise_schedule: NoiseScheduleVP, algorithm_type: str = "dpmsolver++",
               correcting_x0_fn: str | Callable | None = None,
               correcting_xt_fn: Callable | None = None, thresholding_max_val: float = 1.0,
               dynamic_thresholding_ratio: float = 0.995):
    self.model = model_fn
    self.noise_schedule = noise_schedule
    self.algorithm_type = ALGORITHMS.get(algorithm_type, field="algorithm_type")
    if correcting_x0_fn == "dynamic_thresholding":
      correcting_x0_fn = self.dynamic_thresholding_fn
    elif isinstance(correcting_x0_fn, str):
      raise ValueError(f"correcting_x0_fn={correcting_x0_fn!r}: expected None, "
                       "'dynamic_thresholding' or a function (x0, t) -> x0")
    self.correcting_x0_fn = correcting_x0_fn
    self.correcting_xt_fn = correcting_xt_fn
    self.thresholding_max_val = thresholding_max_val
    self.dynamic_thresholding_ratio = dynamic_thresholding_ratio
    self._compiled: dict = {}

  # ---- model evaluations -------------------------------------------------------------------------

  def dynamic_thresholding_fn(self, x0: jax.Array, t=None) -> jax.Array:
    """Imagen's dynamic thresholding (`dynamic_threshold`) with this solver's ratio and max_val."""
    del t
    return dynamic_threshold(x0, self.dynamic_thresholding_ratio, self.thresholding_max_val)

  def noise_prediction_fn(self, x: jax.Array, t) -> jax.Array:
    return self.model(x, t)

  def data_prediction_fn(self, x: jax.Array, t) -> jax.Array:
    """x0 = (x_t - sigma_t eps) / alpha_t, then correcting_x0_fn."""
    ns = self.noise_schedule
    eps = self.noise_prediction_fn(x, t)
    x0 = (x - expand_to(ns.marginal_std(t), x) * eps) / expand_to(ns.marginal_alpha(t), x)
    return x0 if self.correcting_x0_fn is None else self.correcting_x0_fn(x0, t)

  def model_fn(self, x: jax.Array, t) -> jax.Array:
    """The value the algorithm integrates: eps for dpmsolver, x0 for dpmsolver++."""
    if self.algorithm_type == up.DATA:
      return self.data_prediction_fn(x, t)
    return self.noise_prediction_fn(x, t)

  # ---- one step of each kind -----------------------------------------------------------------------

  def singlestep_update(self, x, s: up.Point, t: up.Point, order: int, m_s=None):
    """One singlestep DPM-Solver-`order` step s -> t (paper Alg. 1 for order 1, 4 and 5 for 2, 3)."""
    algo, ns = self.algorithm_type, self.noise_schedule
    m_s = self.model_fn(x, s.t) if m_s is None else m_s
    if order == 1:
      return up.first_order(algo, x, s, t, m_s)
    h = t.lam - s.lam
    if order == 2:
      s1 = up.point_at_lambda(ns, s.lam + 0.5 * h)
      m_1 = self.model_fn(up.first_order(algo, x, s, s1, m_s), s1.t)
      return up.second_order_final(algo, x, s, t, m_s, m_1, 0.5)
    r1, r2 = 1.0 / 3.0, 2.0 / 3.0
    s1 = up.point_at_lambda(ns, s.lam + r1 * h)
    s2 = up.point_at_lambda(ns, s.lam + r2 * h)
    m_1 = self.model_fn(up.first_order(algo, x, s, s1, m_s), s1.t)
    m_2 = self.model_fn(up.third_order_middle(algo, x, s, s2, m_s, m_1, r1, r2), s2.t)
    return up.third_order_final(algo, x, s, t, m_s, m_2, r2)

  def multistep_update(self, x, points: up.Point, i, hist, order: int, third_order: str = "exact"):
    """Step from grid point i to i + 1 with the model values hist[j] at grid points i - j."""
    algo = self.algorithm_type
    p = lambda j: _take(points, jnp.maximum(j, 0))
    if order == 1:
      return up.first_order(algo, x, p(i), p(i + 1), hist[0])
    if order == 2:
      return up.multistep_second(algo, x, p(i), p(i - 1), p(i + 1), hist[0], hist[1])
    return up.multistep_third(algo, x, p(i), p(i - 1), p(i - 2), p(i + 1), hist[0], hist[1],
                              hist[2], form=third_order)

  def _options(self, order: int, skip_type: str | None, lower_order_final, third_order):
    """Fills in the multistep defaults measured for this algorithm, order and step spacing."""
    default_form, default_rule = plan.multistep_defaults(self.algorithm_type, order, skip_type)
    return (default_rule if lower_order_final is None else lower_order_final,
            default_form if third_order is None else third_order)

  def _correct_xt(self, x, t, step):
    return x if self.correcting_xt_fn is None else self.correcting_xt_fn(x, t, step)

  # ---- sampling loops ----------------------------------------------------------------------------

  def _multistep(self, x, n, grid, order, n_max, lower_order_final, third_order):
    points = up.make_point(self.noise_schedule, grid)
    orders = plan.multistep_orders(order, n, n_max, lower_order_final, lambdas=points.lam)
    branches = [lambda x, i, hist, o=o: self.multistep_update(x, points, i, hist, o, third_order)
                for o in range(1, order + 1)]

    def body(i, carry):
      x, hist = carry
      m = self.model_fn(x, grid[i])
      hist = jnp.concatenate([m[None], hist[:-1]], axis=0)
      x = jax.lax.switch(orders[i] - 1, branches, x, i, hist)
      return self._correct_xt(x, grid[i + 1], i + 1), hist

    hist = jnp.zeros((order,) + x.shape, x.dtype)
    x, _ = jax.lax.fori_loop(0, n, body, (x, hist))
    return x, jnp.asarray(n, jnp.int32)

  def _singlestep(self, x, n, t_start, t_end, order, n_max, skip_type, fixed):
    ns = self.noise_schedule
    orders, k = plan.singlestep_orders(order, n, n_max, fixed)
    grid = plan.singlestep_grid(ns, skip_type, t_start, t_end, orders, k, n, n_max, fixed)
    points = up.make_point(ns, grid)
    used = [order] if fixed else list(range(1, order + 1))
    branches = [lambda x, s, t, o=o: self.singlestep_update(x, s, t, o) for o in used]

    def body(j, x):
      s, t = _take(points, j), _take(points, j + 1)
      idx = 0 if fixed else orders[j] - 1
      x = jax.lax.switch(idx, branches, x, s, t)
      return self._correct_xt(x, t.t, j + 1)

    x = jax.lax.fori_loop(0, k, body, x)
    return x, jnp.sum(orders).astype(jnp.int32)

  def _adaptive(self, x, t_start, t_end, order, atol, rtol):
    """Adaptive DPM-Solver-12 / 23 (paper Alg. 4, Appendix C): a lower- and a higher-order step share
    their first evaluations; the step is accepted when the scaled difference E <= 1 and the next
    step in lambda is h <- min(theta h E^(-1/order), lambda_end - lambda_s)."""
    ns, algo, dtype = self.noise_schedule, self.algorithm_type, x.dtype
    lam_end = ns.marginal_lambda(t_end)
    r1 = 0.5 if order == 2 else 1.0 / 3.0

    def attempt(x, s, h):
      lam_t = jnp.minimum(s.lam + h, lam_end)
      t = up.make_point(ns, jnp.where(lam_t >= lam_end, t_end, ns.inverse_lambda(lam_t)))
      m_s = self.model_fn(x, s.t)
      s1 = up.point_at_lambda(ns, s.lam + r1 * (t.lam - s.lam))
      m_1 = self.model_fn(up.first_order(algo, x, s, s1, m_s), s1.t)
      if order == 2:
        return t, up.first_order(algo, x, s, t, m_s), up.second_order_final(
            algo, x, s, t, m_s, m_1, r1)
      lower = up.second_order_final(algo, x, s, t, m_s, m_1, r1)
      s2 = up.point_at_lambda(ns, s.lam + 2.0 * r1 * (t.lam - s.lam))
      m_2 = self.model_fn(up.third_order_middle(algo, x, s, s2, m_s, m_1, r1, 2.0 * r1), s2.t)
      return t, lower, up.third_order_final(algo, x, s, t, m_s, m_2, 2.0 * r1)

    def body(carry):
      x, x_prev, s_t, h, nfe, _ = carry
      s = up.make_point(ns, s_t)
      t, lower, higher = attempt(x, s, h)
      delta = jnp.maximum(atol, rtol * jnp.maximum(jnp.abs(lower), jnp.abs(x_prev)))
      err = jnp.sqrt(jnp.mean(((higher - lower) / delta) ** 2, axis=tuple(range(1, x.ndim))))
      e = jnp.maximum(jnp.max(err), jnp.finfo(dtype).tiny)
      accept = e <= 1.0
      x, x_prev = jnp.where(accept, higher, x), jnp.where(accept, lower, x_prev)
      s_t, lam_s = jnp.where(accept, t.t, s.t), jnp.where(accept, t.lam, s.lam)
      h = jnp.minimum(ADAPTIVE_THETA * h * e ** (-1.0 / order), lam_end - lam_s)
      return x, x_prev, s_t, h, nfe + order, jnp.isfinite(e)

    def cond(carry):
      _, _, s_t, _, nfe, finite = carry
      return (s_t - t_end > ADAPTIVE_T_ERR) & (nfe < ADAPTIVE_MAX_NFE) & finite

    init = (x, x, jnp.asarray(t_start, dtype), jnp.asarray(ADAPTIVE_H_INIT, dtype),
            jnp.asarray(0, jnp.int32), jnp.asarray(True))
    x, _, _, _, nfe, _ = jax.lax.while_loop(cond, body, init)
    return x, nfe

  # ---- public entry points -----------------------------------------------------------------------

  def sampling_fn(self, *, max_steps: int, order: int = 2, skip_type: str = "time_uniform",
                  method: str = "multistep", lower_order_final: bool | str | None = None,
                  denoise_to_zero: bool = False, third_order: str | None = None,
                  explicit_grid: bool = False):
    """A pure, jittable f(x, steps, t_start, t_end, atol, rtol, grid=None) -> (x_end, nfe).

    `steps` may be a traced integer in [1, max_steps], so one compiled program serves every step
    count (the tests sweep 5..50 this way); `sample` fixes steps = max_steps. `grid` (multistep
    only): explicit decreasing times [max_steps + 1] replacing the skip_type grid. Call it inside your
    own jax.jit to pass model parameters as arguments instead of compile-time constants.
    `lower_order_final` and `third_order` as in `sample` (None: `plan.multistep_defaults` for
    this algorithm, order and skip_type, or for an explicit grid when explicit_grid).
    """
    lower_order_final, third_order = self._options(order, None if explicit_grid else skip_type,
                                                   lower_order_final, third_order)
    _validate_static(order, skip_type, method, lower_order_final, third_order)

    def run(x, steps, t_start, t_end, atol, rtol, grid=None):
      dtype = x.dtype
      t_start, t_end = jnp.asarray(t_start, dtype), jnp.asarray(t_end, dtype)
      if method == "adaptive":
        x, nfe = self._adaptive(x, t_start, t_end, order, jnp.asarray(atol, dtype),
                                jnp.asarray(rtol, dtype))
      elif method == "multistep":
        if grid is None:
          grid = plan.time_grid(self.noise_schedule, skip_type, t_start, t_end, steps, max_steps)
        x, nfe = self._multistep(x, steps, grid, order, max_steps, lower_order_final,
                                 third_order)
      else:
        x, nfe = self._singlestep(x, steps, t_start, t_end, order, max_steps, skip_type,
                                  fixed=method == "singlestep_fixed")
      if denoise_to_zero:
        x, nfe = self.data_prediction_fn(x, t_end), nfe + 1
      return x, nfe

    return run

  def default_times(self, steps: int, t_start=None, t_end=None) -> tuple[float, float]:
    """t_start defaults to T; t_end to 1/N for discrete models and, for continuous ones, to the
    paper's 1e-3 below 15 steps and 1e-4 from 15 on."""
    ns = self.noise_schedule
    if t_start is None:
      t_start = ns.T
    if t_end is None:
      if ns.schedule == "discrete":
        t_end = 1.0 / ns.total_N
      else:
        t_end = 1e-3 if steps < 15 else 1e-4
    if not 0.0 < float(t_end) < float(t_start) <= ns.T * (1 + 1e-6):
      raise ValueError(f"need 0 < t_end < t_start <= T={ns.T:.6g}, got t_start={t_start}, "
                       f"t_end={t_end}")
    return float(t_start), float(t_end)

  def sample(self, x: jax.Array, steps: int = 20, t_start=None, t_end=None, order: int = 2,
             skip_type: str = "time_uniform", method: str = "multistep",
             lower_order_final: bool | str | None = None, denoise_to_zero: bool = False,
             atol: float = 0.0078, rtol: float = 0.05, *, timesteps=None, return_nfe: bool = False,
             third_order: str | None = None):
    """Solves the diffusion ODE from t_start (noise x [B, ...]) to t_end; returns x_end [B, ...].

    Args:
      x: x at t_start, e.g. standard normal noise; may be sharded over devices along the batch.
      steps: number of model evaluations (singlestep_fixed uses steps // order * order; ignored by
        adaptive).
      t_start, t_end: start and end times; defaults in `default_times`.
      order: 1, 2 or 3 (adaptive: 2 for DPM-Solver-12, 3 for DPM-Solver-23).
      skip_type: time steps uniform in "logSNR", "time_uniform" or "time_quadratic".
      method: "singlestep" (DPM-Solver-fast's order mix, exactly `steps` evaluations),
        "singlestep_fixed", "multistep" or "adaptive".
      lower_order_final: multistep only: when the last steps drop to orders 2, 1: "published"
        (below 10 steps, the public code), "diffusers" (below 15), "always", "never" (= False),
        "auto" (= True: third order always, second order below 15), "lambda" (when the last
        step is longer than plan.LONG_FINAL_STEP in lambda; plan.LOWER_ORDER_FINAL).
        None: the measured default of `plan.multistep_defaults` (dpm/SOLVER.md).
      denoise_to_zero: finish with x0 = data prediction at t_end (one more evaluation).
      atol, rtol: adaptive only: tolerances of the step-size control.
      timesteps: multistep only: explicit decreasing times t_start = t_0 > ... > t_n = t_end in
        (0, T], e.g. another library's grid; replaces steps, skip_type, t_start and t_end.
      return_nfe: also return the number of model evaluations (an int32 array).
      third_order: multistep order 3 only: "exact" (D2 = h^2 m'', third order in the limit) or
        "published" (half that D2, as the public code and diffusers; updates.multistep_third).
        None: the measured default of `plan.multistep_defaults`.

    Returns:
      x_end, or (x_end, nfe) with return_nfe.
    """
    lower_order_final, third_order = self._options(
        order, None if timesteps is not None else skip_type, lower_order_final, third_order)
    _validate_static(order, skip_type, method, lower_order_final, third_order)
    if timesteps is not None:
      return self._sample_on_grid(x, timesteps, order, method, lower_order_final, denoise_to_zero,
                                  return_nfe, third_order)
    if method != "adaptive" and steps < (order if method == "singlestep_fixed" else 1):
      raise ValueError(f"steps={steps} is too small for method={method!r} with order={order}")
    t_start, t_end = self.default_times(steps, t_start, t_end)
    n = 0 if method == "adaptive" else int(steps)
    key = (n, order, skip_type, method, lower_order_final, denoise_to_zero, third_order)
    if key not in self._compiled:
      fn = self.sampling_fn(max_steps=max(n, 1), order=order, skip_type=skip_type, method=method,
                            lower_order_final=lower_order_final, denoise_to_zero=denoise_to_zero,
                            third_order=third_order)
      self._compiled[key] = jax.jit(lambda x, *args, fn=fn, n=n: fn(x, n, *args))
    x_end, nfe = self._compiled[key](x, t_start, t_end, atol, rtol)
    return (x_end, nfe) if return_nfe else x_end


  def _sample_on_grid(self, x, timesteps, order, method, lower_order_final, denoise_to_zero,
                      return_nfe, third_order):
    grid = np.asarray(timesteps, np.float64)
    if method != "multistep":
      raise ValueError("timesteps= is supported for method='multistep' only")
    if grid.ndim != 1 or grid.size < 2 or not np.all(np.diff(grid) < 0) or grid[-1] <= 0:
      raise ValueError("timesteps must be a 1-D strictly decreasing array of positive times")
    n = grid.size - 1
    key = ("grid", n, order, lower_order_final, denoise_to_zero, third_order)
    if key not in self._compiled:
      fn = self.sampling_fn(max_steps=n, order=order, method=method,
                            lower_order_final=lower_order_final, denoise_to_zero=denoise_to_zero,
                            third_order=third_order)
      self._compiled[key] = jax.jit(
          lambda x, g, fn=fn, n=n: fn(x, n, g[0], g[-1], 0.0, 0.0, grid=g))
    x_end, nfe = self._compiled[key](x, jnp.asarray(grid, x.dtype))
    return (x_end, nfe) if return_nfe else x_end


def _validate_static(order: int, skip_type: str, method: str, lower_order_final=True,
                     third_order: str = "exact") -> None:
  plan.METHODS.get(method, field="method")
  plan.SKIP_TYPES.get(skip_type, field="skip_type")
  plan.lower_order_final_below(lower_order_final, order)
  if third_order not in up.THIRD_ORDER_FORMS:
    raise ValueError(f"third_order={third_order!r}: expected one of {up.THIRD_ORDER_FORMS}")
  allowed = (2, 3) if method == "adaptive" else (1, 2, 3)
  if order not in allowed:
    raise ValueError(f"order={order!r} is invalid for method={method!r}: expected one of {allowed}")

