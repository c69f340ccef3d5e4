"""DDPM experiment runner: train (--mode=train), evaluate (eval) and sample (sample) a diffusion model."""

from __future__ import annotations

import functools
import os
import time

import jax
import numpy as np
from absl import logging
from flax import nnx

from common import checks, data as data_lib, io, mesh as mesh_lib, train as train_lib
from common.errors import ConfigError
from common.registry import Registry
from dpm import analytic, process as process_lib, reports, reverse
from dpm.unet import UNet, count_params

MODES: Registry = Registry("dpm mode")


def validate(config) -> None:
  """Rejects bad values at start, naming the field."""
  train_lib.validate(config)
  data_lib.DATASETS.get(config.data.name, field="data.name")
  process_lib.validate(config)
  reverse.check_form(config.sample.form)
  if config.sample.trajectory != "dp":
    reverse.TRAJECTORIES.get(config.sample.trajectory, field="sample.trajectory")
  analytic.VARIANCES.get(config.sample.variance, field="sample.variance")
  reports.validate(config)
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


def needs_gamma(config) -> bool:
  """Analytic variances and DP trajectories need Gamma of the model being sampled."""
  return config.sample.variance == "analytic" or config.sample.trajectory == "dp"


def trajectory_for(config, num_steps: int, gamma: np.ndarray | None) -> np.ndarray:
  s = config.sample
  if s.trajectory == "dp":
    variance = s.variance if s.form == "ddpm" else "analytic"
    return reports.dp_trajectories(config, gamma, variance, [num_steps])[num_steps]
  return reverse.make_trajectory(s.trajectory, num_steps, config.diffusion.num_steps)


def make_sampler(config, graphdef: nnx.GraphDef, process: process_lib.Process, num_steps: int,
                 mesh, gamma: np.ndarray | None = None) -> callable:
  """Jitted (params, rng) -> samples [num_samples, ...] over a `num_steps`-step trajectory of the
  process's discrete chain (a continuous-time model's discretisation to N steps).

  `gamma` (Gamma_1..Gamma_N of these parameters) is needed for sample.variance='analytic' and
  sample.trajectory='dp'.
  """
  s = config.sample
  trajectory = trajectory_for(config, num_steps, gamma)
  sigma2 = reports.variance_for(config, s.variance, trajectory, s.form, s.eta, gamma)
  alphas_cumprod = process.alphas_cumprod

  @functools.partial(jax.jit, static_argnums=2, out_shardings=mesh_lib.batch_sharding(mesh))
  def sample(params, rng, shape):
    net = nnx.merge(graphdef, params)
    eps_fn = lambda x, n: net(x, process.step_input(n))
    n_rng, s_rng = jax.random.split(rng)
    x_T = jax.random.normal(n_rng, shape)
    x_T = jax.lax.with_sharding_constraint(x_T, mesh_lib.batch_sharding(mesh))
    return reverse.sample(eps_fn, x_T, s_rng, alphas_cumprod, trajectory, sigma2, s.form, s.eta,
                          s.clip_denoised)

  return sample


class Setup:
  """What every mode needs: data, mesh, schedule and a freshly initialised model."""

  def __init__(self, config):
    self.config = config
    self.data = data_lib.get_dataset(config.data)
    _check_image_size(config, self.data.shape)
    self.mesh = mesh_lib.make_mesh()
    _check_divides(config, self.mesh)
    self.process = process_lib.of(config)
    self.alphas_cumprod = self.process.alphas_cumprod
    self.model = build_model(config, self.data.shape, config.seed)
    self.rng = jax.random.key(config.seed)

  @property
  def sample_shape(self) -> tuple[int, ...]:
    return (self.config.sample.num_samples,) + tuple(self.data.shape)

  def loss_fn(self, model, batch, rng, train=True):
    return self.process.loss(model, batch, rng, train)

  def eval_step(self, graphdef: nnx.GraphDef):
    """Jitted (params, batch, rng) -> test loss; built once, so evaluations do not recompile."""
    if getattr(self, "_eval_step", None) is None:
      self._eval_step = jax.jit(
          lambda p, x, r: self.loss_fn(nnx.merge(graphdef, p), x, r, train=False)[0])
    return self._eval_step


def write_samples(workdir: str, name: str, images: np.ndarray) -> str:
  path = os.path.join(workdir, "samples", f"{name}.png")
  if mesh_lib.is_main_process():
    io.save_image_grid(path, images)
  return path


def test_loss(setup: Setup, params, graphdef, rng) -> float:
  """Mean simple loss on the test split with a fixed key (comparable across checkpoints)."""
  eval_step = setup.eval_step(graphdef)
  total, count = 0.0, 0
  cfg = setup.config.eval
  for i, batch in enumerate(setup.data.eval_batches("test", cfg.batch_size, cfg.num_examples)):
    loss = eval_step(params, batch, jax.random.fold_in(rng, i))  # numpy: replicated on a pod
    total, count = total + float(loss) * len(batch), count + len(batch)
  return total / max(count, 1)


@MODES.register("train")
def train(config, workdir: str):
  setup = Setup(config)
  logging.info("U-Net with %.2fM parameters; data %s %s (%d train examples).",
               count_params(setup.model) / 1e6, config.data.name, setup.data.shape,
               len(setup.data.train))
  trainer = train_lib.Trainer(config, workdir, setup.model, setup.loss_fn, setup.mesh)
  train_rng, sample_rng, eval_rng = jax.random.split(setup.rng, 3)
  sampler = (None if needs_gamma(config) else make_sampler(
      config, trainer.graphdef, setup.process, config.sample.eval_steps, setup.mesh))

  def evaluate(state, step):
    t0 = time.time()
    run = sampler
    if run is None:  # Gamma belongs to these parameters: estimate it (cached) at every evaluation
      gamma = reports.gamma_for(setup, reports.eps_partial(
          nnx.merge(trainer.graphdef, state.ema_params), setup.process), step, workdir)
      run = make_sampler(config, trainer.graphdef, setup.process,
                         config.sample.eval_steps, setup.mesh, gamma)
    images = run(state.ema_params, sample_rng, setup.sample_shape)
    path = write_samples(workdir, f"step_{step:07d}", mesh_lib.to_host(images))
    loss = test_loss(setup, state.ema_params, trainer.graphdef, eval_rng)
    logging.info("step %d: test loss (EMA) %.4f; %d samples in %.1fs -> %s", step, loss,
                 config.sample.num_samples, time.time() - t0, path)
    return {"test_loss": loss}

  hooks = [train_lib.Hook(config.train.eval_every, evaluate)]
  batches = lambda start: setup.data.train_batches(config.data.batch_size, config.data.seed, start)
  trainer.train(batches, hooks, train_rng)
  if config.reports:
    run_reports(config, workdir, setup)


def run_reports(config, workdir: str, setup: Setup | None = None) -> dict:
  """Runs config.reports on the EMA model of the latest checkpoint."""
  setup = setup or Setup(config)
  model, step = train_lib.restore_for_inference(config, workdir, build_model(
      config, setup.data.shape, config.seed))
  out = {}
  for name in config.reports:
    t0 = time.time()
    logging.info("Report %r on the model of step %d...", name, step)
    out[name] = reports.REPORTS.get(name, field="reports")(setup, model, step, workdir)
    logging.info("Report %r done in %.1fs.", name, time.time() - t0)
  return out


@MODES.register("report")
def report(config, workdir: str):
  if not config.reports:
    raise ConfigError("--mode=report needs config.reports, e.g. --config.reports=analytic,solver "
                      f"(known: {', '.join(reports.REPORTS.names())})")
  return run_reports(config, workdir)


@MODES.register("eval")
def evaluate(config, workdir: str):
  setup = Setup(config)
  model, step = train_lib.restore_for_inference(config, workdir, setup.model)
  graphdef, params = nnx.split(model, nnx.Param)
  loss = test_loss(setup, params, graphdef, jax.random.split(setup.rng, 3)[2])
  result = {"step": step, "test_loss": loss, "dataset": config.data.name}
  logging.info("Evaluation at step %d: %s", step, result)
  if mesh_lib.is_main_process():
    io.atomic_write_json(os.path.join(workdir, f"eval_step_{step:07d}.json"), result)
  return result


@MODES.register("sample")
def sample(config, workdir: str):
  setup = Setup(config)
  model, step = train_lib.restore_for_inference(config, workdir, setup.model)
  graphdef, params = nnx.split(model, nnx.Param)
  s = config.sample
  gamma = (reports.gamma_for(setup, reports.eps_partial(model, setup.process), step, workdir)
           if needs_gamma(config) else None)
  sampler = make_sampler(config, graphdef, setup.process, s.num_steps, setup.mesh, gamma)
  t0 = time.time()
  images = mesh_lib.to_host(sampler(params, jax.random.key(s.seed), setup.sample_shape))
  name = f"step_{step:07d}_{s.form}_{s.variance}_{s.trajectory}_K{s.num_steps}"
  path = write_samples(workdir, name, images)
  if mesh_lib.is_main_process():
    io.atomic_save_npy(os.path.join(workdir, "samples", f"{name}.npy"), images)
  logging.info("%d samples (K=%d, %s form, %s variance) in %.1fs -> %s", len(images), s.num_steps,
               s.form, s.variance, time.time() - t0, path)
  return images


def run(config, workdir: str, mode: str = "train"):
  return MODES.get(mode, field="--mode")(config, workdir)
