"""The multistep DPM-Solver options on a trained model: the trained MNIST U-Net as a testbed for the
defaults of dpm/solver/plan.py (issue 12), against a 1,000-NFE reference of the same ODE.

Command:  python benchmarks/solver_forms_mnist.py --workdir=runs/ddpm_mnist --out=dpm/solver/results
          (a trained workdir of configs/dpm/ddpm_mnist.py; add --config=solver_mnist_continuous and
          its workdir for the continuous-time model)
Machine:  2-core CPU container: about 10 minutes for the default (time-uniform) grid.
Setting:  64 samples from the same x_T; the probability-flow ODE of the EMA model from t = 1 to the
          solver's default end time at the largest NFE (1/N for discrete models, 1e-4 for
          continuous ones, the same for every NFE and the reference), no thresholding (the options are about
          the ODE, not the clip). Reference: DPM-Solver++(2M) at --reference-nfe steps (1,000;
          second order has no third-order form to choose). Error: RMS per pixel to the reference.
Compared: for each algorithm and order, the (third_order, lower_order_final) variants against the
          published configuration (published, published) at each NFE; the ratio our default / the
          published one is the number issue 12's rule reads (never above 1.05, below 1 on average).
FD:       with --fd-samples=N (500 in the results), also the offline FD (common/classifier.py, the
          evaluation issue's metric) of N samples of every variant at --fd-nfes (10, 15, 20), from
          one x_T, with the sampling config's thresholding (--fd-thresholding, static: what the
          MNIST configs sample with; without it every ODE sample is speckled, SOLVER.md) and the
          end time the solver uses at that NFE. Lower is better; the real test digits' FD is the
          floor.
Writes:   solver_forms_mnist.md and .json under --out.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--workdir", default="runs/ddpm_mnist")
  parser.add_argument("--config", default="ddpm_mnist", choices=("ddpm_mnist",
                                                                 "solver_mnist_continuous"))
  parser.add_argument("--nfes", default="5,10,15,20,30,50")
  parser.add_argument("--spacings", default="time_uniform")
  parser.add_argument("--orders", default="2,3")
  parser.add_argument("--rules", default="published,diffusers,always")
  parser.add_argument("--samples", type=int, default=64)
  parser.add_argument("--reference-nfe", type=int, default=1000)
  parser.add_argument("--fd-samples", type=int, default=0)
  parser.add_argument("--fd-nfes", default="10,15,20")
  parser.add_argument("--fd-thresholding", default="static")
  parser.add_argument("--out", default="")
  args = parser.parse_args(argv)

  from common import mesh as mesh_lib
  mesh_lib.enable_compilation_cache()
  import importlib
  import jax
  import jax.numpy as jnp
  from flax import nnx
  from common import io, train as train_lib
  from dpm import experiment, samplers
  from dpm.solver import DPMSolver, model_wrapper
  from dpm.solver import plan

  config = importlib.import_module(f"configs.dpm.{args.config}").get_config()
  setup = experiment.Setup(config)
  state, consts, step = train_lib.restore(setup.program, config, args.workdir, setup.mesh,
                                          keys=experiment.keys)
  weights = nnx.state(setup.program.model(state, consts))
  process, graphdef = setup.process, setup.graphdef
  ns = process.noise_schedule
  nfes = [int(n) for n in args.nfes.split(",")]
  x_T = jax.random.normal(jax.random.key(11), (args.samples,) + tuple(setup.data.shape))

  def solver(w, algorithm, thresholding="none"):
    net = lambda x, t: nnx.merge(graphdef, w)(x, process.solver_input(t))
    eps = samplers.thresholded(model_wrapper(net, ns, model_type="noise"), ns, thresholding)
    return DPMSolver(eps, ns, algorithm_type=algorithm)

  fd_nfes = [int(n) for n in args.fd_nfes.split(",")] if args.fd_samples else []
  if fd_nfes:
    from common import classifier
    clf = classifier.load_or_train(config.data.name)
    real = setup.data.preprocess(setup.data.test, None)   # stratified: ordered by class
    real = real[np.random.default_rng(0).permutation(len(real))[:args.fd_samples]]
    floor = float(clf.frechet_distance(real))
    print(f"FD floor: {len(real)} random real test digits score {floor:.2f}", flush=True)
    fd_x_T = jax.random.normal(jax.random.key(12), (args.fd_samples,) + tuple(setup.data.shape))

  def fd_all(algorithm, order, spacing, form, rule):
    """FD of fd_samples samples at each NFE of fd_nfes, at that NFE's own default end time."""
    @jax.jit
    def one(w, x, steps, t_end):
      s = solver(w, algorithm, args.fd_thresholding)
      fn = s.sampling_fn(max_steps=max(fd_nfes), order=order, skip_type=spacing,
                         method="multistep", lower_order_final=rule, third_order=form)
      return fn(x, steps, s.default_times(max(fd_nfes))[0], t_end, 0.0, 0.0)[0]
    out = []
    for n in fd_nfes:
      t_end = DPMSolver(lambda x, t: x, ns).default_times(n)[1]
      images = np.clip(np.asarray(one(weights, fd_x_T, jnp.int32(n), t_end)), -1, 1)
      out.append(float(clf.frechet_distance(images.astype(np.float32))))
    return out

  def run_all(algorithm, order, spacing, form, rule):
    """x at the end time for every NFE of the list, from one compiled program (steps traced)."""
    @jax.jit
    def one(w, x, steps):
      s = solver(w, algorithm)
      t_start, t_end = s.default_times(max(nfes))
      fn = s.sampling_fn(max_steps=max(nfes), order=order, skip_type=spacing, method="multistep",
                         lower_order_final=rule, third_order=form)
      return fn(x, steps, t_start, t_end, 0.0, 0.0)[0]
    return lambda w, x: np.stack([np.asarray(one(w, x, jnp.int32(n))) for n in nfes])

  t0 = time.time()
  ref_fn = jax.jit(lambda w, x: solver(w, "dpmsolver++").sample(
      x, steps=args.reference_nfe, order=2, skip_type="time_uniform", method="multistep"))
  ref = np.asarray(ref_fn(weights, x_T), np.float64)
  print(f"reference: DPM-Solver++(2M), {args.reference_nfe} NFE, {time.time() - t0:.0f} s",
        flush=True)

  errors, fds = {}, {}
  rules = args.rules.split(",")
  for algorithm, order, spacing in itertools.product(("dpmsolver", "dpmsolver++"),
                                                     [int(o) for o in args.orders.split(",")],
                                                     args.spacings.split(",")):
    forms = ("exact", "published") if order == 3 else ("published",)
    for form, rule in itertools.product(forms, rules):
      t1 = time.time()
      xs = np.asarray(run_all(algorithm, order, spacing, form, rule)(weights, x_T), np.float64)
      rms = np.sqrt(np.mean((xs - ref[None]) ** 2, axis=tuple(range(1, xs.ndim)))).tolist()
      errors[f"{algorithm}|{order}|{spacing}|{form}|{rule}"] = rms
      if fd_nfes:
        fds[f"{algorithm}|{order}|{spacing}|{form}|{rule}"] = fd_all(algorithm, order, spacing,
                                                                     form, rule)
      print(f"{algorithm:>11} {order}M {spacing:<14} {form:<9} {rule:<9} " +
            " ".join(f"{e:.4f}" for e in rms) +
            ("  FD " + " ".join(f"{e:.1f}" for e in fds[f"{algorithm}|{order}|{spacing}|{form}|{rule}"])
             if fd_nfes else "") + f"  ({time.time() - t1:.0f} s)", flush=True)

  lines = [f"RMS per pixel to DPM-Solver++(2M) at {args.reference_nfe} NFE, the {args.config} model "
           f"of step {step} ({args.workdir}), {args.samples} samples from the same x_T, no "
           "thresholding. ratio: this variant / the published configuration (published, "
           "published) at the same NFE; `default` marks what dpm/solver/plan.py picks.", "",
           "| algorithm | order | spacing | third_order, lower_order_final | " +
           " | ".join(f"NFE {n}" for n in nfes) + " | worst / mean ratio |",
           "| --- | --- | --- | --- | " + " | ".join("---" for _ in nfes) + " | --- |"]
  for key, rms in errors.items():
    algorithm, order, spacing, form, rule = key.split("|")
    base = np.asarray(errors[f"{algorithm}|{order}|{spacing}|published|published"])
    ratio = np.asarray(rms) / base
    default = plan.multistep_defaults(algorithm, int(order), spacing) == (form, rule)
    lines.append(f"| {algorithm} | {order} | {spacing} | {form if order == '3' else '-'}, {rule}"
                 f"{' (default)' if default else ''} | " + " | ".join(f"{e:.4f}" for e in rms) +
                 f" | {ratio.max():.2f} / {np.exp(np.log(ratio).mean()):.2f} |")
  if fd_nfes:
    lines += ["", f"Offline FD of {args.fd_samples} samples from one x_T (thresholding "
              f"{args.fd_thresholding!r}, each NFE at its own default end time; the real test digits "
              f"score {floor:.2f}, {args.fd_samples} random ones); lower is better:", "",
              "| algorithm | order | spacing | third_order, lower_order_final | " +
              " | ".join(f"FD at NFE {n}" for n in fd_nfes) + " |",
              "| --- | --- | --- | --- | " + " | ".join("---" for _ in fd_nfes) + " |"]
    for key, fd in fds.items():
      algorithm, order, spacing, form, rule = key.split("|")
      default = plan.multistep_defaults(algorithm, int(order), spacing) == (form, rule)
      lines.append(f"| {algorithm} | {order} | {spacing} | {form if order == '3' else '-'}, {rule}"
                   f"{' (default)' if default else ''} | " + " | ".join(f"{e:.1f}" for e in fd) + " |")
  text = "\n".join(lines) + "\n"
  print(text)
  print(f"({time.time() - t0:.0f} s; backend {jax.default_backend()}, {os.cpu_count()} CPU cores)")
  if args.out:
    stem = "solver_forms_mnist" + ("" if args.config == "ddpm_mnist" else "_continuous")
    io.atomic_write_text(os.path.join(args.out, stem + ".md"), text)
    io.atomic_write_json(os.path.join(args.out, stem + ".json"), dict(
        nfes=nfes, step=step, workdir=args.workdir, reference_nfe=args.reference_nfe,
        samples=args.samples, errors=errors, fd_samples=args.fd_samples, fd_nfes=fd_nfes,
        fd_thresholding=args.fd_thresholding, fd=fds, fd_floor=floor if fd_nfes else None))
  return 0


if __name__ == "__main__":
  sys.exit(main())
