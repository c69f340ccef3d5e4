"""Single-level EBM training losses on one signature (../shared/papers/ebm.md, baselines of BiSM).

Every loss in LOSSES is called as

  loss(model, v, rng, cfg, carry) -> (loss, (metrics, carry))

with model an NNX module (or any object) giving `free_energy(v) -> [B]` (and `params()` for the
Gibbs chains of CD/PCD, `log_z` for NCE), v the data batch [B, ...], rng a `jax.random.key`, cfg a
mapping of the loss's settings (missing keys take DEFAULTS, the official checkerboard values) and
carry the loss's state between steps (the persistent chain of PCD; None for the others, made by
`LOSSES[name].init_carry(model, v, rng, cfg)`). The return value fits `jax.value_and_grad(...,
has_aux=True)`, and metrics["loss"] is the loss; `value_and_grad` below does the NNX split/merge.

Score matching with the exact free energy, score s(v) = -grad_v F(v):
  ssm:  0.5 ||s(v)||^2 + u^T grad_v (s(v) . u),  u Rademacher (or Gaussian) (Song et al. 2019,
        the variance-reduced form; its mean over u is Hyvarinen's 0.5 ||s||^2 + tr grad s);
  dsm:  0.5 ||s(v + sigma eps) + eps / sigma||^2 (Vincent 2011);
  mdsm: 0.5 ||s(v~_i) / sigma_i + eps_i / sigma_0^2||^2 with v~_i = v_i + sigma_i eps_i, sigma_i on
        a fixed grid over the batch position i (linear or geometric from sigma_begin to sigma_end),
        the official code's multiscale form.
Each is the batch mean of the per-example objective; SCHEMES exposes their noising and objectives
to ebm/bism.py, which puts BiSM's score in place of the exact one.

Contrastive divergence: the surrogate mean F(v) - mean F(stop_gradient(v_k)), whose gradient is
the CD-k estimate of the negative log-likelihood gradient (its value is not the NLL). v_k is the end
of a k-sweep block-Gibbs chain started from h ~ p(h | v) (cd1, cd5, cd10) or from the carried
hidden states (pcd1, one chain per batch position, started from p(h | v) of the first batch).

NCE (Gutmann & Hyvarinen 2010): log p_model(v) = -F(v) - log_z with log_z a learned scalar
(`WithLogZ`), noise p_n a Gaussian fitted to the training data (`fit_gaussian`), nu noise samples
per data point; loss -(mean log sigmoid(G(v)) + nu mean log sigmoid(-G(y))), G = log p_model -
log(nu p_n). Variational NCE needs the posterior and lives in ebm/bism.py.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from common.errors import ConfigError
from common.registry import Registry
from ebm import grbm, ksd, samplers

# The official checkerboard settings (../shared/papers/sources/bism.md).
DEFAULTS: dict[str, Any] = {
    "projection": "rademacher",   # ssm
    "sigma": 0.05,                # dsm
    "sigma_begin": 0.05,          # mdsm
    "sigma_end": 1.0,
    "sigma_spacing": "geometric",
    "sigma0": 0.05,
    "nu": 1,                      # nce: noise samples per data point
    "bandwidth": ksd.BANDWIDTH,   # ksd: RBF kernel bandwidth
}


def setting(cfg: Mapping | None, key: str) -> Any:
  """cfg[key] if present, else DEFAULTS[key]."""
  if cfg is not None and key in cfg:
    return cfg[key]
  return DEFAULTS[key]


def _flat_sum(x: jax.Array) -> jax.Array:
  return jnp.sum(x.reshape(x.shape[0], -1), axis=-1)


def _per_example(scale: jax.Array, x: jax.Array) -> jax.Array:
  return scale.reshape((-1,) + (1,) * (x.ndim - 1))


def free_energy_score_fn(model) -> Callable[[jax.Array], jax.Array]:
  """v [B, ...] -> s(v) = -grad_v F(v) [B, ...] (independent examples: one grad of the sum)."""
  return lambda v: -jax.grad(lambda x: jnp.sum(model.free_energy(x)))(v)


# ---------------------------------------------------------------------------------------------
# Score-matching schemes: noising and per-example objectives, shared with BiSM.


class Perturbed(NamedTuple):
  """The input of a score-matching objective.

  Attributes:
    v: [B, ...] where the score is evaluated (the noised data for dsm / mdsm, the data for ssm).
    noise: [B, ...] eps for dsm / mdsm, the projection u for ssm.
    sigma: [B] per-example noise level (ones for ssm).
  """
  v: jax.Array
  noise: jax.Array
  sigma: jax.Array


def projections(rng: jax.Array, shape, dtype, kind: str) -> jax.Array:
  """Random projections u with E[u u^T] = I: Rademacher signs or standard Gaussians."""
  if kind == "rademacher":
    return jax.random.rademacher(rng, shape, dtype)
  if kind == "gaussian":
    return jax.random.normal(rng, shape, dtype)
  raise ConfigError(f"loss.projection={kind!r} is invalid: expected 'rademacher' or 'gaussian'")


def sliced_objective(score_fn: Callable, v: jax.Array, u: jax.Array) -> jax.Array:
  """SSM per example: 0.5 ||s(v)||^2 + u^T (grad_v s(v)) u, shape [B] (one forward-mode JVP)."""
  s, ju = jax.jvp(score_fn, (v,), (u,))
  return 0.5 * _flat_sum(s ** 2) + _flat_sum(u * ju)


def denoising_objective(s: jax.Array, eps: jax.Array, sigma: jax.Array) -> jax.Array:
  """DSM per example: 0.5 ||s(v + sigma eps) + eps / sigma||^2, shape [B]; sigma [B]."""
  return 0.5 * _flat_sum((s + eps / _per_example(sigma, eps)) ** 2)


def multiscale_objective(s: jax.Array, eps: jax.Array, sigma: jax.Array,
                         sigma0: float) -> jax.Array:
  """MDSM per example: 0.5 ||s(v~) / sigma_i + eps / sigma_0^2||^2, shape [B]; sigma [B]."""
  return 0.5 * _flat_sum((s / _per_example(sigma, s) + eps / sigma0 ** 2) ** 2)


def mdsm_sigmas(n: int, cfg: Mapping | None, dtype=jnp.float32) -> jax.Array:
  """The per-position noise grid sigma_0..sigma_{n-1} of MDSM, shape [n] (fixed, not sampled)."""
  lo, hi = setting(cfg, "sigma_begin"), setting(cfg, "sigma_end")
  spacing = setting(cfg, "sigma_spacing")
  if spacing == "geometric":
    return jnp.asarray(np.geomspace(lo, hi, n), dtype)
  if spacing == "linear":
    return jnp.asarray(np.linspace(lo, hi, n), dtype)
  raise ConfigError(f"loss.sigma_spacing={spacing!r} is invalid: expected 'geometric' or 'linear'")


def _perturb_ssm(v, rng, cfg) -> Perturbed:
  u = projections(rng, v.shape, v.dtype, setting(cfg, "projection"))
  return Perturbed(v, u, jnp.ones(v.shape[:1], v.dtype))


def _perturb_dsm(v, rng, cfg) -> Perturbed:
  eps = jax.random.normal(rng, v.shape, v.dtype)
  sigma = jnp.full(v.shape[:1], setting(cfg, "sigma"), v.dtype)
  return Perturbed(v + _per_example(sigma, v) * eps, eps, sigma)


def _perturb_mdsm(v, rng, cfg) -> Perturbed:
  eps = jax.random.normal(rng, v.shape, v.dtype)
  sigma = mdsm_sigmas(v.shape[0], cfg, v.dtype)
  return Perturbed(v + _per_example(sigma, v) * eps, eps, sigma)


class SMScheme(NamedTuple):
  """perturb(v, rng, cfg) -> Perturbed; objective(score_fn, Perturbed, cfg) -> [B];
  lower_weight(Perturbed, cfg) -> [B], the per-example weight BiSM gives its lower-level objective
  on these inputs (1 / sigma_i for MDSM, as the official `inner_loss_div_sigmas`)."""
  perturb: Callable
  objective: Callable
  lower_weight: Callable


def _ones(p: Perturbed, cfg) -> jax.Array:
  return jnp.ones_like(p.sigma)


SCHEMES: Registry[SMScheme] = Registry("score-matching scheme")
SCHEMES.add("ssm", SMScheme(_perturb_ssm, lambda fn, p, cfg: sliced_objective(fn, p.v, p.noise),
                            _ones))
SCHEMES.add("dsm", SMScheme(_perturb_dsm,
                            lambda fn, p, cfg: denoising_objective(fn(p.v), p.noise, p.sigma),
                            _ones))
SCHEMES.add("mdsm", SMScheme(
    _perturb_mdsm,
    lambda fn, p, cfg: multiscale_objective(fn(p.v), p.noise, p.sigma, setting(cfg, "sigma0")),
    lambda p, cfg: 1.0 / p.sigma))


# ---------------------------------------------------------------------------------------------
# The losses.


class LossSpec(NamedTuple):
  """A registered loss and the maker of its initial carry."""
  loss: Callable
  init_carry: Callable = lambda model, v, rng, cfg: None


LOSSES: Registry[LossSpec] = Registry("EBM loss")


def score_matching_loss(scheme: str):
  """The exact-free-energy loss of a score-matching scheme ('ssm', 'dsm' or 'mdsm')."""
  def loss(model, v, rng, cfg, carry=None):
    sm = SCHEMES.get(scheme, field="method")
    value = jnp.mean(sm.objective(free_energy_score_fn(model), sm.perturb(v, rng, cfg), cfg))
    return value, ({"loss": value}, carry)
  return loss


for _name in ("ssm", "dsm", "mdsm"):
  LOSSES.add(_name, LossSpec(score_matching_loss(_name)))


def contrastive_divergence(model, v: jax.Array, rng: jax.Array, h0: jax.Array | None,
                           num_steps: int) -> tuple[jax.Array, dict, jax.Array]:
  """CD surrogate from a k-sweep Gibbs chain started at h0 (or at h ~ p(h | v) when None).

  Returns:
    (surrogate loss, metrics, the chain's last hidden state [B, m]).
  """
  p = jax.lax.stop_gradient(model.params())
  h_rng, chain_rng = jax.random.split(rng)
  if h0 is None:
    h0 = samplers.sample_hidden(p, h_rng, v)
  v_model, h_k = samplers.gibbs_chain(p, chain_rng, h0, num_steps)
  f_data = jnp.mean(model.free_energy(v))
  f_model = jnp.mean(model.free_energy(jax.lax.stop_gradient(v_model)))
  value = f_data - f_model
  return value, {"loss": value, "free_energy_data": f_data, "free_energy_model": f_model}, h_k


def cd_loss(num_steps: int):
  def loss(model, v, rng, cfg, carry=None):
    value, metrics, _ = contrastive_divergence(model, v, rng, None, num_steps)
    return value, (metrics, carry)
  return loss


def pcd_loss(num_steps: int):
  def loss(model, v, rng, cfg, carry):
    value, metrics, h = contrastive_divergence(model, v, rng, carry, num_steps)
    return value, (metrics, h)
  return loss


def pcd_init_carry(model, v, rng, cfg) -> jax.Array:
  """The persistent chains' first hidden states: h ~ p(h | v) of the first batch, [B, m]."""
  return samplers.sample_hidden(jax.lax.stop_gradient(model.params()), rng, v)


for _k in (1, 5, 10):
  LOSSES.add(f"cd{_k}", LossSpec(cd_loss(_k)))
LOSSES.add("pcd1", LossSpec(pcd_loss(1), pcd_init_carry))


def exact_ml_loss(model, v, rng, cfg, carry=None):
  """The exact negative log-likelihood mean F(v) + log Z, log Z by enumeration of the 2^m hidden
  states (ebm.grbm.log_z; small GRBMs only): the maximum-likelihood reference of the table."""
  value = jnp.mean(model.free_energy(v)) + grbm.log_z(model.params())
  return value, ({"loss": value}, carry)


LOSSES.add("ml", LossSpec(exact_ml_loss))


def ksd_loss(model, v, rng, cfg, carry=None):
  """The kernelized Stein discrepancy with the exact free-energy score (RBF kernel of bandwidth
  `bandwidth`, the batch split in paired halves): the reference row of VaGES-KSD."""
  del rng
  value = ksd.ksd_paired_fn(free_energy_score_fn(model), v, setting(cfg, "bandwidth"))
  return value, ({"loss": value}, carry)


LOSSES.add("ksd", LossSpec(ksd_loss))


# ---------------------------------------------------------------------------------------------
# Noise-contrastive estimation.


class GaussianNoise(NamedTuple):
  """A Gaussian noise distribution N(mean, L L^T) for NCE: mean [d], scale_tril L [d, d]."""
  mean: jax.Array
  scale_tril: jax.Array


def fit_gaussian(data: np.ndarray, jitter: float = 1e-6) -> GaussianNoise:
  """The maximum-likelihood Gaussian of training data [N, d] (numpy, once per run)."""
  data = np.asarray(data, np.float64).reshape(len(data), -1)
  cov = np.cov(data, rowvar=False, bias=True).reshape(data.shape[1], data.shape[1])
  chol = np.linalg.cholesky(cov + jitter * np.eye(data.shape[1]))
  return GaussianNoise(jnp.asarray(data.mean(0), jnp.float32), jnp.asarray(chol, jnp.float32))


def gaussian_log_prob(noise: GaussianNoise, x: jax.Array) -> jax.Array:
  """log N(x; mean, L L^T), shape [B]."""
  z = jax.scipy.linalg.solve_triangular(noise.scale_tril, (x - noise.mean).T, lower=True).T
  log_det = jnp.sum(jnp.log(jnp.abs(jnp.diagonal(noise.scale_tril))))
  return -0.5 * jnp.sum(z ** 2, -1) - log_det - 0.5 * x.shape[-1] * math.log(2 * math.pi)


def gaussian_sample(noise: GaussianNoise, rng: jax.Array, n: int, dtype=jnp.float32) -> jax.Array:
  """n draws from the noise, shape [n, d]."""
  z = jax.random.normal(rng, (n, noise.mean.shape[-1]), dtype)
  return noise.mean + z @ noise.scale_tril.T


class WithLogZ(nnx.Module):
  """An EBM with a learned log normaliser (NCE, VNCE): log p(v) = -F(v) - log_z.

  Attributes:
    ebm: the wrapped model (its `free_energy`, `energy` and `params` are passed through).
    log_z: scalar nnx.Param, initialised at 0 as in the official code.
  """

  def __init__(self, ebm: nnx.Module):
    self.ebm = ebm
    self.log_z = nnx.Param(jnp.zeros((), jnp.float32))

  def free_energy(self, v):
    return self.ebm.free_energy(v)

  def energy(self, v, h):
    return self.ebm.energy(v, h)

  def params(self):
    return self.ebm.params()


def nce_objective(log_ratio_data: jax.Array, log_ratio_noise: jax.Array,
                  nu: int) -> jax.Array:
  """-(mean log sigmoid(G(v)) + nu mean log sigmoid(-G(y))), with G = log p_model - log(nu p_n)
  already evaluated at the data (log_ratio_data [B]) and at the noise (log_ratio_noise [nu B])."""
  return -(jnp.mean(jax.nn.log_sigmoid(log_ratio_data))
           + nu * jnp.mean(jax.nn.log_sigmoid(-log_ratio_noise)))


def noise_of(cfg) -> GaussianNoise:
  """cfg["noise"], the NCE noise Gaussian; a ConfigError if it is missing."""
  if cfg is None or "noise" not in cfg:
    raise ConfigError("loss.noise is missing: NCE needs the noise Gaussian, "
                      "set it with ebm.losses.fit_gaussian(training data)")
  return cfg["noise"]


def nce_loss(model, v, rng, cfg, carry=None):
  """NCE with the fitted Gaussian noise cfg['noise'] and nu = cfg['nu'] noise samples per point."""
  noise, nu = noise_of(cfg), int(setting(cfg, "nu"))
  y = gaussian_sample(noise, rng, nu * v.shape[0], v.dtype)
  shift = model.log_z[...] + math.log(nu)
  g_v = -model.free_energy(v) - shift - gaussian_log_prob(noise, v)
  g_y = -model.free_energy(y) - shift - gaussian_log_prob(noise, y)
  value = nce_objective(g_v, g_y, nu)
  return value, ({"loss": value, "log_z": model.log_z[...]}, carry)


LOSSES.add("nce", LossSpec(nce_loss))


# ---------------------------------------------------------------------------------------------
# Helpers for a training step.


def value_and_grad(loss_fn: Callable, graphdef: nnx.GraphDef, params: Any, v: jax.Array,
                   rng: jax.Array, cfg: Mapping | None, carry: Any = None):
  """Loss, metrics, new carry and the gradient w.r.t. `params` (the state of nnx.split(model)).

  Returns:
    (loss, metrics, carry, grads), grads with the structure of params.
  """
  def f(params):
    return loss_fn(nnx.merge(graphdef, params), v, rng, cfg, carry)

  (value, (metrics, carry)), grads = jax.value_and_grad(f, has_aux=True)(params)
  return value, metrics, carry, grads


def validate(cfg: Mapping, method: str, prefix: str = "loss") -> None:
  """Checks the settings a loss or BiSM method reads; errors name `prefix.<field>`."""
  def positive(key):
    value = setting(cfg, key)
    if not value > 0:
      raise ConfigError(f"{prefix}.{key}={value!r} is invalid: expected a number > 0")

  def one_of(key, choices):
    value = setting(cfg, key)
    if value not in choices:
      raise ConfigError(f"{prefix}.{key}={value!r} is invalid: expected one of {list(choices)}")

  if method.endswith("dsm") and not method.endswith("mdsm"):
    positive("sigma")
  if method.endswith("mdsm"):
    for key in ("sigma_begin", "sigma_end", "sigma0"):
      positive(key)
    one_of("sigma_spacing", ("geometric", "linear"))
  if method.endswith("ssm"):
    one_of("projection", ("rademacher", "gaussian"))
  if method.endswith("ksd"):
    bandwidth = setting(cfg, "bandwidth")
    if not (isinstance(bandwidth, (int, float)) and math.isfinite(bandwidth) and bandwidth > 0):
      raise ConfigError(f"{prefix}.bandwidth={bandwidth!r} is invalid: expected a number > 0")
  if method in ("nce", "vnce"):
    nu = setting(cfg, "nu")
    if not (isinstance(nu, (int, np.integer)) and nu >= 1):
      raise ConfigError(f"{prefix}.nu={nu!r} is invalid: expected an integer >= 1")
