"""Variational posteriors q_phi(h | v) for BiSM and variational NCE (../shared/papers/ebm.md, BiSM).

Every posterior has the same two methods, which is all ebm/bism.py needs:
  sample(v, rng) -> h        a reparameterised draw (differentiable in phi; h [B, m]),
  log_prob(h, v) -> [B]      log q(h | v), differentiable in h, v and phi.

LinearBernoulliPosterior is the Gaussian RBM's: q(h | v) = prod_j Bernoulli(sigmoid(A v + a)_j).
It contains the exact GRBM posterior p(h | v) = Bernoulli(sigmoid(c + W^T v)) at A = W^T, a = c.
Its sample is the binary-concrete relaxation (Gumbel-softmax over the two logits [l, 0], which is
sigmoid((l + g_1 - g_2) / tau) with g_1 - g_2 ~ Logistic(0, 1)) at temperature tau = 0.1, and its
log q is the Bernoulli log-likelihood h l - softplus(l) evaluated at the relaxed h, as in the
official code.

GaussianConvPosterior is the deep EBLVM's: three stride-2 3x3 convolutions (LeakyReLU 0.2) and two
linear heads for the mean and log std of a diagonal Gaussian (the official Conv3GaussQ, widths
64/128/256 by default, smaller for tests).
"""

from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

_LOG_2PI = math.log(2.0 * math.pi)


def _torch_linear(din: int, dout: int, rngs: nnx.Rngs) -> nnx.Linear:
  """A Linear layer initialised like torch.nn.Linear (uniform in +-1/sqrt(fan_in), bias too)."""
  bound = 1.0 / math.sqrt(din)
  init = nnx.initializers.uniform(2 * bound)
  shift = lambda f: (lambda key, shape, dtype=jnp.float32: f(key, shape, dtype) - bound)
  return nnx.Linear(din, dout, kernel_init=shift(init), bias_init=shift(init), rngs=rngs)


def relaxed_bernoulli(rng: jax.Array, logits: jax.Array, temperature: float) -> jax.Array:
  """Binary-concrete sample sigmoid((logits + L) / temperature), L ~ Logistic(0, 1); [..., m]."""
  noise = jax.random.logistic(rng, logits.shape, logits.dtype)
  return jax.nn.sigmoid((logits + noise) / temperature)


def bernoulli_log_prob(h: jax.Array, logits: jax.Array) -> jax.Array:
  """sum_j h_j l_j - softplus(l_j) (minus the BCE with logits), for h in [0, 1]; shape [B]."""
  return jnp.sum(h * logits - jax.nn.softplus(logits), axis=-1)


class LinearBernoulliPosterior(nnx.Module):
  """q(h | v) = Bernoulli(sigmoid(A v + a)) with a relaxed (binary-concrete) reparameterised sample.

  Attributes:
    linear: v [B, d] -> logits [B, m] (kernel = A^T, [d, m]; bias = a, [m]).
    temperature: the relaxation temperature tau (0.1 in the paper).
  """

  def __init__(self, num_visible: int, num_hidden: int, *, temperature: float = 0.1,
               rngs: nnx.Rngs):
    self.linear = _torch_linear(num_visible, num_hidden, rngs)
    self.temperature = temperature

  def logits(self, v: jax.Array) -> jax.Array:
    return self.linear(v)

  def mean(self, v: jax.Array) -> jax.Array:
    """E_q[h] of the unrelaxed Bernoulli, [B, m]."""
    return jax.nn.sigmoid(self.logits(v))

  def sample(self, v: jax.Array, rng: jax.Array) -> jax.Array:
    return relaxed_bernoulli(rng, self.logits(v), self.temperature)

  def log_prob(self, h: jax.Array, v: jax.Array) -> jax.Array:
    return bernoulli_log_prob(h, self.logits(v))

  def set_exact(self, W: jax.Array, c: jax.Array) -> None:
    """Sets q to the exact GRBM posterior: logits = c + v^T W (A = W^T, a = c)."""
    self.linear.kernel[...] = jnp.asarray(W, self.linear.kernel[...].dtype)
    self.linear.bias[...] = jnp.asarray(c, self.linear.bias[...].dtype)


class GaussianConvPosterior(nnx.Module):
  """q(h | v) = N(mu(v), diag exp(2 log_std(v))) from a 3-layer stride-2 conv encoder.

  Input v is [B, H, W, C] (H and W divisible by 8); h is [B, m].
  """

  def __init__(self, image_shape: Sequence[int], num_hidden: int, *,
               channels: Sequence[int] = (64, 128, 256), rngs: nnx.Rngs):
    hw, _, cin = image_shape
    self.convs = nnx.List([
        nnx.Conv(ci, co, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)), rngs=rngs)
        for ci, co in zip((cin, *channels[:-1]), channels)])
    flat = (hw // 8) ** 2 * channels[-1]
    self.mean_head = nnx.Linear(flat, num_hidden, rngs=rngs)
    self.log_std_head = nnx.Linear(flat, num_hidden, rngs=rngs)

  def moments(self, v: jax.Array) -> tuple[jax.Array, jax.Array]:
    x = v
    for conv in self.convs:
      x = jax.nn.leaky_relu(conv(x), 0.2)
    x = x.reshape(x.shape[0], -1)
    return self.mean_head(x), self.log_std_head(x)

  def mean(self, v: jax.Array) -> jax.Array:
    return self.moments(v)[0]

  def sample(self, v: jax.Array, rng: jax.Array) -> jax.Array:
    mean, log_std = self.moments(v)
    return mean + jnp.exp(log_std) * jax.random.normal(rng, mean.shape, mean.dtype)

  def log_prob(self, h: jax.Array, v: jax.Array) -> jax.Array:
    mean, log_std = self.moments(v)
    z = (h - mean) * jnp.exp(-log_std)
    return jnp.sum(-0.5 * z ** 2 - log_std - 0.5 * _LOG_2PI, axis=-1)
