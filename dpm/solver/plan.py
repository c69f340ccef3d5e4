"""Time grids and per-step orders, computed inside the compiled program.

The number of steps may be a traced integer: arrays have a static length `n_max + 1` and entries past
the last used one repeat t_end, so one compiled sampler serves every step count up to n_max.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from common.registry import Registry

SKIP_TYPES: Registry = Registry("skip type")
METHODS: Registry = Registry("solver method")
for _name in ("singlestep", "singlestep_fixed", "multistep", "adaptive"):
  METHODS.add(_name, _name)

# The lower-order-final rule of multistep sampling: below how many steps the last steps drop to
# orders 2, 1 (`multistep_orders`). "published": the public DPM-Solver code (below 10 steps);
# "diffusers": diffusers' schedulers (below 15); "always" / "never"; True is "auto", this codebase's
# own default (third order: always, since on time-uniform grids the last steps are several times
# longer in lambda than the ones before and a quadratic extrapolated over them is unstable near t = 0;
# second order: below 15), False is "never". dpm/SOLVER.md has the measurements behind each choice.
LOWER_ORDER_FINAL: Registry = Registry("lower_order_final rule")
_ALWAYS = 10 ** 9
LOWER_ORDER_FINAL.add("never", lambda order: 0)
LOWER_ORDER_FINAL.add("published", lambda order: 10)
LOWER_ORDER_FINAL.add("diffusers", lambda order: 15)
LOWER_ORDER_FINAL.add("always", lambda order: _ALWAYS)
LOWER_ORDER_FINAL.add("auto", lambda order: _ALWAYS if order >= 3 else 15)
# "lambda": decided by the grid, not the step count: the last steps drop to orders 2, 1 when the
# final step is longer than LONG_FINAL_STEP in lambda = log(alpha / sigma). On logSNR grids of the
# linear VP from t = 1 to 1e-3 this is the published rule exactly (h = 9.6 / n > 1 iff n < 10); on
# time-quadratic grids it drops below about 22 steps, on time-uniform ones always (their last step
# spans 2-4 in lambda at every NFE from 5 to 50).
LAMBDA_RULE = -1
LONG_FINAL_STEP = 1.0
LOWER_ORDER_FINAL.add("lambda", lambda order: LAMBDA_RULE)


# Multistep defaults, chosen by benchmarks/solver_forms.py (dpm/SOLVER.md, "Defaults from
# measurement"): per (algorithm, order, step spacing) the (third_order, lower_order_final) that is
# never more than 5% less accurate than the public code's configuration at any NFE from 5 to 50 on
# five Gaussian-mixture testbeds, and the most accurate on average among those. Only one
# combination beats the public configuration by that rule; everywhere else it is the public one.
PUBLISHED_OPTIONS = ("published", "published")
MULTISTEP_DEFAULTS = {("dpmsolver", 3, "logSNR"): ("exact", "published")}


def multistep_defaults(algorithm: str, order: int, skip_type: str | None) -> tuple[str, str]:
  """(third_order, lower_order_final) used when `DPMSolver.sample` is not given them; an explicit
  grid (skip_type None) gets the public configuration."""
  return MULTISTEP_DEFAULTS.get((algorithm, order, skip_type), PUBLISHED_OPTIONS)


def lower_order_final_below(rule, order: int) -> int:
  """The step count below which `rule` (a LOWER_ORDER_FINAL name, or True = "auto", False =
  "never") makes the final multistep steps drop to lower orders."""
  if isinstance(rule, bool):
    rule = "auto" if rule else "never"
  return LOWER_ORDER_FINAL.get(rule, field="lower_order_final")(order)


def _fraction(n, n_max: int, dtype):
  """(i / n clipped to 1, i >= n) for i = 0..n_max; shapes [n_max + 1].

  The end mask is an integer comparison: XLA may compute n / n as n * (1 / n) = 1 - ulp.
  """
  i = jnp.arange(n_max + 1)
  return jnp.minimum(i, n).astype(dtype) / jnp.asarray(n, dtype), i >= n


@SKIP_TYPES.register("logSNR")
def _logsnr(ns, t_start, t_end, frac):
  lam_s, lam_e = ns.marginal_lambda(t_start), ns.marginal_lambda(t_end)
  return ns.inverse_lambda(lam_s + frac * (lam_e - lam_s))


@SKIP_TYPES.register("time_uniform")
def _time_uniform(ns, t_start, t_end, frac):
  del ns
  return t_start + frac * (t_end - t_start)


@SKIP_TYPES.register("time_quadratic")
def _time_quadratic(ns, t_start, t_end, frac):
  del ns
  root = jnp.sqrt(t_start) + frac * (jnp.sqrt(t_end) - jnp.sqrt(t_start))
  return root ** 2


def time_grid(ns, skip_type: str, t_start, t_end, n, n_max: int) -> jax.Array:
  """The n + 1 decreasing times t_start = t_0 > ... > t_n = t_end, padded with t_end to n_max + 1.

  The end points are set exactly (not through inverse_lambda), so the last step ends at t_end and
  never has zero or negative length.
  """
  t_start = jnp.asarray(t_start)
  frac, done = _fraction(n, n_max, t_start.dtype)
  grid = SKIP_TYPES.get(skip_type, field="skip_type")(ns, t_start, t_end, frac)
  grid = jnp.where(done, t_end, grid)
  return grid.at[0].set(t_start)


def multistep_orders(order: int, n, n_max: int, lower_order_final, lambdas=None) -> jax.Array:
  """Order of step i = 1..n (index i - 1), shape [n_max]: warm-up with orders 1, 2, then `order`;
  when n is below the `lower_order_final` rule's threshold (`lower_order_final_below`), or for
  the "lambda" rule when the last step lambdas[n] - lambdas[n - 1] exceeds LONG_FINAL_STEP
  (`lambdas`: lambda at the n_max + 1 grid times), the last steps drop to orders 2, 1."""
  i = jnp.arange(1, n_max + 1)
  orders = jnp.minimum(order, i)
  below = lower_order_final_below(lower_order_final, order)
  if below == LAMBDA_RULE:
    if lambdas is None:
      raise ValueError("lower_order_final='lambda' needs the grid's lambdas")
    lambdas = jnp.asarray(lambdas)
    last = jnp.take(lambdas, n) - jnp.take(lambdas, n - 1)
    orders = jnp.where(last > LONG_FINAL_STEP, jnp.minimum(orders, n + 1 - i), orders)
  elif below > 0:
    orders = jnp.where(n < below, jnp.minimum(orders, n + 1 - i), orders)
  return jnp.clip(orders, 1, order)


def singlestep_orders(order: int, n, n_max: int, fixed: bool):
  """(orders [n_max], number of outer steps K) for singlestep sampling with n evaluations in all.

  Adaptive-free DPM-Solver-fast (paper Sec. 3.4): K = n // 3 + 1 steps with orders
  [3, ..., 3, 2, 1] / [3, ..., 3, 1] / [3, ..., 3, 2] for n mod 3 = 0 / 1 / 2 (order 3), and
  [2, ..., 2] / [2, ..., 2, 1] for even / odd n (order 2): exactly n evaluations. With `fixed`,
  K = n // order steps all of `order` (K * order evaluations).
  """
  j = jnp.arange(n_max)
  if fixed or order == 1:
    k = n // order
    return jnp.where(j < k, order, 0), k
  if order == 2:
    k = n // 2 + n % 2
    last = jnp.where(n % 2 == 1, 1, 2)
    return jnp.where(j < k - 1, 2, jnp.where(j == k - 1, last, 0)), k
  k = n // 3 + 1
  rem = n % 3
  last = jnp.where(rem == 0, 1, rem)
  second_last = jnp.where(rem == 0, 2, 3)
  orders = jnp.where(j < k - 2, 3, jnp.where(j == k - 2, second_last, jnp.where(j == k - 1, last, 0)))
  return orders, k


def singlestep_grid(ns, skip_type: str, t_start, t_end, orders, k, n, n_max: int,
                    fixed: bool) -> jax.Array:
  """Outer times of the K singlestep steps, shape [n_max + 1].

  logSNR or `fixed`: K steps evenly spaced by the skip type (each step's intermediate points split it
  further in lambda). Otherwise the steps end on the n-step grid at the cumulative orders, so their
  lengths follow the orders.
  """
  if skip_type == "logSNR" or fixed:
    return time_grid(ns, skip_type, t_start, t_end, k, n_max)
  fine = time_grid(ns, skip_type, t_start, t_end, n, n_max)
  ends = jnp.minimum(jnp.cumsum(orders), n)
  return jnp.concatenate([fine[:1], fine[ends]])
