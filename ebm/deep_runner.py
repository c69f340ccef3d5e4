"""The deep EBLVM runner (`config.experiment = "deep"`): BiSM or VaGES on images, samples, offline FD.

../shared/papers/ebm.md (BiSM, VaES / VaGES), ../shared/papers/sources/bism.md and vages.md
(`latent_ebm_resnet`, `profiles/eblvm`). The model is ebm.deep.DeepEBLVM,
E(v, h) = sum_j ELU(w_j^T [f(v) + h, h] + b_j)^2 with a ResNet f and continuous h, and the
posterior ebm.posteriors.GaussianConvPosterior. Both training algorithms are the generic ones of
ebm/bism.py and ebm/vages.py (they only call `model.energy(v, h)`, `q.sample(v, rng)` and
`q.log_prob(h, v)`), so this module adds no loss of its own:

- `bimdsm` / `bidsm` (ebm.bism.bism_step_grads): per minibatch K = loss.inner_steps plain Adam
  steps of q on the lower objective (loss.lower = "fisher", the posterior Fisher divergence
  0.5 ||grad_h (-E - log q)||^2 of the official `cond_fisher`), N = loss.unroll_steps
  differentiated ones (0 for deep models), then one step on theta of the MDSM (or DSM) loss with
  BiSM's score grad_v [-E(v, h) - log q(h | v)];
- `vages_mdsm` / `vages_dsm` (ebm.vages.vages_step_grads): the same K posterior steps, then the
  VaGES theta-gradient of MDSM (DSM) from 3 L = 3 loss.vages_particles draws of q.

One `common.train.fit` step is one minibatch; the state holds the model and the posterior
(`common.optim.ParamSet`s with config.optim and config.posterior_optim) and, with
train.ema_decay > 0, an EMA of the model's parameters (the official VaGES deep runs sample with an
EMA of 0.999), which the sampler uses.

Coordinates: the data come from common.data in [-1, 1]; the model sees them in [0, 1] (the official
scaling, to which the sigma grids refer) zero-padded to data.pad_to (MNIST: 28 -> 32, so the three
stride-2 stages divide it). Samples are mapped back (cropped, to [-1, 1]) before the classifier.

Sampling (the official "via_q"): h = the posterior mean E_q[h | v] of random training images (seed
sample.seed), held fixed, then annealed Langevin dynamics on v (ebm.samplers.annealed_langevin)
from sample.init_mean + sample.init_std N(0, I) with the schedule of ebm.samplers.
paper_temperatures(t_max, t_min, num_hot, num_anneal, num_cool), step sample.step_size and a final
denoising step of sample.denoise_sigma. sample.init = "joint" instead runs the dynamics on (v, h)
jointly from h ~ N(0, I) (no training images involved).

Exports (main process, atomic, common.io), after training or with --mode=eval:
- workdir/samples_step_<step:07d>.png: the first sample.num_grid samples as a grid;
- workdir/samples_step_<step:07d>.npz: `images`, all samples as uint8 [n, H, W, C] (the data's shape);
- workdir/results.json: `method`, `step`, `num_samples`, `fd` (offline FD of the samples to the
  train split's features, common.classifier), `classifier_score` (with its std), `mean_confidence`,
  `real_floor` (FD of the real test split to the train split: what real data scores), `dataset`,
  `num_test` (the floor's sample size), `sample_init`, `langevin_steps`, `samples`, `grid`; the FD
  fields are null when eval.fd is False (datasets without an offline classifier, and smoke runs).
A finished run's rerun logs "Already trained" (the loop) and "already done" (these exports, when
results.json is of the same step and sampling settings) and writes nothing.
"""

from __future__ import annotations

import os
import time
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
from ebm import bism, deep, experiment, posteriors, samplers, vages

MODES: Registry = Registry("ebm deep mode")
RESULTS = "results.json"


class Method(NamedTuple):
  """step_grads: ebm.bism.bism_step_grads or ebm.vages.vages_step_grads (one signature);
  validate: the module's config check."""
  step_grads: Callable
  validate: Callable


METHODS: Registry[Method] = Registry("deep EBLVM training method")
for _name in ("bimdsm", "bidsm"):
  METHODS.add(_name, Method(bism.bism_step_grads, bism.validate))
for _name in ("vages_mdsm", "vages_dsm"):
  METHODS.add(_name, Method(vages.vages_step_grads, vages.validate))

SAMPLE_INITS: Registry[str] = Registry("deep EBLVM sample init")
SAMPLE_INITS.add("q_mean", "h = E_q[h | v] of random training images, Langevin on v (official)")
SAMPLE_INITS.add("joint", "Langevin on (v, h) jointly from h ~ N(0, I)")


# ---------------------------------------------------------------------------------------------
# Config.


def validate(config) -> None:
  """Rejects bad values at start, naming the field."""
  train_lib.validate(config)
  if int(config.train.get("num_seeds", 1)) != 1:
    raise ConfigError(f"train.num_seeds={config.train.num_seeds!r} is invalid: the deep runner "
                      "trains one seed; expected 1")
  method = METHODS.get(config.get("method"), field="method")
  optim.validate(config, "optim")
  optim.validate(config, "posterior_optim")
  method.validate(experiment.loss_cfg(config), prefix="loss")
  data_lib.DATASETS.get(config.data.name, field="data.name")
  for field in ("data.batch_size", "data.pad_to", "model.num_hidden", "model.channels",
                "model.blocks_per_stage", "model.num_stages", "sample.num_samples",
                "sample.batch_size", "sample.num_grid"):
    checks.integer(config, field)
  for field in ("sample.num_hot", "sample.num_anneal", "sample.num_cool"):
    checks.integer(config, field, low=0)
  steps = config.sample.num_hot + config.sample.num_anneal + config.sample.num_cool
  if steps < 1:
    raise ConfigError("sample.num_hot + sample.num_anneal + sample.num_cool is 0: expected at "
                      "least one Langevin step")
  scale = 2 ** config.model.num_stages
  if config.data.pad_to % scale:
    raise ConfigError(f"data.pad_to={config.data.pad_to} is invalid: the ResNet's "
                      f"model.num_stages={config.model.num_stages} halvings need a multiple of "
                      f"{scale}")
  if config.data.pad_to % 8:
    raise ConfigError(f"data.pad_to={config.data.pad_to} is invalid: the posterior's three "
                      "stride-2 convolutions need a multiple of 8")
  channels = config.posterior.channels
  if not (isinstance(channels, (tuple, list)) and len(channels) == 3
          and all(isinstance(c, int) and c >= 1 for c in channels)):
    raise ConfigError(f"posterior.channels={channels!r} is invalid: expected three integers >= 1 "
                      "(the widths of the three stride-2 convolutions)")
  if config.sample.num_grid > config.sample.num_samples:
    raise ConfigError(f"sample.num_grid={config.sample.num_grid} is invalid: expected at most "
                      f"sample.num_samples={config.sample.num_samples}")
  SAMPLE_INITS.get(config.sample.init, field="sample.init")
  for field in ("sample.step_size", "sample.t_max", "sample.t_min"):
    checks.positive(config, field)
  checks.positive(config, "sample.init_std", allow_zero=True)
  checks.positive(config, "sample.denoise_sigma", allow_zero=True)
  checks.integer(config, "sample.seed", low=0)
  if config.eval.fd:
    from common import classifier
    if config.data.name not in classifier.ARCHITECTURES:
      raise ConfigError(f"eval.fd=True is invalid for data.name={config.data.name!r}: the offline "
                        f"FD classifier exists for {list(classifier.ARCHITECTURES.names())}; set "
                        "eval.fd=False")
  checks.positive(config, "num_devices", allow_zero=True)


def batch_sizes(config) -> tuple[int, ...]:
  """The sizes split over the mesh's `data` axis: the training batch and the sampling chunk."""
  return (config.data.batch_size, config.sample.batch_size)


# ---------------------------------------------------------------------------------------------
# Coordinates.


def model_shape(config, image_shape) -> tuple[int, int, int]:
  """(H, W, C) the model sees: the data's, zero-padded to data.pad_to."""
  h, w, c = image_shape
  if max(h, w) > config.data.pad_to:
    raise ConfigError(f"data.pad_to={config.data.pad_to} is invalid: the images of "
                      f"{config.data.name!r} are {h}x{w}; expected at least {max(h, w)}")
  return (config.data.pad_to, config.data.pad_to, c)


def to_model(x: np.ndarray, size: int) -> np.ndarray:
  """Data images [B, H, W, C] in [-1, 1] -> the model's [B, size, size, C] in [0, 1], zero-padded
  symmetrically (the official MNIST padding 28 -> 32)."""
  h, w = x.shape[1:3]
  top, left = (size - h) // 2, (size - w) // 2
  x01 = (np.asarray(x, np.float32) + 1.0) / 2.0
  return np.pad(x01, ((0, 0), (top, size - h - top), (left, size - w - left), (0, 0)))


def to_images(x: np.ndarray, image_shape) -> np.ndarray:
  """The inverse of to_model: [B, size, size, C] in [0, 1] -> the data's [B, H, W, C] in [-1, 1],
  clipped."""
  h, w = image_shape[:2]
  size = x.shape[1]
  top, left = (size - h) // 2, (size - w) // 2
  crop = np.asarray(x, np.float32)[:, top:top + h, left:left + w]
  return np.clip(crop * 2.0 - 1.0, -1.0, 1.0)


# ---------------------------------------------------------------------------------------------
# Models and the Program.


def build_model(config, shape, key: jax.Array) -> deep.DeepEBLVM:
  m = config.model
  return deep.DeepEBLVM(shape, m.num_hidden, channels=m.channels,
                        blocks_per_stage=m.blocks_per_stage, num_stages=m.num_stages,
                        rngs=nnx.Rngs(key))


def build_posterior(config, shape, key: jax.Array) -> posteriors.GaussianConvPosterior:
  return posteriors.GaussianConvPosterior(shape, config.model.num_hidden,
                                          channels=tuple(config.posterior.channels),
                                          rngs=nnx.Rngs(key))


class Parts(NamedTuple):
  """What the step, the sampler and the tests share."""
  model_def: nnx.GraphDef
  q_def: nnx.GraphDef
  tx: optax.GradientTransformation
  tx_q: optax.GradientTransformation
  shape: tuple[int, int, int]       # the model's (H, W, C)


def make_parts(config, image_shape) -> Parts:
  shape = model_shape(config, image_shape)
  num_steps = config.train.num_steps
  return Parts(experiment.structure(lambda k: build_model(config, shape, k)),
               experiment.structure(lambda k: build_posterior(config, shape, k)),
               optim.make_optimizer(config.optim, num_steps),
               optim.make_optimizer(config.posterior_optim, num_steps), shape)


def ema_decay(config) -> float:
  return float(config.train.get("ema_decay", 0.0))


def make_program(config, parts: Parts) -> train_lib.Program:
  """init(key) -> {"model", "posterior"[, "ema"]}; step: one BiSM / VaGES minibatch."""
  method = METHODS.get(config.method, field="method")
  cfg = experiment.loss_cfg(config)
  decay = ema_decay(config)

  @jax.jit   # one compiled initialiser instead of one dispatch per layer
  def init(key):
    m_key, q_key = jax.random.split(key)
    theta = nnx.state(build_model(config, parts.shape, m_key))
    state = {"model": optim.ParamSet.create(theta, parts.tx),
             "posterior": optim.ParamSet.create(
                 nnx.state(build_posterior(config, parts.shape, q_key)), parts.tx_q)}
    if decay > 0:
      state["ema"] = {"params": theta, "step": jnp.zeros((), jnp.int32)}
    return state

  def step(state, v, key, consts):
    del consts
    q = state["posterior"]
    grads, phi, phi_opt, metrics = method.step_grads(
        parts.model_def, state["model"].params, parts.q_def, q.params, q.opt_state, parts.tx_q,
        v, key, cfg)
    new = dict(state, model=state["model"].apply(grads, parts.tx),
               posterior=optim.ParamSet(phi, phi_opt))
    if decay > 0:
      ema = state["ema"]
      new["ema"] = {"params": optim.ema_update(ema["params"], new["model"].params, ema["step"],
                                               decay),
                    "step": ema["step"] + 1}
    return new, {**metrics, "grad_norm": optax.tree.norm(grads)}

  return train_lib.Program(init, step)


def sampling_params(state) -> Any:
  """The model parameters the sampler uses: the EMA when there is one."""
  return state["ema"]["params"] if "ema" in state else state["model"].params


def data_stream(config, dataset: data_lib.Dataset) -> train_lib.DataFn:
  """Minibatches in the model's coordinates, a function of (seed, step) (resumable)."""
  size = config.data.pad_to

  def stream(start: int, seed_index: int):
    for x in dataset.train_batches(config.data.batch_size, config.seed + seed_index, start):
      yield to_model(x, size)

  return stream


# ---------------------------------------------------------------------------------------------
# Sampling.


def temperatures(config) -> np.ndarray:
  s = config.sample
  return samplers.paper_temperatures(s.t_max, s.t_min, s.num_hot, s.num_anneal, s.num_cool)


def make_sampler(config, parts: Parts) -> Callable:
  """A jitted (theta, phi, images [B, H', W', C] in model coordinates, key) -> samples [B, H', W',
  C] in model coordinates: annealed Langevin on v with h = E_q[h | images] fixed ("q_mean"), or on
  (v, h) jointly ("joint", the images unused but for their shape)."""
  s = config.sample
  temps = jnp.asarray(temperatures(config), jnp.float32)
  denoise = float(s.denoise_sigma) or None
  joint = s.init == "joint"

  @jax.jit
  def sample(theta, phi, images, key):
    model = nnx.merge(parts.model_def, theta)
    v_key, h_key, run_key = jax.random.split(key, 3)
    v0 = s.init_mean + s.init_std * jax.random.normal(v_key, images.shape, images.dtype)
    if joint:
      h0 = jax.random.normal(h_key, (images.shape[0], config.model.num_hidden), images.dtype)
      v, _ = samplers.annealed_langevin(lambda x: model.energy(*x), (v0, h0), run_key, temps,
                                        s.step_size, denoise)
      return v
    h = nnx.merge(parts.q_def, phi).mean(images)
    return samplers.annealed_langevin(lambda x: model.energy(x, h), v0, run_key, temps,
                                      s.step_size, denoise)

  return sample


def conditioning_images(config, dataset: data_lib.Dataset) -> np.ndarray:
  """sample.num_samples training images (seed sample.seed, without replacement while they last),
  in the model's coordinates: whose posterior means h the samples are drawn at."""
  n, total = config.sample.num_samples, len(dataset.train)
  rng = np.random.default_rng([config.sample.seed, 7])
  idx = np.concatenate([rng.permutation(total) for _ in range(-(-n // total))])[:n]
  return to_model(dataset.preprocess(dataset.train[np.sort(idx)], None), config.data.pad_to)


def draw_samples(config, parts: Parts, state, dataset: data_lib.Dataset, mesh) -> np.ndarray:
  """sample.num_samples samples in the data's shape and range [-1, 1], float32 [n, H, W, C]."""
  sample = make_sampler(config, parts)
  theta = mesh_lib.replicate(sampling_params(state), mesh)
  phi = mesh_lib.replicate(state["posterior"].params, mesh)
  cond = conditioning_images(config, dataset)
  chunk, out = config.sample.batch_size, []
  key = jax.random.key(config.sample.seed)
  for i, start in enumerate(range(0, len(cond), chunk)):
    images = cond[start:start + chunk]
    if len(images) < chunk:   # pad the last chunk to the compiled (and sharded) size
      images = np.concatenate([images, np.repeat(images[-1:], chunk - len(images), 0)])
    x = sample(theta, phi, mesh_lib.shard_batch(images, mesh), jax.random.fold_in(key, i))
    out.append(mesh_lib.to_host(x)[:len(cond) - start])
  return to_images(np.concatenate(out), dataset.shape)


# ---------------------------------------------------------------------------------------------
# Evaluation and exports.


def sample_settings(config) -> dict[str, Any]:
  """What the samples depend on besides the checkpoint: a rerun with the same is 'already done'."""
  s = config.sample
  return {"num_samples": s.num_samples, "sample_init": s.init, "sample_seed": s.seed,
          "langevin_steps": int(s.num_hot + s.num_anneal + s.num_cool),
          "step_size": float(s.step_size), "t_max": float(s.t_max), "t_min": float(s.t_min),
          "denoise_sigma": float(s.denoise_sigma), "fd_enabled": bool(config.eval.fd)}


def sample_metrics(config, images: np.ndarray) -> dict[str, Any]:
  """fd, classifier_score, mean_confidence, real_floor of the samples (None each when eval.fd is
  False)."""
  keys = ("fd", "classifier_score", "classifier_score_std", "mean_confidence", "real_floor",
          "num_test")
  if not config.eval.fd:
    return dict.fromkeys(keys)
  from common import classifier
  clf = classifier.load_or_train(config.data.name)
  score = clf.score(images)
  return {"fd": float(clf.frechet_distance(images, "train")),
          "classifier_score": float(score["classifier_score"]),
          "classifier_score_std": float(score["classifier_score_std"]),
          "mean_confidence": float(score["mean_confidence"]),
          "real_floor": float(clf.real_floor()), "num_test": len(clf.dataset.test)}


def _paths(workdir: str, step: int) -> tuple[str, str]:
  stem = os.path.join(workdir, f"samples_step_{step:07d}")
  return stem + ".png", stem + ".npz"


def _done(config, workdir: str, step: int) -> dict[str, Any] | None:
  """The results.json of this step and sampling settings, if it exists with its grid."""
  path = os.path.join(workdir, RESULTS)
  if not (os.path.exists(path) and os.path.exists(_paths(workdir, step)[0])):
    return None
  import json
  with open(path) as f:
    results = json.load(f)
  same = (results.get("step") == step and results.get("method") == config.method
          and all(results.get(k) == v for k, v in sample_settings(config).items()))
  return results if same else None


def export(config, workdir: str, parts: Parts, state, step: int, dataset: data_lib.Dataset,
           mesh) -> dict[str, Any]:
  """Draws the samples, writes the grid, the samples and results.json; returns the results."""
  t0 = time.time()
  images = draw_samples(config, parts, state, dataset, mesh)
  seconds = time.time() - t0
  if not np.all(np.isfinite(images)):
    raise FloatingPointError(f"non-finite samples at step {step}: check sample.step_size")
  grid_path, npz_path = _paths(workdir, step)
  grid = images[:config.sample.num_grid]
  io.on_main_process(grid_path, lambda f: io.save_image_grid(f, grid))
  as_uint8 = np.round((images + 1.0) * 127.5).astype(np.uint8)
  io.on_main_process(npz_path, lambda f: io.atomic_save_npz(f, images=as_uint8))
  results = {"method": config.method, "step": int(step), "dataset": config.data.name,
             **sample_settings(config), **sample_metrics(config, images),
             "sampling_seconds": round(seconds, 1),
             "samples": os.path.basename(npz_path), "grid": os.path.basename(grid_path)}
  io.on_main_process(os.path.join(workdir, RESULTS), lambda f: io.atomic_write_json(f, results))
  if results["fd"] is None:
    logging.info("step %d: %d samples in %.1fs (eval.fd=False: no FD); wrote %s", step,
                 len(images), seconds, grid_path)
  else:
    logging.info("step %d: %d samples in %.1fs: offline FD %.3f (real-data floor %.3f), classifier "
                 "score %.3f; wrote %s and %s", step, len(images), seconds, results["fd"],
                 results["real_floor"], results["classifier_score"], grid_path,
                 os.path.join(workdir, RESULTS))
  return results


def setup(config):
  dataset = data_lib.get_dataset(config.data)
  parts = make_parts(config, dataset.shape)
  return dataset, parts, make_program(config, parts)


# ---------------------------------------------------------------------------------------------
# Modes.


@MODES.register("train")
def train(config, workdir: str) -> dict[str, Any]:
  dataset, parts, program = setup(config)
  mesh = experiment.make_mesh(config)
  checks.divisible(config, "data.batch_size", mesh.size, f"the batch is split over {mesh.size} "
                   "devices")
  checks.divisible(config, "sample.batch_size", mesh.size, f"the samples are split over "
                   f"{mesh.size} devices")
  state = train_lib.fit(program, config, workdir, data_stream(config, dataset), mesh=mesh)
  step = Checkpointer(os.path.join(workdir, "checkpoints")).latest_step()
  done = _done(config, workdir, step)
  if done is not None:
    logging.info("Samples and FD of step %d already done (%s); nothing to do.", step,
                 os.path.join(workdir, RESULTS))
    return done
  return export(config, workdir, parts, state, step, dataset, mesh)


@MODES.register("eval")
def evaluate_mode(config, workdir: str) -> dict[str, Any]:
  """Samples and FD of the latest checkpoint, redrawn."""
  dataset, parts, program = setup(config)
  mesh = experiment.make_mesh(config)
  state, _, step = train_lib.restore(program, config, workdir, mesh)
  return export(config, workdir, parts, state, step, dataset, mesh)


def run(config, workdir: str, mode: str = "train"):
  return MODES.get(mode, field="--mode")(config, workdir)
