"""SN-DPM / NPR-DPM second stage: covariance heads on a frozen noise predictor, through the shared loop.

Stage 1 is the ordinary DDPM run (dpm.experiment). Stage 2 builds the two-part model of dpm/heads.py,
takes the U-Net weights from a stage-1 checkpoint by the loop's warm start (`train.init_from=<stage-1
workdir>`, `init_source='ema_params'`, `init_target='consts.frozen.unet'`: never trained, no
optimiser state, not saved) and trains only the heads (`trainable=nnx.PathContains('head')`) on

  SN:  E_n,x0,eps ||eps^2 - h(x_n)||^2 / d          NPR: E ||stopgrad(eps - eps_hat)^2 - g(x_n)||^2 / d

with n ~ U{1..N}. The official losses add ||eps - eps_hat||^2 (ratio 1); with the U-Net frozen that
term is a constant, so it is logged (`eps_mse`) but not added. Both heads train together on one
U-Net forward pass (their losses are summed; their parameters are disjoint).

Workdir layout: the stage-1 run in `workdir` (checkpoints/, as dpm.experiment writes it) unless
`sn_npr.init_from` names another run, and stage 2 under `workdir/<sn_npr.stage>/` (checkpoints,
metrics, report/, samples/). A rerun resumes whichever stage is unfinished and says so.

dpm.experiment calls in here (config.family stays 'dpm'): --mode=train with sn_npr.enabled trains
stage 1 (unless sn_npr.init_from) and then the heads (`train`); the 'sn_npr' report (`report`: the
NLL table and sample grids); --mode=sample and --mode=eval with a state-dependent sample.variance
(npr | sn | npr_avg | sn_avg; `make_sampler`). Config fields: the `sn_npr` block of
configs/dpm/base.py.
"""

from __future__ import annotations

import functools
import json
import math
import os
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import nnx
from ml_collections import ConfigDict

from common import checks, io, mesh as mesh_lib, optim, train as train_lib
from common.errors import ConfigError, DataError
from common.supervised import Supervised, supervised
from dpm import analytic, covariance, experiment, heads, losses, nll, reports, reverse

ISOTROPIC = ("beta", "beta_tilde", "ddim", "analytic")
FIXED_BASELINE = {"ddpm": "beta_tilde", "ddim": "ddim"}


# ----------------------------------------------------------------------------------------------
# Config


def is_state_dependent(name: str) -> bool:
  return name in covariance.VARIANCES


def used(config) -> bool:
  """Whether the config asks for anything of stage 2 (then `validate` checks the sn_npr block)."""
  return bool(config.sn_npr.enabled or "sn_npr" in tuple(config.reports)
              or is_state_dependent(config.sample.variance)
              or any(len(str(s).split(":")) > 2 and is_state_dependent(str(s).split(":")[2])
                     for s in config.eval.samplers))


def validate(config) -> None:
  """The `sn_npr` block (dpm.experiment.validate calls it when `used`); errors name the field."""
  cfg = config.sn_npr
  kinds = tuple(cfg.kinds)
  if not kinds or len(set(kinds)) != len(kinds) or any(k not in covariance.KINDS for k in kinds):
    raise ConfigError(f"sn_npr.kinds={kinds} is invalid: expected distinct names from "
                      f"{list(covariance.KINDS)}")
  heads.HEADS.get(cfg.head, field="sn_npr.head")
  for field in ("sn_npr.num_steps", "sn_npr.log_every", "sn_npr.ckpt_every",
                "sn_npr.moment_examples", "sn_npr.moment_batch", "sn_npr.nll_examples",
                "sn_npr.nll_batch", "sn_npr.grid_samples"):
    checks.positive(config, field)
  checks.in_range(config, "sn_npr.ema_decay", 0.0, 1.0)
  optim.validate(config, "sn_npr.optim")
  if not cfg.stage or os.sep in cfg.stage or cfg.stage in ("checkpoints", "samples"):
    raise ConfigError(f"sn_npr.stage={cfg.stage!r} is invalid: expected a directory name other "
                      "than checkpoints or samples")
  source = cfg.init_from
  if source and not os.path.isdir(os.path.join(source, "checkpoints")):
    raise ConfigError(f"sn_npr.init_from={source!r} is invalid: expected a stage-1 workdir that "
                      "holds checkpoints/")
  if not cfg.forms:
    raise ConfigError("sn_npr.forms is empty: expected 'ddpm' and/or 'ddim'")
  for form in cfg.forms:
    reverse.check_form(form)
  if "ddim" in cfg.forms and not cfg.nll_eta > 0:
    raise ConfigError(f"sn_npr.nll_eta={cfg.nll_eta!r} is invalid: the DDIM-form NLL needs eta > 0 "
                      "(at eta = 0 q(x_s | x_t, x_0) is a point mass)")
  n = config.diffusion.num_steps
  for field in ("sn_npr.ks", "sn_npr.grid_ks"):
    for k in checks.get_field(config, field):
      if not (isinstance(k, int) and 1 <= k <= n):
        raise ConfigError(f"{field} has {k!r}: expected integers in 1..N={n}")
  for kind in cfg.trajectories:
    if kind != "dp":
      reverse.TRAJECTORIES.get(kind, field="sn_npr.trajectories")
  for field in ("sn_npr.variances", "sn_npr.dp_variances"):
    for name in checks.get_field(config, field):
      _check_variance(config, name, field)
  if is_state_dependent(config.sample.variance):
    _check_variance(config, config.sample.variance, "sample.variance")


def _check_variance(config, name: str, field: str) -> None:
  if name in ("analytic", "beta_tilde"):
    return
  spec = covariance.VARIANCES.get(name, field=field)
  if spec.kind not in config.sn_npr.kinds:
    raise ConfigError(f"{field} has {name!r}, whose head {spec.kind!r} is not trained "
                      f"(sn_npr.kinds={tuple(config.sn_npr.kinds)})")


def stage_dir(config, workdir: str) -> str:
  return os.path.join(workdir, config.sn_npr.stage)


def base_workdir(config, workdir: str) -> str:
  """Where the stage-1 U-Net comes from: sn_npr.init_from, or this workdir."""
  return config.sn_npr.init_from or workdir


def head_train(config, workdir: str) -> ConfigDict:
  """config.train for stage 2: its own length and EMA, and the warm start of the frozen U-Net."""
  cfg = config.sn_npr
  t = ConfigDict(config.train.to_dict())
  t.update(num_steps=cfg.num_steps, log_every=cfg.log_every, ckpt_every=cfg.ckpt_every,
           ema_decay=cfg.ema_decay, init_from=base_workdir(config, workdir),
           init_step=0, init_source="ema_params",
           init_target="consts.frozen.unet", trainable="head")
  return t


# ----------------------------------------------------------------------------------------------
# The model, the loss and the program


def build_model(config, setup: experiment.Setup) -> heads.TwoPartModel:
  """The two-part model: a freshly initialised U-Net (its weights come by warm start) and heads."""
  unet = experiment.build_model(config, setup.data.shape, config.seed)
  return heads.TwoPartModel(unet, tuple(config.sn_npr.kinds), config.sn_npr.head,
                            rngs=nnx.Rngs(config.seed + 1))


def moment_loss(model: nnx.Module, x0: jax.Array, rng: jax.Array, alphas_cumprod: jax.Array,
                step_input: Callable[[jax.Array], jax.Array], kinds, train: bool = True):
  """SN/NPR second-stage loss (module docstring), summed over the heads; (loss, metrics).

  Args:
    model: (x_t, network time, train=, rngs=) -> (eps_hat, {kind: moment}).
    x0: [B, ...] data; rng: key for n, eps and dropout.
    alphas_cumprod: [N + 1]; step_input: integer step n -> the network's time input.
    kinds: the heads to train ('sn': target eps^2; 'npr': target (eps - eps_hat)^2, eps_hat fixed).
  """
  n_rng, e_rng, d_rng = jax.random.split(rng, 3)
  num_steps = alphas_cumprod.shape[0] - 1
  n = jax.random.randint(n_rng, (x0.shape[0],), 1, num_steps + 1)
  eps = jax.random.normal(e_rng, x0.shape, x0.dtype)
  eps_hat, moments = model(losses.q_sample(x0, n, eps, alphas_cumprod), step_input(n),
                           train=train, rngs=d_rng)
  eps_hat = jax.lax.stop_gradient(eps_hat)
  targets = {"sn": jnp.square(eps), "npr": jax.lax.stop_gradient(jnp.square(eps - eps_hat))}
  metrics = {"eps_mse": jnp.mean(jnp.square(eps - eps_hat))}
  total = 0.0
  for kind in kinds:
    value = jnp.mean(jnp.square(targets[kind] - moments[kind]))
    metrics[f"loss_{kind}"] = value
    total = total + value
  return total, metrics


def program(config, setup: experiment.Setup, base_weights: nnx.State | None = None) -> Supervised:
  """The stage-2 Program: only the heads train; the U-Net is a frozen const.

  Args:
    config: reads sn_npr.* (kinds, head, optim, num_steps, ema_decay).
    setup: dpm.experiment.Setup (data shape, process).
    base_weights: the U-Net's nnx.State (e.g. stage 1's EMA parameters in the same process); None
      when a warm start (head_train) grafts them into consts.frozen.unet.
  """
  cfg = config.sn_npr
  model = build_model(config, setup)
  if base_weights is not None:
    nnx.update(model.unet, base_weights)
  ac = jnp.asarray(setup.process.alphas_cumprod, jnp.float32)
  kinds = tuple(cfg.kinds)
  loss = lambda m, x, r: moment_loss(m, x, r, ac, setup.process.step_input, kinds)
  return supervised(model, loss, optim.make_optimizer(cfg.optim, cfg.num_steps),
                    ema_decay=cfg.ema_decay, lr_fn=optim.learning_rate(cfg.optim, cfg.num_steps),
                    trainable=nnx.PathContains("head"))


def keys(seed: int) -> tuple[jax.Array, jax.Array]:
  """(init key, step key) of stage 2: its own step stream, not stage 1's."""
  init, step = experiment.keys(seed)
  return init, jax.random.fold_in(step, 2)


def batches(config, setup: experiment.Setup):
  return lambda start, seed: setup.data.train_batches(config.data.batch_size,
                                                      config.data.seed + seed, start)


def model_fn(model: heads.TwoPartModel, process) -> jax.tree_util.Partial:
  """(x, integer step n) -> (eps_hat, moments) as a pytree (weights are jit arguments)."""
  graphdef, state = nnx.split(model)
  return jax.tree_util.Partial(functools.partial(_apply, graphdef, process), state)


def _apply(graphdef, process, state, x, n):
  return nnx.merge(graphdef, state)(x, process.step_input(n))


def restore(config, workdir: str, setup: experiment.Setup) -> tuple[heads.TwoPartModel, int]:
  """The EMA two-part model of stage 2's newest checkpoint (U-Net from its warm-start source)."""
  prog = program(config, setup)
  state, consts, step = train_lib.restore(prog, config, stage_dir(config, workdir), setup.mesh,
                                          keys=keys, train=head_train(config, workdir))
  logging.info("Restored the stage-2 heads of step %d from %s.", step, stage_dir(config, workdir))
  return prog.model(state, consts), step


def train(config, workdir: str, setup: experiment.Setup | None = None):
  """Stage 2 through the shared loop: the heads on the frozen U-Net of base_workdir's newest
  checkpoint, under stage_dir; resumes (or says it is done) on a rerun. Returns the final state."""
  setup = setup or experiment.Setup(config)
  prog = program(config, setup)
  logging.info("Stage 2 (%s, %s head): %d trainable head parameters on the frozen U-Net of %s.",
               "+".join(config.sn_npr.kinds), config.sn_npr.head,
               sum(x.size for x in jax.tree.leaves(prog.init(None).params)),
               base_workdir(config, workdir))
  return train_lib.fit(prog, config, stage_dir(config, workdir), batches(config, setup),
                       mesh=setup.mesh, keys=keys, train=head_train(config, workdir),
                       name=config.sn_npr.stage)


# ----------------------------------------------------------------------------------------------
# Moments over the data (analytic Gamma, averaged SN/NPR moments for the DP), cached


def moments_for(config, setup, model, step: int, workdir: str) -> dict[str, np.ndarray]:
  """Dimension-averaged moments at all N timesteps (covariance.estimate_moments) of the stage-2
  model of `step`, from sn_npr.moment_examples training images; cached in report/moments.json."""
  cfg = config.sn_npr
  n = config.diffusion.num_steps
  path = os.path.join(stage_dir(config, workdir), "report", "moments.json")
  meta = {"step": int(step), "examples": int(cfg.moment_examples), "seed": int(cfg.seed), "N": n,
          "kinds": list(cfg.kinds), "dataset": config.data.name}
  record = _read_json(path)
  if record and record.get("meta") == meta:
    logging.info("Moments of step %d loaded from %s.", step, path)
    return {k: np.asarray(v, np.float64) for k, v in record["moments"].items()}
  x0 = reports._subset(setup.data, "train", cfg.moment_examples, cfg.seed)
  t0 = time.time()
  out = covariance.estimate_moments(model_fn(model, setup.process), setup.alphas_cumprod, x0,
                                    np.arange(1, n + 1), jax.random.key(cfg.seed), tuple(cfg.kinds),
                                    batch_size=cfg.moment_batch, mesh=setup.mesh)
  logging.info("Moments at all %d timesteps from %d images in %.1fs.", n, len(x0),
               time.time() - t0)
  record = {"meta": meta, "moments": {k: v.tolist() for k, v in out.items()}}
  io.on_main_process(path, lambda p: io.atomic_write_json(p, record))
  return out


def _read_json(path: str) -> dict | None:
  """A results file written by this module, or None if missing or unreadable (then recomputed)."""
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def gamma_of(moments: dict[str, np.ndarray], name: str) -> np.ndarray:
  """The Gamma_1..Gamma_N whose analytic DP gives `name`'s trajectory: the Monte Carlo Gamma for
  'analytic' and 'beta_tilde', the equivalent Gamma of the averaged moment for SN/NPR."""
  if name in ISOTROPIC:
    return moments["gamma"]
  return covariance.equivalent_gamma(moments[covariance.VARIANCES.get(name).kind])


def dp_trajectories(config, moments, name: str, form: str, eta: float, ks) -> dict[int, np.ndarray]:
  """DP-optimal trajectories of Analytic-DPM's Thm 3 for `name` (for SN/NPR on their dimension-
  averaged moment; see gamma_of), on the reliable prefix of its Gamma (reports.dp_trajectories)."""
  gamma = gamma_of(moments, name)
  variance = name if name in ("beta_tilde", "ddim") else "analytic"
  cost = analytic.dp_cost_matrix(gamma, reports.config_alphas(config), form, eta,
                                 reports.clip_range_of(config), variance=variance)
  return analytic.segmented_trajectories(cost, gamma, [int(k) for k in ks])


# ----------------------------------------------------------------------------------------------
# NLL table


def _form_eta(config, form: str) -> float:
  return 0.0 if form == "ddpm" else float(config.sn_npr.nll_eta)


def _rows(config, form: str) -> tuple[list[str], list[str]]:
  """(isotropic names, state-dependent names) of one form's NLL rows."""
  names = [FIXED_BASELINE[form] if v == "beta_tilde" else v for v in config.sn_npr.variances]
  return ([v for v in names if v in ISOTROPIC], [v for v in names if v not in ISOTROPIC])


def nll_jobs(config, moments, form: str) -> dict[tuple[int, ...], list[tuple[str, str, int]]]:
  """{trajectory: [(trajectory label, variance, K)]}: rows sharing a trajectory share model calls.
  A DP row of variance v uses v's own DP trajectory (label 'dp')."""
  cfg = config.sn_npr
  n = config.diffusion.num_steps
  eta = _form_eta(config, form)
  iso, diag = _rows(config, form)
  jobs: dict[tuple[int, ...], list[tuple[str, str, int]]] = {}
  for kind in cfg.trajectories:
    if kind != "dp":
      for k in cfg.ks:
        traj = tuple(int(t) for t in reverse.make_trajectory(kind, int(k), n))
        jobs.setdefault(traj, []).extend((kind, v, int(k)) for v in iso + diag)
      continue
    for v in cfg.dp_variances:
      v = FIXED_BASELINE[form] if v == "beta_tilde" else v
      for k, traj in dp_trajectories(config, moments, v, form, eta, cfg.ks).items():
        jobs.setdefault(tuple(int(t) for t in traj), []).append(("dp", v, int(k)))
  return jobs


def nll_table(config, setup, model, moments, step: int) -> list[dict[str, Any]]:
  """NLL bits/dim (mean, s.e. over sn_npr.nll_examples test images) of every row, both forms."""
  cfg = config.sn_npr
  ac = setup.alphas_cumprod
  x0 = reports._subset(setup.data, "test", cfg.nll_examples, cfg.seed)
  fn = model_fn(model, setup.process)
  clip = reports.clip_range_of(config)
  rows = []
  for form in cfg.forms:
    eta = _form_eta(config, form)
    iso, diag = _rows(config, form)
    jobs = nll_jobs(config, moments, form)
    for i, (traj, labels) in enumerate(sorted(jobs.items(), key=lambda kv: len(kv[0]))):
      traj = np.asarray(traj, np.int64)
      sigma2 = np.stack([analytic.reverse_variance(v, ac, traj, form, eta, moments["gamma"], clip)
                         for v in iso]) if iso else None
      t0 = time.time()
      bpd = nll.nll_bpd_state_dependent_dataset(
          fn, ac, traj, x0, jax.random.key(cfg.seed + 1), batch_size=cfg.nll_batch,
          variances=tuple(diag), sigma2=sigma2, form=form, eta=eta, clip_range=clip,
          num_bins=setup.data.num_levels, clip_denoised=config.sample.clip_denoised,
          mesh=setup.mesh)
      names = iso + diag
      for kind, v, k in labels:
        values = np.asarray(bpd[names.index(v)], np.float64)
        rows.append(dict(form=form, eta=eta, trajectory=kind, variance=v, K=k,
                         bpd=float(values.mean()),
                         se=float(values.std(ddof=1) / math.sqrt(len(values)))
                         if len(values) > 1 else float("nan"), num_examples=len(values),
                         timesteps=traj.tolist() if kind == "dp" else None))
      logging.info("NLL %s [%d/%d] K=%d: %s (%.1fs)", form, i + 1, len(jobs), len(traj),
                   ", ".join(f"{kind} {v} {bpd[names.index(v)].mean():.3f}"
                             for kind, v, _ in labels), time.time() - t0)
  return rows


def nll_markdown(rows: list[dict[str, Any]]) -> str:
  """Rows 'form, trajectory, variance', columns K, cells bpd."""
  ks = sorted({r["K"] for r in rows})
  lines = ["| form, trajectory, variance | " + " | ".join(f"K={k}" for k in ks) + " |",
           "| --- |" + " --- |" * len(ks)]
  keys_ = list(dict.fromkeys((r["form"], r["trajectory"], r["variance"]) for r in rows))
  for key in keys_:
    cells = {r["K"]: r for r in rows if (r["form"], r["trajectory"], r["variance"]) == key}
    form = key[0] if key[0] == "ddpm" else f"ddim (eta {cells[ks[0]]['eta'] if ks[0] in cells else ''})"
    lines.append(f"| {form}, {key[1]}, {key[2]} | " + " | ".join(
        f"{cells[k]['bpd']:.3f}" if k in cells else "" for k in ks) + " |")
  return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------
# Sampling


def variance_fn_for(config, name: str, trajectory: np.ndarray, form: str, eta: float,
                    gamma: np.ndarray | None) -> Callable:
  """(k, eps_hat, moments) -> sigma^2 for any variance name, with Analytic-DPM's first-step clip
  (config.analytic.first_step_clip) for analytic and the state-dependent ones."""
  clip = (analytic.first_step_clip_constant(config.diffusion.schedule, form)
          if config.analytic.first_step_clip else None)
  if is_state_dependent(name):
    return covariance.sampling_variance_fn(name, reports.config_alphas(config), trajectory, form,
                                           eta, reports.clip_range_of(config), clip)
  sigma2 = jnp.asarray(reports.variance_for(config, name, trajectory, form, eta, gamma),
                       jnp.float32)
  return lambda k, eps, moments: sigma2[k]


def trajectory_for(config, k: int, moments: dict[str, np.ndarray] | None) -> np.ndarray:
  s = config.sample
  if s.trajectory == "dp":
    if moments is None:
      raise ConfigError("sample.trajectory='dp' needs the moments of the model (report first)")
    return dp_trajectories(config, moments, s.variance, s.sampler, s.eta, [k])[k]
  return reverse.make_trajectory(s.trajectory, k, config.diffusion.num_steps)


def make_sampler(config, process, graphdef: nnx.GraphDef, mesh, *, steps: int | None = None,
                 moments: dict[str, np.ndarray] | None = None) -> Callable:
  """The reverse process with sample.variance from the two-part model (any name: state-dependent
  or isotropic), on sample.trajectory, as a jitted (state, rng, shape) -> samples, batch-sharded.

  Args:
    config: sample.* (sampler = form ddpm | ddim, variance, trajectory, eta, num_steps).
    process: the dpm.process.Process; graphdef: the two-part model's graph (state: its weights).
    mesh: the samples are split over its data axis.
    steps: K (default sample.num_steps); moments: of moments_for, for DP trajectories and the
      analytic variance's Gamma.
  """
  s = config.sample
  k = int(steps or s.num_steps)
  trajectory = trajectory_for(config, k, moments)
  variance_fn = variance_fn_for(config, s.variance, trajectory, s.sampler, s.eta,
                                None if moments is None else moments["gamma"])
  ac = process.alphas_cumprod
  sharding = mesh_lib.batch_sharding(mesh)

  @jax.jit
  def run(state, x_T, rng):
    fn = lambda x, n: nnx.merge(graphdef, state)(x, process.step_input(n))
    return reverse.sample_state_dependent(fn, variance_fn, x_T, rng, ac, trajectory, s.sampler,
                                          s.eta, s.clip_denoised)

  def sample(state, rng, shape):
    n_rng, s_rng = jax.random.split(rng)
    x_T = jax.device_put(jax.random.normal(n_rng, shape), sharding)
    return jax.device_put(run(state, x_T, s_rng), sharding)

  return sample


def _grid_sampler(config, process, graphdef, trajectory: np.ndarray, form: str) -> Callable:
  """Jitted (state, x_T, rng, sigma2 [K], which) -> x_0 on one trajectory and form: isotropic
  sigma2 when which < 0, else the state-dependent variance of sn_npr.kinds[which] (traced, so
  every variance of a grid shares one compile)."""
  kinds = tuple(config.sn_npr.kinds)
  clip = (analytic.first_step_clip_constant(config.diffusion.schedule, form)
          if config.analytic.first_step_clip else None)
  table = covariance.step_table(process.alphas_cumprod, trajectory, form, 0.0, clip)
  clip_range = reports.clip_range_of(config)

  @jax.jit
  def run(state, x_T, rng, sigma2, which):
    def variance_fn(k, eps, moments):
      diag = jnp.stack([covariance.table_variance(table, k, moments[kind], eps,
                                                  covariance.Variance(kind), clip_range)
                        for kind in kinds])
      return jnp.where(which < 0, sigma2[k], diag[jnp.maximum(which, 0)])
    fn = lambda x, n: nnx.merge(graphdef, state)(x, process.step_input(n))
    return reverse.sample_state_dependent(fn, variance_fn, x_T, rng, process.alphas_cumprod,
                                          trajectory, form, 0.0, config.sample.clip_denoised)
  return run


def _label(name: str, form: str) -> str:
  fixed = {"beta_tilde": "DDPM (beta_tilde)", "ddim": "DDIM (eta 0)"}
  return fixed.get(name) or f"{'Analytic' if name == 'analytic' else name.upper()}-{form.upper()}"


def sample_grids(config, setup, model, moments, step: int, workdir: str) -> dict[str, str]:
  """Grids at each sn_npr.grid_ks from the same noise: DDPM (beta_tilde) / Analytic-DDPM / SN /
  NPR, and DDIM (eta 0) / Analytic-DDIM / SN-DDIM / NPR-DDIM (sample.trajectory)."""
  cfg = config.sn_npr
  kinds = tuple(cfg.kinds)
  graphdef, state = nnx.split(model)
  rng = jax.random.key(config.sample.seed)
  x_T = jax.random.normal(jax.random.fold_in(rng, 0), (cfg.grid_samples,) + tuple(setup.data.shape))
  out_dir = os.path.join(stage_dir(config, workdir), "report")
  panels, paths = {}, {}
  for k in cfg.grid_ks:
    traj = reverse.make_trajectory(config.sample.trajectory, int(k), config.diffusion.num_steps)
    for form in ("ddpm", "ddim"):
      run = _grid_sampler(config, setup.process, graphdef, traj, form)
      for name in (FIXED_BASELINE[form], "analytic") + kinds:
        iso = name not in kinds
        sigma2 = (reports.variance_for(config, name, traj, form, 0.0, moments["gamma"]) if iso
                  else np.zeros(len(traj)))
        which = -1 if iso else kinds.index(name)
        images = np.asarray(jax.device_get(run(state, x_T, jax.random.fold_in(rng, 1),
                                               jnp.asarray(sigma2, jnp.float32), which)))
        if not np.all(np.isfinite(images)):
          raise FloatingPointError(f"non-finite samples ({form}, {name}, K={k})")
        tag = f"{form}_{name}_K{k}"
        paths[tag] = io.on_main_process(
            os.path.join(out_dir, f"samples_step_{step:07d}_{tag}.png"),
            lambda p, im=images: io.save_image_grid(p, im))
        panels[(f"K = {k}", _label(name, form))] = images[:min(len(images), 36)]
  paths["figure"] = io.on_main_process(
      os.path.join(out_dir, f"samples_step_{step:07d}.png"),
      lambda p: reports._figure_of_grids(p, panels, f"stage-2 step {step}, same noise everywhere"))
  return paths


# ----------------------------------------------------------------------------------------------
# Modes


def report(config, workdir: str, setup: experiment.Setup | None = None) -> dict[str, Any]:
  """NLL table (both forms, even and DP trajectories) and sample grids of the newest heads."""
  setup = setup or experiment.Setup(config)
  if not setup.data.is_image:
    raise DataError(f"the sn_npr report needs image data (a discrete decoder), not "
                    f"data.name={config.data.name!r}")
  model, step = restore(config, workdir, setup)
  out_dir = os.path.join(stage_dir(config, workdir), "report")
  path = os.path.join(out_dir, f"nll_step_{step:07d}.json")
  settings = {k: config.sn_npr[k] for k in ("ks", "forms", "nll_eta", "trajectories", "variances",
                                             "dp_variances", "nll_examples", "moment_examples")}
  settings = json.loads(json.dumps(settings, default=list))
  done = _read_json(path)
  if done and done.get("settings") == settings:
    logging.info("SN/NPR report of step %d already done: %s", step, path)
    return done
  t0 = time.time()
  moments = moments_for(config, setup, model, step, workdir)
  rows = nll_table(config, setup, model, moments, step)
  table = nll_markdown(rows)
  result = dict(step=step, dataset=config.data.name, schedule=config.diffusion.schedule,
                head=config.sn_npr.head, kinds=list(config.sn_npr.kinds), settings=settings,
                rows=rows)
  if config.sn_npr.grid_ks:
    result["grids"] = sample_grids(config, setup, model, moments, step, workdir)
  io.on_main_process(path[:-5] + ".md", lambda p: io.atomic_write_text(p, table))
  io.on_main_process(path, lambda p: io.atomic_write_json(p, result))
  logging.info("SN/NPR NLL (bits/dim) of stage-2 step %d (%.1fs):\n%s", step, time.time() - t0,
               table)
  return result


def sample(config, workdir: str):
  """--mode=sample with a state-dependent sample.variance (or any isotropic one) from the heads:
  sample.num_samples images in workdir/<sn_npr.stage>/samples/ (.png and .npy)."""
  setup = experiment.Setup(config)
  model, step = restore(config, workdir, setup)
  s = config.sample
  t0 = time.time()
  images = next(generate(config, setup, model, step, workdir, s.num_steps, s.num_samples, s.seed))
  name = f"step_{step:07d}_{s.sampler}_{s.variance}_{s.trajectory}_K{s.num_steps}"
  base = os.path.join(stage_dir(config, workdir), "samples", name)
  io.on_main_process(base + ".png", lambda p: io.save_image_grid(p, images))
  io.on_main_process(base + ".npy", lambda p: io.atomic_save_npy(p, images))
  logging.info("%d samples (%s) in %.1fs -> %s.png", len(images), name, time.time() - t0, base)
  return images


def generate(config, setup: experiment.Setup, model: heads.TwoPartModel, step: int, workdir: str,
             steps: int, num_samples: int, seed: int):
  """Batches of sample.num_samples samples (numpy, [-1, 1]) of config's sampler and variance from
  the two-part model, `num_samples` in all, batch i from fold_in(key(seed), i) (as
  dpm.experiment.generate, for --mode=eval)."""
  s = config.sample
  needs = s.trajectory == "dp" or s.variance == "analytic"
  moments = moments_for(config, setup, model, step, workdir) if needs else None
  graphdef, state = nnx.split(model)
  sampler = make_sampler(config, setup.process, graphdef, setup.mesh, steps=steps,
                         moments=moments)
  for i in range(-(-num_samples // s.num_samples)):
    images = mesh_lib.to_host(sampler(state, jax.random.fold_in(jax.random.key(seed), i),
                                      setup.sample_shape))
    yield images[:num_samples - i * s.num_samples]
