"""Gaussian-mixture data with an exact noise predictor: the ground truth for diffusion tests.

x_0 ~ sum_k w_k N(mu_k, s_k^2 I). Under x_t = alpha x_0 + sigma eps the marginal is the mixture
sum_k w_k N(alpha mu_k, (alpha^2 s_k^2 + sigma^2) I), so the optimal noise predictor
eps*(x) = -sigma grad log q_t(x), the posterior mean E[x_0 | x_t] and the posterior covariance are all
available in closed form (../shared/papers/dpm.md, "Ground truth for tests").

Every function takes (alpha, sigma) as scalars or arrays broadcastable to the batch, so it serves
discrete (alpha = sqrt(alpha_bar_n)) and continuous (alpha_t, sigma_t) processes alike.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class GaussianMixture:
  """Isotropic Gaussian mixture in R^d.

  Attributes:
    weights: [K] mixture weights, summing to 1.
    means: [K, d] component means.
    stds: [K] component standard deviations (isotropic).
  """
  weights: np.ndarray
  means: np.ndarray
  stds: np.ndarray

  @property
  def dim(self) -> int:
    return int(np.shape(self.means)[1])

  def sample(self, rng: jax.Array, n: int, dtype=jnp.float32) -> jax.Array:
    """Draws n samples, shape [n, d]."""
    k_rng, e_rng = jax.random.split(rng)
    comp = jax.random.choice(k_rng, len(self.weights), (n,), p=jnp.asarray(self.weights))
    noise = jax.random.normal(e_rng, (n, self.dim), dtype)
    return (jnp.asarray(self.means, dtype)[comp]
            + jnp.asarray(self.stds, dtype)[comp, None] * noise)

  def _marginal(self, x, alpha, sigma):
    """Per-component log-densities (up to a shared constant) and variances of q_t; [B, K]."""
    x = jnp.asarray(x)
    alpha = jnp.reshape(jnp.asarray(alpha, x.dtype), (-1, 1))
    sigma = jnp.reshape(jnp.asarray(sigma, x.dtype), (-1, 1))
    mu = jnp.asarray(self.means, x.dtype)
    s2 = jnp.asarray(self.stds, x.dtype) ** 2
    var = alpha ** 2 * s2[None, :] + sigma ** 2                        # [B or 1, K]
    sq = jnp.sum((x[:, None, :] - alpha[:, :, None] * mu[None]) ** 2, -1)  # [B, K]
    logp = (jnp.log(jnp.asarray(self.weights, x.dtype))[None]
            - 0.5 * self.dim * jnp.log(2 * jnp.pi * var) - 0.5 * sq / var)
    return logp, var, alpha, sigma, mu, s2

  def log_prob(self, x, alpha=1.0, sigma=0.0) -> jax.Array:
    """log q_t(x), shape [B]."""
    logp, *_ = self._marginal(x, alpha, sigma)
    return jax.nn.logsumexp(logp, axis=-1)

  def responsibilities(self, x, alpha, sigma) -> jax.Array:
    """Posterior component weights r_k(x_t), shape [B, K]."""
    logp, *_ = self._marginal(x, alpha, sigma)
    return jax.nn.softmax(logp, axis=-1)

  def score(self, x, alpha, sigma) -> jax.Array:
    """grad_x log q_t(x), shape [B, d]."""
    logp, var, alpha, _, mu, _ = self._marginal(x, alpha, sigma)
    r = jax.nn.softmax(logp, axis=-1)
    diff = x[:, None, :] - alpha[:, :, None] * mu[None]                # [B, K, d]
    return -jnp.sum(r[..., None] * diff / var[..., None], axis=1)

  def eps(self, x, alpha, sigma) -> jax.Array:
    """The optimal noise predictor eps*(x_t) = -sigma * score, shape [B, d]."""
    sigma_b = jnp.reshape(jnp.asarray(sigma, jnp.asarray(x).dtype), (-1, 1))
    return -sigma_b * self.score(x, alpha, sigma)

  def posterior(self, x, alpha, sigma):
    """Per-component posterior of x_0 given x_t: (r [B,K], means [B,K,d], variances [B,K])."""
    logp, var, alpha, sigma, mu, s2 = self._marginal(x, alpha, sigma)
    r = jax.nn.softmax(logp, axis=-1)
    gain = alpha * s2[None, :] / var                                   # [B or 1, K]
    m = mu[None] + gain[..., None] * (x[:, None, :] - alpha[:, :, None] * mu[None])
    v = s2[None, :] * sigma ** 2 / var
    return r, m, jnp.broadcast_to(v, r.shape)

  def posterior_mean(self, x, alpha, sigma) -> jax.Array:
    """E[x_0 | x_t], shape [B, d]."""
    r, m, _ = self.posterior(x, alpha, sigma)
    return jnp.sum(r[..., None] * m, axis=1)

  def posterior_trace_var(self, x, alpha, sigma) -> jax.Array:
    """tr Cov[x_0 | x_t] / d, shape [B]; its mean over q(x_t) is C_t of Analytic-DPM."""
    r, m, v = self.posterior(x, alpha, sigma)
    mean = jnp.sum(r[..., None] * m, axis=1)
    second = jnp.sum(r * (self.dim * v + jnp.sum(m ** 2, -1)), axis=1)
    return (second - jnp.sum(mean ** 2, -1)) / self.dim


  def posterior_moments(self, x, alpha, sigma) -> tuple[jax.Array, jax.Array]:
    """Per-element E[x_0 | x_t] and E[x_0^2 | x_t], each [B, d]."""
    r, m, v = self.posterior(x, alpha, sigma)
    first = jnp.sum(r[..., None] * m, axis=1)
    second = jnp.sum(r[..., None] * (m ** 2 + v[..., None]), axis=1)
    return first, second

  def posterior_var(self, x, alpha, sigma) -> jax.Array:
    """Per-element Var[x_0 | x_t], [B, d]: the diagonal of the posterior covariance (SN/NPR-DPM's
    target, times alpha^2 / sigma^2 in eps units)."""
    first, second = self.posterior_moments(x, alpha, sigma)
    return second - first ** 2

  def eps_second_moment(self, x, alpha, sigma) -> jax.Array:
    """Per-element E[eps^2 | x_t], [B, d], the SN-DPM target h*(x_t).

    eps = (x_t - alpha x_0) / sigma, so E[eps^2 | x_t] = (x_t^2 - 2 alpha x_t E[x_0 | x_t]
    + alpha^2 E[x_0^2 | x_t]) / sigma^2 per element.
    """
    x = jnp.asarray(x)
    alpha_b = jnp.reshape(jnp.asarray(alpha, x.dtype), (-1, 1))
    sigma_b = jnp.reshape(jnp.asarray(sigma, x.dtype), (-1, 1))
    first, second = self.posterior_moments(x, alpha, sigma)
    return (x ** 2 - 2 * alpha_b * x * first + alpha_b ** 2 * second) / sigma_b ** 2


def default_mixture(dim: int = 2, seed: int = 0) -> GaussianMixture:
  """A fixed, well-separated 4-component mixture inside [-1, 1]^d, used by tests and benchmarks."""
  rs = np.random.RandomState(seed)
  means = rs.uniform(-0.6, 0.6, size=(4, dim))
  return GaussianMixture(weights=np.array([0.1, 0.2, 0.3, 0.4]), means=means,
                         stds=np.array([0.05, 0.1, 0.15, 0.2]))
