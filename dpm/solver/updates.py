"""The exponential-integrator updates of DPM-Solver and DPM-Solver++ as pure functions.

Both algorithms solve the diffusion ODE exactly in its linear part and Taylor-expand the model output
in lambda (Lu et al. 2022, arXiv 2206.00927, Eq. 3.4; DPM-Solver++, arXiv 2211.01095, Eq. 9). For a step
s -> t (t < s, h = lambda_t - lambda_s > 0) they share one form,

  x_t = A x_s - C [phi_1(k) m_s + phi_2(k) D1 + phi_3(k) D2],

with m the model output, D1 ~ h m' and D2 ~ h^2 m'' (derivatives in lambda) and
  noise algorithm ("dpmsolver", m = eps):  A = alpha_t / alpha_s, C = sigma_t, k = h,
  data algorithm ("dpmsolver++", m = x0):  A = sigma_t / sigma_s, C = alpha_t, k = -h,
  phi_1(k) = e^k - 1, phi_2(k) = phi_1(k)/k - 1, phi_3(k) = phi_2(k)/k - 1/2
(phi_j(k) = k^(j-1) times the phi_j of the exponential-integrator literature). phi_2 and phi_3 switch
to their Taylor series for small |k|, so a zero-length step is the identity instead of 0/0.

A `Point` carries a time with its lambda, log alpha and sigma, computed once per time.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

NOISE, DATA = "dpmsolver", "dpmsolver++"
_SERIES_BELOW = 1e-2  # |k| below which phi_2, phi_3 use their series (truncation error ~ k^5 / 720)


class Point(NamedTuple):
  """A time t (scalar) and its schedule values."""
  t: jax.Array
  lam: jax.Array
  log_alpha: jax.Array
  sigma: jax.Array

  @property
  def alpha(self) -> jax.Array:
    return jnp.exp(self.log_alpha)


def make_point(ns, t) -> Point:
  """Evaluates the schedule `ns` (a NoiseScheduleVP) at time t."""
  return Point(t, ns.marginal_lambda(t), ns.marginal_log_mean_coeff(t), ns.marginal_std(t))


def point_at_lambda(ns, lam) -> Point:
  return make_point(ns, ns.inverse_lambda(lam))


def phis(k: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(phi_1, phi_2, phi_3)(k) as defined in the module docstring."""
  small = jnp.abs(k) < _SERIES_BELOW
  k_safe = jnp.where(small, jnp.ones_like(k), k)
  phi1 = jnp.expm1(k)
  phi2 = jnp.where(small, k * (1 / 2 + k * (1 / 6 + k * (1 / 24 + k / 120))),
                   phi1 / k_safe - 1.0)
  phi3 = jnp.where(small, k * (1 / 6 + k * (1 / 24 + k * (1 / 120 + k / 720))),
                   phi2 / k_safe - 0.5)
  return phi1, phi2, phi3


def frame(algorithm: str, s: Point, t: Point):
  """(A, C, k) of the step s -> t for the given algorithm."""
  h = t.lam - s.lam
  if algorithm == NOISE:
    return jnp.exp(t.log_alpha - s.log_alpha), t.sigma, h
  return t.sigma / s.sigma, t.alpha, -h


def taylor_step(algorithm: str, x, s: Point, t: Point, m_s, d1=None, d2=None):
  """x_t from x_s with the model value m_s and optional derivative terms D1 ~ h m', D2 ~ h^2 m''."""
  a, c, k = frame(algorithm, s, t)
  phi1, phi2, phi3 = phis(k)
  out = m_s * phi1
  if d1 is not None:
    out = out + phi2 * d1
  if d2 is not None:
    out = out + phi3 * d2
  return a * x - c * out


def first_order(algorithm: str, x, s: Point, t: Point, m_s):
  """DPM-Solver-1 (= DDIM, paper Eq. 3.7) / DPM-Solver++(1)."""
  return taylor_step(algorithm, x, s, t, m_s)


def second_order_final(algorithm: str, x, s: Point, t: Point, m_s, m_1, r1: float):
  """Last stage of singlestep DPM-Solver-2 (paper Alg. 4 / DPM-Solver++(2S), Alg. 1).

  m_1 is the model value at the intermediate point lambda_s + r1 h. The derivative term uses the
  paper's -C phi_1 / (2 r1) (m_1 - m_s) form, second order like the exact phi_2 form.
  """
  a, c, k = frame(algorithm, s, t)
  phi1 = jnp.expm1(k)
  return a * x - c * phi1 * m_s - c * phi1 / (2.0 * r1) * (m_1 - m_s)


def third_order_middle(algorithm: str, x, s: Point, s2: Point, m_s, m_1, r1: float, r2: float):
  """The second intermediate point u_2 of singlestep DPM-Solver-3 (paper Alg. 5): a step to
  lambda_s + r2 h with the derivative estimate (m_1 - m_s) / (r1 h)."""
  return taylor_step(algorithm, x, s, s2, m_s, d1=(r2 / r1) * (m_1 - m_s))


def third_order_final(algorithm: str, x, s: Point, t: Point, m_s, m_2, r2: float):
  """Last stage of singlestep DPM-Solver-3: derivative from the point at lambda_s + r2 h only."""
  return taylor_step(algorithm, x, s, t, m_s, d1=(m_2 - m_s) / r2)


def multistep_second(algorithm: str, x, p0: Point, p1: Point, t: Point, m0, m1):
  """Multistep second order (DPM-Solver++(2M), Alg. 2): D1 from the previous value m1 at p1 < p0."""
  h, h0 = t.lam - p0.lam, p0.lam - p1.lam
  d1 = (h / h0) * (m0 - m1)
  a, c, k = frame(algorithm, p0, t)
  phi1 = jnp.expm1(k)
  return a * x - c * phi1 * m0 - 0.5 * c * phi1 * d1


THIRD_ORDER_FORMS = ("exact", "published")


def multistep_third(algorithm: str, x, p0: Point, p1: Point, p2: Point, t: Point, m0, m1, m2,
                    form: str = "exact"):
  """Multistep third order from values at p2 < p1 < p0 (in lambda), on a non-uniform grid.

  With r_j = h_j / h, the backward differences D1_0 = (m0 - m1) / r0 and D1_1 = (m1 - m2) / r1 give
  D1 = D1_0 + r0 / (r0 + r1) (D1_0 - D1_1) = h m' + O(h^3) and (D1_0 - D1_1) / (r0 + r1)
  = h^2 m'' / 2 + O(h^3). form="exact" takes D2 = twice that, the h^2 m'' that the phi_3 term of
  the Taylor expansion needs (the update is exact for a model output quadratic in lambda; global
  order 3); form="published" takes it once, as the public DPM-Solver code and diffusers do (an
  O(h^3) local error in the limit, but more accurate at some practical step counts: dpm/SOLVER.md).
  """
  if form not in THIRD_ORDER_FORMS:
    raise ValueError(f"third_order={form!r}: expected one of {THIRD_ORDER_FORMS}")
  h, h0, h1 = t.lam - p0.lam, p0.lam - p1.lam, p1.lam - p2.lam
  d1_0 = (h / h0) * (m0 - m1)
  d1_1 = (h / h1) * (m1 - m2)
  d1 = d1_0 + (h0 / (h0 + h1)) * (d1_0 - d1_1)
  d2 = ((2.0 if form == "exact" else 1.0) * h / (h0 + h1)) * (d1_0 - d1_1)
  return taylor_step(algorithm, x, p0, t, m0, d1=d1, d2=d2)
