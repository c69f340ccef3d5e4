"""Analytic-DPM (Bao et al. 2022, arXiv 2201.06503): optimal reverse variance, its bounds, the
DP-optimal trajectory and a Gamma cache.

Equations (../shared/papers/dpm.md, "Analytic-DPM"); n = 1..N, alphas_cumprod has length N + 1:
  Gamma_n = E_{q(x_n)} ||eps_hat(x_n, n)||^2 / d                   estimate_gamma (Monte Carlo)
  C_n = (beta_bar_n / alpha_bar_n)(1 - Gamma_n) in [0, ((b-a)/2)^2]  posterior_variance (Thm 1-2)
  sigma*^2 = lambda^2 + gamma^2 C_t                                optimal_variance (Thm 1)
  sigma^2 <= (c 2/255 sqrt(pi/2))^2 on the step into x_{tau_1}     clip_first_step (experiments)
  J(s, t) = log(1 - beta_{t|s} Gamma_t / beta_bar_t)               dp_cost_matrix (Thm 3)
  min over K-step trajectories of sum J, O(K N^2)                   optimal_trajectory

Everything is a pure function of (eps_fn, arrays, rng) so a runner can call it on a trained model.
Per-step arrays follow dpm/reverse.py: index k = 0..K-1 is the step from trajectory[k] down to
trajectory[k-1] (down to 0 for k = 0).
"""

from __future__ import annotations

import json
import logging
import math
import os
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from common import io as cio
from common import mesh as cmesh
from common.errors import ConfigError
from common.registry import Registry
from dpm import reverse

EpsFn = reverse.EpsFn
DEFAULT_CLIP_RANGE = (0.0, 1.0)  # [0, ((b - a) / 2)^2] for data in [a, b] = [-1, 1]
VARIANCES: Registry = Registry("reverse variance")


# ----------------------------------------------------------------------------------------------
# Gamma by Monte Carlo


def as_pytree_fn(eps_fn: Callable) -> jax.tree_util.Partial:
  """eps_fn as a pytree, so it can be an argument of a jitted function. A jax.tree_util.Partial
  (e.g. Partial(apply, params)) keeps its arrays as traced arguments instead of constants baked
  into each compiled program; a plain function becomes a leafless Partial, cached by identity."""
  return eps_fn if isinstance(eps_fn, jax.tree_util.Partial) else jax.tree_util.Partial(eps_fn)


@jax.jit
def _gamma_chunk_sums(eps_fn, x0, index, weight, ts, num_ts, sqrt_abar, sqrt_bbar, rng):
  """Sum over one data chunk of weight * ||eps_hat(x_n, n)||^2 / d for each n in ts[:num_ts]."""
  b, d = x0.shape[0], math.prod(x0.shape[1:])

  def one_t(i, sums):
    n = ts[i]
    # One noise draw per (example, timestep), keyed by the example's global index: the estimate
    # does not depend on the chunk size or on how the batch is sharded over devices.
    key_n = jax.random.fold_in(rng, n)
    noise = jax.vmap(lambda j: jax.random.normal(jax.random.fold_in(key_n, j), x0.shape[1:],
                                                 x0.dtype))(index)
    x_n = sqrt_abar[n] * x0 + sqrt_bbar[n] * noise
    eps = eps_fn(x_n, jnp.full((b,), n, jnp.int32))
    sq = jnp.sum(jnp.reshape(eps, (b, -1)).astype(jnp.float32) ** 2, axis=1) / d
    return sums.at[i].set(jnp.sum(weight * sq))

  # `ts` is padded to length N and the loop runs num_ts times: one compile for any timesteps.
  return jax.lax.fori_loop(0, num_ts, one_t, jnp.zeros(ts.shape, jnp.float32))


def checked_timesteps(alphas_cumprod, timesteps) -> tuple[np.ndarray, np.ndarray]:
  """(alphas_cumprod as float64 [N + 1], timesteps as int32 [T]), the timesteps checked to lie in
  1..N: the inputs of the Monte Carlo moment estimators (here and in dpm/covariance.py)."""
  abar = np.asarray(alphas_cumprod, np.float64)
  ts = np.asarray(timesteps, np.int32).reshape(-1)
  if ts.size and (ts.min() < 1 or ts.max() >= len(abar)):
    raise ValueError(f"timesteps must lie in 1..{len(abar) - 1}, got {ts.min()}..{ts.max()}")
  return abar, ts


def estimate_gamma(eps_fn: EpsFn, alphas_cumprod: np.ndarray, x0: Any,
                   timesteps: Sequence[int], rng: jax.Array, *, batch_size: int = 256,
                   mesh: Mesh | None = None) -> np.ndarray:
  """Monte Carlo Gamma_n = E ||eps_hat(x_n, n)||^2 / d at the given timesteps (Analytic-DPM Thm 1).

  One noise draw per image and timestep, as in the paper. The data is processed in chunks of
  `batch_size` (one compiled shape; the last chunk is padded and masked), each chunk sharded over
  `mesh`'s data axis when a mesh is given. Results are blocked on per chunk, which also avoids the
  collective deadlock of asynchronously dispatched sharded steps on simulated CPU devices.

  Args:
    eps_fn: noise predictor eps_hat(x [B, ...], n [B] int32 in 1..N) -> [B, ...]; for a large
      network pass jax.tree_util.Partial(apply, params) so the weights are jit arguments.
    alphas_cumprod: [N + 1] with alphas_cumprod[0] = 1.
    x0: [M, ...] data (numpy or jax), e.g. the training split in [-1, 1].
    timesteps: [T] ints in 1..N.
    rng: PRNG key for the forward noise.
    batch_size: examples per chunk (rounded up to a multiple of the mesh size).
    mesh: optional 1-D device mesh from common.mesh.make_mesh().

  Returns:
    [T] float64 Gamma at `timesteps`.
  """
  abar, ts = checked_timesteps(alphas_cumprod, timesteps)
  x0 = np.asarray(x0)
  num = x0.shape[0]
  if num == 0:
    raise ValueError("estimate_gamma needs at least one data point")
  ndev = mesh.size if mesh is not None else 1
  bs = -(-min(batch_size, num) // ndev) * ndev
  # float64 data becomes float32 unless jax_enable_x64; integer data is converted to float32.
  dtype = jax.dtypes.canonicalize_dtype(x0.dtype if np.issubdtype(x0.dtype, np.floating)
                                        else np.float32)
  eps_tree = as_pytree_fn(eps_fn)
  padded = np.ones(len(abar) - 1, np.int32)
  padded[:len(ts)] = ts
  consts = (jnp.asarray(padded), jnp.int32(len(ts)), jnp.asarray(np.sqrt(abar), dtype),
            jnp.asarray(np.sqrt(1 - abar), dtype))
  totals = np.zeros(len(ts), np.float64)
  for start in range(0, num, bs):
    chunk, index, weight = _padded_chunk(x0, start, bs, dtype)
    if mesh is not None:
      sharding = cmesh.batch_sharding(mesh)
      chunk, index, weight = (jax.device_put(a, sharding) for a in (chunk, index, weight))
    sums = _gamma_chunk_sums(eps_tree, chunk, index, weight, *consts, rng)
    totals += np.asarray(sums, np.float64)[:len(ts)]  # blocks: see the docstring
  return totals / num


def _padded_chunk(x0: np.ndarray, start: int, size: int, dtype) -> tuple[np.ndarray, ...]:
  """x0[start:start+size] zero-padded to `size` rows, its global indices and a 1/0 weight."""
  chunk = x0[start:start + size].astype(dtype)
  real = chunk.shape[0]
  pad = size - real
  if pad:
    chunk = np.concatenate([chunk, np.zeros((pad,) + chunk.shape[1:], dtype)])
  index = np.arange(start, start + size, dtype=np.int32)
  weight = (np.arange(size) < real).astype(np.float32)
  return chunk, index, weight


def gamma_at(gamma: np.ndarray, trajectory: np.ndarray) -> np.ndarray:
  """Gamma on a trajectory from either a [K] vector (already on it) or the full [N] vector
  (Gamma_1..Gamma_N, as stored by the cache); shape [K]."""
  gamma = np.asarray(gamma, np.float64).reshape(-1)
  trajectory = np.asarray(trajectory, np.int64)
  if gamma.shape[0] == trajectory.shape[0]:
    return gamma
  if gamma.shape[0] == trajectory[-1]:
    return gamma[trajectory - 1]
  raise ValueError(f"gamma has {gamma.shape[0]} entries: expected K={len(trajectory)} (one per "
                   f"trajectory step) or N={trajectory[-1]} (Gamma_1..Gamma_N)")


# ----------------------------------------------------------------------------------------------
# Optimal variance (Thm 1) and its bounds (Thm 2)


def posterior_variance(gamma: np.ndarray, abar_t: np.ndarray,
                       clip_range: tuple[float, float] | None = DEFAULT_CLIP_RANGE) -> np.ndarray:
  """C_t = (beta_bar_t / alpha_bar_t)(1 - Gamma_t), clipped to clip_range (None: unclipped)."""
  abar_t = np.asarray(abar_t, np.float64)
  c = (1.0 - abar_t) / abar_t * (1.0 - np.asarray(gamma, np.float64))
  return c if clip_range is None else np.clip(c, clip_range[0], clip_range[1])


def _gamma2(abar_s, abar_t, lam2, form: str) -> np.ndarray:
  """gamma^2_{s|t}: the squared coefficient of x0_hat - x_0 in the reverse mean (Thm 1)."""
  bbar_s, bbar_t = 1.0 - abar_s, 1.0 - abar_t
  if form == "ddpm":
    beta_ts = 1.0 - abar_t / abar_s
    return abar_s * beta_ts ** 2 / bbar_t ** 2
  return (np.sqrt(abar_s) - np.sqrt(np.maximum(bbar_s - lam2, 0.0) * abar_t / bbar_t)) ** 2


def optimal_variance(gamma: np.ndarray, alphas_cumprod: np.ndarray, trajectory: np.ndarray,
                     form: str = "ddpm", eta: float = 0.0,
                     clip_range: tuple[float, float] | None = DEFAULT_CLIP_RANGE) -> np.ndarray:
  """The analytic optimal isotropic variance of each reverse step (Analytic-DPM Thm 1-2).

  sigma*^2_{s|t} = lambda^2_{s|t} + gamma^2_{s|t} C_t with C_t = (beta_bar_t/alpha_bar_t)(1-Gamma_t)
  clipped to `clip_range` ([0, 1] for data in [-1, 1]; None turns the clip off, for ablations).

  Args:
    gamma: [K] Gamma at trajectory[k] (or the full [N] vector Gamma_1..Gamma_N).
    alphas_cumprod: [N + 1], alphas_cumprod[0] = 1.
    trajectory: [K] increasing ints ending at N.
    form: 'ddpm' (lambda^2 = beta_tilde) or 'ddim' (lambda^2 = eta^2 beta_tilde).
    eta: DDIM's eta.
    clip_range: (low, high) bounds on C_t, or None.

  Returns:
    [K] float64 sigma2; sigma2[k] is the variance of the step trajectory[k] -> trajectory[k-1]
    (-> 0 for k = 0, where it equals C_{tau_1}, the optimal decoder variance).
  """
  reverse.check_form(form)
  terms = reverse.step_terms(alphas_cumprod, trajectory)
  g = gamma_at(gamma, terms.t)
  c = posterior_variance(g, terms.abar_t, clip_range)
  lam2 = reverse.lambda2(terms, form, eta)
  return lam2 + _gamma2(terms.abar_s, terms.abar_t, lam2, form) * c


def first_step_clip_constant(schedule: str, form: str) -> float:
  """c of the sampling clip: 2 for the DDPM form on the linear schedule, 1 otherwise."""
  return 2.0 if (schedule == "linear" and form == "ddpm") else 1.0


def first_step_bound(constant: float, num_bins: int = 256,
                     data_range: tuple[float, float] = (-1.0, 1.0)) -> float:
  """(c * bin_width * sqrt(pi/2))^2; bin_width = 2/255 for 8-bit data in [-1, 1]. Keeps the noise
  of the last noisy step within about c bins, since it is not removed by the final mean step."""
  width = (data_range[1] - data_range[0]) / (num_bins - 1)
  return (constant * width * math.sqrt(math.pi / 2.0)) ** 2


def clip_first_step(sigma2: np.ndarray, constant: float = 1.0, num_bins: int = 256,
                    data_range: tuple[float, float] = (-1.0, 1.0)) -> np.ndarray:
  """Applies the sampling clip to the step that produces x_{tau_1} (index 1); a copy, shape [K]."""
  sigma2 = np.array(sigma2, np.float64, copy=True)
  if sigma2.shape[0] > 1:
    sigma2[1] = min(sigma2[1], first_step_bound(constant, num_bins, data_range))
  return sigma2


# ----------------------------------------------------------------------------------------------
# Variance chosen by name (config: sample.variance)


def _fixed(name: str) -> Callable[..., np.ndarray]:
  def variance(alphas_cumprod, trajectory, form, eta, gamma, clip_range):
    del gamma, clip_range
    return reverse.fixed_variance(name, alphas_cumprod, trajectory, form, eta)
  return variance


def _analytic(alphas_cumprod, trajectory, form, eta, gamma, clip_range):
  if gamma is None:
    raise ConfigError("sample.variance='analytic' needs Gamma: estimate it with "
                      "dpm.analytic.estimate_gamma (or load it with cached_gamma) first")
  return optimal_variance(gamma, alphas_cumprod, trajectory, form, eta, clip_range)


for _name in ("beta", "beta_tilde", "ddim"):
  VARIANCES.add(_name, _fixed(_name))
VARIANCES.add("analytic", _analytic)


def reverse_variance(name: str, alphas_cumprod: np.ndarray, trajectory: np.ndarray,
                     form: str = "ddpm", eta: float = 0.0, gamma: np.ndarray | None = None,
                     clip_range: tuple[float, float] | None = DEFAULT_CLIP_RANGE) -> np.ndarray:
  """sigma2 [K] of the named variance: 'beta', 'beta_tilde' (DDPM form), 'ddim' (DDIM form,
  eta^2 beta_tilde) or 'analytic' (both forms; needs `gamma`, [K] or [N])."""
  fn = VARIANCES.get(name, field="sample.variance")
  return np.asarray(fn(alphas_cumprod, trajectory, form, eta, gamma, clip_range), np.float64)


def sampling_variance(name: str, alphas_cumprod: np.ndarray, trajectory: np.ndarray,
                      form: str = "ddpm", eta: float = 0.0, gamma: np.ndarray | None = None,
                      clip_range: tuple[float, float] | None = DEFAULT_CLIP_RANGE,
                      first_step_clip: float | None = 1.0, num_bins: int = 256) -> np.ndarray:
  """The sigma2 [K] to pass to dpm.reverse.sample: reverse_variance plus, for 'analytic', the
  first-step clip with constant `first_step_clip` (see first_step_clip_constant; None: off)."""
  sigma2 = reverse_variance(name, alphas_cumprod, trajectory, form, eta, gamma, clip_range)
  if name == "analytic" and first_step_clip is not None:
    sigma2 = clip_first_step(sigma2, first_step_clip, num_bins)
  return sigma2


# ----------------------------------------------------------------------------------------------
# Optimal trajectory by dynamic programming (Thm 3)


def dp_cost_matrix(gamma: np.ndarray, alphas_cumprod: np.ndarray, form: str = "ddpm",
                   eta: float = 0.0,
                   clip_range: tuple[float, float] | None = DEFAULT_CLIP_RANGE,
                   variance: str = "analytic") -> np.ndarray:
  """Per-step costs J[s, t] for 1 <= s < t <= N (inf elsewhere), shape [N + 1, N + 1].

  With the analytic variance and the optimal mean, the expected KL of step s <- t is
  (d/2) log(sigma*^2 / lambda^2). For the DDPM form this is J(s, t) = log(1 - beta_{t|s} Gamma_t /
  beta_bar_t) plus terms that telescope over any trajectory from 1 to N (Thm 3); Gamma_t is
  replaced by its clipped value 1 - alpha_bar_t C_t / beta_bar_t so that J stays finite. The DDIM
  form (eta > 0 only; eta = 0 has a point-mass q and no KL) uses log(sigma*^2 / lambda^2) itself.

  For a fixed variance sigma^2 ('beta', 'beta_tilde', 'ddim'), the cost is the whole expected KL
  per dimension, times 2: log(sigma^2 / lambda^2) + (lambda^2 + gamma^2 C_t) / sigma^2 - 1, with the
  same estimate C_t of the mean's error; this gives the paper's "OT" rows for the baselines.

  Args:
    gamma: [N] Gamma_1..Gamma_N.
    variance: 'analytic' or a fixed variance of `form` (see dpm.reverse.FIXED_VARIANCES).
  """
  reverse.check_form(form)
  if variance != "analytic":
    reverse.FIXED_VARIANCES.get(variance, field="variance")
    reverse.fixed_variance(variance, alphas_cumprod, np.array([1]), form, eta)  # checks the form
  abar = np.asarray(alphas_cumprod, np.float64)
  n = len(abar) - 1
  gamma = np.asarray(gamma, np.float64).reshape(-1)
  if gamma.shape[0] != n:
    raise ValueError(f"dp_cost_matrix needs Gamma at all N={n} timesteps, got {gamma.shape[0]}")
  if form == "ddim" and eta <= 0:
    raise ConfigError("sample.trajectory='dp' with sample.form='ddim' needs sample.eta > 0")
  abar_s, abar_t = abar[1:, None], abar[None, 1:]       # s, t = 1..N
  c = posterior_variance(gamma, abar[1:], clip_range)[None, :]
  with np.errstate(divide="ignore", invalid="ignore"):
    beta_ts = 1.0 - abar_t / abar_s
    if variance != "analytic":
      beta_tilde = (1.0 - abar_s) * beta_ts / (1.0 - abar_t)
      terms = reverse.StepTerms(None, None, abar_t, abar_s, beta_ts, beta_tilde)
      sigma2 = reverse.FIXED_VARIANCES.get(variance)(terms, eta)
      lam2 = reverse.lambda2(terms, form, eta)
      err = _gamma2(abar_s, abar_t, lam2, form) * c
      cost = np.log(sigma2 / lam2) + (lam2 + err) / sigma2 - 1.0
      cost = np.where(np.isfinite(cost), cost, np.inf)
    elif form == "ddpm":
      g = 1.0 - abar_t * c / (1.0 - abar_t)             # clipped Gamma_t
      ratio = 1.0 - beta_ts * g / (1.0 - abar_t)        # sigma*^2 / lambda^2 up to telescoping
    else:
      lam2 = eta ** 2 * (1.0 - abar_s) * beta_ts / (1.0 - abar_t)
      ratio = 1.0 + _gamma2(abar_s, abar_t, lam2, form) * c / lam2
    if variance == "analytic":
      # A step whose variance would be <= 0 (possible only without the clip) is not allowed.
      cost = np.where(ratio > 0, np.log(np.where(ratio > 0, ratio, 1.0)), np.inf)
  out = np.full((n + 1, n + 1), np.inf)
  upper = np.triu(np.ones((n, n), bool), 1)
  out[1:, 1:] = np.where(upper, cost, np.inf)
  return out


def _dp_tables(cost: np.ndarray, k_max: int) -> tuple[np.ndarray, np.ndarray]:
  """best[k, t]: least cost of a path 1 = tau_1 < ... < tau_k = t; arg[k, t]: its tau_{k-1}."""
  size = cost.shape[0]
  best = np.full((k_max + 1, size), np.inf)
  arg = np.zeros((k_max + 1, size), np.int64)
  best[1, 1] = 0.0
  for k in range(2, k_max + 1):
    total = best[k - 1][:, None] + cost                 # [s, t], O(N^2) per k
    arg[k] = np.argmin(total, axis=0)
    best[k] = total[arg[k], np.arange(size)]
  return best, arg


def _backtrack(arg: np.ndarray, k: int, n: int) -> np.ndarray:
  path = [n]
  for j in range(k, 1, -1):
    path.append(int(arg[j, path[-1]]))
  return np.asarray(path[::-1], np.int64)


def optimal_trajectories(cost: np.ndarray,
                         ks: Sequence[int]) -> dict[int, tuple[np.ndarray, float]]:
  """DP-optimal K-step trajectories for several K from one O(max K * N^2) pass.

  Trajectories start at tau_1 = 1 and end at tau_K = N (the decoder step 1 -> 0 is common to all).

  Returns:
    {K: (trajectory [K] int64, total cost)}.
  """
  n = cost.shape[0] - 1
  ks = [int(k) for k in ks]
  if any(not 1 <= k <= n for k in ks):
    raise ConfigError(f"K={ks} is invalid: expected 1 <= K <= N={n}")
  best, arg = _dp_tables(cost, max(ks))
  out = {}
  for k in ks:
    if k == 1:  # a single step from N: no choice, no transition cost
      out[k] = (np.array([n], np.int64), 0.0)
    else:
      out[k] = (_backtrack(arg, k, n), float(best[k, n]))
  return out


def optimal_trajectory(cost: np.ndarray, k: int) -> tuple[np.ndarray, float]:
  """The K-step trajectory 1 = tau_1 < ... < tau_K = N minimising sum_k cost[tau_k, tau_{k+1}]."""
  return optimal_trajectories(cost, [k])[k]


def trajectory_cost(cost: np.ndarray, trajectory: np.ndarray) -> float:
  """Total cost sum_k cost[tau_k, tau_{k+1}] of any trajectory (to compare even/quad with DP)."""
  t = np.asarray(trajectory, np.int64)
  return float(np.sum(cost[t[:-1], t[1:]]))


def reliable_prefix(gamma: np.ndarray) -> int:
  """N1 such that Gamma_1..Gamma_N1 are trusted for the DP (N1 = N if no estimate exceeds 1).

  The true Gamma_t = 1 - (alpha_bar_t / beta_bar_t) C_t is at most 1; a Monte Carlo estimate above 1
  shows that noise dominates there (C_t's error is Gamma's times beta_bar_t / alpha_bar_t, which
  grows without bound in t). With C_t clipped to 0 at such a t, a step from t straight to s = 1
  looks free, and the DP takes it (a path 1 -> 975 -> ... -> N costs thousands of bits/dim on
  MNIST). As in the authors' evaluation, the DP runs only below the first such t, with a margin as
  long as the tail itself; the tail gets evenly spaced steps (see segmented_trajectories).
  """
  gamma = np.asarray(gamma, np.float64).reshape(-1)
  n = len(gamma)
  bad = np.flatnonzero(gamma > 1.0)
  if bad.size == 0:
    return n
  first = int(bad[0]) + 1                 # the timestep of the first estimate above 1
  return max(n - 2 * (n - first + 1), 2)


def segmented_trajectories(cost: np.ndarray, gamma: np.ndarray,
                           ks: Sequence[int]) -> dict[int, np.ndarray]:
  """DP-optimal trajectories on the reliable prefix 1..N1 of `gamma`, evenly spaced steps above.

  The authors' split: K1 = ceil((1 - 0.8 r) K) steps, r = (N - N1) / N, go to the DP on 1..N1
  (ending at N1) and K2 = K - K1 (at least 1, at most N - N1) to the tail (N1, N].
  With N1 = N this is optimal_trajectories.
  """
  n = cost.shape[0] - 1
  n1 = reliable_prefix(gamma)
  if n1 >= n:
    return {k: traj for k, (traj, _) in optimal_trajectories(cost, ks).items()}
  out = {}
  for k in ks:
    k = int(k)
    if k >= n:
      out[k] = np.arange(1, n + 1)
      continue
    k1 = min(math.ceil((1.0 - 0.8 * (n - n1) / n) * k), n1, k - 1)
    k2 = min(k - k1, n - n1)
    k1 = k - k2
    head = (optimal_trajectory(cost[:n1 + 1, :n1 + 1], k1)[0] if k1 >= 2
            else np.array([1], np.int64))
    tail = np.round(np.linspace(n1, n, k2 + 1)[1:]).astype(np.int64)
    traj = np.concatenate([head, tail])
    out[k] = reverse.strictly_increasing(traj, n)
  return out


def data_variance(x0: np.ndarray) -> float:
  """tr Cov(x_0) / d of a data sample: an upper bound on C_t (law of total variance)."""
  x = np.asarray(x0, np.float64).reshape(len(x0), -1)
  return float(np.mean(np.var(x, axis=0)))


def isotonic_gamma(gamma: np.ndarray, alphas_cumprod: np.ndarray, upper: float) -> np.ndarray:
  """Gamma_1..Gamma_N re-estimated so that C_t is non-decreasing in t and lies in [0, upper].

  Not in the paper: C_t = E Var(x_0 | x_t) averaged over dimensions can only grow with t (x_0 ->
  x_s -> x_t is a Markov chain, so x_t tells less about x_0 than x_s), and it is at most the data's
  variance tr Cov(x_0) / d. The Monte Carlo C_t are projected onto such sequences by weighted least
  squares (isotonic regression, scikit-learn), each weighted by its inverse Monte Carlo variance,
  proportional to (alpha_bar_t / beta_bar_t)^2. This removes the estimates above 1 that the DP
  would otherwise exploit, without cutting the trajectory in two.
  """
  from sklearn.isotonic import IsotonicRegression
  abar = np.asarray(alphas_cumprod, np.float64)[1:]
  ratio = abar / (1.0 - abar)
  c = posterior_variance(gamma, abar, None)
  t = np.arange(1, len(abar) + 1, dtype=np.float64)
  fit = IsotonicRegression(y_min=0.0, y_max=float(upper), increasing=True).fit(
      t, c, sample_weight=ratio ** 2).predict(t)
  return 1.0 - ratio * fit


# ----------------------------------------------------------------------------------------------
# Gamma cache in the workdir


def gamma_cache_path(workdir: str) -> str:
  return os.path.join(workdir, "analytic", "gamma.json")


def load_gamma(workdir: str, step: int, meta: dict[str, Any] | None = None) -> np.ndarray | None:
  """The cached Gamma vector if it belongs to model step `step` (and `meta` matches), else None."""
  path = gamma_cache_path(workdir)
  if not os.path.exists(path):
    return None
  try:
    with open(path) as f:
      record = json.load(f)
    gamma = np.asarray(record["gamma"], np.float64)
  except (OSError, ValueError, KeyError, TypeError) as e:
    logging.warning("ignoring unreadable Gamma cache %s (%s); recomputing", path, e)
    return None
  same_meta = record.get("meta", {}) == json.loads(json.dumps(meta or {}))
  if record.get("step") != int(step) or not same_meta:
    return None
  return gamma


def save_gamma(workdir: str, step: int, gamma: np.ndarray,
               meta: dict[str, Any] | None = None) -> None:
  """Stores Gamma with the model step it belongs to, atomically."""
  cio.atomic_write_json(gamma_cache_path(workdir), {
      "step": int(step), "meta": meta or {}, "gamma": np.asarray(gamma, np.float64).tolist()})


def cached_gamma(workdir: str, step: int, compute: Callable[[], np.ndarray],
                 meta: dict[str, Any] | None = None) -> tuple[np.ndarray, bool]:
  """Gamma for model step `step`: the cached vector when it matches, else compute() (then cached).

  `meta` (JSON-serialisable, e.g. {"num_steps": 1000, "num_data": 50000}) must match as well.

  Returns:
    (gamma, reused): reused is True when the cache was used.
  """
  gamma = load_gamma(workdir, step, meta)
  if gamma is not None:
    return gamma, True
  gamma = np.asarray(compute(), np.float64)
  save_gamma(workdir, step, gamma, meta)
  return gamma, False
