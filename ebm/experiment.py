"""The GRBM runner: any method of METHODS on the shared loop, exact evaluation, pinned exports.

`config.method` names the training method (METHODS): the single-level losses of ebm/losses.py
(cd1, cd5, cd10, pcd1, ssm, dsm, mdsm, nce; and ml, exact maximum likelihood through the
enumerated log Z, the reference), the bi-level ones of ebm/bism.py (bissm, bidsm, bimdsm, and
vnce) or the VaGES ones of ebm/vages.py (vages_dsm, vages_mdsm, vages_ksd). One `common.train.fit`
step is one minibatch of the method:
- single-level: one optimiser step on theta (the GRBM, wrapped with a learned log Z for NCE), the
  PCD chains carried in the state;
- bi-level: K plain steps of the posterior's optimiser on phi, N unrolled ones inside the theta
  gradient (ebm.bism.bism_step_grads), then one step on theta; the state holds both parameter sets
  (`common.optim.ParamSet`) with their own optimisers (config.optim, config.posterior_optim);
- VaGES: K plain posterior steps, then the VaGES theta-gradient from 3 L particles of the updated
  posterior (ebm.vages.vages_step_grads: no unroll), the same two parameter sets.
`train.num_seeds` vmaps seeds config.seed .. + S - 1 (their own init and minibatches, one test set).

Evaluation is exact (ebm.grbm: log Z by enumeration of the 2^m hidden states): the mean test
log-likelihood in nats, logged by a hook every `eval.every` steps and written at the end:
- workdir/grbm.npz: W [d, m], b [d], c [m], sigma [d] of E(v, h) = sum (v - b)^2 / (2 sigma^2)
  - c^T h - v^T W h, the run of seed config.seed (pinned, issue 14);
- workdir/results.json: method, test_log_likelihood (that seed's), step, and for every seed
  (results["seeds"]) its log-likelihood, log Z and test Hyvarinen score, their mean and standard
  error, and the references: a single Gaussian fitted to training draws and the true density;
- workdir/seeds/<seed>/grbm.npz: each seed's parameters when S > 1.

Modes: train (default; a finished run only rewrites the exports) and eval (exports from the latest
checkpoint).
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

from common import checks, data as data_lib, io, mesh as mesh_lib, optim, train as train_lib
from common.checkpoint import Checkpointer
from common.errors import ConfigError
from common.registry import Registry
from ebm import bism, grbm, losses, posteriors, vages

MODES: Registry = Registry("ebm mode")
RESULTS, PARAMS = "results.json", "grbm.npz"


class Method(NamedTuple):
  """kind: 'single' (ebm.losses.LOSSES), 'bilevel' (ebm.bism.METHODS) or 'vages'
  (ebm.vages.METHODS; a posterior trained alongside, as for the bi-level ones); log_z: the model
  has a learned log normaliser (NCE, VNCE)."""
  kind: str
  log_z: bool = False


METHODS: Registry[Method] = Registry("EBM training method")
for _name in ("cd1", "cd5", "cd10", "pcd1", "ssm", "dsm", "mdsm", "ksd", "ml"):
  METHODS.add(_name, Method("single"))
METHODS.add("nce", Method("single", log_z=True))
for _name in ("bissm", "bidsm", "bimdsm"):
  METHODS.add(_name, Method("bilevel"))
METHODS.add("vnce", Method("bilevel", log_z=True))
for _name in ("vages_dsm", "vages_mdsm", "vages_ksd"):
  METHODS.add(_name, Method("vages"))

# The config.loss fields, passed to ebm.losses / ebm.bism as their cfg mapping.
LOSS_FIELDS = ("sigma", "sigma_begin", "sigma_end", "sigma_spacing", "sigma0", "projection", "nu",
               "inner_steps", "unroll_steps", "lower", "shared_noise", "num_particles",
               "vages_particles", "bandwidth")


# ---------------------------------------------------------------------------------------------
# Config.


def loss_cfg(config) -> dict[str, Any]:
  """The method's settings as the plain mapping ebm.losses and ebm.bism read."""
  cfg = {k: config.loss[k] for k in LOSS_FIELDS if k in config.loss}
  cfg["method"] = config.method
  return cfg


def validate(config) -> None:
  """Rejects bad values at start, naming the field."""
  train_lib.validate(config)
  method = METHODS.get(config.get("method"), field="method")
  optim.validate(config, "optim")
  if method.kind == "bilevel":
    optim.validate(config, "posterior_optim")
    bism.validate(loss_cfg(config), prefix="loss")
  elif method.kind == "vages":
    optim.validate(config, "posterior_optim")
    vages.validate(loss_cfg(config), prefix="loss")
  else:
    losses.validate(loss_cfg(config), config.method, prefix="loss")
  if config.method.endswith("ksd") and config.data.batch_size % 2:
    raise ConfigError(f"data.batch_size={config.data.batch_size} is invalid for method "
                      f"{config.method!r}: the paired KSD splits each batch in halves (expected "
                      "an even number)")
  if config.data.name != "checkerboard":
    raise ConfigError(f"data.name={config.data.name!r} is invalid: the GRBM runner trains on "
                      "'checkerboard' (Frey face and MNIST are still to come, ebm/README.md)")
  data_lib.DATASETS.get(config.data.name, field="data.name")
  for field in ("data.batch_size", "data.num_test", "data.num_fit", "model.num_hidden",
                "eval.every", "eval.batch_size"):
    checks.positive(config, field)
  if config.model.num_hidden > grbm.MAX_EXACT_HIDDEN:
    raise ConfigError(f"model.num_hidden={config.model.num_hidden} is invalid: exact evaluation "
                      f"enumerates 2^m states, expected at most {grbm.MAX_EXACT_HIDDEN}")
  checks.positive(config, "posterior.temperature")
  checks.positive(config, "num_devices", allow_zero=True)


def batch_sizes(config) -> tuple[int, ...]:
  """The size split over the mesh's `data` axis."""
  return (config.data.batch_size,)


def make_mesh(config):
  """All devices, or the first `config.num_devices` (1 on a CPU: a GRBM step on 100 points is
  microseconds of work, and splitting it adds a cross-device reduction per step)."""
  n = config.num_devices
  if not n:
    return mesh_lib.make_mesh()
  if n > len(jax.devices()) or jax.process_count() > 1:
    raise ConfigError(f"num_devices={n} is invalid: {len(jax.devices())} device(s) on "
                      f"{jax.process_count()} process(es) (use 0 for all of them)")
  return mesh_lib.make_mesh(jax.devices()[:n])


# ---------------------------------------------------------------------------------------------
# Models and the Program.


def build_model(config, num_visible: int, key: jax.Array) -> nnx.Module:
  """The GRBM (wrapped with a learned log Z for NCE / VNCE)."""
  model = grbm.GRBM(num_visible, config.model.num_hidden, rngs=nnx.Rngs(key))
  return losses.WithLogZ(model) if METHODS[config.method].log_z else model


def build_posterior(config, num_visible: int, key: jax.Array) -> nnx.Module:
  return posteriors.LinearBernoulliPosterior(num_visible, config.model.num_hidden,
                                             temperature=config.posterior.temperature,
                                             rngs=nnx.Rngs(key))


def grbm_params(model: nnx.Module) -> grbm.GRBMParams:
  """The pinned-form parameters of a built model (unwrapping WithLogZ)."""
  return model.params()


class Setup(NamedTuple):
  """What a run is made of: the Program and the pieces evaluation needs."""
  program: train_lib.Program
  model_def: nnx.GraphDef
  dataset: data_lib.Dataset
  test: np.ndarray          # [N, d], the data's own coordinates
  fit: np.ndarray           # [N', d] training draws (the NCE noise and the Gaussian reference)


def fit_draws(dataset: data_lib.Dataset, config) -> np.ndarray:
  """Training-distribution draws kept apart from the minibatch stream and the test set."""
  rng = np.random.default_rng([config.data.get("seed", 0), 2 ** 31 - 2])
  return np.asarray(dataset.sampler(rng, config.data.num_fit), np.float32)


def _structure(fn: Callable[[jax.Array], nnx.Module]) -> nnx.GraphDef:
  return nnx.split(nnx.eval_shape(lambda: fn(jax.random.key(0))))[0]


def make_program(config, num_visible: int, noise: losses.GaussianNoise) -> tuple[
    train_lib.Program, nnx.GraphDef]:
  """The Program of config.method and the model's graphdef."""
  method = METHODS.get(config.method, field="method")
  cfg = loss_cfg(config)
  num_steps = config.train.num_steps
  tx = optim.make_optimizer(config.optim, num_steps)
  make_model = lambda key: build_model(config, num_visible, key)
  make_q = lambda key: build_posterior(config, num_visible, key)
  model_def = _structure(make_model)
  with_posterior = method.kind in ("bilevel", "vages")
  step_grads = vages.vages_step_grads if method.kind == "vages" else bism.bism_step_grads
  if with_posterior:
    tx_q = optim.make_optimizer(config.posterior_optim, num_steps)
    q_def = _structure(make_q)
  spec = losses.LOSSES[config.method] if method.kind == "single" else None
  pcd = config.method == "pcd1"
  batch = config.data.batch_size

  def init(key):
    m_key, q_key = jax.random.split(key)
    theta = nnx.state(make_model(m_key))
    state = {"model": optim.ParamSet.create(theta, tx)}
    if with_posterior:
      state["posterior"] = optim.ParamSet.create(nnx.state(make_q(q_key)), tx_q)
    if pcd:  # the chains start from h ~ p(h | v) of the first minibatch (see step)
      state["chains"] = {"h": jnp.zeros((batch, config.model.num_hidden), jnp.float32),
                         "started": jnp.zeros((), bool)}
    return state

  def step(state, v, key, consts):
    cfg_k = dict(cfg, noise=consts["noise"]) if method.log_z else cfg
    theta = state["model"].params
    new = dict(state)
    if method.kind == "single":
      carry = None
      if pcd:
        chains = state["chains"]
        fresh = spec.init_carry(nnx.merge(model_def, theta), v, jax.random.fold_in(key, 1), cfg)
        carry = jnp.where(chains["started"], chains["h"], fresh)
      _, metrics, carry, grads = losses.value_and_grad(spec.loss, model_def, theta, v, key,
                                                       cfg_k, carry)
      if pcd:
        new["chains"] = {"h": carry, "started": jnp.ones((), bool)}
    else:
      q = state["posterior"]
      grads, phi, phi_opt, metrics = step_grads(model_def, theta, q_def, q.params, q.opt_state,
                                                tx_q, v, key, cfg_k)
      new["posterior"] = optim.ParamSet(phi, phi_opt)
    new["model"] = state["model"].apply(grads, tx)
    return new, {**metrics, "grad_norm": optax.tree.norm(grads)}

  program = train_lib.Program(init, step, consts={"noise": noise} if method.log_z else None)
  return program, model_def


def setup(config) -> Setup:
  dataset = data_lib.get_dataset(config.data)
  test = np.asarray(dataset.test[np.arange(len(dataset.test))], np.float32)
  fit = fit_draws(dataset, config)
  program, model_def = make_program(config, dataset.shape[0], losses.fit_gaussian(fit))
  return Setup(program, model_def, dataset, test, fit)


def data_stream(config, dataset: data_lib.Dataset) -> train_lib.DataFn:
  """Minibatches of seed index i from step start + 1 on: a function of (seed, step)."""
  return lambda start, i: dataset.train_batches(config.data.batch_size, config.seed + i, start)


# ---------------------------------------------------------------------------------------------
# Exact evaluation and the exports.


@jax.jit
def _log_z_and_hyvarinen_terms(p: grbm.GRBMParams, v: jax.Array):
  """(log Z, sum over v of log p(v) + log Z, sum over v of Hyvarinen's 0.5 ||s||^2 + tr grad s)."""
  s = grbm.score(p, v)
  probs = grbm.posterior_probs(p, v)
  # d s_i / d v_i = -1 / sigma_i^2 + sum_j W_ij^2 p_j (1 - p_j)
  trace = jnp.sum(-1.0 / p.sigma ** 2) + jnp.sum((probs * (1 - probs)) @ (p.W ** 2).T, -1)
  return grbm.log_z(p), -jnp.sum(grbm.free_energy(p, v)), jnp.sum(0.5 * jnp.sum(s ** 2, -1)
                                                                 + trace)


def evaluate(p: grbm.GRBMParams, test: np.ndarray, batch_size: int) -> dict[str, float]:
  """Exact test log-likelihood (mean nats per point), log Z and the test Hyvarinen score
  E[0.5 ||s||^2 + tr grad s] (the official 'Fisher' metric: the Fisher divergence up to the
  data's constant where the data's score exists, which it does not for the checkerboard)."""
  p = grbm.GRBMParams(*(jnp.asarray(x, jnp.float32) for x in p))
  neg_f = hyv = 0.0
  for start in range(0, len(test), batch_size):
    log_z, f, h = _log_z_and_hyvarinen_terms(p, jnp.asarray(test[start:start + batch_size]))
    neg_f, hyv = neg_f + float(f), hyv + float(h)
  n = len(test)
  return {"test_log_likelihood": neg_f / n - float(log_z), "log_z": float(log_z),
          "test_hyvarinen": hyv / n}


def seed_params(s: Setup, state: Any, num_seeds: int) -> list[grbm.GRBMParams]:
  """The pinned-form GRBM of each seed of a (possibly seed-stacked) state, as numpy."""
  theta = jax.device_get(state["model"].params)
  out = []
  for i in range(num_seeds):
    one = theta if num_seeds == 1 else jax.tree.map(lambda x: x[i], theta)
    p = grbm_params(nnx.merge(s.model_def, one))
    out.append(grbm.GRBMParams(*(np.asarray(x, np.float32) for x in p)))
  return out


def gaussian_reference(fit: np.ndarray, test: np.ndarray) -> float:
  """Mean test log-likelihood of the maximum-likelihood Gaussian of the training draws (numpy)."""
  mean, cov = fit.mean(0), np.cov(fit, rowvar=False, bias=True).reshape(fit.shape[1], -1)
  diff = np.asarray(test, np.float64) - mean
  sol = np.linalg.solve(cov, diff.T).T
  _, log_det = np.linalg.slogdet(cov)
  return float(np.mean(-0.5 * np.sum(diff * sol, 1) - 0.5 * log_det
                       - 0.5 * fit.shape[1] * math.log(2 * math.pi)))


def true_log_density(config) -> float:
  """log of the checkerboard's density on its cells: n^2 / (number of even cells)."""
  n = config.data.get("grid_size", 2)
  return math.log(n * n / ((n * n + 1) // 2))


def _summary(values: list[float]) -> tuple[float, float]:
  mean = float(np.mean(values))
  stderr = float(np.std(values, ddof=1) / math.sqrt(len(values))) if len(values) > 1 else 0.0
  return mean, stderr


def export(config, workdir: str, s: Setup, state: Any, step: int) -> dict[str, Any]:
  """Writes grbm.npz and results.json (and each seed's grbm.npz when S > 1); returns results."""
  num_seeds = int(config.train.get("num_seeds", 1))
  params = seed_params(s, state, num_seeds)
  per_seed = []
  for i, p in enumerate(params):
    row = {"seed": config.seed + i, **evaluate(p, s.test, config.eval.batch_size)}
    per_seed.append(row)
    if num_seeds > 1:
      path = os.path.join(workdir, "seeds", str(config.seed + i), PARAMS)
      io.on_main_process(path, lambda f, p=p: io.atomic_save_npz(f, **p._asdict()))
  io.on_main_process(os.path.join(workdir, PARAMS),
                     lambda f: io.atomic_save_npz(f, **params[0]._asdict()))
  lls = [r["test_log_likelihood"] for r in per_seed]
  mean, stderr = _summary(lls)
  results = {
      "method": config.method, "test_log_likelihood": lls[0], "step": int(step),
      "seed": config.seed, "num_seeds": num_seeds, "num_hidden": config.model.num_hidden,
      "dataset": config.data.name, "num_test": len(s.test), "num_fit": len(s.fit),
      "test_log_likelihood_mean": mean, "test_log_likelihood_stderr": stderr,
      "test_hyvarinen_mean": _summary([r["test_hyvarinen"] for r in per_seed])[0],
      "gaussian_test_log_likelihood": gaussian_reference(s.fit, s.test),
      "true_test_log_likelihood": true_log_density(config),
      "seeds": per_seed,
  }
  io.on_main_process(os.path.join(workdir, RESULTS), lambda f: io.atomic_write_json(f, results))
  logging.info("%s: exact test log-likelihood %.4f (mean over %d seed(s) %.4f +- %.4f) at step "
               "%d; wrote %s", config.method, lls[0], num_seeds, mean, stderr, step,
               os.path.join(workdir, RESULTS))
  return results


def eval_hook(config, s: Setup) -> train_lib.Hook:
  num_seeds = int(config.train.get("num_seeds", 1))

  def fn(state, step):
    lls = [evaluate(p, s.test, config.eval.batch_size)["test_log_likelihood"]
           for p in seed_params(s, state, num_seeds)]
    out = {"test_log_likelihood": float(np.mean(lls))}
    if num_seeds > 1:
      out.update({f"test_log_likelihood/seed{i}": v for i, v in enumerate(lls)})
    logging.info("step %d: exact test log-likelihood %.4f", step, out["test_log_likelihood"])
    return out

  return train_lib.Hook(config.eval.every, fn)


# ---------------------------------------------------------------------------------------------
# Modes.


@MODES.register("train")
def train(config, workdir: str) -> dict[str, Any]:
  s = setup(config)
  mesh = make_mesh(config)
  checks.divisible(config, "data.batch_size", mesh.size, f"the batch is split over {mesh.size} "
                   "devices")
  state = train_lib.fit(s.program, config, workdir, data_stream(config, s.dataset),
                        [eval_hook(config, s)], mesh=mesh)
  step = Checkpointer(os.path.join(workdir, "checkpoints")).latest_step()
  return export(config, workdir, s, state, step)


@MODES.register("eval")
def evaluate_mode(config, workdir: str) -> dict[str, Any]:
  s = setup(config)
  state, _, step = train_lib.restore(s.program, config, workdir, make_mesh(config))
  return export(config, workdir, s, state, step)


def run(config, workdir: str, mode: str = "train"):
  return MODES.get(mode, field="--mode")(config, workdir)
