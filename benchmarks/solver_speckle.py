"""Why the MNIST model's probability-flow samples turn into speckle, and what removes it (issue 11).

Command:  python benchmarks/solver_speckle.py --workdir=runs/ddpm_mnist --out=dpm/solver/results
          (a workdir of configs/dpm/ddpm_mnist.py, trained; train it with --config.train.keep_checkpoints=8 to keep
          the checkpoints the training-length rows read)
Machine:  2-core CPU container: about 15 minutes for 256 samples per row.
Measures: for each sampler setting, over the same x_T (and the same per-step noise for DDPM):
  noise      the fraction of samples the offline-FD classifier (common/classifier.py) labels with
             confidence < 0.9 (real test digits: the `real` row);
  speckle    the fraction whose total variation (mean |difference| of neighbouring pixels, the
             image clipped to [-1, 1]) exceeds the 99th percentile of the real test digits';
  outside    the mean fraction of pixels outside [-1, 1] before the clip;
  fd         the offline FD against the train split (the real test split: its floor).
Factors:  training length (checkpoints), the data-prediction clip (DDPM's clip_denoised in the DDIM
          and DDPM steps; static or dynamic thresholding in DPM-Solver++), the end time of the ODE,
          and the number of steps (the ODE solved more accurately).
Writes:   solver_speckle.md and solver_speckle.json under --out.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402


def total_variation(images: np.ndarray) -> np.ndarray:
  """Mean absolute difference of horizontally and vertically adjacent pixels, per image."""
  x = np.clip(images, -1.0, 1.0)
  dh = np.abs(np.diff(x, axis=1)).mean(axis=(1, 2, 3))
  dw = np.abs(np.diff(x, axis=2)).mean(axis=(1, 2, 3))
  return (dh + dw) / 2


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--workdir", default="runs/ddpm_mnist")
  parser.add_argument("--samples", type=int, default=256)
  parser.add_argument("--ch", type=int, default=0, help="model.ch of the workdir's model (0: the config's)")
  parser.add_argument("--steps", default="500,1000,2000", help="checkpoints for the training rows")
  parser.add_argument("--out", default="dpm/solver/results")
  parser.add_argument("--quick", action="store_true", help="a few rows, 64 samples (a check)")
  args = parser.parse_args(argv)

  from common import mesh as mesh_lib
  mesh_lib.set_cpu_devices(mesh_lib.default_cpu_devices((args.samples, 64)))
  mesh_lib.enable_compilation_cache()
  from common import classifier, train as train_lib
  from configs.dpm import ddpm_mnist
  from dpm import experiment, reverse, samplers

  config = ddpm_mnist.get_config()
  if args.ch:
    config.model.ch = args.ch
  setup = experiment.Setup(config)
  clf = classifier.load_or_train(config.data.name)
  n = config.diffusion.num_steps
  ac = setup.process.alphas_cumprod
  num = 64 if args.quick else args.samples
  shape = (num,) + tuple(setup.data.shape)
  key = jax.random.key(7)
  x_T = jax.device_put(jax.random.normal(jax.random.fold_in(key, 0), shape),
                       mesh_lib.batch_sharding(setup.mesh))
  noise_key = jax.random.fold_in(key, 1)

  real = setup.data.preprocess(setup.data.test, None)
  tv_threshold = float(np.percentile(total_variation(real), 99))

  def measure(images: np.ndarray) -> dict:
    images = np.asarray(images, np.float64)
    clipped = np.clip(images, -1.0, 1.0)
    tv = total_variation(clipped)
    as_float32 = clipped.astype(np.float32)
    return dict(noise=1.0 - clf.score(as_float32, threshold=0.9)["fraction_confident_0.9"],
                speckle=float(np.mean(tv > tv_threshold)),
                outside=float(np.mean(np.abs(images) > 1.0)),
                fd=float(clf.frechet_distance(as_float32)), mean_tv=float(tv.mean()))

  weights = {}

  def model_at(step: int):
    if step not in weights:
      state, consts, got = train_lib.restore(setup.program, config, args.workdir, setup.mesh,
                                             step=step, keys=experiment.keys)
      weights[step] = setup.program.model(state, consts)
    return weights[step]

  def reverse_run(step, form, k, clip, variance="beta"):
    from dpm import reports
    traj = reverse.make_trajectory("even", k, n)
    sigma2 = jnp.asarray(reports.variance_for(config, variance if form == "ddpm" else "ddim", traj,
                                              form, 0.0, None), jnp.float32)
    eps = reports.eps_partial(model_at(step), setup.process)
    run = jax.jit(lambda e, x, s2: reverse.sample(e, x, noise_key, ac, np.asarray(traj), s2, form,
                                                  0.0, clip))
    return run(eps, x_T, sigma2)

  def solver_run(step, method, nfe, thresholding="none", t_end=None):
    run = samplers.solve(samplers.solver_method(method), setup.process, setup.graphdef, nfe,
                         t_end, thresholding)
    return run(nnx.state(model_at(step)), x_T)

  final = max(int(s) for s in args.steps.split(","))
  rows = []

  def row(factor, label, step, fn, *a, **kw):
    t0 = time.time()
    images = np.asarray(jax.device_get(fn(step, *a, **kw)))
    r = dict(factor=factor, label=label, step=step, **measure(images), seconds=time.time() - t0)
    rows.append(r)
    print(f"{factor:>10} | {label:<44} | step {step:>5} | noise {r['noise']:.3f} | speckle "
          f"{r['speckle']:.3f} | outside {r['outside']:.4f} | FD {r['fd']:7.2f} | {r['seconds']:.0f}s",
          flush=True)
    return images

  real_row = dict(factor="real", label="real test digits", step=0, **measure(real))
  rows.append(real_row)
  print(f"real test digits: noise {real_row['noise']:.3f}, speckle {real_row['speckle']:.3f}, "
        f"FD {real_row['fd']:.2f} ({len(real)} digits; TV threshold {tv_threshold:.4f})", flush=True)

  grids = {}
  if args.quick:
    row("clip", "DDIM K=20, no clip", final, reverse_run, "ddim", 20, False)
    row("clip", "DPM-Solver++(2M) NFE 20, static", final, solver_run, "dpm_solver++_2m", 20, "static")
  else:
    for step in sorted(int(s) for s in args.steps.split(",")):
      row("training", "DDPM K=100, clip", step, reverse_run, "ddpm", 100, True)
      row("training", "DPM-Solver++(2M) NFE 20", step, solver_run, "dpm_solver++_2m", 20)
    grids["DDPM K=100, clip"] = row("clip", "DDPM K=100, clip", final, reverse_run, "ddpm", 100,
                                    True)
    row("clip", "DDPM K=100, no clip", final, reverse_run, "ddpm", 100, False)
    grids["DDIM K=20, no clip"] = row("clip", "DDIM K=20, no clip", final, reverse_run, "ddim", 20,
                                      False)
    grids["DDIM K=20, clip"] = row("clip", "DDIM K=20, clip", final, reverse_run, "ddim", 20, True)
    grids["DPM-Solver++(2M) NFE 20"] = row("clip", "DPM-Solver++(2M) NFE 20, none", final,
                                           solver_run, "dpm_solver++_2m", 20)
    grids["DPM-Solver++(2M) NFE 20, static"] = row(
        "clip", "DPM-Solver++(2M) NFE 20, static", final, solver_run, "dpm_solver++_2m", 20,
        "static")
    row("clip", "DPM-Solver++(2M) NFE 20, dynamic", final, solver_run, "dpm_solver++_2m", 20,
        "dynamic")
    row("clip", "DPM-Solver-2M (eps) NFE 20, static", final, solver_run, "dpm_solver_2m", 20,
        "static")
    for t_end in (1e-2, 5e-2):
      row("end time", f"DPM-Solver++(2M) NFE 20, t_end {t_end:g}", final, solver_run,
          "dpm_solver++_2m", 20, "none", t_end)
    row("steps", "DPM-Solver++(2M) NFE 100", final, solver_run, "dpm_solver++_2m", 100)
    row("steps", "DDIM K=100, no clip", final, reverse_run, "ddim", 100, False)

  os.makedirs(args.out, exist_ok=True)
  from common import io
  lines = [f"Probability-flow speckle on the ddpm_mnist model ({args.workdir}), {num} samples per "
           f"row from the same x_T. noise: classifier confidence < 0.9; speckle: total variation "
           f"above the real test digits' 99th percentile ({tv_threshold:.4f}); outside: pixels "
           "outside [-1, 1] before the clip; FD: offline, against the train split.", "",
           "| factor | setting | step | noise | speckle | outside | FD |",
           "| --- | --- | --- | --- | --- | --- | --- |"]
  for r in rows:
    lines.append(f"| {r['factor']} | {r['label']} | {r['step'] or '-'} | {r['noise']:.3f} | "
                 f"{r['speckle']:.3f} | {r['outside']:.4f} | {r['fd']:.2f} |")
  stem = ("solver_speckle_quick" if args.quick else "solver_speckle") + (
      f"_ch{args.ch}" if args.ch else "")
  io.atomic_write_text(os.path.join(args.out, stem + ".md"), "\n".join(lines) + "\n")
  io.atomic_write_json(os.path.join(args.out, stem + ".json"),
                       dict(samples=num, tv_threshold=tv_threshold, workdir=args.workdir, rows=rows))
  if grids:
    _figure(os.path.join(args.out, stem + ".png"), grids, final)
  print("\n".join(lines))
  return 0


def _figure(path: str, grids: dict, step: int) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  from common import io
  fig, axes = plt.subplots(1, len(grids), figsize=(2.6 * len(grids), 3.0), squeeze=False)
  for ax, (label, images) in zip(axes[0], grids.items()):
    ax.imshow(io.image_grid(np.clip(images[:36], -1, 1))[..., 0], cmap="gray", vmin=0, vmax=255)
    ax.set_title(label, fontsize=8)
    ax.axis("off")
  fig.suptitle(f"ddpm_mnist step {step}: the same x_T in every panel", fontsize=9)
  fig.tight_layout()
  io.atomic_save_figure(fig, path, dpi=110)
  plt.close(fig)


if __name__ == "__main__":
  sys.exit(main())
