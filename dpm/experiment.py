"""DDPM experiment runner: train (--mode=train), evaluate (eval), sample (sample) and report (report).

With sn_npr.enabled (configs/dpm/sn_npr_*.py) --mode=train is a two-stage run: the noise predictor
here (skipped when sn_npr.init_from names a trained one), then SN/NPR-DPM's covariance heads on it
(dpm/second_stage.py) through the same shared loop; the 'sn_npr' report, and --mode=sample /
--mode=eval with a state-dependent variance (npr, sn, npr_avg, sn_avg), use the heads.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from typing import Callable

import jax
import numpy as np
from absl import logging
from flax import nnx

from common import checks, data as data_lib, io, mesh as mesh_lib, optim, train as train_lib
from common.errors import ConfigError
from common.registry import Registry
from common.supervised import supervised, trainable_from_config
from dpm import process as process_lib, quality, reports, samplers
from dpm.unet import UNet, count_params

MODES: Registry = Registry("dpm mode")


def validate(config) -> None:
  """Rejects bad values at start, naming the field."""
  train_lib.validate(config)
  optim.validate(config)
  checks.positive(config, "data.batch_size")
  data_lib.DATASETS.get(config.data.name, field="data.name")
  process_lib.validate(config)
  samplers.validate(config)
  reports.validate(config)
  quality.validate(config)
  eval_samplers(config)
  for field in ("sample.num_samples", "sample.num_steps", "sample.eval_steps", "model.ch",
                "model.num_res_blocks"):
    checks.positive(config, field)
  for field in ("sample.num_steps", "sample.eval_steps"):
    if checks.get_field(config, field) > config.diffusion.num_steps:
      raise ConfigError(f"{field}={checks.get_field(config, field)} is invalid: expected at most "
                        f"diffusion.num_steps={config.diffusion.num_steps}")
  checks.in_range(config, "model.dropout", 0.0, 1.0)
  for mult in config.model.ch_mult:
    if (config.model.ch * mult) % config.model.num_groups:
      raise ConfigError(f"model.num_groups={config.model.num_groups} must divide every width "
                        f"model.ch * ch_mult ({config.model.ch} * {mult})")
  if config.train.get("num_seeds", 1) != 1:
    raise ConfigError("train.num_seeds must be 1 for the diffusion family (one U-Net per run)")
  from dpm import second_stage  # it builds on this module
  if second_stage.used(config):
    second_stage.validate(config)


def batch_sizes(config) -> tuple[int, ...]:
  """The sizes split over the mesh's `data` axis (main.py picks a CPU device count dividing them)."""
  return (config.data.batch_size, config.sample.num_samples)


def build_model(config, shape: tuple[int, ...], seed: int) -> UNet:
  m = config.model
  return UNet(image_size=shape[0], channels=shape[-1], ch=m.ch, ch_mult=tuple(m.ch_mult),
              num_res_blocks=m.num_res_blocks, attn_resolutions=tuple(m.attn_resolutions),
              dropout=m.dropout, num_groups=m.num_groups, rngs=nnx.Rngs(seed))


def _check_image_size(config, shape: tuple[int, ...]) -> None:
  down = 2 ** (len(config.model.ch_mult) - 1)
  if len(shape) != 3 or shape[0] % down:
    raise ConfigError(f"model.ch_mult={tuple(config.model.ch_mult)} downsamples by {down}, which "
                      f"does not divide the image size of data.name={config.data.name!r} ({shape})")


def _check_divides(config, mesh) -> None:
  for field in ("data.batch_size", "sample.num_samples"):
    checks.divisible(config, field, mesh.size, f"the batch is split over {mesh.size} devices")


def make_sampler(config, graphdef: nnx.GraphDef, process: process_lib.Process, steps: int, mesh,
                 gamma: np.ndarray | None = None) -> Callable:
  """The configured sample.sampler (dpm.samplers) as a jitted (state, rng, shape) -> samples, with
  `steps` = K for the reverse process or the NFE for DPM-Solver."""
  return samplers.build(config, process, graphdef, mesh, steps=steps, gamma=gamma,
                        variance_for=reports.variance_for, dp_trajectory=reports.dp_trajectories)


def keys(seed: int) -> tuple[jax.Array, jax.Array]:
  """(init key, step key): the model is built from nnx.Rngs(seed); the step key is the first of
  three (train, sample grid, test loss), as in every DDPM run recorded in the README."""
  return jax.random.key(seed), jax.random.split(jax.random.key(seed), 3)[0]


class Setup:
  """What every mode needs: data, mesh, schedule, a freshly initialised model and its Program."""

  def __init__(self, config):
    self.config = config
    self.data = data_lib.get_dataset(config.data)
    _check_image_size(config, self.data.shape)
    self.mesh = mesh_lib.make_mesh()
    _check_divides(config, self.mesh)
    self.process = process_lib.of(config)
    self.alphas_cumprod = self.process.alphas_cumprod
    self.model = build_model(config, self.data.shape, config.seed)
    self.graphdef = nnx.graphdef(self.model)
    self.rng = jax.random.key(config.seed)
    num_steps = config.train.num_steps
    self.program = supervised(self.model, self.loss_fn,
                              optim.make_optimizer(config.optim, num_steps),
                              ema_decay=config.train.ema_decay,
                              lr_fn=optim.learning_rate(config.optim, num_steps),
                              trainable=trainable_from_config(config.train.get("trainable", "")))

  @property
  def sample_shape(self) -> tuple[int, ...]:
    return (self.config.sample.num_samples,) + tuple(self.data.shape)

  def loss_fn(self, model, batch, rng, train=True):
    return self.process.loss(model, batch, rng, train)

  def weights(self, state) -> nnx.State:
    """The EMA model's whole nnx.State (the argument of samplers and eval steps)."""
    return nnx.state(self.program.model(state))

  def restore(self, workdir: str) -> tuple[nnx.Module, int]:
    """The EMA model of the workdir's newest checkpoint, its weights on the mesh."""
    state, consts, step = train_lib.restore(self.program, self.config, workdir, self.mesh,
                                            keys=keys)
    logging.info("Restored the EMA model of step %d from %s.", step, workdir)
    return self.program.model(state, consts), step

  def eval_step(self):
    """Jitted (weights, batch, rng) -> test loss; built once, so evaluations do not recompile."""
    if getattr(self, "_eval_step", None) is None:
      self._eval_step = jax.jit(
          lambda w, x, r: self.loss_fn(nnx.merge(self.graphdef, w), x, r, train=False)[0])
    return self._eval_step


def write_samples(workdir: str, name: str, images: np.ndarray) -> str:
  return io.on_main_process(os.path.join(workdir, "samples", f"{name}.png"),
                            lambda p: io.save_image_grid(p, images))


def test_loss(setup: Setup, weights, rng) -> float:
  """Mean simple loss on the test split with a fixed key (comparable across checkpoints)."""
  eval_step = setup.eval_step()
  total, count = 0.0, 0
  cfg = setup.config.eval
  for i, batch in enumerate(setup.data.eval_batches("test", cfg.batch_size, cfg.num_examples)):
    loss = eval_step(weights, batch, jax.random.fold_in(rng, i))  # numpy: replicated on a pod
    total, count = total + float(loss) * len(batch), count + len(batch)
  return total / max(count, 1)


@MODES.register("train")
def train(config, workdir: str):
  """Stage 1 (the noise predictor), then SN/NPR's heads if sn_npr.enabled, then config.reports;
  returns the reports' results by name."""
  setup = Setup(config)
  if not (config.sn_npr.enabled and config.sn_npr.init_from):
    train_stage1(config, workdir, setup)
  if config.sn_npr.enabled:
    from dpm import second_stage
    second_stage.train(config, workdir, setup)
  if reports.names(config):
    return run_reports(config, workdir, setup, skip_done=True)
  return {}


def train_stage1(config, workdir: str, setup: Setup):
  """The noise predictor through the shared loop, with a sample grid and the test loss every
  train.eval_every steps (in an isotropic variance: no head exists yet)."""
  logging.info("U-Net with %.2fM parameters; data %s %s (%d train examples).",
               count_params(setup.model) / 1e6, config.data.name, setup.data.shape,
               len(setup.data.train))
  _, sample_rng, eval_rng = jax.random.split(setup.rng, 3)
  config = samplers.isotropic_config(config)
  sampler = (None if samplers.needs_gamma(config) else make_sampler(
      config, setup.graphdef, setup.process, config.sample.eval_steps, setup.mesh))

  def evaluate(state, step):
    t0 = time.time()
    run = sampler
    model = setup.program.model(state)
    if run is None:  # Gamma belongs to these parameters: estimate it (cached) at every evaluation
      gamma = reports.gamma_for(setup, reports.eps_partial(model, setup.process), step, workdir)
      run = make_sampler(config, setup.graphdef, setup.process, config.sample.eval_steps,
                         setup.mesh, gamma)
    weights = nnx.state(model)
    images = run(weights, sample_rng, setup.sample_shape)
    path = write_samples(workdir, f"step_{step:07d}", mesh_lib.to_host(images))
    loss = test_loss(setup, weights, eval_rng)
    logging.info("step %d: test loss (EMA) %.4f; %d samples in %.1fs -> %s", step, loss,
                 config.sample.num_samples, time.time() - t0, path)
    return {"test_loss": loss}

  hooks = [train_lib.Hook(config.train.eval_every, evaluate)]
  batches = lambda start, seed: setup.data.train_batches(config.data.batch_size,
                                                         config.data.seed + seed, start)
  return train_lib.fit(setup.program, config, workdir, batches, hooks, mesh=setup.mesh, keys=keys)


DONE_FILE = "reports_done.json"   # {report name: {"key": ..., "result": ...}} of train-mode runs


def report_key(config, workdir: str) -> str:
  """What a report's result depends on: the whole config and the finished checkpoints of the
  workdir's stages (and of sn_npr.init_from's), as a hash."""
  dirs = [workdir] + ([config.sn_npr.init_from] if config.sn_npr.init_from else [])
  found = []
  for top in dirs:
    for root, subdirs, _ in os.walk(top):
      if os.path.basename(root) == "checkpoints":
        found += [os.path.join(os.path.relpath(root, top), d) for d in subdirs if d.isdigit()]
        subdirs[:] = []
  text = json.dumps([config.to_json(sort_keys=True), sorted(found)])
  return hashlib.sha256(text.encode()).hexdigest()


def run_reports(config, workdir: str, setup: Setup | None = None, skip_done: bool = False) -> dict:
  """Runs config.reports on the EMA model of the latest checkpoint (the 'sn_npr' report reads
  the stage-2 heads and their U-Net itself, which may live in sn_npr.init_from).

  With `skip_done` (a rerun of the train command), a report already made from the same config and
  the same checkpoints (recorded in workdir/reports_done.json) is not recomputed: its recorded
  result is returned. `--mode=report` always recomputes."""
  done_path = os.path.join(workdir, DONE_FILE)
  done = {}
  if os.path.exists(done_path):
    with open(done_path) as f:
      done = json.load(f)
  key = report_key(config, workdir)
  todo = [n for n in reports.names(config)
          if not (skip_done and done.get(n, {}).get("key") == key)]
  out = {}
  for name in reports.names(config):
    if name not in todo:
      logging.info("Report %r already done from this config and these checkpoints (%s); "
                   "--mode=report recomputes it.", name, done_path)
      out[name] = done[name]["result"]
  if todo:
    setup = setup or Setup(config)
  stage1 = [n for n in todo if n != "sn_npr"]
  model, step = setup.restore(workdir) if stage1 else (None, None)
  for name in todo:
    t0 = time.time()
    logging.info("Report %r on the model of step %s...", name,
                 "(stage 2's newest)" if name == "sn_npr" else step)
    out[name] = reports.REPORTS.get(name, field="reports")(setup, model, step, workdir)
    logging.info("Report %r done in %.1fs.", name, time.time() - t0)
    done[name] = {"key": key, "result": out[name]}
    io.on_main_process(done_path, lambda p: io.atomic_write_json(p, done))
  return {name: out[name] for name in reports.names(config)}


@MODES.register("report")
def report(config, workdir: str):
  if not reports.names(config):
    raise ConfigError("--mode=report needs config.reports, e.g. --config.reports=analytic,solver "
                      f"(known: {', '.join(reports.REPORTS.names())})")
  return run_reports(config, workdir)


def eval_samplers(config) -> list[tuple[str, int, str]]:
  """(sampler, K or NFE, variance) of eval.samplers ('ddpm:100', 'dpm_solver++_2m:10',
  'ddim:10:sn'; a bare name takes sample.num_steps or sample.nfe, a missing variance
  sample.variance); by default the configured sample.sampler."""
  specs = list(config.eval.samplers) or [config.sample.sampler]
  out = []
  for spec in specs:
    name, steps, variance, *rest = str(spec).split(":") + ["", ""]
    samplers.SAMPLERS.get(name, field="eval.samplers")
    default = config.sample.nfe if samplers.is_solver(name) else config.sample.num_steps
    try:
      if any(rest) or (variance and samplers.is_solver(name)):
        raise ValueError
      out.append((name, int(steps) if steps else int(default), variance or config.sample.variance))
    except ValueError:
      raise ConfigError(f"eval.samplers has {spec!r}: expected 'name', 'name:steps' or (reverse "
                        "process) 'name:steps:variance'") from None
    if variance:
      samplers.validate(with_sampler(config, name, variance))
  return out


def with_sampler(config, name: str, variance: str | None = None):
  """A copy of config whose sample.sampler is `name` (and sample.variance `variance`)."""
  from ml_collections import ConfigDict
  c = ConfigDict(config.to_dict())
  c.sample.sampler = name
  if variance:
    c.sample.variance = variance
  return c


def generate(setup: Setup, config, model: nnx.Module, step: int, workdir: str, steps: int,
             num_samples: int, seed: int):
  """Batches of sample.num_samples samples (numpy, [-1, 1]) of config's sampler, `num_samples` in
  all, each batch from its own key."""
  gamma = (reports.gamma_for(setup, reports.eps_partial(model, setup.process), step, workdir)
           if samplers.needs_gamma(config) else None)
  sampler = make_sampler(config, setup.graphdef, setup.process, steps, setup.mesh, gamma)
  weights = nnx.state(model)
  for i in range(-(-num_samples // config.sample.num_samples)):
    images = mesh_lib.to_host(sampler(weights, jax.random.fold_in(jax.random.key(seed), i),
                                      setup.sample_shape))
    yield images[:num_samples - i * config.sample.num_samples]


@MODES.register("eval")
def evaluate(config, workdir: str):
  """Test loss, and the sample quality (dpm/quality.py) of each of eval.samplers, written to
  workdir/results.json (schema in dpm/quality.py)."""
  setup = Setup(config)
  model, step = setup.restore(config.sn_npr.init_from or workdir)
  loss = test_loss(setup, nnx.state(model), jax.random.split(setup.rng, 3)[2])
  logging.info("Evaluation at step %d: test loss (EMA) %.5f", step, loss)
  result = {"model_step": step, "test_loss": loss, "dataset": config.data.name, "records": []}
  io.on_main_process(os.path.join(workdir, f"eval_step_{step:07d}.json"),
                     lambda p: io.atomic_write_json(p, {k: result[k] for k in (
                         "model_step", "test_loss", "dataset")}))
  scorer = quality.Scorer(config, workdir, setup.data) if config.eval.num_samples else None
  heads = None
  for name, steps, variance in eval_samplers(config):
    t0 = time.time()
    c = with_sampler(config, name, variance)
    # With trained heads, every reverse-process variance samples from the two-part model (same
    # eps; the analytic Gamma comes from the report's cached moments).
    if samplers.is_state_dependent(c.sample.variance) or (
        config.sn_npr.enabled and not samplers.is_solver(name)):
      from dpm import second_stage
      heads = heads or second_stage.restore(config, workdir, setup)
      images = second_stage.generate(c, setup, *heads, workdir, steps, config.eval.num_samples,
                                     config.eval.seed)
    else:
      images = generate(setup, c, model, step, workdir, steps, config.eval.num_samples,
                        config.eval.seed)
    r = scorer(images)
    record = {"metric": scorer.name, **r, "sampler": name, "steps": steps, "model_step": step,
              "config": {"sample": c.sample.to_dict(), "eval": config.eval.to_dict()}}
    if heads is not None and not samplers.is_solver(name):
      record["heads_step"] = heads[1]
    result["records"].append(record)
    logging.info("%s of %d samples of %s at %d steps, variance %s: %.4f (floor %s) %s  (%.1fs)",
                 scorer.name, r["num_samples"], name, steps, c.sample.variance, r["value"],
                 r["floor"], r["extra"], time.time() - t0)
  io.on_main_process(os.path.join(workdir, "results.json"),
                     lambda p: io.atomic_write_json(p, result))
  return result


@MODES.register("sample")
def sample(config, workdir: str):
  if samplers.is_state_dependent(config.sample.variance):
    from dpm import second_stage
    return second_stage.sample(config, workdir)
  setup = Setup(config)
  model, step = setup.restore(workdir)
  s = config.sample
  gamma = (reports.gamma_for(setup, reports.eps_partial(model, setup.process), step, workdir)
           if samplers.needs_gamma(config) else None)
  steps = s.nfe if samplers.is_solver(s.sampler) else s.num_steps
  sampler = make_sampler(config, setup.graphdef, setup.process, steps, setup.mesh, gamma)
  t0 = time.time()
  images = mesh_lib.to_host(sampler(nnx.state(model), jax.random.key(s.seed), setup.sample_shape))
  name = f"step_{step:07d}_{samplers.describe(config)}"
  path = write_samples(workdir, name, images)
  io.on_main_process(os.path.join(workdir, "samples", f"{name}.npy"),
                     lambda p: io.atomic_save_npy(p, images))
  logging.info("%d samples (%s) in %.1fs -> %s", len(images), samplers.describe(config),
               time.time() - t0, path)
  return images


def run(config, workdir: str, mode: str = "train"):
  return MODES.get(mode, field="--mode")(config, workdir)
