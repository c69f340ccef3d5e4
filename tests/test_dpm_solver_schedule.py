"""NoiseScheduleVP, model_wrapper, time grids and order plans against closed forms."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.integrate import quad

from common.errors import ConfigError
from dpm.gmm import default_mixture
from dpm.schedules import cosine_betas, get_alphas_cumprod, linear_betas
from dpm.solver import DPMSolver, NoiseScheduleVP, model_wrapper
from dpm.solver import plan, updates

GMM = default_mixture(2)


def test_discrete_schedule_hits_alphas_cumprod_at_knots():
  abar = get_alphas_cumprod("linear", 1000)              # [N + 1], abar[0] = 1
  ns = NoiseScheduleVP("discrete", betas=linear_betas(1000))
  ns_abar = NoiseScheduleVP("discrete", alphas_cumprod=abar[1:])
  n = np.array([1, 2, 10, 500, 999, 1000])
  with jax.enable_x64(True):
    t = jnp.asarray(n / 1000.0)
    np.testing.assert_allclose(np.exp(2 * ns.marginal_log_mean_coeff(t)), abar[n], rtol=1e-12)
    np.testing.assert_allclose(np.exp(2 * ns_abar.marginal_log_mean_coeff(t)), abar[n], rtol=1e-12)
    np.testing.assert_allclose(ns.model_time(t), n - 1, atol=1e-9)   # the network's step index
    # Between knots log alpha is linear in t.
    mid = 0.5 * (np.log(abar[10]) + np.log(abar[11])) / 2
    np.testing.assert_allclose(ns.marginal_log_mean_coeff(jnp.asarray(0.0105)), mid, rtol=1e-12)
  assert ns.T == 1.0 and ns.total_N == 1000


def test_discrete_rejects_length_n_plus_one_array():
  with pytest.raises(ConfigError, match=r"\[1:\]"):
    NoiseScheduleVP("discrete", alphas_cumprod=get_alphas_cumprod("linear", 1000))
  with pytest.raises(ConfigError, match="valid names"):
    NoiseScheduleVP("quadratic")


def test_discrete_cosine_is_trimmed_with_matching_time_input():
  """Knots with lambda < -5.1 are dropped; the rest keep their own t_n and network index n - 1."""
  abar = np.cumprod(1 - cosine_betas(1000))              # abar[k] = alpha_bar_{k+1}
  lam = 0.5 * np.log(abar / (1 - abar))
  keep = int(np.sum(lam >= -5.1))
  assert keep < 1000                                     # the cosine schedule does need trimming
  ns = NoiseScheduleVP("discrete", betas=cosine_betas(1000))
  assert ns.T == keep / 1000
  with jax.enable_x64(True):
    np.testing.assert_allclose(ns.model_time(jnp.asarray(ns.T)), keep - 1, atol=1e-9)
    np.testing.assert_allclose(np.exp(2 * ns.marginal_log_mean_coeff(jnp.asarray(ns.T))),
                               abar[keep - 1], rtol=1e-12)
    assert float(ns.marginal_lambda(jnp.asarray(ns.T))) >= -5.1


def test_linear_schedule_is_the_integral_of_beta():
  ns = NoiseScheduleVP("linear", continuous_beta_0=0.1, continuous_beta_1=20.0)
  with jax.enable_x64(True):
    for t in (1e-4, 0.3, 1.0):
      integral = quad(lambda s: 0.1 + s * 19.9, 0, t)[0]
      np.testing.assert_allclose(ns.marginal_log_mean_coeff(jnp.asarray(t)), -0.5 * integral,
                                 rtol=1e-12)


def test_cosine_schedule_closed_form_and_trim():
  ns = NoiseScheduleVP("cosine")
  f = lambda t: np.cos((t + 0.008) / 1.008 * np.pi / 2) ** 2
  with jax.enable_x64(True):
    for t in (1e-3, 0.5, 0.99):
      np.testing.assert_allclose(ns.marginal_alpha(jnp.asarray(t)) ** 2, f(t) / f(0), rtol=1e-10)
    np.testing.assert_allclose(ns.marginal_lambda(jnp.asarray(ns.T)), -5.1, atol=1e-9)
  assert 0.9946 < ns.T < 0.997
  np.testing.assert_allclose(ns.model_time(0.3), 0.3)   # continuous models see t itself


@pytest.mark.parametrize("kind", ["discrete", "linear", "cosine"])
def test_inverse_lambda_round_trip(kind):
  ns = (NoiseScheduleVP("discrete", betas=cosine_betas(1000)) if kind == "discrete"
        else NoiseScheduleVP(kind))
  with jax.enable_x64(True):
    t = jnp.linspace(1e-3, ns.T, 777)
    back, total = jax.jit(lambda t: (ns.inverse_lambda(ns.marginal_lambda(t)),
                                     ns.marginal_std(t) ** 2 + ns.marginal_alpha(t) ** 2))(t)
    np.testing.assert_allclose(back, t, atol=1e-9)
    np.testing.assert_allclose(total, 1.0, rtol=1e-12)


def test_model_types_all_give_the_exact_noise():
  """x_start / v / score networks built from the mixture's closed forms convert to the same eps."""
  ns = NoiseScheduleVP("linear")
  alpha_sigma = lambda t: (ns.marginal_alpha(t), ns.marginal_std(t))
  x0_hat = lambda x, t: GMM.posterior_mean(x, *alpha_sigma(t))
  models = {
      "noise": lambda x, t: GMM.eps(x, *alpha_sigma(t)),
      "x_start": x0_hat,
      "v": lambda x, t: (ns.marginal_alpha(t)[:, None] * GMM.eps(x, *alpha_sigma(t))
                         - ns.marginal_std(t)[:, None] * x0_hat(x, t)),
      "score": lambda x, t: GMM.score(x, *alpha_sigma(t)),
  }
  x = jax.random.normal(jax.random.PRNGKey(0), (32, 2))
  t = jnp.linspace(0.05, 0.9, 32)
  with jax.enable_x64(True):
    x, t = x.astype(jnp.float64), t.astype(jnp.float64)
    want = GMM.eps(x, *alpha_sigma(t))
    wrapped = {name: model_wrapper(model, ns, model_type=name) for name, model in models.items()}
    got = jax.jit(lambda x, t: {name: fn(x, t) for name, fn in wrapped.items()})(x, t)
    for name in models:
      np.testing.assert_allclose(got[name], want, atol=1e-9, err_msg=name)


def test_guidance_formulas():
  ns = NoiseScheduleVP("linear")
  x = jax.random.normal(jax.random.PRNGKey(1), (4, 3))
  cond, uncond = jnp.arange(4.0), jnp.zeros(4)
  model = lambda x, t, c: x * (1.0 + c[:, None]) + t[:, None]
  cfg = model_wrapper(model, ns, guidance_type="classifier-free", condition=cond,
                      unconditional_condition=uncond, guidance_scale=3.0)
  t = 0.4
  e_c, e_u = x * (1 + cond[:, None]) + t, x + t
  np.testing.assert_allclose(jax.jit(cfg)(x, t), e_u + 3.0 * (e_c - e_u), rtol=1e-6)
  # Classifier guidance with log p(c | x) = -|x - c|^2 / 2: eps - s sigma_t grad = eps + s sigma (x - c).
  clf = lambda x, t, c: -0.5 * jnp.sum((x - c[:, None]) ** 2, axis=1)
  guided = model_wrapper(lambda x, t: 0 * x, ns, guidance_type="classifier", condition=cond,
                         guidance_scale=2.0, classifier_fn=clf)
  sigma = float(ns.marginal_std(jnp.asarray(t)))
  np.testing.assert_allclose(jax.jit(guided)(x, t), 2.0 * sigma * (x - cond[:, None]), rtol=1e-5)


def test_dynamic_thresholding_matches_numpy():
  ns = NoiseScheduleVP("linear")
  solver = DPMSolver(lambda x, t: x, ns, correcting_x0_fn="dynamic_thresholding")
  x0 = 3.0 * jax.random.normal(jax.random.PRNGKey(2), (5, 8, 8, 1))
  got = jax.jit(solver.correcting_x0_fn)(x0, 0.5)
  flat = np.abs(np.asarray(x0)).reshape(5, -1)
  s = np.maximum(np.quantile(flat, 0.995, axis=1), 1.0)[:, None, None, None]
  np.testing.assert_allclose(got, np.clip(np.asarray(x0), -s, s) / s, rtol=1e-5)
  assert np.max(np.abs(got)) <= 1.0 + 1e-6


@pytest.mark.parametrize("kind", ["discrete", "cosine"])
def test_time_grids_strictly_decreasing_with_exact_ends(kind):
  """No zero-length (or reversed) step for any skip type and 5..50 steps."""
  ns = (NoiseScheduleVP("discrete", betas=cosine_betas(1000)) if kind == "discrete"
        else NoiseScheduleVP(kind))
  t_start, t_end = ns.T, 1e-3
  for skip in plan.SKIP_TYPES:
    grids = jax.jit(jax.vmap(lambda n, skip=skip: plan.time_grid(ns, skip, t_start, t_end, n, 50)))(
        jnp.arange(5, 51))
    for n, g in zip(range(5, 51), np.asarray(grids)):
      assert g[0] == np.float32(t_start) and g[n] == np.float32(t_end), (skip, n)
      assert np.all(np.diff(g[:n + 1]) < 0), (skip, n)


def test_singlestep_orders_follow_the_paper():
  """DPM-Solver-fast: exactly n evaluations with orders [3,..,3,2,1] / [3,..,3,1] / [3,..,3,2]."""
  for n in range(1, 51):
    for order in (1, 2, 3):
      orders, k = plan.singlestep_orders(order, n, 50, fixed=False)
      used = list(np.asarray(orders)[:int(k)])
      assert sum(used) == n and all(o == 0 for o in np.asarray(orders)[int(k):])
      if order == 3:
        tail = {0: [2, 1], 1: [1], 2: [2]}[n % 3]
        assert used == ([3] * (n // 3 + 1 - len(tail)) + tail)[-len(used):], (n, used)


def test_lambda_rule_drops_orders_when_the_last_step_is_long():
  """lower_order_final="lambda": the final steps drop to 2, 1 exactly when the last step spans more
  than LONG_FINAL_STEP in lambda, so on logSNR grids of the linear VP (t 1 -> 1e-3, lambda range
  9.6) it is the published below-10 rule, and on time-uniform grids (last step 2-4 long) "always"."""
  ns = NoiseScheduleVP("linear")
  lam_range = float(ns.marginal_lambda(jnp.float32(1e-3)) - ns.marginal_lambda(jnp.float32(1.0)))
  for n in range(3, 51):
    for skip, same_as in (("logSNR", "published"), ("time_uniform", "always")):
      lams = ns.marginal_lambda(plan.time_grid(ns, skip, 1.0, 1e-3, n, 50))
      ours = plan.multistep_orders(3, n, 50, "lambda", lambdas=lams)
      np.testing.assert_array_equal(ours, plan.multistep_orders(3, n, 50, same_as), err_msg=skip)
    lams = ns.marginal_lambda(plan.time_grid(ns, "logSNR", 1.0, 1e-3, n, 50))
    long = lam_range / n > plan.LONG_FINAL_STEP
    assert list(np.asarray(plan.multistep_orders(3, n, 50, "lambda", lambdas=lams))[n - 2:n]) == (
        [2, 1] if long else [3, 3]), n
  with pytest.raises(ValueError, match="lambdas"):
    plan.multistep_orders(3, 8, 50, "lambda")


def test_zero_length_step_is_identity():
  s = updates.Point(0.5, 0.3, -0.2, float(np.sqrt(-np.expm1(-0.4))))
  x, m = jnp.array([0.7, -1.2]), jnp.array([0.1, 0.4])
  for algo in ("dpmsolver", "dpmsolver++"):
    for step in (updates.first_order(algo, x, s, s, m),
                 updates.taylor_step(algo, x, s, s, m, d1=m, d2=m)):
      np.testing.assert_allclose(step, x, rtol=1e-6)
