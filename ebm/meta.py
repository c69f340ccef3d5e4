"""Meta-models of cascaded boosting (../shared/papers/ebm.md, "Cascaded boosting"), one interface.

A meta-model m_k models its input h_{k-1} (h_0 = x) with latents h_k. Each kind is a class built
from its config block, the input size and the latent size; it makes the `common.train.Program`
that fits it on an input table and, from the trained state, a fitted model:

  spec = META.get(kind)(cfg, dim, num_latent, binary_input)
  program = spec.program(inputs [N, dim], num_steps, batch_size, below, draw)
      # batches are row indices into `inputs` (a const); `below` is the fitted stage underneath
      # (an RBM may start from it flipped), `draw(rows, key)` redraws codes each step ('resample')
  fitted = spec.load(state, key, eval_cfg)                  # e.g. an RBM's log Z, once

and every fitted model answers the same calls (v [B, dim], h [B, num_latent]):

  encode(v, key, codes)       the codes passed up for training the next stage: 'mean' (mean-field),
                              'sample' (one fixed draw) or 'resample' (the posterior's parameters,
                              which `draw` turns into a fresh draw every training step);
  posterior_sample(v, key)    h ~ q_k(h | v), the posterior of the bound (binary for an RBM);
  elbo(v, key)                ELBO_k(v) <= log p_k(v), [B] (exact for an RBM on binary v);
  log_prior(h)                log p_k(h), the term the next stage replaces, [B];
  sample_visible(h, key), visible_mean(h)   v ~ p_k(v | h) and its mean, for ancestral sampling;
  sample(key, n)              n draws of v from the model's own marginal p_k(v) (the top stage).

Kinds (META):
- `rbm`: binary RBM E(v, h) = -b^T v - c^T h - v^T W h (ebm.grbm.BinaryRBMParams), trained by
  CD-k or PCD-k (ebm.losses.cd_loss / pcd_loss, the GRBM's losses reused). Its mean-field codes are
  p(h = 1 | v). log Z by enumeration over the smaller side when it has at most eval.max_exact
  units (log Z is symmetric in v and h: enumerating v is enumerating the hidden side of the RBM
  (W^T, c, b)), AIS (ebm.ais) otherwise. For binary v with the exact factorial posterior,
  ELBO(v) = log p(v) = -F(v) - log Z.
- `vae`: an MLP VAE (Flax NNX) with a Bernoulli decoder (binary or [0, 1] inputs) or a Gaussian one
  with fixed sigma (continuous codes). Trained on -(log p(v | z) - kl_weight KL) with kl_weight for
  the Bernoulli decoder only (the demo's 0.25) and the true ELBO for the Gaussian (the demo's loss
  is 2 sigma^2 times it); evaluated with the true ELBO, and `iwae(v, key, k)`, the
  importance-weighted bound of Burda et al. (2016, eq. 8). Prior N(0, I).
- `gmm`: a full-covariance Gaussian mixture, top stage only (no latents passed up). One training
  step is one closed-form EM iteration over the whole input table (Dempster et al. 1977), so it
  runs on the shared loop like the others; its ELBO is its exact log-density.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from common import optim, train as train_lib
from common.errors import ConfigError
from common.registry import Registry
from ebm import ais, grbm, losses, samplers
from ebm.grbm import BinaryRBMParams

_LOG_2PI = math.log(2.0 * math.pi)
META: Registry = Registry("meta-model")
CODES = ("mean", "sample", "resample")


def _rows(consts, idx, key, draw):
  """The step's batch: rows idx of the input table, redrawn by `draw` ('resample' codes)."""
  v = consts["data"][idx]
  return v if draw is None else draw(v, jax.random.fold_in(key, 0x5EED))


def _structure(make: Callable[[jax.Array], nnx.Module]) -> nnx.GraphDef:
  return nnx.split(nnx.eval_shape(lambda: make(jax.random.key(0))))[0]


def _optimizer(cfg, num_steps: int) -> optax.GradientTransformation:
  return optim.make_optimizer(cfg.optim, num_steps)


# ---------------------------------------------------------------------------------------------
# Binary RBM.


def rbm_log_prior(p: BinaryRBMParams, h: jax.Array, log_z: jax.Array) -> jax.Array:
  """log p(h) = c^T h + sum_i softplus(b_i + (W h)_i) - log Z, the hidden marginal, [B]."""
  return h @ p.c + jnp.sum(jax.nn.softplus(p.b + h @ p.W.T), axis=-1) - log_z


def rbm_log_prob(p: BinaryRBMParams, v: jax.Array, log_z: jax.Array) -> jax.Array:
  """log p(v) = -F(v) - log Z, the visible marginal, [B]."""
  return -grbm.binary_free_energy(p, v) - log_z


def transpose(p: BinaryRBMParams) -> BinaryRBMParams:
  """The same joint with the roles of v and h swapped (W^T, b <-> c): same log Z."""
  return BinaryRBMParams(p.W.T, p.c, p.b)


def exact_log_z(p: BinaryRBMParams) -> jax.Array:
  """log Z by enumerating the smaller side (ebm.grbm.binary_log_z enumerates the hidden one)."""
  d, m = p.W.shape
  return grbm.binary_log_z(p if m <= d else transpose(p))


@functools.partial(jax.jit, static_argnames=("n",))
def _exact_hidden_draws(p: BinaryRBMParams, key: jax.Array, n: int) -> jax.Array:
  """n exact draws of h from the hidden marginal, enumerated over the 2^m states, [n, m]; by
  inverse CDF, so memory is O(2^m + n) (jax.random.categorical would hold [n, 2^m] noise)."""
  m = p.c.shape[-1]
  states = grbm.hidden_states(0, 2 ** m, m, p.W.dtype)
  cdf = jnp.cumsum(jax.nn.softmax(rbm_log_prior(p, states, 0.0)))
  u = jax.random.uniform(key, (n,), cdf.dtype) * cdf[-1]
  idx = jnp.minimum(jnp.searchsorted(cdf, u, side="right"), 2 ** m - 1)
  return states[idx]


@functools.partial(jax.jit, static_argnames=("n", "num_steps"))
def _gibbs_draws(p: BinaryRBMParams, key: jax.Array, n: int, num_steps: int) -> jax.Array:
  v0 = jax.random.bernoulli(key, 0.5, (n, p.b.shape[-1])).astype(p.W.dtype)
  return samplers.block_gibbs(p, jax.random.fold_in(key, 1), v0, num_steps)


class BinaryRBM(nnx.Module):
  """A binary RBM with parameters W [d, m], b [d], c [m], initialised from `init` plus
  N(0, init_std^2) noise on W."""

  def __init__(self, init: BinaryRBMParams, init_std: float, *, rngs: nnx.Rngs):
    noise = init_std * jax.random.normal(rngs.params(), init.W.shape)
    self.W = nnx.Param(jnp.asarray(init.W, jnp.float32) + noise)
    self.b = nnx.Param(jnp.asarray(init.b, jnp.float32))
    self.c = nnx.Param(jnp.asarray(init.c, jnp.float32))

  def params(self) -> BinaryRBMParams:
    return BinaryRBMParams(self.W[...], self.b[...], self.c[...])

  def free_energy(self, v: jax.Array) -> jax.Array:
    return grbm.binary_free_energy(self.params(), v)


def transposed_init(below: BinaryRBMParams, num_hidden: int) -> BinaryRBMParams | None:
  """The RBM on the hidden units of `below` whose visible marginal is below's hidden marginal
  (Hinton, Osindero & Teh 2006, sec. 4: W^T, b <-> c), padded with num_hidden - d zero columns
  (which leave the marginal unchanged); None if num_hidden < d."""
  d, m = below.W.shape
  if num_hidden < d:
    return None
  pad = num_hidden - d
  W = jnp.concatenate([below.W.T, jnp.zeros((m, pad))], axis=1)
  return BinaryRBMParams(W, below.c, jnp.concatenate([below.b, jnp.zeros((pad,))]))
def _logit_means(inputs: np.ndarray) -> np.ndarray:
  mean = np.clip(np.asarray(inputs, np.float64).mean(0), 1e-3, 1 - 1e-3)
  return np.log(mean / (1 - mean)).astype(np.float32)


class RBMSpec:
  """A binary RBM meta-model: cfg = config.rbm (cd_steps, persistent, init_std, optim)."""
  kind, latent_binary = "rbm", True

  def __init__(self, cfg, dim: int, num_latent: int, binary_input: bool):
    self.cfg, self.dim, self.num_latent, self.binary_input = cfg, dim, num_latent, binary_input

  def initial(self, inputs: np.ndarray, below: Any = None) -> BinaryRBMParams:
    """cfg.init = 'transpose' with an RBM below that allows it: `transposed_init`; otherwise
    W = 0 (plus the noise), b = logit of the input means (Hinton 2010, sec. 8), c = 0."""
    if self.cfg.init == "transpose" and getattr(below, "kind", None) == "rbm":
      init = transposed_init(below.p, self.num_latent)
      if init is not None:   # numpy copies: the donated state must not alias the stage below
        return BinaryRBMParams(*(np.array(x, np.float32) for x in init))
    return BinaryRBMParams(np.zeros((self.dim, self.num_latent), np.float32),
                           _logit_means(inputs), np.zeros((self.num_latent,), np.float32))

  def _make(self, init: BinaryRBMParams) -> Callable[[jax.Array], BinaryRBM]:
    return lambda key: BinaryRBM(init, self.cfg.init_std, rngs=nnx.Rngs(key))

  def program(self, inputs: np.ndarray, num_steps: int, batch_size: int,
              below: Any = None, draw: Callable | None = None) -> train_lib.Program:
    """CD-k (or PCD-k: one persistent chain per batch position) on rows of `inputs`; `below` is
    the fitted stage underneath (for cfg.init = 'transpose')."""
    make = self._make(self.initial(inputs, below))
    graphdef, tx, k = _structure(make), _optimizer(self.cfg, num_steps), int(self.cfg.cd_steps)
    persistent = bool(self.cfg.persistent)
    loss = losses.pcd_loss(k) if persistent else losses.cd_loss(k)

    def init(key):
      m_key, h_key = jax.random.split(key)
      state = {"model": optim.ParamSet.create(nnx.state(make(m_key)), tx)}
      if persistent:
        state["chains"] = jax.random.bernoulli(h_key, 0.5, (batch_size, self.num_latent)
                                               ).astype(jnp.float32)
      return state

    def step(state, idx, key, consts):
      v = _rows(consts, idx, key, draw)
      _, metrics, carry, grads = losses.value_and_grad(
          loss, graphdef, state["model"].params, v, key, None, state.get("chains"))
      new = {**state, "model": state["model"].apply(grads, tx)}
      if persistent:
        new["chains"] = carry
      return new, {**metrics, "grad_norm": optax.tree.norm(grads)}

    return train_lib.Program(init, step, consts={"data": jnp.asarray(inputs, jnp.float32)})

  def params_of(self, state) -> BinaryRBMParams:
    zeros = BinaryRBMParams(jnp.zeros((self.dim, self.num_latent)), jnp.zeros((self.dim,)),
                            jnp.zeros((self.num_latent,)))
    graphdef = _structure(self._make(zeros))
    p = nnx.merge(graphdef, jax.device_get(state["model"].params)).params()
    return BinaryRBMParams(*(jnp.asarray(x, jnp.float32) for x in p))

  def load(self, state, key: jax.Array, eval_cfg) -> "FittedRBM":
    return FittedRBM.create(self.params_of(state), key, eval_cfg)


class FittedRBM:
  """A trained binary RBM with its log Z (`log_z_info`: value, method, AIS standard error)."""
  kind, latent_binary = "rbm", True

  def __init__(self, p: BinaryRBMParams, log_z: float, log_z_info: dict, eval_cfg):
    self.p, self.log_z, self.log_z_info, self.eval_cfg = p, jnp.float32(log_z), log_z_info, eval_cfg

  @classmethod
  def create(cls, p: BinaryRBMParams, key: jax.Array, eval_cfg) -> "FittedRBM":
    p = BinaryRBMParams(*(jnp.asarray(x, jnp.float32) for x in p))
    if min(p.W.shape) <= eval_cfg.max_exact:
      log_z = float(exact_log_z(p))
      return cls(p, log_z, {"log_z": log_z, "method": "enumeration"}, eval_cfg)
    res = ais.ais_log_z(p, key, eval_cfg.ais_chains, eval_cfg.ais_betas)
    info = {"log_z": float(res.log_z), "method": "ais", "stderr": float(res.stderr),
            "ess": float(res.ess), "chains": eval_cfg.ais_chains, "betas": eval_cfg.ais_betas}
    return cls(p, float(res.log_z), info, eval_cfg)

  @property
  def exact(self) -> bool:
    """Whether elbo() is the exact log-likelihood of binary inputs (log Z enumerated)."""
    return self.log_z_info["method"] == "enumeration"

  def encode(self, v, key, codes: str = "mean"):
    """Codes of v [B, m]: p(h = 1 | v) ('mean', and the table 'resample' redraws), or a draw."""
    if codes == "sample":
      return samplers.sample_hidden(self.p, key, v)
    return grbm.posterior_probs(self.p, v)

  @staticmethod
  def table_mean(table):
    """The mean codes of a 'resample' table (the probabilities themselves)."""
    return table

  @staticmethod
  def draw(table, key):
    """h ~ q(h | v) from the 'resample' table of probabilities [B, m]."""
    return jax.random.bernoulli(key, table).astype(table.dtype)

  def posterior_sample(self, v, key):
    return samplers.sample_hidden(self.p, key, v)

  def posterior_logits(self, v):
    """The factorial posterior's logits c + W^T v, [B, m]."""
    return self.p.c + v @ self.p.W

  def elbo(self, v, key=None):
    return rbm_log_prob(self.p, v, self.log_z)

  def log_prior(self, h):
    return rbm_log_prior(self.p, h, self.log_z)

  def log_conditional(self, v, h):
    """log p(v | h) = sum_i v_i a_i - softplus(a_i), a = b + W h; [B] (or broadcast)."""
    a = self.p.b + h @ self.p.W.T
    return jnp.sum(v * a - jax.nn.softplus(a), axis=-1)

  def log_posterior(self, v, h):
    """log q(h | v) of the exact factorial posterior, a = c + W^T v; [B]."""
    a = self.posterior_logits(v)
    return jnp.sum(h * a - jax.nn.softplus(a), axis=-1)

  def sample_visible(self, h, key):
    return samplers.sample_visible(self.p, key, h)

  def visible_mean(self, h):
    return jax.nn.sigmoid(self.p.b + h @ self.p.W.T)

  def sample(self, key, n: int):
    """Exact draws when a side can be enumerated (eval.max_exact), else a long Gibbs chain."""
    d, m = self.p.W.shape
    h_key, v_key = jax.random.split(key)
    if m <= self.eval_cfg.max_exact:
      return self.sample_visible(_exact_hidden_draws(self.p, h_key, n), v_key)
    if d <= self.eval_cfg.max_exact:
      return _exact_hidden_draws(transpose(self.p), h_key, n)
    return _gibbs_draws(self.p, key, n, int(self.eval_cfg.gibbs_steps))

  def num_params(self) -> int:
    return int(sum(x.size for x in self.p))


# ---------------------------------------------------------------------------------------------
# VAE.


def _mlp(sizes: list[int], rngs: nnx.Rngs) -> nnx.List:
  return nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in zip(sizes[:-1], sizes[1:])])


def _apply(layers, x):
  for i, layer in enumerate(layers):
    x = layer(x)
    if i < len(layers) - 1:
      x = jax.nn.relu(x)
  return x


def gaussian_log_prob(x: jax.Array, mean: jax.Array, log_std: jax.Array) -> jax.Array:
  """sum_i log N(x_i; mean_i, exp(log_std_i)^2), [B]."""
  return jnp.sum(-0.5 * ((x - mean) * jnp.exp(-log_std)) ** 2 - log_std - 0.5 * _LOG_2PI, -1)


class VAE(nnx.Module):
  """q(z | v) = N(mu(v), diag exp(logvar(v))), p(z) = N(0, I), p(v | z) Bernoulli(sigmoid(f(z)))
  or N(f(z), sigma^2 I); encoder and decoder are MLPs with `depth` ReLU layers of `hidden`."""

  def __init__(self, dim: int, latent: int, hidden: int, depth: int, decoder: str, sigma: float,
               *, rngs: nnx.Rngs):
    self.decoder, self.log_sigma = decoder, math.log(sigma)
    self.enc = _mlp([dim] + [hidden] * depth + [2 * latent], rngs)
    self.dec = _mlp([latent] + [hidden] * depth + [dim], rngs)

  def posterior(self, v):
    mu, logvar = jnp.split(_apply(self.enc, v), 2, axis=-1)
    return mu, logvar

  def log_likelihood(self, v, z):
    out = _apply(self.dec, z)
    if self.decoder == "bernoulli":
      return jnp.sum(v * out - jax.nn.softplus(out), axis=-1)
    return gaussian_log_prob(v, out, jnp.full_like(out, self.log_sigma))

  def mean(self, z):
    out = _apply(self.dec, z)
    return jax.nn.sigmoid(out) if self.decoder == "bernoulli" else out


def vae_elbo(model: VAE, v, key, kl_weight: float = 1.0):
  """log p(v | z) - kl_weight KL(q(z | v) || N(0, I)), one reparameterised z, analytic KL; [B]."""
  mu, logvar = model.posterior(v)
  z = mu + jnp.exp(0.5 * logvar) * jax.random.normal(key, mu.shape, mu.dtype)
  kl = 0.5 * jnp.sum(jnp.exp(logvar) + mu ** 2 - 1.0 - logvar, axis=-1)
  return model.log_likelihood(v, z) - kl_weight * kl


def vae_iwae(model: VAE, v, key, k: int):
  """The k-sample importance-weighted bound log mean_j p(v, z_j) / q(z_j | v) (Burda 2016), [B]."""
  mu, logvar = model.posterior(v)
  log_std = 0.5 * logvar
  z = mu + jnp.exp(log_std) * jax.random.normal(key, (k,) + mu.shape, mu.dtype)   # [k, B, n]
  zero = jnp.zeros_like(z)
  log_w = (jax.vmap(lambda zj: model.log_likelihood(v, zj))(z) + gaussian_log_prob(z, zero, zero)
           - gaussian_log_prob(z, mu, log_std))
  return jax.nn.logsumexp(log_w, axis=0) - math.log(k)


class VAESpec:
  """A VAE meta-model: cfg = config.vae (hidden, depth, decoder, sigma, kl_weight, optim)."""
  kind, latent_binary = "vae", False

  def __init__(self, cfg, dim: int, num_latent: int, binary_input: bool):
    self.cfg, self.dim, self.num_latent, self.binary_input = cfg, dim, num_latent, binary_input
    self.decoder = cfg.decoder if cfg.decoder != "auto" else (
        "bernoulli" if binary_input else "gaussian")
    self.kl_weight = float(cfg.kl_weight) if self.decoder == "bernoulli" else 1.0
    self.make = lambda key: VAE(dim, num_latent, cfg.hidden, cfg.depth, self.decoder, cfg.sigma,
                                rngs=nnx.Rngs(key))
    self.graphdef = _structure(self.make)

  def program(self, inputs: np.ndarray, num_steps: int, batch_size: int,
              below: Any = None, draw: Callable | None = None) -> train_lib.Program:
    tx, graphdef, kl_weight = _optimizer(self.cfg, num_steps), self.graphdef, self.kl_weight

    def init(key):
      return {"model": optim.ParamSet.create(nnx.state(self.make(key)), tx)}

    def step(state, idx, key, consts):
      v = _rows(consts, idx, key, draw)

      def loss(params):
        value = -jnp.mean(vae_elbo(nnx.merge(graphdef, params), v, key, kl_weight))
        return value, {"loss": value}

      (_, metrics), grads = jax.value_and_grad(loss, has_aux=True)(state["model"].params)
      return ({"model": state["model"].apply(grads, tx)},
              {**metrics, "grad_norm": optax.tree.norm(grads)})

    return train_lib.Program(init, step, consts={"data": jnp.asarray(inputs, jnp.float32)})

  def load(self, state, key: jax.Array, eval_cfg) -> "FittedVAE":
    return FittedVAE(self.graphdef, jax.device_get(state["model"].params), eval_cfg,
                     self.num_latent)


class FittedVAE:
  """A trained VAE; its jitted calls take the parameter state as an argument."""
  kind, latent_binary, exact = "vae", False, False

  def __init__(self, graphdef: nnx.GraphDef, params, eval_cfg, num_latent: int):
    self.params, self.eval_cfg, self.num_latent = params, eval_cfg, num_latent
    model = lambda params: nnx.merge(graphdef, params)
    self._elbo = jax.jit(lambda params, v, key: vae_elbo(model(params), v, key))
    self._iwae = jax.jit(lambda params, v, key, k: vae_iwae(model(params), v, key, k),
                         static_argnums=3)
    self._post = jax.jit(lambda params, v: model(params).posterior(v))
    self._mean = jax.jit(lambda params, z: model(params).mean(z))
    self._log_cond = jax.jit(lambda params, v, z: model(params).log_likelihood(v, z))
    self.decoder, self.log_sigma = model(params).decoder, model(params).log_sigma

  def posterior_sample(self, v, key):
    mu, logvar = self._post(self.params, v)
    return mu + jnp.exp(0.5 * logvar) * jax.random.normal(key, mu.shape, mu.dtype)

  def encode(self, v, key, codes: str = "sample"):
    """Codes of v: the posterior mean, one draw, or ('resample') the table [mu, log var]."""
    if codes == "resample":
      return jnp.concatenate(self._post(self.params, v), axis=-1)
    return self._post(self.params, v)[0] if codes == "mean" else self.posterior_sample(v, key)

  @staticmethod
  def table_mean(table):
    """The posterior means mu of a 'resample' table."""
    return jnp.split(table, 2, axis=-1)[0]

  @staticmethod
  def draw(table, key):
    """z ~ q(z | v) from the 'resample' table [B, 2 n] = [mu, log var]."""
    mu, logvar = jnp.split(table, 2, axis=-1)
    return mu + jnp.exp(0.5 * logvar) * jax.random.normal(key, mu.shape, mu.dtype)

  def elbo(self, v, key):
    return self._elbo(self.params, v, key)

  def iwae(self, v, key, k: int):
    return self._iwae(self.params, v, key, int(k))

  def log_prior(self, h):
    return gaussian_log_prob(h, jnp.zeros_like(h), jnp.zeros_like(h))

  def log_conditional(self, v, h):
    """log p(v | z = h) of the decoder, [B]."""
    return self._log_cond(self.params, v, h)

  def log_posterior(self, v, h):
    """log q(z = h | v) of the Gaussian encoder, [B]."""
    mu, logvar = self._post(self.params, v)
    return gaussian_log_prob(h, mu, 0.5 * logvar)

  def visible_mean(self, h):
    return self._mean(self.params, h)

  def sample_visible(self, h, key):
    mean = self.visible_mean(h)
    if self.decoder == "bernoulli":
      return jax.random.bernoulli(key, mean).astype(mean.dtype)
    return mean + math.exp(self.log_sigma) * jax.random.normal(key, mean.shape, mean.dtype)

  def sample(self, key, n: int):
    z_key, v_key = jax.random.split(key)
    return self.sample_visible(jax.random.normal(z_key, (n, self.num_latent)), v_key)

  def num_params(self) -> int:
    return int(sum(x.size for x in jax.tree.leaves(self.params)))


# ---------------------------------------------------------------------------------------------
# Gaussian mixture (EM).


def gmm_log_prob(p: dict, x: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(log p(x) [B], component log-joints [B, K]) of weights [K], means [K, n], chol [K, n, n]."""
  diff = x[:, None, :] - p["means"][None]                                         # [B, K, n]
  sol = jax.vmap(lambda l, d: jax.scipy.linalg.solve_triangular(l, d.T, lower=True).T,
                 in_axes=(0, 1), out_axes=1)(p["chol"], diff)                       # [B, K, n]
  log_det = jnp.sum(jnp.log(jnp.diagonal(p["chol"], axis1=-2, axis2=-1)), -1)       # [K]
  n = x.shape[-1]
  comp = (jnp.log(p["weights"]) - 0.5 * jnp.sum(sol ** 2, -1) - log_det - 0.5 * n * _LOG_2PI)
  return jax.nn.logsumexp(comp, axis=-1), comp


def em_step(p: dict, x: jax.Array, reg: float, log_mask: jax.Array | None = None
            ) -> tuple[dict, jax.Array]:
  """One EM iteration (closed-form M-step, reg added to each covariance's diagonal); returns the
  new parameters and the mean log-likelihood of x under the old ones.

  log_mask [B, K] (0 or -inf) restricts each example's components (ebm.semisup: a labelled
  example's responsibilities lie on its class's components); the returned value is then the mean
  of log sum_{k allowed} p(x, k), the semi-supervised objective."""
  log_px, comp = gmm_log_prob(p, x)
  if log_mask is not None:
    comp = comp + log_mask
    log_px = jax.nn.logsumexp(comp, axis=-1)
  r = jnp.exp(comp - log_px[:, None])                                               # [B, K]
  nk = jnp.sum(r, 0) + 1e-10
  means = (r.T @ x) / nk[:, None]
  diff = x[:, None, :] - means[None]
  cov = jnp.einsum("bk,bki,bkj->kij", r, diff, diff) / nk[:, None, None]
  cov = cov + reg * jnp.eye(x.shape[-1])
  return {"weights": nk / jnp.sum(nk), "means": means, "chol": jnp.linalg.cholesky(cov)}, \
      jnp.mean(log_px)


class GMMSpec:
  """A Gaussian mixture on continuous latents: cfg = config.gmm (num_components, reg)."""
  kind, latent_binary = "gmm", False

  def __init__(self, cfg, dim: int, num_latent: int, binary_input: bool):
    self.cfg, self.dim, self.num_latent, self.binary_input = cfg, dim, num_latent, binary_input

  def program(self, inputs: np.ndarray, num_steps: int, batch_size: int,
              below: Any = None, draw: Callable | None = None) -> train_lib.Program:
    """One step = one EM iteration over all of `inputs` (the index batch is not used)."""
    data = jnp.asarray(inputs, jnp.float32)
    k, reg = int(self.cfg.num_components), float(self.cfg.reg)

    def init(key):
      x = data if draw is None else draw(data, key)
      centre = x[jax.random.choice(key, x.shape[0], (k,), replace=False)]
      cov = jnp.cov(x, rowvar=False).reshape(self.dim, self.dim) + reg * jnp.eye(self.dim)
      chol = jnp.broadcast_to(jnp.linalg.cholesky(cov), (k, self.dim, self.dim))
      return {"weights": jnp.full((k,), 1.0 / k), "means": centre, "chol": chol}

    def step(state, idx, key, consts):
      x = consts["data"] if draw is None else draw(consts["data"], key)
      new, ll = em_step(state, x, reg)
      return new, {"loss": -ll}

    return train_lib.Program(init, step, consts={"data": data}, finite=("loss",))

  def load(self, state, key: jax.Array, eval_cfg) -> "FittedGMM":
    return FittedGMM({k: jnp.asarray(v) for k, v in jax.device_get(state).items()})


class FittedGMM:
  """A fitted mixture: the top stage only (it passes no latents up)."""
  kind, latent_binary, exact = "gmm", False, True

  def __init__(self, p: dict):
    self.p = p

  def elbo(self, v, key=None):
    return gmm_log_prob(self.p, v)[0]

  def sample(self, key, n: int):
    c_key, z_key = jax.random.split(key)
    comp = jax.random.categorical(c_key, jnp.log(self.p["weights"]), shape=(n,))
    eps = jax.random.normal(z_key, (n, self.p["means"].shape[-1]))
    return self.p["means"][comp] + jnp.einsum("bij,bj->bi", self.p["chol"][comp], eps)

  def num_params(self) -> int:
    """Free parameters: K - 1 weights, K n means, K n (n + 1) / 2 covariance entries."""
    k, n = self.p["means"].shape
    return int(k - 1 + k * n + k * n * (n + 1) // 2)


META.add("rbm", RBMSpec)
META.add("vae", VAESpec)
META.add("gmm", GMMSpec)


def validate_stack(kinds, field: str = "boost.stack") -> None:
  """A stack bottom-up: a GMM only on top; an RBM (binary visible units) never above a VAE."""
  kinds = list(kinds)
  if not kinds:
    raise ConfigError(f"{field}=() is invalid: expected at least one meta-model")
  for i, kind in enumerate(kinds):
    META.get(kind, field=field)
    if kind == "gmm" and i != len(kinds) - 1:
      raise ConfigError(f"{field}={tuple(kinds)!r} is invalid: a 'gmm' passes no latents up, so "
                        "it can only be the top stage")
    if kind == "rbm" and i > 0 and kinds[i - 1] != "rbm":
      raise ConfigError(f"{field}={tuple(kinds)!r} is invalid: an 'rbm' models binary units, so "
                        f"it cannot sit on the continuous latents of a {kinds[i - 1]!r}")
