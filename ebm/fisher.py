"""The Fisher-divergence estimator with VaES on perturbed Gaussian RBMs (arXiv 2010.08258).

../shared/papers/ebm.md (VaES / VaGES) and ../shared/papers/sources/vages.md (`run_grbm_fisher.py`).
The Fisher divergence between the data p_D and a model p_theta has the variational form

  F(p_D || p_theta) = 0.5 E_D ||s_D - s_theta||^2
                    = sup_f E_D [f(v) . s_theta(v) + tr grad_v f(v) - 0.5 ||f(v)||^2],

(Stein's identity E_D[f . s_D + tr grad f] = 0 turns the square into this; the supremum is at
f* = s_theta - s_D), which needs the model's score but not the data's. For an EBLVM the score is
replaced by VaES, 1/L sum_l grad_v log p~(v, h_l) with h_l ~ q(h | v) (ebm.vages.vaes), and the
trace by Hutchinson's estimator eps^T (grad_v f) eps with a Rademacher eps (one forward-mode JVP).

Testbed (the official one): data N(0, I) in d dimensions (s_D(v) = -v), split into train / val /
test; a GRBM with m = d hidden units, sigma fixed to 1, whose W, b, c are `perturbation` times one
draw of N(0, 1) directions (the same directions at every scale, as the official code's fixed seed
gives), for perturbation in config.fisher.perturbations. The exact truth needs no enumeration: the
GRBM score is closed form in any d (ebm.grbm.score), so the exact value is
0.5 mean_test ||-v - s_theta(v)||^2 on the test points.

Training: all scales in one Program, vmapped over a leading scale axis S (state and consts). One
step of the shared loop (`common.train.fit`) is one minibatch of training points, the same for
every scale: K = fisher.inner_steps Adam steps of the linear Bernoulli posterior q on its -ELBO
(ebm.bism.lower_objective, kind "kl": the official lower level, a relaxed one-particle draw), then
L = fisher.particles hard draws h ~ q(. | v) for VaES and one Adam step of the critic (an MLP of
critic.num_layers d -> d layers, critic.activation between them: the official TrapezoidMLP) on the
negated objective. With fisher.exact_score_ablation, a second set of critics is trained alongside
on the exact score (the official `Fisher` baseline). fisher.score = "exact" trains only that one.

Evaluation (deterministic keys, so a rerun writes the same numbers): the per-point objective on the
held-out test points with the trained q and critics; estimate = its mean, stderr = its standard
deviation / sqrt(n). A hook logs the same on the validation points every eval.every steps.

Exports (main process, atomic, common.io):
- workdir/results.json: lists over the scales (in config order) `perturbation`, `exact` (0.5 mean
  ||s_D - s_theta||^2 on the test points), `exact_stderr` (its sample s.e.), `estimate` and
  `stderr` (the critic objective with fisher.score, VaES by default), `estimate_exact_score` and
  `stderr_exact_score` (the ablation critics, when trained), `estimate_oracle_critic` and
  `stderr_oracle_critic` (the objective at f* = s_theta - s_D with the same score estimate and
  Hutchinson probes: the score estimate's error alone, no critic error); and `score`, `step`, `dim`,
  `num_hidden`, `num_test`, `particles`, `inner_steps`.
- workdir/fisher.png: the estimates (2 s.e.) and the exact value against the perturbation.
- workdir/fisher.npz: `train` [N_train, d], `val` [N_val, d], `test` [N_test, d] (the data),
  `perturbation` [S], and the perturbed GRBMs stacked over scales in ebm.grbm's pinned form
  E(v, h) = sum (v - b)^2 / (2 sigma^2) - c^T h - v^T W h: `W` [S, d, m], `b` [S, d], `c` [S, m],
  `sigma` [S, d]. exact[i] = mean over test of 0.5 ||-v - s_i(v)||^2 with
  s_i(v) = -(v - b[i]) / sigma[i]^2 + sigmoid(c[i] + v W[i]) W[i]^T.

Modes: train (default; a finished run says "Already trained" and rewrites the exports) and eval
(exports from the latest checkpoint).
"""

from __future__ import annotations

import math
import os
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from flax import nnx

from common import checks, io, optim, train as train_lib
from common.checkpoint import Checkpointer
from common.errors import ConfigError
from common.registry import Registry
from ebm import bism, experiment, grbm, posteriors, vages

MODES: Registry = Registry("ebm fisher mode")
RESULTS, ARRAYS, FIGURE = "results.json", "fisher.npz", "fisher.png"

ACTIVATIONS: Registry[Callable[[jax.Array], jax.Array]] = Registry("critic activation")
ACTIVATIONS.add("elu", jax.nn.elu)
ACTIVATIONS.add("relu", jax.nn.relu)
ACTIVATIONS.add("softplus", jax.nn.softplus)
ACTIVATIONS.add("tanh", jnp.tanh)
ACTIVATIONS.add("silu", jax.nn.silu)

SCORES: Registry[str] = Registry("Fisher score estimate")
SCORES.add("vaes", "VaES: L draws of the linear Bernoulli posterior q, trained alongside")
SCORES.add("exact", "the GRBM's closed-form score (ebm.grbm.score)")


def _rademacher(rng: jax.Array, shape, dtype) -> jax.Array:
  return jax.random.rademacher(rng, shape, dtype)


def _gaussian(rng: jax.Array, shape, dtype) -> jax.Array:
  return jax.random.normal(rng, shape, dtype)


PROJECTIONS: Registry[Callable] = Registry("Hutchinson probe distribution")
PROJECTIONS.add("rademacher", _rademacher)
PROJECTIONS.add("gaussian", _gaussian)

DATA_NAME = "standard_normal"


# ---------------------------------------------------------------------------------------------
# The estimator (pure functions).


class Critic(nnx.Module):
  """f: R^d -> R^d, `num_layers` linear d -> d layers with `activation` between them (the official
  TrapezoidMLP(d, d, 3, ELU): its widths linspace(d, d) are all d)."""

  def __init__(self, dim: int, num_layers: int, activation: str, *, rngs: nnx.Rngs):
    self.layers = nnx.List([nnx.Linear(dim, dim, rngs=rngs) for _ in range(num_layers)])
    self.activation = activation

  def __call__(self, v: jax.Array) -> jax.Array:
    act = ACTIVATIONS.get(self.activation, field="critic.activation")
    x = v
    for i, layer in enumerate(self.layers):
      x = layer(x)
      if i + 1 < len(self.layers):
        x = act(x)
    return x


def critic_objective(f: Callable[[jax.Array], jax.Array], score: jax.Array, v: jax.Array,
                     eps: jax.Array) -> jax.Array:
  """The per-point objective f(v) . s(v) + eps^T (grad_v f(v)) eps - 0.5 ||f(v)||^2, shape [B].

  Args:
    f: a row-wise critic [B, d] -> [B, d] (row b depends on v_b only, so one JVP with the tangent
      eps [B, d] gives every (grad f(v_b)) eps_b).
    score: [B, d] the model's score at v (exact or VaES; held fixed).
    v: [B, d] the data points.
    eps: [B, d] Hutchinson probes (E[eps eps^T] = I: Rademacher or Gaussian).
  """
  fv, jvp = jax.jvp(f, (v,), (eps,))
  score = jax.lax.stop_gradient(score)
  return (jnp.sum(fv * score, -1) + jnp.sum(eps * jvp, -1) - 0.5 * jnp.sum(fv ** 2, -1))


def data_score(v: jax.Array) -> jax.Array:
  """The score of the data N(0, I): -v, [B, d]."""
  return -v


def exact_fisher_terms(p: grbm.GRBMParams, v: jax.Array) -> jax.Array:
  """0.5 ||s_D(v) - s_theta(v)||^2 per point, [B]: its mean is the exact Fisher divergence."""
  return 0.5 * jnp.sum((data_score(v) - grbm.score(p, v)) ** 2, -1)


def oracle_critic(p: grbm.GRBMParams) -> Callable[[jax.Array], jax.Array]:
  """The maximiser f* = s_theta - s_D of the objective (its value there is F)."""
  return lambda v: grbm.score(p, v) - data_score(v)


def _log_joint(p: grbm.GRBMParams, v: jax.Array, h: jax.Array) -> jax.Array:
  return -grbm.energy(p, v, h)


def vaes_score(p: grbm.GRBMParams, q, v: jax.Array, rng: jax.Array, num: int) -> jax.Array:
  """VaES of the GRBM at v [B, d] from `num` hard draws of q(. | v) (ebm.vages), [B, d]."""
  h = vages.bernoulli_particles(q.logits(v), rng, num)
  return vages.vaes(_log_joint, p, v, h)


class _FixedGRBM(NamedTuple):
  """The GRBM as ebm.bism.lower_objective's `model` (it calls model.energy), held fixed."""
  p: grbm.GRBMParams

  def energy(self, v: jax.Array, h: jax.Array) -> jax.Array:
    return grbm.energy(self.p, v, h)


def posterior_steps(p: grbm.GRBMParams, q_def: nnx.GraphDef, tx: optax.GradientTransformation,
                    q: optim.ParamSet, v: jax.Array, rng: jax.Array, num_steps: int, kind: str
                    ) -> tuple[optim.ParamSet, jax.Array]:
  """num_steps optimiser steps of q on the lower objective (-ELBO for kind 'kl') at v [B, d].

  Returns:
    (the updated ParamSet, the mean objective over the steps; 0 for num_steps = 0).
  """
  model = _FixedGRBM(jax.lax.stop_gradient(p))
  weight = jnp.ones(v.shape[:1], v.dtype)

  def one(q, key):
    value, grads = jax.value_and_grad(lambda ph: bism.lower_objective(
        model, nnx.merge(q_def, ph), v, key, weight, kind))(q.params)
    return q.apply(grads, tx), value

  if num_steps == 0:
    return q, jnp.zeros((), v.dtype)
  q, values = jax.lax.scan(one, q, jax.random.split(rng, num_steps), unroll=min(num_steps, 10))
  return q, jnp.mean(values)


# ---------------------------------------------------------------------------------------------
# Config.


def scales(config) -> tuple[float, ...]:
  return tuple(float(x) for x in config.fisher.perturbations)


def uses_vaes(config) -> bool:
  return config.fisher.score == "vaes"


def with_ablation(config) -> bool:
  """A second critic on the exact score (only meaningful next to VaES)."""
  return uses_vaes(config) and bool(config.fisher.exact_score_ablation)


def validate(config) -> None:
  """Rejects bad values at start, naming the field."""
  train_lib.validate(config)
  if int(config.train.get("num_seeds", 1)) != 1:
    raise ConfigError(f"train.num_seeds={config.train.num_seeds!r} is invalid: the Fisher runner "
                      "vmaps the perturbation scales instead of seeds; expected 1")
  optim.validate(config, "optim")
  optim.validate(config, "posterior_optim")
  checks.one_of(config, "data.name", [DATA_NAME])
  for field in ("data.dim", "data.num_train", "data.num_val", "data.num_test", "data.batch_size",
                "model.num_hidden", "critic.num_layers", "fisher.particles", "eval.every",
                "eval.batch_size", "eval.particles", "eval.num_probes"):
    checks.integer(config, field)
  checks.integer(config, "fisher.inner_steps", low=0)
  if config.data.batch_size > config.data.num_train:
    raise ConfigError(f"data.batch_size={config.data.batch_size} is invalid: expected at most "
                      f"data.num_train={config.data.num_train}")
  values = config.fisher.perturbations
  if not (isinstance(values, (tuple, list)) and values
          and all(isinstance(x, (int, float)) and math.isfinite(x) and x >= 0 for x in values)):
    raise ConfigError(f"fisher.perturbations={values!r} is invalid: expected a non-empty list of "
                      "finite numbers >= 0")
  SCORES.get(config.fisher.score, field="fisher.score")
  PROJECTIONS.get(config.fisher.projection, field="fisher.projection")
  ACTIVATIONS.get(config.critic.activation, field="critic.activation")
  checks.one_of(config, "fisher.lower", ["kl", "fisher"])
  checks.positive(config, "posterior.temperature")
  checks.positive(config, "num_devices", allow_zero=True)


def batch_sizes(config) -> tuple[int, ...]:
  """The size split over the mesh's `data` axis."""
  return (config.data.batch_size,)


# ---------------------------------------------------------------------------------------------
# The testbed: data and the perturbed GRBMs.


class Testbed(NamedTuple):
  train: np.ndarray          # [N_train, d]
  val: np.ndarray            # [N_val, d]
  test: np.ndarray           # [N_test, d]
  perturbation: np.ndarray   # [S]
  params: grbm.GRBMParams    # stacked over scales: W [S, d, m], b [S, d], c [S, m], sigma [S, d]


def make_testbed(config) -> Testbed:
  """N(0, I) data of data.seed and the GRBMs perturbation x (one draw of N(0, 1) directions)."""
  d, m = config.data.dim, config.model.num_hidden
  n_train, n_val, n_test = config.data.num_train, config.data.num_val, config.data.num_test
  rng = np.random.default_rng([config.data.seed, 0])
  points = rng.standard_normal((n_train + n_val + n_test, d)).astype(np.float32)
  train, val, test = np.split(points, [n_train, n_train + n_val])
  directions = np.random.default_rng([config.data.seed, 1])
  w0 = directions.standard_normal((d, m))
  c0 = directions.standard_normal(m)
  b0 = directions.standard_normal(d)
  scale = np.asarray(scales(config), np.float64)
  params = grbm.GRBMParams(
      W=(scale[:, None, None] * w0).astype(np.float32),
      b=(scale[:, None] * b0).astype(np.float32),
      c=(scale[:, None] * c0).astype(np.float32),
      sigma=np.ones((len(scale), d), np.float32))
  return Testbed(train, val, test, scale.astype(np.float32), params)


def data_stream(config, train: np.ndarray) -> train_lib.DataFn:
  """Minibatches of the fixed training points, reshuffled each epoch: batch t (t = step - 1) is a
  function of (data.seed, t), so a resumed run sees the same stream."""
  n, batch = len(train), config.data.batch_size

  def batch_at(t: int) -> np.ndarray:
    start = t * batch
    epochs = range(start // n, (start + batch - 1) // n + 1)
    perm = np.concatenate([np.random.default_rng([config.data.seed, 2, e]).permutation(n)
                           for e in epochs])
    offset = start - epochs[0] * n
    return train[perm[offset:offset + batch]]

  def stream(start: int, seed_index: int):
    del seed_index  # one run (train.num_seeds = 1)
    t = start
    while True:
      yield batch_at(t)
      t += 1

  return stream


# ---------------------------------------------------------------------------------------------
# The Program.


class Parts(NamedTuple):
  """What the step and the evaluation share: the modules' structure and the optimisers."""
  critic_def: nnx.GraphDef
  q_def: nnx.GraphDef
  tx_critic: optax.GradientTransformation
  tx_q: optax.GradientTransformation


def _make_critic(config, key: jax.Array) -> Critic:
  return Critic(config.data.dim, config.critic.num_layers, config.critic.activation,
                rngs=nnx.Rngs(key))


def _make_posterior(config, key: jax.Array) -> posteriors.LinearBernoulliPosterior:
  return posteriors.LinearBernoulliPosterior(config.data.dim, config.model.num_hidden,
                                             temperature=config.posterior.temperature,
                                             rngs=nnx.Rngs(key))


def make_parts(config) -> Parts:
  num_steps = config.train.num_steps
  return Parts(experiment.structure(lambda k: _make_critic(config, k)),
               experiment.structure(lambda k: _make_posterior(config, k)),
               optim.make_optimizer(config.optim, num_steps),
               optim.make_optimizer(config.posterior_optim, num_steps))


def _critic_step(parts: Parts, critic: optim.ParamSet, score: jax.Array, v: jax.Array,
                 eps: jax.Array) -> tuple[optim.ParamSet, jax.Array, jax.Array]:
  """One optimiser step of a critic on -mean objective; returns (critic, loss, grad norm)."""
  loss = lambda params: -jnp.mean(critic_objective(nnx.merge(parts.critic_def, params), score,
                                                   v, eps))
  value, grads = jax.value_and_grad(loss)(critic.params)
  return critic.apply(grads, parts.tx_critic), value, optax.tree.norm(grads)


def _scale_step(config, parts: Parts, state, v, key, p: grbm.GRBMParams):
  """One training step of one scale; returns (state, per-scale metrics)."""
  lower_key, particle_key, probe_key = jax.random.split(key, 3)
  eps = PROJECTIONS[config.fisher.projection](probe_key, v.shape, v.dtype)
  new, metrics = dict(state), {}
  if uses_vaes(config):
    new["posterior"], metrics["lower_loss"] = posterior_steps(
        p, parts.q_def, parts.tx_q, state["posterior"], v, lower_key, config.fisher.inner_steps,
        config.fisher.lower)
    q = nnx.merge(parts.q_def, new["posterior"].params)
    score = vaes_score(p, q, v, particle_key, config.fisher.particles)
  else:
    score = grbm.score(p, v)
  new["critic"], metrics["loss"], metrics["grad_norm"] = _critic_step(
      parts, state["critic"], score, v, eps)
  if with_ablation(config):
    new["critic_exact"], metrics["loss_exact_score"], metrics["grad_norm_exact_score"] = (
        _critic_step(parts, state["critic_exact"], grbm.score(p, v), v, eps))
  return new, metrics


def _scale_names(config) -> list[str]:
  return [f"p{x:g}" for x in scales(config)]


def make_program(config, testbed: Testbed, parts: Parts) -> train_lib.Program:
  """All scales in one Program: state and consts carry a leading scale axis S."""
  num_scales = len(testbed.perturbation)
  names = _scale_names(config)

  def init_one(key):
    c_key, q_key, a_key = jax.random.split(key, 3)
    state = {"critic": optim.ParamSet.create(nnx.state(_make_critic(config, c_key)),
                                             parts.tx_critic)}
    if uses_vaes(config):
      state["posterior"] = optim.ParamSet.create(nnx.state(_make_posterior(config, q_key)),
                                                 parts.tx_q)
    if with_ablation(config):
      state["critic_exact"] = optim.ParamSet.create(nnx.state(_make_critic(config, a_key)),
                                                    parts.tx_critic)
    return state

  def init(key):
    return jax.vmap(init_one)(jax.random.split(key, num_scales))

  def step(state, v, key, consts):
    one = lambda s, k, p: _scale_step(config, parts, s, v, k, grbm.GRBMParams(**p))
    new, per = jax.vmap(one)(state, jax.random.split(key, num_scales), consts["grbm"])
    metrics = {"loss": jnp.sum(per["loss"]),
               "grad_norm": jnp.sqrt(jnp.sum(per["grad_norm"] ** 2))}
    for i, name in enumerate(names):
      metrics[f"train_estimate/{name}"] = -per["loss"][i]
      if "loss_exact_score" in per:
        metrics[f"train_estimate_exact_score/{name}"] = -per["loss_exact_score"][i]
    if "lower_loss" in per:
      metrics["lower_loss"] = jnp.mean(per["lower_loss"])
    return new, metrics

  consts = {"grbm": {k: jnp.asarray(x) for k, x in testbed.params._asdict().items()}}
  return train_lib.Program(init, step, consts=consts)


# ---------------------------------------------------------------------------------------------
# Evaluation and the exports.


def _eval_one_scale(config, parts: Parts, state, p: grbm.GRBMParams, v: jax.Array, key):
  """Per-point values of one scale on v [B, d]: a dict of [B] arrays."""
  p = grbm.GRBMParams(**p)
  num_probes = config.eval.num_probes
  probe_keys = jax.random.split(jax.random.fold_in(key, 0), num_probes)
  probe = PROJECTIONS[config.fisher.projection]
  eps = jax.vmap(lambda k: probe(k, v.shape, v.dtype))(probe_keys)            # [P, B, d]
  if uses_vaes(config):
    q = nnx.merge(parts.q_def, state["posterior"].params)
    score = vaes_score(p, q, v, jax.random.fold_in(key, 1), config.eval.particles)
  else:
    score = grbm.score(p, v)
  mean_over_probes = lambda f, s: jnp.mean(
      jax.vmap(lambda e: critic_objective(f, s, v, e))(eps), axis=0)
  out = {"exact": exact_fisher_terms(p, v),
         "estimate": mean_over_probes(nnx.merge(parts.critic_def, state["critic"].params), score),
         "oracle_critic": mean_over_probes(oracle_critic(p), score)}
  if with_ablation(config):
    out["exact_score"] = mean_over_probes(
        nnx.merge(parts.critic_def, state["critic_exact"].params), grbm.score(p, v))
  return out


def per_point_values(config, parts: Parts, state, testbed: Testbed, points: np.ndarray,
                     key: jax.Array) -> dict[str, np.ndarray]:
  """Every scale's per-point values on `points` [N, d], in chunks of eval.batch_size: a dict of
  [S, N] numpy arrays (exact, estimate, oracle_critic, exact_score)."""
  consts = {k: jnp.asarray(x) for k, x in testbed.params._asdict().items()}
  num_scales = len(testbed.perturbation)

  @jax.jit
  def chunk(state, consts, v, key):
    one = lambda s, p, k: _eval_one_scale(config, parts, s, p, v, k)
    return jax.vmap(one)(state, consts, jax.random.split(key, num_scales))

  pieces = []
  for i, start in enumerate(range(0, len(points), config.eval.batch_size)):
    v = jnp.asarray(points[start:start + config.eval.batch_size])
    pieces.append(jax.device_get(chunk(state, consts, v, jax.random.fold_in(key, i))))
  return {k: np.concatenate([np.asarray(x[k], np.float64) for x in pieces], axis=1)
          for k in pieces[0]}


def _eval_key(config, split: str) -> jax.Array:
  """A fixed key per split: a rerun (or --mode=eval) gives the same numbers."""
  return jax.random.fold_in(jax.random.key(config.seed), {"val": 1, "test": 2}[split])


def summarise(values: dict[str, np.ndarray]) -> dict[str, list[float]]:
  """Mean and standard error (std / sqrt(n)) over the points of every [S, N] array."""
  n = next(iter(values.values())).shape[1]
  out = {}
  for name, key in (("exact", "exact"), ("estimate", "estimate"),
                    ("oracle_critic", "estimate_oracle_critic"),
                    ("exact_score", "estimate_exact_score")):
    if name not in values:
      continue
    x = values[name]
    err_key = "exact_stderr" if name == "exact" else key.replace("estimate", "stderr")
    out[key] = [float(m) for m in x.mean(1)]
    out[err_key] = [float(s) for s in x.std(1, ddof=1) / math.sqrt(n)]
  return out


def plot(results: dict[str, Any], path: str) -> None:
  """fisher.png: the estimates (2 standard errors) and the exact value against the perturbation."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  x = np.asarray(results["perturbation"])
  fig, ax = plt.subplots(figsize=(4.5, 3.4))
  ax.plot(x, results["exact"], "k-", label="exact (closed form)")
  ax.errorbar(x, results["estimate"], yerr=2 * np.asarray(results["stderr"]), fmt="o", ms=4,
              capsize=3, label=f"critic on the {results['score']} score")
  if "estimate_exact_score" in results:
    ax.plot(x, results["estimate_exact_score"], "x", label="critic on the exact score")
  ax.set_xlabel("perturbation")
  ax.set_ylabel("Fisher divergence (nats)")
  ax.set_title(f"GRBM Fisher divergence, d = {results['dim']}", fontsize=10)
  ax.legend(fontsize=8)
  fig.tight_layout()
  io.atomic_save_figure(fig, path, dpi=110)
  plt.close(fig)


def export(config, workdir: str, testbed: Testbed, parts: Parts, state, step: int
           ) -> dict[str, Any]:
  """Writes fisher.npz and results.json; returns the results."""
  values = per_point_values(config, parts, state, testbed, testbed.test, _eval_key(config, "test"))
  summary = summarise(values)
  results = {"perturbation": list(scales(config)), **summary,
             "score": config.fisher.score, "step": int(step), "dim": config.data.dim,
             "num_hidden": config.model.num_hidden, "num_test": len(testbed.test),
             "particles": config.fisher.particles, "inner_steps": config.fisher.inner_steps}
  arrays = {"train": testbed.train, "val": testbed.val, "test": testbed.test,
            "perturbation": testbed.perturbation, **testbed.params._asdict()}
  io.on_main_process(os.path.join(workdir, ARRAYS), lambda f: io.atomic_save_npz(f, **arrays))
  io.on_main_process(os.path.join(workdir, RESULTS), lambda f: io.atomic_write_json(f, results))
  io.on_main_process(os.path.join(workdir, FIGURE), lambda f: plot(results, f))
  for i, x in enumerate(results["perturbation"]):
    extra = ""
    if "estimate_exact_score" in results:
      extra = (f"  exact-score critic {results['estimate_exact_score'][i]:.4f} +- "
               f"{results['stderr_exact_score'][i]:.4f}")
    logging.info("perturbation %g: exact Fisher %.4f, estimate (%s) %.4f +- %.4f%s", x,
                 results["exact"][i], config.fisher.score, results["estimate"][i],
                 results["stderr"][i], extra)
  logging.info("step %d: wrote %s and %s", step, os.path.join(workdir, RESULTS),
               os.path.join(workdir, ARRAYS))
  return results


def eval_hook(config, testbed: Testbed, parts: Parts) -> train_lib.Hook:
  """The estimates on the validation points (the official code's val_fn), logged."""
  names = _scale_names(config)

  def fn(state, step):
    summary = summarise(per_point_values(config, parts, state, testbed, testbed.val,
                                         _eval_key(config, "val")))
    out = {f"val_estimate/{n}": v for n, v in zip(names, summary["estimate"])}
    out.update({f"val_exact/{n}": v for n, v in zip(names, summary["exact"])})
    logging.info("step %d: val estimate %s (exact %s)", step,
                 " ".join(f"{v:.3f}" for v in summary["estimate"]),
                 " ".join(f"{v:.3f}" for v in summary["exact"]))
    return out

  return train_lib.Hook(config.eval.every, fn)


# ---------------------------------------------------------------------------------------------
# Modes.


@MODES.register("train")
def train(config, workdir: str) -> dict[str, Any]:
  testbed, parts = make_testbed(config), make_parts(config)
  program = make_program(config, testbed, parts)
  mesh = experiment.make_mesh(config)
  checks.divisible(config, "data.batch_size", mesh.size, f"the batch is split over {mesh.size} "
                   "devices")
  state = train_lib.fit(program, config, workdir, data_stream(config, testbed.train),
                        [eval_hook(config, testbed, parts)], mesh=mesh)
  step = Checkpointer(os.path.join(workdir, "checkpoints")).latest_step()
  return export(config, workdir, testbed, parts, state, step)


@MODES.register("eval")
def evaluate_mode(config, workdir: str) -> dict[str, Any]:
  testbed, parts = make_testbed(config), make_parts(config)
  program = make_program(config, testbed, parts)
  state, _, step = train_lib.restore(program, config, workdir, experiment.make_mesh(config))
  return export(config, workdir, testbed, parts, state, step)


def run(config, workdir: str, mode: str = "train"):
  return MODES.get(mode, field="--mode")(config, workdir)
