"""SN-DPM and NPR-DPM (Bao et al., ICML 2022, arXiv 2206.07309): the optimal diagonal reverse
covariance with an imperfect mean, estimated from a second-stage head.

Equations (../shared/papers/dpm.md, "SN-DPM / NPR-DPM"); a step goes from timestep t down to s:
  c_hat(x_t) = (beta_bar_t / alpha_bar_t) g(x_t),              NPR: g ~ E[(eps - eps_hat)^2 | x_t]
  c_hat(x_t) = (beta_bar_t / alpha_bar_t) (h(x_t) - eps_hat^2), SN:  h ~ E[eps^2 | x_t]
  sigma^2_{s|t}(x_t) = lambda^2_{s|t} + gamma^2_{s|t} clip(c_hat(x_t), 0, 1)     elementwise
with lambda^2 and gamma^2 of Analytic-DPM (dpm/analytic.py): DDPM form lambda^2 = beta_tilde,
gamma^2 = alpha_bar_s beta_{t|s}^2 / beta_bar_t^2; DDIM form lambda^2 = eta^2 beta_tilde,
gamma^2 = (sqrt(alpha_bar_s) - sqrt((beta_bar_s - lambda^2) alpha_bar_t / beta_bar_t))^2.
c_hat estimates Var[x_0 | x_t] per element (SN: exact for the exact mean; NPR: the mean's squared
error E[(x_0 - x0_hat)^2 | x_t] for any mean), so this is Analytic-DPM's Thm 1 per element and per
state; its dimension average is an isotropic, state-dependent variance (the ablation, `average`).

Per-step tables follow dpm/reverse.py: index k = 0..K-1 is the step trajectory[k] -> trajectory[k-1]
(-> 0 for k = 0). Everything here is a pure function, usable inside jitted loops.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from common import mesh as cmesh
from common.errors import ConfigError
from common.registry import Registry
from dpm import analytic, reverse

KINDS = ("sn", "npr")
DEFAULT_CLIP_RANGE = analytic.DEFAULT_CLIP_RANGE


@dataclasses.dataclass(frozen=True)
class Variance:
  """A state-dependent reverse variance: which moment the head learns, and whether its estimate of
  Var[x_0 | x_t] is averaged over dimensions (isotropic per state) before the clip."""
  kind: str
  average: bool = False
  description: str = ""


VARIANCES: Registry = Registry("state-dependent reverse variance")
VARIANCES.add("npr", Variance("npr", False, "NPR-DPM: g ~ E[(eps - eps_hat)^2 | x_t], diagonal"))
VARIANCES.add("sn", Variance("sn", False, "SN-DPM: h ~ E[eps^2 | x_t], diagonal"))
VARIANCES.add("npr_avg", Variance("npr", True, "NPR, c_hat averaged over dimensions (ablation)"))
VARIANCES.add("sn_avg", Variance("sn", True, "SN, c_hat averaged over dimensions (ablation)"))


def check_kind(kind: str) -> None:
  if kind not in KINDS:
    raise ConfigError(f"kind={kind!r} is invalid: expected one of {list(KINDS)}")


def _concrete(*xs) -> bool:
  return not any(isinstance(x, jax.core.Tracer) for x in xs)


def step_coefficients(alphas_cumprod, s, t, form: str = "ddpm", eta: float = 0.0):
  """(lambda^2_{s|t}, gamma^2_{s|t}) of the step t -> s (ints or int arrays, 0 <= s < t).

  float64 numpy for concrete steps (the DDIM gamma^2 is a difference of close numbers for short
  steps); jnp in the table's dtype when s or t are traced.
  """
  reverse.check_form(form)
  xp = np if _concrete(s, t, alphas_cumprod) else jnp
  abar = xp.asarray(alphas_cumprod, np.float64) if xp is np else jnp.asarray(alphas_cumprod)
  abar_s, abar_t = abar[s], abar[t]
  bbar_s, bbar_t = 1.0 - abar_s, 1.0 - abar_t
  beta_ts = 1.0 - abar_t / abar_s
  beta_tilde = bbar_s * beta_ts / bbar_t
  lam2 = beta_tilde if form == "ddpm" else eta ** 2 * beta_tilde
  if form == "ddpm":
    gamma2 = abar_s * beta_ts ** 2 / bbar_t ** 2
  else:
    gamma2 = (xp.sqrt(abar_s) - xp.sqrt(xp.maximum(bbar_s - lam2, 0.0) * abar_t / bbar_t)) ** 2
  return lam2, gamma2


def posterior_variance_estimate(moment: jax.Array, eps_hat: jax.Array, ratio, kind: str,
                                clip_range: tuple[float, float] | None = DEFAULT_CLIP_RANGE,
                                average: bool = False) -> jax.Array:
  """c_hat(x_t), the estimate of Var[x_0 | x_t] per element, clipped to clip_range; shape of moment.

  Args:
    moment: [B, ...] g (kind 'npr') or h (kind 'sn') at x_t.
    eps_hat: [B, ...] the (frozen) noise prediction at x_t; SN forms h - eps_hat^2 with it.
    ratio: beta_bar_t / alpha_bar_t, a scalar or broadcastable to moment (computed in float64 by
      the callers: 1 - alpha_bar_t in float32 loses digits at small t).
    kind: 'npr' or 'sn'.
    clip_range: (low, high) elementwise bounds ([0, 1] for data in [-1, 1]), or None.
    average: average the unclipped estimate over all but the batch axis first (isotropic per
      state, as Analytic-DPM clips its average).
  """
  check_kind(kind)
  second = moment if kind == "npr" else moment - jnp.square(eps_hat)
  c = ratio * second
  if average:
    axes = tuple(range(1, jnp.ndim(c)))
    c = jnp.broadcast_to(jnp.mean(c, axis=axes, keepdims=True), jnp.shape(c))
  return c if clip_range is None else jnp.clip(c, clip_range[0], clip_range[1])


def diagonal_variance(moment, eps_hat, alphas_cumprod, s, t, kind: str, form: str = "ddpm",
                      eta: float = 0.0,
                      clip_range: tuple[float, float] | None = DEFAULT_CLIP_RANGE) -> jax.Array:
  """The elementwise reverse variance sigma^2_{s|t}(x_t) of SN-DPM / NPR-DPM (module docstring).

  Args:
    moment: [B, ...] g ~ E[(eps - eps_hat)^2 | x_t] (kind='npr') or h ~ E[eps^2 | x_t] (kind='sn').
    eps_hat: [B, ...] the noise prediction at x_t (SN's posterior second moment uses it).
    alphas_cumprod: [N + 1], alphas_cumprod[0] = 1.
    s, t: integer timesteps, 0 <= s < t <= N (the step t -> s; s = 0 gives the x_0 variance).
    kind: 'npr' or 'sn'.
    form: 'ddpm' or 'ddim'; eta: DDIM's eta.
    clip_range: elementwise bounds on the x_0 posterior variance estimate, or None.

  Returns:
    sigma^2 with the shape of `moment`.
  """
  lam2, gamma2 = step_coefficients(alphas_cumprod, s, t, form, eta)
  dtype = jnp.result_type(moment)
  if _concrete(t, alphas_cumprod):
    abar_t = np.asarray(alphas_cumprod, np.float64)[t]
  else:
    abar_t = jnp.asarray(alphas_cumprod)[t]
  c = posterior_variance_estimate(moment, eps_hat, jnp.asarray((1.0 - abar_t) / abar_t, dtype),
                                  kind, clip_range)
  return jnp.asarray(lam2, dtype) + jnp.asarray(gamma2, dtype) * c


# ----------------------------------------------------------------------------------------------
# Per-step tables for the sampler and the NLL


class StepTable(NamedTuple):
  """Per-step arrays of a trajectory (a pytree: jit arguments), each [K] (or padded to N)."""
  ratio: jax.Array  # beta_bar_t / alpha_bar_t
  lam2: jax.Array
  gamma2: jax.Array
  bound: jax.Array  # upper bound on sigma^2 (the first-step sampling clip; inf elsewhere)


def step_table(alphas_cumprod: np.ndarray, trajectory: np.ndarray, form: str = "ddpm",
               eta: float = 0.0, first_step_clip: float | None = None, num_bins: int = 256,
               dtype=jnp.float32) -> StepTable:
  """The StepTable of a trajectory; first_step_clip = c applies Analytic-DPM's sampling clip
  sigma^2 <= (c 2/255 sqrt(pi/2))^2 elementwise on the step into x_{tau_1} (index 1)."""
  terms = reverse.step_terms(alphas_cumprod, trajectory)
  lam2, gamma2 = step_coefficients(alphas_cumprod, terms.s, terms.t, form, eta)
  bound = np.full(len(terms.t), np.inf)
  if first_step_clip is not None and len(bound) > 1:
    bound[1] = analytic.first_step_bound(first_step_clip, num_bins)
  ratio = (1.0 - terms.abar_t) / terms.abar_t
  return StepTable(*(jnp.asarray(a, dtype) for a in (ratio, lam2, gamma2, bound)))


def table_variance(table: StepTable, k, moment, eps_hat, variance: Variance,
                   clip_range: tuple[float, float] | None = DEFAULT_CLIP_RANGE) -> jax.Array:
  """sigma^2 of step k elementwise, [B, ...], from a StepTable (k may be traced)."""
  c = posterior_variance_estimate(moment, eps_hat, table.ratio[k], variance.kind, clip_range,
                                  variance.average)
  return jnp.minimum(table.lam2[k] + table.gamma2[k] * c, table.bound[k])


def sampling_variance_fn(name: str, alphas_cumprod: np.ndarray, trajectory: np.ndarray,
                         form: str = "ddpm", eta: float = 0.0,
                         clip_range: tuple[float, float] | None = DEFAULT_CLIP_RANGE,
                         first_step_clip: float | None = 1.0, num_bins: int = 256,
                         average: bool | None = None) -> Callable:
  """variance_fn(k, eps_hat, moments) -> sigma^2 [B, ...] for dpm.reverse.sample_state_dependent.

  Args:
    name: a VARIANCES name ('npr', 'sn', 'npr_avg', 'sn_avg').
    moments: at call time, {kind: [B, ...]} from the two-part model.
    average: overrides the name's dimension averaging (the ablation switch); None keeps it.
    Others as for dpm.analytic.sampling_variance (first_step_clip=None: off).
  """
  spec = VARIANCES.get(name, field="sample.variance")
  if average is not None:
    spec = dataclasses.replace(spec, average=bool(average))
  table = step_table(alphas_cumprod, trajectory, form, eta, first_step_clip, num_bins)

  def variance_fn(k, eps_hat, moments: Mapping[str, jax.Array]):
    return table_variance(table, k, moments[spec.kind], eps_hat, spec, clip_range)
  return variance_fn


# ----------------------------------------------------------------------------------------------
# Dimension-averaged moments over the data (the DP trajectory and the analytic baseline)


def equivalent_gamma(mean_moment: np.ndarray) -> np.ndarray:
  """Gamma_t of Analytic-DPM with the same dimension-averaged c: c = (beta_bar/alpha_bar)(1 - Gamma)
  and c = (beta_bar/alpha_bar) m, so Gamma = 1 - m for m = E mean_d g (NPR) or E mean_d (h -
  eps_hat^2) (SN). Feeding it to analytic.dp_cost_matrix and segmented_trajectories gives the
  DP trajectory of the averaged variance (its clip and the reliable-prefix rule included)."""
  return 1.0 - np.asarray(mean_moment, np.float64)


@functools.partial(jax.jit, static_argnames=("kinds",))
def _moment_chunk_sums(model_fn, x0, index, weight, ts, num_ts, sqrt_abar, sqrt_bbar, rng, *,
                       kinds):
  """[1 + len(kinds), T] sums over one chunk of weight * mean_d of eps_hat^2, then per kind g
  (npr) or h - eps_hat^2 (sn), at each timestep ts[:num_ts]."""
  b = x0.shape[0]
  per = lambda a: jnp.mean(jnp.reshape(a, (b, -1)).astype(jnp.float32), axis=1)

  def one_t(i, sums):
    n = ts[i]
    key_n = jax.random.fold_in(rng, n)  # keyed by example index: chunking and sharding agnostic
    noise = jax.vmap(lambda j: jax.random.normal(jax.random.fold_in(key_n, j), x0.shape[1:],
                                                 x0.dtype))(index)
    eps, moments = model_fn(sqrt_abar[n] * x0 + sqrt_bbar[n] * noise, jnp.full((b,), n, jnp.int32))
    rows = [per(jnp.square(eps))] + [
        per(moments[k] if k == "npr" else moments[k] - jnp.square(eps)) for k in kinds]
    return sums.at[:, i].set(jnp.stack([jnp.sum(weight * r) for r in rows]))

  return jax.lax.fori_loop(0, num_ts, one_t, jnp.zeros((1 + len(kinds),) + ts.shape, jnp.float32))


def estimate_moments(model_fn: Callable, alphas_cumprod: np.ndarray, x0: Any,
                     timesteps: Sequence[int], rng: jax.Array, kinds: Sequence[str] = KINDS, *,
                     batch_size: int = 256, mesh=None) -> dict[str, np.ndarray]:
  """Monte Carlo dimension averages over q(x_n) at each timestep, one noise draw per image:

    'gamma': Gamma_n = E mean_d eps_hat^2 (Analytic-DPM's, for the analytic baseline),
    'npr':   E mean_d g(x_n),  'sn': E mean_d (h(x_n) - eps_hat^2)   (for the averaged DP).

  Args:
    model_fn: (x [B, ...], n [B] int32) -> (eps_hat, {kind: moment}); a jax.tree_util.Partial
      keeps the weights as jit arguments.
    alphas_cumprod: [N + 1]; x0: [M, ...] data; timesteps: [T] in 1..N; rng: the noise key.
    kinds: the heads to average; batch_size: chunk size; mesh: shard each chunk over its data axis.

  Returns:
    {'gamma': [T], kind: [T], ...} float64.
  """
  abar, ts = analytic.checked_timesteps(alphas_cumprod, timesteps)
  x0 = np.asarray(x0)
  num = x0.shape[0]
  ndev = mesh.size if mesh is not None else 1
  bs = -(-min(batch_size, num) // ndev) * ndev
  dtype = jax.dtypes.canonicalize_dtype(x0.dtype if np.issubdtype(x0.dtype, np.floating)
                                        else np.float32)
  padded = np.ones(len(abar) - 1, np.int32)
  padded[:len(ts)] = ts
  consts = (jnp.asarray(padded), jnp.int32(len(ts)), jnp.asarray(np.sqrt(abar), dtype),
            jnp.asarray(np.sqrt(1 - abar), dtype))
  totals = np.zeros((1 + len(kinds), len(ts)), np.float64)
  fn = analytic.as_pytree_fn(model_fn)
  for start in range(0, num, bs):
    chunk, index, weight = analytic._padded_chunk(x0, start, bs, dtype)
    if mesh is not None:
      sharding = cmesh.batch_sharding(mesh)
      chunk, index, weight = (jax.device_put(a, sharding) for a in (chunk, index, weight))
    sums = _moment_chunk_sums(fn, chunk, index, weight, *consts, rng, kinds=tuple(kinds))
    totals += np.asarray(sums, np.float64)[:, :len(ts)]  # blocks (CPU-device deadlock)
  totals /= num
  return {name: totals[i] for i, name in enumerate(("gamma",) + tuple(kinds))}


def check_moments(moments: Mapping[str, Any], kinds: Sequence[str]) -> None:
  missing = [k for k in kinds if k not in moments]
  if missing:
    raise ConfigError(f"the model has no head for {missing} (it has {sorted(moments)}): add them "
                      "to sn_npr.kinds and train the second stage")
