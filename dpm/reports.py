"""Reports on a trained diffusion model, written to the workdir after training or by --mode=report.

A config lists the reports to run in `config.reports`; each is registered in REPORTS and called as
report(setup, model, step, workdir) with the EMA model of the checkpoint at `step`.

  analytic  Analytic-DPM (issue 3): Gamma by Monte Carlo (cached), the NLL table in bits/dim for the
            variances and trajectories of `config.analytic` (even and DP-optimal), a plot of NLL vs K,
            and sample grids DDPM vs Analytic-DDPM and DDIM vs Analytic-DDIM on the same noise.
  solver    DPM-Solver (issue 4): sample grids at the NFEs of `config.solver` for each method, from
            the same noise, and each method's RMSE to a high-NFE reference solution of the same ODE.
  sn_npr    SN-DPM / NPR-DPM (issue 13): the NLL table with the second-stage heads' diagonal
            variances beside beta_tilde and analytic, and sample grids (dpm/second_stage.py; it
            restores the heads itself, `model` is not used).
"""

from __future__ import annotations

import functools
import math
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import nnx

from common import checks, io, mesh as mesh_lib
from common.errors import ConfigError, DataError
from common.registry import Registry
from dpm import analytic, nll, process as process_lib, quality, reverse, samplers

REPORTS: Registry = Registry("dpm report")


def eps_partial(model: nnx.Module, process) -> jax.tree_util.Partial:
  """eps_hat(x, n) at integer steps n of `process` (a dpm.process.Process) of a noise-prediction
  U-Net, as a pytree: the weights are leaves (traced jit arguments), not constants baked into every
  compiled program."""
  graphdef, state = nnx.split(model)
  return jax.tree_util.Partial(functools.partial(_apply_eps, graphdef, process), state)


def _apply_eps(graphdef, process, state, x, n):
  return nnx.merge(graphdef, state)(x, process.step_input(n))


def _subset(data, split: str, num: int, seed: int) -> np.ndarray:
  """`num` examples of a split drawn without replacement (fixed by seed), preprocessed to [-1, 1]:
  a random subset, since stored splits may be ordered by class."""
  source = {"train": data.train, "test": data.test}[split]
  n = len(source)
  idx = np.arange(n) if num >= n else np.sort(np.random.default_rng(seed).permutation(n)[:num])
  return data.preprocess(source[idx], None)


def _write(workdir: str, rel: str, write) -> str:
  return io.on_main_process(os.path.join(workdir, rel), write)


def _figure_of_grids(path: str, panels: dict[tuple[str, str], np.ndarray], title: str) -> None:
  """One figure: a grid of image grids, rows and columns labelled by the panels' keys."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  rows = list(dict.fromkeys(r for r, _ in panels))
  cols = list(dict.fromkeys(c for _, c in panels))
  fig, axes = plt.subplots(len(rows), len(cols), figsize=(2.6 * len(cols), 2.8 * len(rows)),
                           squeeze=False)
  for i, r in enumerate(rows):
    for j, c in enumerate(cols):
      ax = axes[i][j]
      ax.axis("off")
      if (r, c) in panels:
        img = io.image_grid(panels[(r, c)])
        ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=255)
        ax.set_title(f"{c}\n{r}", fontsize=9)
  fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  io.atomic_save_figure(fig, path, dpi=110)
  plt.close(fig)


# ----------------------------------------------------------------------------------------------
# Sample quality columns (eval.metric: the offline FD or FID, dpm/quality.py)


def _quality(scorer: quality.Scorer, label: str, batches) -> dict[str, Any]:
  """One row of sample quality: the scorer's value, floor and extras for streamed sample batches."""
  t0 = time.time()
  row = dict(metric=scorer.name, **scorer(batches))
  logging.info("%s: %s %.3f over %d samples (%.1fs)", label, row["metric"], row["value"],
               row["num_samples"], time.time() - t0)
  return row


def _quality_markdown(rows: list[dict[str, Any]], steps_label: str, title: str) -> str:
  """Rows (each with 'label', 'steps', 'value', 'extra') as a table: a row per label, a column per
  step count; the classifier's confident fraction beside each value where there is one."""
  steps = sorted({r["steps"] for r in rows})
  lines = [title, "", "| sampler | " + " | ".join(f"{steps_label}={k}" for k in steps) + " |",
           "| --- |" + " --- |" * len(steps)]
  for label in dict.fromkeys(r["label"] for r in rows):
    cells = []
    for k in steps:
      r = next((r for r in rows if r["label"] == label and r["steps"] == k), None)
      conf = r and r["extra"].get("fraction_confident_0.9")
      cells.append("" if r is None else f"{r['value']:.2f}" +
                   ("" if conf is None else f" ({conf:.2f})"))
    lines.append(f"| {label} | " + " | ".join(cells) + " |")
  floor = rows[0].get("floor") if rows else None
  if floor is not None:
    lines += ["", f"Floor: the real test split scores {floor:.2f} against the train split. In "
              "brackets: the fraction of samples the classifier labels with confidence >= 0.9."]
  return "\n".join(lines) + "\n"


def _write_quality(workdir: str, stem: str, step: int, rows: list[dict], steps_label: str,
                   title: str) -> list:
  """Writes stem.json (the model step and the rows) and stem.md (their table); returns the rows."""
  table = _quality_markdown(rows, steps_label, title)
  _write(workdir, stem + ".json", lambda p: io.atomic_write_json(p, dict(step=step, rows=rows)))
  _write(workdir, stem + ".md", lambda p: io.atomic_write_text(p, table))
  logging.info("%s\n%s", stem, table)
  return rows


def _quality_batches(num: int, batch: int):
  """(index, size) of the batches of `num` samples, `batch` at a time."""
  return [(i, min(batch, num - i * batch)) for i in range(-(-num // batch))]


def _noise(setup, key: jax.Array, size: int) -> jax.Array:
  """x_T [size, *data shape], split over the mesh's devices where the size allows (single host)."""
  x = jax.random.normal(key, (size,) + tuple(setup.data.shape))
  if size % setup.mesh.size == 0 and jax.process_count() == 1:
    x = jax.device_put(x, mesh_lib.batch_sharding(setup.mesh))
  return x


# ----------------------------------------------------------------------------------------------
# Analytic-DPM


def gamma_for(setup, eps: jax.tree_util.Partial, step: int, workdir: str) -> np.ndarray:
  """Gamma_1..Gamma_N of the model at `step`, from the workdir's cache or estimated (and cached)."""
  cfg = setup.config.analytic
  n = setup.config.diffusion.num_steps
  meta = {"examples": int(cfg.gamma_examples), "seed": int(cfg.seed),
          "dataset": setup.config.data.name, "schedule": setup.config.diffusion.schedule, "N": n}
  if setup.process.continuous:
    meta["process"] = setup.process.summary()

  def compute():
    x0 = _subset(setup.data, "train", cfg.gamma_examples, cfg.seed)
    logging.info("Estimating Gamma at all %d timesteps from %d training images...", n, len(x0))
    t0 = time.time()
    gamma = analytic.estimate_gamma(eps, setup.alphas_cumprod, x0, np.arange(1, n + 1),
                                    jax.random.key(cfg.seed), batch_size=cfg.gamma_batch,
                                    mesh=setup.mesh)
    logging.info("Gamma estimated in %.1fs (%.0f images x timesteps / s).", time.time() - t0,
                 len(x0) * n / max(time.time() - t0, 1e-9))
    return gamma

  gamma, cached = analytic.cached_gamma(workdir, step, compute, meta)
  if cached:
    logging.info("Gamma of step %d loaded from %s.", step, analytic.gamma_cache_path(workdir))
  n_bad = int(np.sum(gamma > 1))
  if n_bad:
    logging.info("%d of %d Gamma estimates exceed 1 (Monte Carlo noise; the first at t=%d).",
                 n_bad, n, int(np.flatnonzero(gamma > 1)[0]) + 1)
  if cfg.gamma_estimate == "isotonic":
    upper = min(clip_range_of(setup.config)[1] if cfg.clip else 1.0,
                analytic.data_variance(_subset(setup.data, "train", cfg.gamma_examples, cfg.seed)))
    gamma = analytic.isotonic_gamma(gamma, setup.alphas_cumprod, upper)
    logging.info("Gamma refitted: C_t non-decreasing in t and at most the data variance %.4f.",
                 upper)
  return gamma


def clip_range_of(config) -> tuple[float, float] | None:
  return analytic.DEFAULT_CLIP_RANGE if config.analytic.clip else None


def variance_for(config, name: str, trajectory: np.ndarray, form: str, eta: float,
                 gamma: np.ndarray | None) -> np.ndarray:
  """sigma2 [K] for sampling: the named variance, with Analytic-DPM's first-step clip if on."""
  clip = (analytic.first_step_clip_constant(config.diffusion.schedule, form)
          if config.analytic.first_step_clip else None)
  return analytic.sampling_variance(name, config_alphas(config), trajectory, form, eta,
                                    gamma=gamma, clip_range=clip_range_of(config),
                                    first_step_clip=clip)


def config_alphas(config) -> np.ndarray:
  """alpha_bar_0..alpha_bar_N of the config's discrete chain."""
  return process_lib.of(config).alphas_cumprod


def dp_trajectories(config, gamma: np.ndarray, variance: str, ks) -> dict[int, np.ndarray]:
  """DP-optimal trajectories (Analytic-DPM Thm 3) for each K under `variance`'s per-step KL, on
  the timesteps where the Gamma estimate is trustworthy (analytic.segmented_trajectories)."""
  cost = analytic.dp_cost_matrix(gamma, config_alphas(config), clip_range=clip_range_of(config),
                                 variance=variance)
  return analytic.segmented_trajectories(cost, gamma, [int(k) for k in ks])


def _nll_jobs(config, gamma: np.ndarray) -> dict[tuple[int, ...], list[tuple[str, str, int]]]:
  """{trajectory: [(trajectory kind, variance, K), ...]}: rows sharing a trajectory share the
  model calls (DP trajectories of different variances, or even = DP at K = N, coincide)."""
  cfg = config.analytic
  n = config.diffusion.num_steps
  ks = [int(k) for k in cfg.ks]
  jobs: dict[tuple[int, ...], list[tuple[str, str, int]]] = {}
  for kind in cfg.trajectories:
    if kind == "dp":
      for v in cfg.dp_variances:
        for k, traj in dp_trajectories(config, gamma, v, ks).items():
          jobs.setdefault(tuple(int(t) for t in traj), []).append(("dp", v, k))
    else:
      for k in ks:
        traj = reverse.make_trajectory(kind, k, n)
        for v in cfg.variances:
          jobs.setdefault(tuple(int(t) for t in traj), []).append((kind, v, k))
  return jobs


def nll_table(setup, eps, gamma: np.ndarray, step: int) -> list[dict[str, Any]]:
  """NLL (bits/dim, mean and s.e. over the test examples) of every row of config.analytic."""
  config = setup.config
  cfg = config.analytic
  ac = setup.alphas_cumprod
  x0 = _subset(setup.data, "test", cfg.nll_examples, cfg.seed)
  rows = []
  jobs = _nll_jobs(config, gamma)
  t_all = time.time()
  for i, (traj, labels) in enumerate(sorted(jobs.items(), key=lambda kv: len(kv[0]))):
    traj = np.asarray(traj, np.int64)
    names = list(dict.fromkeys(v for _, v, _ in labels))
    sigma2 = np.stack([analytic.reverse_variance(v, ac, traj, gamma=gamma,
                                                 clip_range=clip_range_of(config)) for v in names])
    t0 = time.time()
    bpd = nll.nll_bpd_dataset(eps, ac, traj, sigma2, x0, jax.random.key(cfg.seed + 1),
                              batch_size=cfg.nll_batch, num_bins=setup.data.num_levels,
                              clip_denoised=config.sample.clip_denoised)
    for kind, v, k in labels:
      values = np.asarray(bpd[names.index(v)], np.float64)
      rows.append(dict(trajectory=kind, variance=v, K=k, bpd=float(values.mean()),
                       se=float(values.std(ddof=1) / math.sqrt(len(values))) if len(values) > 1
                       else float("nan"), num_examples=len(values),
                       timesteps=traj.tolist() if kind == "dp" else None))
    logging.info("NLL [%d/%d] K=%d (%s): %s  (%.1fs)", i + 1, len(jobs), len(traj),
                 ", ".join(f"{kind} {v}" for kind, v, _ in labels),
                 ", ".join(f"{bpd[j].mean():.3f}" for j in range(len(names))), time.time() - t0)
  logging.info("NLL table of step %d: %d rows in %.1fs.", step, len(rows), time.time() - t_all)
  return rows


def nll_markdown(rows: list[dict[str, Any]]) -> str:
  """Rows 'trajectory variance', columns K, cells bpd."""
  ks = sorted({r["K"] for r in rows})
  lines = ["| trajectory, variance | " + " | ".join(f"K={k}" for k in ks) + " |",
           "| --- |" + " --- |" * len(ks)]
  keys = list(dict.fromkeys((r["trajectory"], r["variance"]) for r in rows))
  for kind, v in keys:
    cells = {r["K"]: r for r in rows if (r["trajectory"], r["variance"]) == (kind, v)}
    lines.append(f"| {kind}, {v} | " + " | ".join(
        f"{cells[k]['bpd']:.3f}" if k in cells else "" for k in ks) + " |")
  return "\n".join(lines) + "\n"


def _nll_plot(path: str, rows: list[dict[str, Any]], title: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(6, 4))
  keys = list(dict.fromkeys((r["trajectory"], r["variance"]) for r in rows))
  for kind, v in keys:
    pts = sorted((r["K"], r["bpd"]) for r in rows if (r["trajectory"], r["variance"]) == (kind, v))
    ax.plot(*zip(*pts), marker="o", ls="-" if kind == "dp" else "--", label=f"{kind}, {v}")
  ax.set_xscale("log")
  ax.set_yscale("log")
  ax.set_xlabel("K (steps of the reverse process)")
  ax.set_ylabel("NLL upper bound (bits/dim)")
  ax.set_title(title, fontsize=9)
  ax.grid(True, which="both", alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  io.atomic_save_figure(fig, path, dpi=120)
  plt.close(fig)


@functools.lru_cache(maxsize=16)
def _reverse_sampler(process, trajectory: tuple[int, ...], form: str, eta: float, clip: bool):
  """Jitted (eps, x_T, rng, sigma2) -> x_0; sigma2 is traced, so variances share a compile."""
  ac = process.alphas_cumprod
  traj = np.asarray(trajectory)
  return jax.jit(lambda eps, x, rng, sigma2: reverse.sample(eps, x, rng, ac, traj, sigma2, form,
                                                            eta, clip))


def _analytic_samplers(cfg) -> tuple[tuple[str, str, str], ...]:
  """(label, form, variance) of the four samplers the Analytic-DPM grids and quality columns compare."""
  return ((f"DDPM ({cfg.ddpm_baseline})", "ddpm", cfg.ddpm_baseline),
          ("Analytic-DDPM", "ddpm", "analytic"),
          ("DDIM (eta 0)", "ddim", "ddim"),
          ("Analytic-DDIM", "ddim", "analytic"))


def analytic_grids(setup, eps, gamma: np.ndarray, step: int, workdir: str) -> dict[str, str]:
  """Sample grids at each K of analytic.grid_ks: DDPM (fixed baseline) vs Analytic-DDPM and DDIM
  (eta = 0) vs Analytic-DDIM, all from the same x_T and per-step noise."""
  config = setup.config
  cfg = config.analytic
  n = config.diffusion.num_steps
  shape = (cfg.grid_samples,) + tuple(setup.data.shape)
  rng = jax.random.key(config.sample.seed)
  x_T = jax.random.normal(jax.random.fold_in(rng, 0), shape)
  key = process_lib.of(config)
  panels, paths = {}, {}
  for k in cfg.grid_ks:
    traj = reverse.make_trajectory(config.sample.trajectory, int(k), n)
    for label, form, name in _analytic_samplers(cfg):
      sigma2 = variance_for(config, name, traj, form, 0.0, gamma)
      run = _reverse_sampler(key, tuple(int(t) for t in traj), form, 0.0,
                             bool(config.sample.clip_denoised))
      images = np.asarray(jax.device_get(run(eps, x_T, jax.random.fold_in(rng, 1),
                                              jnp.asarray(sigma2, jnp.float32))))
      if not np.all(np.isfinite(images)):
        raise FloatingPointError(f"non-finite samples from {label} at K={k}")
      tag = f"{form}_{name}_K{k}"
      paths[tag] = _write(workdir, f"analytic/samples_step_{step:07d}_{tag}.png",
                          lambda p, im=images: io.save_image_grid(p, im))
      panels[(f"K = {k}", label)] = images[:min(len(images), 36)]
  fig = _write(workdir, f"analytic/samples_step_{step:07d}.png", lambda p: _figure_of_grids(
      p, panels, f"step {step}, same noise in every panel"))
  paths["figure"] = fig
  return paths


@REPORTS.register("analytic")
def analytic_report(setup, model: nnx.Module, step: int, workdir: str) -> dict[str, Any]:
  config = setup.config
  if not setup.data.is_image:
    raise DataError(f"the analytic report needs image data (a discrete decoder), not "
                    f"data.name={config.data.name!r}")
  eps = eps_partial(model, setup.process)
  gamma = gamma_for(setup, eps, step, workdir)
  result = dict(step=step, dataset=config.data.name, schedule=config.diffusion.schedule,
                gamma_examples=int(config.analytic.gamma_examples),
                gamma_estimate=config.analytic.gamma_estimate,
                reliable_prefix=analytic.reliable_prefix(gamma), rows=[])
  if config.analytic.ks:  # () skips the NLL table (hours on a CPU), e.g. for the quality columns
    rows = result["rows"] = nll_table(setup, eps, gamma, step)
    table = nll_markdown(rows)
    stem = f"analytic/nll_step_{step:07d}"
    _write(workdir, stem + ".json", lambda p: io.atomic_write_json(p, result))
    _write(workdir, stem + ".md", lambda p: io.atomic_write_text(p, table))
    _write(workdir, stem + ".png", lambda p: _nll_plot(
        p, rows, f"{config.data.name}, step {step}: NLL bound vs K (even --, DP -)"))
    logging.info("Analytic-DPM NLL (bits/dim) at step %d:\n%s", step, table)
  if config.analytic.grid_ks:
    analytic_grids(setup, eps, gamma, step, workdir)
  if config.analytic.quality_samples:
    result["quality"] = analytic_quality(setup, eps, gamma, step, workdir)
  return result


def analytic_quality(setup, eps, gamma: np.ndarray, step: int, workdir: str) -> list[dict]:
  """Sample quality at each K of analytic.quality_ks for DDPM (the fixed baseline), Analytic-DDPM,
  DDIM (eta 0) and Analytic-DDIM, the Analytic-DPM paper's FID table in shape; every sampler draws
  batch i from the same x_T and per-step noise."""
  config = setup.config
  cfg = config.analytic
  n = config.diffusion.num_steps
  key = process_lib.of(config)
  rng = jax.random.key(cfg.quality_seed)
  batches = _quality_batches(int(cfg.quality_samples), int(cfg.quality_batch))
  scorer = quality.Scorer(config, workdir, setup.data)
  rows = []
  for k in cfg.quality_ks:
    traj = reverse.make_trajectory(config.sample.trajectory, int(k), n)
    for label, form, name in _analytic_samplers(cfg):
      sigma2 = jnp.asarray(variance_for(config, name, traj, form, 0.0, gamma), jnp.float32)
      run = _reverse_sampler(key, tuple(int(t) for t in traj), form, 0.0,
                             bool(config.sample.clip_denoised))

      def images(run=run, sigma2=sigma2):
        for i, size in batches:
          r = jax.random.fold_in(rng, i)
          x_T = _noise(setup, jax.random.fold_in(r, 0), size)
          yield np.asarray(jax.device_get(run(eps, x_T, jax.random.fold_in(r, 1), sigma2)))

      row = _quality(scorer, f"{label}, K={k}", images())
      rows.append(dict(label=label, form=form, variance=name, steps=int(k),
                       trajectory=config.sample.trajectory, **row))
  return _write_quality(workdir, f"analytic/quality_step_{step:07d}", step, rows, "K", (
      f"Sample quality ({rows[0]['metric']}, lower is better) of the model of step {step}, "
      f"{cfg.quality_samples} samples per entry, {config.sample.trajectory} trajectory, "
      "the same noise for every sampler."))


# ----------------------------------------------------------------------------------------------
# DPM-Solver

@REPORTS.register("solver")
def solver_report(setup, model: nnx.Module, step: int, workdir: str) -> dict[str, Any]:
  config = setup.config
  cfg = config.solver
  thresholding = cfg.thresholding or config.sample.thresholding
  graphdef, state = nnx.split(model)
  shape = (cfg.num_samples,) + tuple(setup.data.shape)
  x_T = jax.random.normal(jax.random.key(cfg.seed), shape)
  references = {}

  def reference_at(t_end: float) -> np.ndarray:
    # Each method is compared with the reference solution at its own end time (a continuous model's
    # default end time depends on the NFE).
    if t_end not in references:
      t0 = time.time()
      references[t_end] = np.asarray(samplers.solve(
          samplers.solver_method(cfg.reference_method, "solver.reference_method"), setup.process,
          graphdef, cfg.reference_nfe, t_end, thresholding)(state, x_T))
      logging.info("Reference: %s at %d NFE to t_end=%g in %.1fs.", cfg.reference_method,
                   cfg.reference_nfe, t_end, time.time() - t0)
    return references[t_end]

  rows, panels = [], {}
  for method in cfg.methods:
    for nfe in cfg.nfes:
      t0 = time.time()
      t_end = samplers.solver_end_time(setup.process, int(nfe))
      images = np.asarray(samplers.solve(samplers.solver_method(method), setup.process, graphdef,
                                         int(nfe), t_end, thresholding)(state, x_T))
      rmse = float(np.sqrt(np.mean((images - reference_at(t_end)) ** 2)))
      rows.append(dict(method=method, nfe=int(nfe), t_end=t_end, rmse_to_reference=rmse))
      logging.info("%s, NFE %d: RMSE to reference %.4f (%.1fs with compile)", method, nfe, rmse,
                   time.time() - t0)
      _write(workdir, f"solver/samples_step_{step:07d}_{method}_nfe{nfe}.png",
             lambda p, im=images: io.save_image_grid(p, im))
      panels[(method, f"NFE {nfe}")] = images[:min(len(images), 36)]
  _write(workdir, f"solver/samples_step_{step:07d}.png", lambda p: _figure_of_grids(
      p, panels, f"step {step}: same x_T in every panel"))
  nfes = sorted({r["nfe"] for r in rows})
  ends = ", ".join(f"NFE {r['nfe']}: {r['t_end']:g}" for r in rows if r["method"] == cfg.methods[0])
  lines = [f"RMSE per pixel (data in [-1, 1]) to {cfg.reference_method} at {cfg.reference_nfe} NFE "
           f"to the same end time ({ends}), {cfg.num_samples} samples from the same x_T, "
           f"thresholding {thresholding}.", "",
           "| method | " + " | ".join(f"NFE {n}" for n in nfes) + " |",
           "| --- |" + " --- |" * len(nfes)]
  for method in cfg.methods:
    vals = {r["nfe"]: r["rmse_to_reference"] for r in rows if r["method"] == method}
    lines.append(f"| {method} | " + " | ".join(f"{vals[n]:.4f}" for n in nfes) + " |")
  table = "\n".join(lines) + "\n"
  result = dict(step=step, reference_method=cfg.reference_method,
                reference_nfe=int(cfg.reference_nfe), thresholding=thresholding, rows=rows)
  _write(workdir, f"solver/error_step_{step:07d}.json", lambda p: io.atomic_write_json(p, result))
  _write(workdir, f"solver/error_step_{step:07d}.md", lambda p: io.atomic_write_text(p, table))
  logging.info("DPM-Solver on the model of step %d:\n%s", step, table)
  if cfg.quality_samples:
    result["quality"] = solver_quality(setup, graphdef, state, step, workdir, thresholding)
  return result


def solver_quality(setup, graphdef, state, step: int, workdir: str, thresholding: str) -> list:
  """Sample quality of each of solver.methods at each of solver.nfes (the DPM-Solver paper's FID
  vs NFE in shape), batch i of every method from the same x_T."""
  config = setup.config
  cfg = config.solver
  rng = jax.random.key(cfg.seed + 1)
  batches = _quality_batches(int(cfg.quality_samples), int(cfg.quality_batch))
  scorer = quality.Scorer(config, workdir, setup.data)
  rows = []
  for method in cfg.methods:
    for nfe in cfg.nfes:
      run = samplers.solve(samplers.solver_method(method), setup.process, graphdef, int(nfe),
                           samplers.solver_end_time(setup.process, int(nfe)), thresholding)

      def images(run=run):
        for i, size in batches:
          x_T = _noise(setup, jax.random.fold_in(rng, i), size)
          yield np.asarray(jax.device_get(run(state, x_T)))

      row = _quality(scorer, f"{method}, NFE {nfe}", images())
      rows.append(dict(label=method, method=method, steps=int(nfe), thresholding=thresholding,
                       **row))
  return _write_quality(workdir, f"solver/quality_step_{step:07d}", step, rows, "NFE", (
      f"Sample quality ({rows[0]['metric']}, lower is better) of the model of step {step}, "
      f"{cfg.quality_samples} samples per entry from the same x_T, thresholding {thresholding}."))


@REPORTS.register("sn_npr")
def sn_npr_report(setup, model: nnx.Module | None, step: int | None, workdir: str) -> dict:
  del model, step  # the report restores the stage-2 heads (and their frozen U-Net)
  from dpm import second_stage  # it builds on dpm.experiment, which imports this module
  return second_stage.report(setup.config, workdir, setup)


def names(config) -> list[str]:
  """config.reports as a list: a tuple, or a comma-separated string from the command line
  (`--config.reports=analytic,solver`)."""
  value = config.reports
  items = [value] if isinstance(value, str) else list(value)
  return [name.strip() for item in items for name in str(item).split(",") if name.strip()]


def validate(config) -> None:
  """Rejects unknown report names and bad report settings at start, naming the field."""
  for name in names(config):
    REPORTS.get(name, field="reports")
  a = config.analytic
  n = config.diffusion.num_steps
  for field, values in (("analytic.ks", a.ks), ("analytic.grid_ks", a.grid_ks),
                        ("analytic.quality_ks", a.quality_ks),
                        ("solver.nfes", config.solver.nfes)):
    for k in values:
      if not (isinstance(k, int) and 1 <= k <= n):
        raise ConfigError(f"{field} has {k!r}: expected integers in 1..N={n}")
  for field in ("analytic.gamma_examples", "analytic.gamma_batch", "analytic.nll_examples",
                "analytic.nll_batch", "analytic.grid_samples", "solver.num_samples",
                "solver.reference_nfe", "analytic.quality_batch", "solver.quality_batch"):
    checks.positive(config, field)
  for field in ("analytic.quality_samples", "solver.quality_samples"):  # 0: no quality columns
    checks.integer(config, field, low=0)
  if ((a.quality_samples and "analytic" in names(config)) or
      (config.solver.quality_samples and "solver" in names(config))) and (
          quality.resolve(config) == "fid" and not config.eval.get("inception_weights")):
    raise ConfigError("the reports' sample-quality columns use FID for data.name="
                      f"{config.data.name!r} and need eval.inception_weights=<file.npz> "
                      "(docs/EVALUATION.md: convert pytorch-fid's weights once)")
  if a.quality_samples and not a.quality_ks:
    raise ConfigError("analytic.quality_samples > 0 needs analytic.quality_ks (the K of each column)")
  if config.solver.thresholding:
    samplers.THRESHOLDING.get(config.solver.thresholding, field="solver.thresholding")
  for field in ("analytic.variances", "analytic.dp_variances", "analytic.ddpm_baseline"):
    values = checks.get_field(config, field)
    for v in (values,) if isinstance(values, str) else values:
      analytic.VARIANCES.get(v, field=field)
      if v == "ddim":
        raise ConfigError(f"{field} has 'ddim': the NLL table and the DDPM grids use DDPM-form "
                          "variances (beta, beta_tilde, analytic); DDIM grids are always drawn")
  checks.one_of(config, "analytic.gamma_estimate", ("mc", "isotonic"))
  for kind in a.trajectories:
    if kind != "dp":
      reverse.TRAJECTORIES.get(kind, field="analytic.trajectories")
  for m in config.solver.methods:
    samplers.solver_method(m, "solver.methods")
  samplers.solver_method(config.solver.reference_method, "solver.reference_method")
