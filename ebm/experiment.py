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

Data: `checkerboard` (fresh draws every minibatch), or images flattened to [0, 1]^d in the data's
own coordinates (x / (levels - 1), no standardising): `frey_face` (the user's frey_rawface.mat,
1,400 / 300 / 265 faces of 28 x 20 = 560 pixels) and `digits` (scikit-learn's 8 x 8 digits, 64
pixels, shipped offline: the stand-in the smoke tests run the Frey-face path on).

Evaluation on the checkerboard is exact (ebm.grbm: log Z by enumeration of the 2^m hidden states).
On images log Z comes from AIS (ebm.ais: `eval.ais_chains` chains over `eval.ais_betas`
temperatures; its delta-method standard error is the test log-likelihood's only Monte Carlo error,
as the mean of -F over the test set is exact), and, with `eval.select = 'val_loss'`, the exported
model is the one of lowest validation loss (the method's own minibatch loss on the validation split,
fixed noise, every `eval.every` steps; kept in workdir/best/seed<k>.npz), as in the official code.
The mean test log-likelihood in nats is logged by a hook every `eval.every` steps (checkerboard)
and written at the end:
- workdir/grbm.npz: W [d, m], b [d], c [m], sigma [d] of E(v, h) = sum (v - b)^2 / (2 sigma^2)
  - c^T h - v^T W h, the run of seed config.seed (pinned, issue 14);
- workdir/results.json: method, test_log_likelihood (that seed's), step, log_z and log_z_method
  ('exact' | 'ais'), and for every seed (results["seeds"]) its log-likelihood, log Z and test
  Hyvarinen score, their mean and standard error over seeds (test_log_likelihood_stderr); on the
  checkerboard the references (a single Gaussian fitted to training draws, the true density); with
  AIS log_z_stderr = test_log_likelihood_ais_stderr (seed config.seed's Monte Carlo error),
  ais_ess, and with selection selected_step, val_loss and the final model's AIS log-likelihood;
- workdir/seeds/<seed>/grbm.npz: each seed's parameters when S > 1.

Modes: train (default; a finished run only rewrites the exports) and eval (exports from the latest
checkpoint).
"""

from __future__ import annotations

import dataclasses
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
from ebm import ais, bism, grbm, losses, posteriors, vages

MODES: Registry = Registry("ebm mode")
RESULTS, PARAMS = "results.json", "grbm.npz"
TOY_DATA = ("checkerboard",)            # exact evaluation
IMAGE_DATA = ("frey_face", "digits")    # AIS evaluation; digits: Frey face's offline stand-in
# Below this many hidden units an AIS run also enumerates log Z exactly, as a check of AIS.
EXACT_CHECK_HIDDEN = 16
# eval.select: which parameters a run exports.
SELECTIONS: Registry[str] = Registry("model selection")
SELECTIONS.add("final", "the parameters of the last step")
SELECTIONS.add("val_loss", "the evaluated step of lowest validation loss (images only)")
# Methods whose "loss" is a gradient surrogate, F(data) - F(chain samples), not an objective value:
# its minimum over steps says nothing of the fit (on the digits stand-in, CD-1's lowest value came
# at step 500 of 5,000, 44 nats below the last step's AIS log-likelihood; ebm/NOTES_frey.md).
SURROGATE_LOSS_METHODS = ("cd1", "cd5", "cd10", "pcd1")


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
  if config.data.name not in TOY_DATA + IMAGE_DATA:
    raise ConfigError(f"data.name={config.data.name!r} is invalid: the GRBM runner trains on "
                      "'checkerboard' (exact evaluation), 'frey_face' (AIS) or 'digits' (AIS; "
                      "Frey face's offline stand-in); MNIST is still to come (ebm/README.md)")
  data_lib.DATASETS.get(config.data.name, field="data.name")
  for field in ("data.batch_size", "data.num_test", "data.num_fit", "model.num_hidden",
                "eval.every", "eval.batch_size"):
    checks.positive(config, field)
  if is_image(config):
    _validate_images(config)
  elif config.model.num_hidden > grbm.MAX_EXACT_HIDDEN:
    raise ConfigError(f"model.num_hidden={config.model.num_hidden} is invalid: exact evaluation "
                      f"enumerates 2^m states, expected at most {grbm.MAX_EXACT_HIDDEN}")
  SELECTIONS.get(selection(config), field="eval.select")
  if selection(config) == "val_loss" and not is_image(config):
    raise ConfigError(f"eval.select='val_loss' is invalid for data.name={config.data.name!r}: "
                      "its minibatches are fresh draws, with no validation split to select on "
                      "(expected 'final')")
  if selection(config) == "val_loss" and config.method in SURROGATE_LOSS_METHODS:
    raise ConfigError(f"eval.select='val_loss' is invalid for method={config.method!r}: its loss "
                      "is the contrastive-divergence surrogate F(data) - F(samples), not a "
                      "validation criterion (expected 'final')")
  checks.positive(config, "posterior.temperature")
  checks.positive(config, "num_devices", allow_zero=True)


def is_image(config) -> bool:
  """Whether the run trains on images (AIS evaluation) rather than the checkerboard (exact)."""
  return config.data.name in IMAGE_DATA


def selection(config) -> str:
  return config.eval.get("select", "final")


def _validate_images(config) -> None:
  """The AIS and validation fields of an image run."""
  for field in ("eval.ais_chains", "eval.ais_betas"):
    if field.split(".")[1] not in config.eval:
      raise ConfigError(f"{field} is missing: an image run estimates log Z by AIS (expected an "
                        "integer >= 2, e.g. the official 2000)")
    checks.integer(config, field, low=2)
  num_val = config.data.get("num_val", 0)
  if "num_val" in config.data:
    checks.integer(config, "data.num_val", low=0)
  if selection(config) == "val_loss" and config.data.name != "frey_face" and not num_val:
    raise ConfigError(f"data.num_val={num_val} is invalid with eval.select='val_loss': "
                      f"data.name={config.data.name!r} has no validation split, so the last "
                      "data.num_val training examples are held out (expected > 0)")


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


ValLossFn = Callable[[Any, jax.Array, jax.Array, Any], jax.Array]


class Setup(NamedTuple):
  """What a run is made of: the Program and the pieces evaluation needs."""
  program: train_lib.Program
  model_def: nnx.GraphDef
  dataset: data_lib.Dataset
  test: np.ndarray          # [N, d], the data's own coordinates
  fit: np.ndarray           # [N', d] training draws (the NCE noise and the Gaussian reference)
  val: np.ndarray | None = None          # [N'', d] the validation points of images
  val_loss: ValLossFn | None = None      # one seed's validation loss (build_program)


def fit_draws(dataset: data_lib.Dataset, config) -> np.ndarray:
  """Training-distribution draws kept apart from the minibatch stream and the test set."""
  rng = np.random.default_rng([config.data.get("seed", 0), 2 ** 31 - 2])
  return np.asarray(dataset.sampler(rng, config.data.num_fit), np.float32)


def unit_vectors(dataset: data_lib.Dataset, images: np.ndarray) -> np.ndarray:
  """Preprocessed images in [-1, 1] ([B, H, W, C]) as the GRBM's visible vectors in [0, 1],
  [B, H * W * C]: x / (levels - 1) of the raw pixels (Frey face: x / 255), no standardising."""
  return ((np.asarray(images, np.float32) + 1.0) / 2.0).reshape(len(images), -1)


def _split_points(dataset: data_lib.Dataset, source) -> np.ndarray:
  raw = source[np.arange(len(source))]
  return unit_vectors(dataset, dataset.preprocess(raw, None))


def image_dataset(config) -> data_lib.Dataset:
  """The image dataset with a validation split: its own (frey_face), or else the last
  data.num_val training examples held out (none with data.num_val = 0)."""
  dataset = data_lib.get_dataset(config.data)
  num_val = int(config.data.get("num_val", 0))
  if dataset.validation is not None or not num_val:
    return dataset
  n = len(dataset.train)
  if num_val >= n:
    raise ConfigError(f"data.num_val={num_val} is invalid: {config.data.name!r} has {n} training "
                      "examples (expected fewer)")
  train, val = np.arange(n - num_val), np.arange(n - num_val, n)
  return dataclasses.replace(dataset, train=dataset.train[train], validation=dataset.train[val],
                             train_labels=None, test_labels=None, num_classes=None)


def structure(fn: Callable[[jax.Array], nnx.Module]) -> nnx.GraphDef:
  """The graphdef of the module fn(key) builds, without allocating its parameters."""
  return nnx.split(nnx.eval_shape(lambda: fn(jax.random.key(0))))[0]


def make_program(config, num_visible: int, noise: losses.GaussianNoise) -> tuple[
    train_lib.Program, nnx.GraphDef]:
  """The Program of config.method and the model's graphdef."""
  program, model_def, _ = build_program(config, num_visible, noise)
  return program, model_def


def build_program(config, num_visible: int, noise: losses.GaussianNoise) -> tuple[
    train_lib.Program, nnx.GraphDef, ValLossFn]:
  """The Program of config.method, the model's graphdef and its validation loss.

  The validation loss val_loss(state, v, key, consts) of one seed's state is the "loss" metric
  of the method's step on the points v (the state is not updated): the single-level loss, or the
  bi-level / VaGES upper objective after the K posterior steps of the step; PCD's chains start
  afresh from v (CD-1 on v), as the carried chains have the training batch's size.
  """
  method = METHODS.get(config.method, field="method")
  cfg = loss_cfg(config)
  num_steps = config.train.num_steps
  tx = optim.make_optimizer(config.optim, num_steps)
  make_model = lambda key: build_model(config, num_visible, key)
  make_q = lambda key: build_posterior(config, num_visible, key)
  model_def = structure(make_model)
  with_posterior = method.kind in ("bilevel", "vages")
  step_grads = vages.vages_step_grads if method.kind == "vages" else bism.bism_step_grads
  if with_posterior:
    tx_q = optim.make_optimizer(config.posterior_optim, num_steps)
    q_def = structure(make_q)
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

  def update(state, v, key, consts):
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
    return new, metrics, grads

  def step(state, v, key, consts):
    new, metrics, grads = update(state, v, key, consts)
    new["model"] = state["model"].apply(grads, tx)
    return new, {**metrics, "grad_norm": optax.tree.norm(grads)}

  def val_loss(state, v, key, consts):
    if pcd:
      state = dict(state, chains={"h": jnp.zeros((v.shape[0], config.model.num_hidden), v.dtype),
                                  "started": jnp.zeros((), bool)})
    return update(state, v, key, consts)[1]["loss"]

  program = train_lib.Program(init, step, consts={"noise": noise} if method.log_z else None)
  return program, model_def, val_loss


def setup(config) -> Setup:
  if not is_image(config):
    dataset = data_lib.get_dataset(config.data)
    test = np.asarray(dataset.test[np.arange(len(dataset.test))], np.float32)
    fit = fit_draws(dataset, config)
    program, model_def = make_program(config, test.shape[1], losses.fit_gaussian(fit))
    return Setup(program, model_def, dataset, test, fit)
  dataset = image_dataset(config)
  test = _split_points(dataset, dataset.test)
  fit = _split_points(dataset, dataset.train)     # all of it: NCE's noise Gaussian
  val = None if dataset.validation is None else _split_points(dataset, dataset.validation)
  if val is not None and config.method.endswith("ksd"):
    val = val[:len(val) // 2 * 2]                   # the paired KSD needs an even count
  program, model_def, val_loss = build_program(config, test.shape[1], losses.fit_gaussian(fit))
  return Setup(program, model_def, dataset, test, fit, val, val_loss)


def data_stream(config, dataset: data_lib.Dataset) -> train_lib.DataFn:
  """Minibatches of seed index i from step start + 1 on: a function of (seed, step)."""
  def stream(start, i):
    batches = dataset.train_batches(config.data.batch_size, config.seed + i, start)
    return (unit_vectors(dataset, b) for b in batches) if is_image(config) else batches
  return stream


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


@jax.jit
def _free_energy_and_hyvarinen_terms(p: grbm.GRBMParams, v: jax.Array):
  """(sum over v of -F(v), sum over v of Hyvarinen's 0.5 ||s||^2 + tr grad s): no log Z."""
  s = grbm.score(p, v)
  probs = grbm.posterior_probs(p, v)
  trace = jnp.sum(-1.0 / p.sigma ** 2) + jnp.sum((probs * (1 - probs)) @ (p.W ** 2).T, -1)
  return -jnp.sum(grbm.free_energy(p, v)), jnp.sum(0.5 * jnp.sum(s ** 2, -1) + trace)


def ais_key(seed: int) -> jax.Array:
  """The AIS key of a seed's evaluation: fixed, so a rerun or --mode=eval gives the same numbers."""
  return jax.random.fold_in(jax.random.key(seed), 0xA15)


def evaluate_ais(p: grbm.GRBMParams, test: np.ndarray, batch_size: int, key: jax.Array,
                 num_chains: int, num_betas: int) -> dict[str, Any]:
  """Test log-likelihood (mean nats per point) with log Z by AIS (ebm.ais), its standard error,
  and the test Hyvarinen score. Below EXACT_CHECK_HIDDEN hidden units log Z is also enumerated
  (`log_z_exact`, `test_log_likelihood_exact`), a check of AIS on the run's own model.

  The mean of -F over the fixed test set is exact, so log Z's delta-method standard error is the
  log-likelihood's (`test_log_likelihood_ais_stderr`); AIS's log Z is biased low, so the
  log-likelihood is biased high by about half the relative variance of the weights.
  """
  p = grbm.GRBMParams(*(jnp.asarray(x, jnp.float32) for x in p))
  neg_f = hyv = 0.0
  for start in range(0, len(test), batch_size):
    f, h = _free_energy_and_hyvarinen_terms(p, jnp.asarray(test[start:start + batch_size]))
    neg_f, hyv = neg_f + float(f), hyv + float(h)
  n = len(test)
  res = ais.ais_log_z(p, key, num_chains, num_betas)
  out = {"test_log_likelihood": neg_f / n - float(res.log_z),
         "test_log_likelihood_ais_stderr": float(res.stderr), "log_z": float(res.log_z),
         "log_z_stderr": float(res.stderr), "log_z_method": "ais", "ais_ess": float(res.ess),
         "test_hyvarinen": hyv / n}
  if p.c.shape[-1] <= EXACT_CHECK_HIDDEN:
    exact = float(grbm.log_z(p))
    out.update(log_z_exact=exact, test_log_likelihood_exact=neg_f / n - exact)
  return out


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


def _save_params(path: str, p: grbm.GRBMParams) -> None:
  io.on_main_process(path, lambda f: io.atomic_save_npz(f, **p._asdict()))


def export(config, workdir: str, s: Setup, state: Any, step: int) -> dict[str, Any]:
  """Writes grbm.npz and results.json (and each seed's grbm.npz when S > 1); returns results."""
  if is_image(config):
    return export_images(config, workdir, s, state, step)
  num_seeds = int(config.train.get("num_seeds", 1))
  params = seed_params(s, state, num_seeds)
  per_seed = []
  for i, p in enumerate(params):
    row = {"seed": config.seed + i, **evaluate(p, s.test, config.eval.batch_size)}
    per_seed.append(row)
    if num_seeds > 1:
      _save_params(os.path.join(workdir, "seeds", str(config.seed + i), PARAMS), p)
  _save_params(os.path.join(workdir, PARAMS), params[0])
  lls = [r["test_log_likelihood"] for r in per_seed]
  mean, stderr = _summary(lls)
  results = {
      "method": config.method, "test_log_likelihood": lls[0], "step": int(step),
      "seed": config.seed, "num_seeds": num_seeds, "num_hidden": config.model.num_hidden,
      "dataset": config.data.name, "num_test": len(s.test), "num_fit": len(s.fit),
      "log_z": per_seed[0]["log_z"], "log_z_method": "exact",
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


def _ais_eval(config, s: Setup, p: grbm.GRBMParams, seed: int) -> dict[str, Any]:
  return evaluate_ais(p, s.test, config.eval.batch_size, ais_key(seed),
                      config.eval.ais_chains, config.eval.ais_betas)


def export_images(config, workdir: str, s: Setup, state: Any, step: int) -> dict[str, Any]:
  """The exports of an image run: AIS log-likelihoods of each seed's selected parameters."""
  num_seeds = int(config.train.get("num_seeds", 1))
  final = seed_params(s, state, num_seeds)
  best = BestStore(workdir) if selection(config) == "val_loss" else None
  per_seed, chosen = [], []
  for i, p_final in enumerate(final):
    seed = config.seed + i
    kept = best.load(i) if best else None
    p, row = (p_final, {"selected_step": int(step)}) if kept is None else (kept[0], {
        "selected_step": kept[1], "val_loss": kept[2]})
    row = {"seed": seed, **row, **_ais_eval(config, s, p, seed)}
    if row["selected_step"] != int(step) and i == 0:   # what selection bought, for seed 0
      last = _ais_eval(config, s, p_final, seed)
      row.update(final_test_log_likelihood=last["test_log_likelihood"],
                 final_test_log_likelihood_ais_stderr=last["test_log_likelihood_ais_stderr"])
    per_seed.append(row)
    chosen.append(p)
    if num_seeds > 1:
      _save_params(os.path.join(workdir, "seeds", str(seed), PARAMS), p)
  _save_params(os.path.join(workdir, PARAMS), chosen[0])
  first = per_seed[0]
  lls = [r["test_log_likelihood"] for r in per_seed]
  mean, stderr = _summary(lls)
  copied = ("test_log_likelihood_ais_stderr", "log_z", "log_z_stderr", "log_z_method", "ais_ess",
            "selected_step", "val_loss", "final_test_log_likelihood",
            "final_test_log_likelihood_ais_stderr", "log_z_exact", "test_log_likelihood_exact")
  results = {
      "method": config.method, "test_log_likelihood": lls[0], "step": int(step),
      **{k: first[k] for k in copied if k in first},
      "selection": selection(config), "ais_chains": config.eval.ais_chains,
      "ais_betas": config.eval.ais_betas, "seed": config.seed, "num_seeds": num_seeds,
      "num_hidden": config.model.num_hidden, "dataset": config.data.name,
      "num_visible": int(s.test.shape[1]), "num_train": len(s.fit), "num_test": len(s.test),
      "num_val": 0 if s.val is None else len(s.val),
      "test_log_likelihood_mean": mean, "test_log_likelihood_stderr": stderr,
      "test_hyvarinen_mean": _summary([r["test_hyvarinen"] for r in per_seed])[0],
      "seeds": per_seed,
  }
  io.on_main_process(os.path.join(workdir, RESULTS), lambda f: io.atomic_write_json(f, results))
  logging.info("%s: AIS test log-likelihood %.4f +- %.4f (log Z %.4f, %d chains x %d betas, ESS "
               "%.0f) of the step-%d parameters (%s) at step %d; wrote %s", config.method, lls[0],
               first["test_log_likelihood_ais_stderr"], first["log_z"], config.eval.ais_chains,
               config.eval.ais_betas, first["ais_ess"], first["selected_step"],
               selection(config), step, os.path.join(workdir, RESULTS))
  return results


class BestStore:
  """The lowest-validation-loss parameters of each seed index k, workdir/best/seed<k>.npz: the
  pinned W, b, c, sigma with their step and val_loss in the same file (one atomic write, so the
  step always belongs to the parameters), kept across resumes."""

  def __init__(self, workdir: str):
    self.directory = os.path.join(workdir, "best")

  def path(self, i: int) -> str:
    return os.path.join(self.directory, f"seed{i}.npz")

  def load(self, i: int) -> tuple[grbm.GRBMParams, int, float] | None:
    """(params, step, val_loss) of seed index i, or None before its first evaluation."""
    if not os.path.exists(self.path(i)):
      return None
    with np.load(self.path(i)) as f:
      p = grbm.GRBMParams(*(np.asarray(f[k], np.float32) for k in grbm.GRBMParams._fields))
      return p, int(f["step"]), float(f["val_loss"])

  def offer(self, i: int, p: grbm.GRBMParams, step: int, val_loss: float) -> bool:
    """Keeps p if its loss is lower than the kept one's (or none is kept); returns whether."""
    kept = self.load(i)
    if kept is not None and not val_loss < kept[2]:
      return False
    io.on_main_process(self.path(i), lambda f: io.atomic_save_npz(
        f, **p._asdict(), step=np.int64(step), val_loss=np.float64(val_loss)))
    return True


def validation_loss_fn(config, s: Setup) -> Callable[[Any], list[float]]:
  """state -> each seed's validation loss, jitted once; fixed keys, so that steps compare on the
  same noise (and a resumed run re-evaluates a step to the same value)."""
  num_seeds = int(config.train.get("num_seeds", 1))
  keys = jnp.stack([jax.random.fold_in(jax.random.key(config.seed + i), 0x7A1)
                    for i in range(num_seeds)])
  v, consts = jnp.asarray(s.val), s.program.consts
  if num_seeds == 1:
    fn = jax.jit(lambda state: s.val_loss(state, v, keys[0], consts)[None])
  else:
    fn = jax.jit(lambda state: jax.vmap(s.val_loss, in_axes=(0, None, 0, None))(
        state, v, keys, consts))
  return lambda state: [float(x) for x in jax.device_get(fn(state))]


def eval_hook(config, s: Setup, workdir: str = "") -> train_lib.Hook:
  if is_image(config):
    return selection_hook(config, s, workdir)
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


def selection_hook(config, s: Setup, workdir: str) -> train_lib.Hook:
  """Image runs: the validation loss every eval.every steps (logged, and with eval.select =
  'val_loss' the lowest one's parameters kept in workdir/best/); AIS runs once, at the export."""
  num_seeds = int(config.train.get("num_seeds", 1))
  store = BestStore(workdir) if selection(config) == "val_loss" else None
  val_losses = validation_loss_fn(config, s) if s.val is not None else None

  def fn(state, step):
    if val_losses is None:
      return None
    losses_ = val_losses(state)
    out = {"val_loss": float(np.mean(losses_))}
    if num_seeds > 1:
      out.update({f"val_loss/seed{i}": v for i, v in enumerate(losses_)})
    if store is not None:
      for i, (p, loss) in enumerate(zip(seed_params(s, state, num_seeds), losses_)):
        if store.offer(i, p, step, loss):
          logging.info("step %d: seed %d's validation loss %.5f is its lowest so far; kept",
                       step, config.seed + i, loss)
    logging.info("step %d: validation loss %.5f", step, out["val_loss"])
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
                        [eval_hook(config, s, workdir)], mesh=mesh)
  step = Checkpointer(os.path.join(workdir, "checkpoints")).latest_step()
  return export(config, workdir, s, state, step)


@MODES.register("eval")
def evaluate_mode(config, workdir: str) -> dict[str, Any]:
  s = setup(config)
  state, _, step = train_lib.restore(s.program, config, workdir, make_mesh(config))
  return export(config, workdir, s, state, step)


def run(config, workdir: str, mode: str = "train"):
  return MODES.get(mode, field="--mode")(config, workdir)
