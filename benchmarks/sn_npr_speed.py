"""SN/NPR-DPM speed: a second-stage training step against a stage-1 step, and sampling with the
state-dependent SN/NPR variances against the analytic variance at equal K.

  PYTHONPATH=. python benchmarks/sn_npr_speed.py              # the MNIST config's U-Net, batch 64
  PYTHONPATH=. python benchmarks/sn_npr_speed.py --quick      # fewer repeats
  PYTHONPATH=. python benchmarks/sn_npr_speed.py --only=sample --ks=10   # one comparison, one K

Model: configs/dpm/sn_npr_mnist.py (the ddpm_mnist U-Net, 0.69M parameters, with the light SN and
NPR heads), random weights (speed does not depend on them), on main.py's default CPU device split
(set before JAX starts). Training steps go through the shared loop's compiled step
(common.train.Run.step, blocking on each step as `fit` does), stage 1 and stage 2 interleaved; the
stage-2 step runs the frozen U-Net forward only (no backward, no optimiser state for it). XLA's
FLOP count of both compiled steps is printed beside the times. Sampling: the analytic variance
with the bare U-Net (dpm.reverse.sample) vs NPR and SN with the two-part model
(dpm.reverse.sample_state_dependent), same K, same number of samples, interleaved, median.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def _devices() -> None:
  from common import mesh
  if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    mesh.set_cpu_devices(mesh.default_cpu_devices((64,)))


def _flops(run, batch) -> float:
  import jax
  cost = jax.jit(run.program.step).lower(run.state, batch, run.step_keys, run.consts).compile()
  cost = cost.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost.get("flops", float("nan")))


def train_steps(config, setup, repeats: int) -> dict:
  import jax
  from common import train as train_lib
  from dpm import experiment, second_stage
  runs = {"stage 1 (U-Net, eps loss)": train_lib.Run(setup.program, config, tempfile.mkdtemp(),
                                                     mesh=setup.mesh, keys=experiment.keys),
          "stage 2 (SN + NPR heads)": train_lib.Run(second_stage.program(config, setup), config,
                                                    tempfile.mkdtemp(), mesh=setup.mesh,
                                                    keys=second_stage.keys)}
  batches = setup.data.train_batches(config.data.batch_size, 0)
  times = {name: [] for name in runs}
  first = {}
  for name, run in runs.items():
    run.restore_or_init()
    t0 = time.perf_counter()
    jax.device_get(run.step(next(batches), 0))
    first[name] = time.perf_counter() - t0
  for i in range(repeats):
    for name, run in runs.items():
      batch = next(batches)
      t0 = time.perf_counter()
      jax.device_get(run.step(batch, i + 1))
      times[name].append(time.perf_counter() - t0)
  batch = next(batches)
  flops = {name: _flops(run, batch) for name, run in runs.items()}
  return {name: (statistics.median(t), first[name], flops[name]) for name, t in times.items()}


def sampling(config, setup, ks, repeats: int) -> dict:
  import jax
  import jax.numpy as jnp
  import numpy as np
  from flax import nnx
  from dpm import reports, reverse, second_stage
  model = second_stage.build_model(config, setup)
  graphdef, state = nnx.split(model)
  unet_graph, unet_state = nnx.split(model.unet)
  process, ac = setup.process, setup.alphas_cumprod
  gamma = np.full(config.diffusion.num_steps, 0.9)
  moments = {"gamma": gamma}
  shape = (config.sample.num_samples,) + tuple(setup.data.shape)
  from common import mesh as mesh_lib
  x_T = jax.device_put(jax.random.normal(jax.random.key(0), shape),
                       mesh_lib.batch_sharding(setup.mesh))  # as make_sampler's noise
  out = {}
  for k in ks:
    traj = reverse.make_trajectory("even", k, config.diffusion.num_steps)
    sigma2 = jnp.asarray(reports.variance_for(config, "analytic", traj, "ddpm", 0.0, gamma),
                         jnp.float32)
    analytic_run = jax.jit(lambda st, x, r, traj=traj, sigma2=sigma2: reverse.sample(
        lambda y, n: nnx.merge(unet_graph, st)(y, process.step_input(n)), x, r, ac, traj, sigma2))
    runs = {"analytic": lambda: analytic_run(unet_state, x_T, jax.random.key(1))}
    for name in ("npr", "sn"):
      config.sample.update(variance=name, sampler="ddpm", trajectory="even")
      sampler = second_stage.make_sampler(config, process, graphdef, setup.mesh, steps=k,
                                          moments=moments)
      runs[name] = lambda s=sampler: s(state, jax.random.key(1), shape)
    for run in runs.values():
      jax.block_until_ready(run())  # compile
    times = {name: [] for name in runs}
    for _ in range(repeats):
      for name, run in runs.items():
        t0 = time.perf_counter()
        jax.block_until_ready(run())
        times[name].append(time.perf_counter() - t0)
    out[k] = {name: statistics.median(t) for name, t in times.items()}
  return out


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true")
  parser.add_argument("--ks", default="10,25")
  parser.add_argument("--only", choices=("train", "sample"), default="",
                      help="run one of the two comparisons (default: both)")
  args = parser.parse_args()
  _devices()
  import jax
  from configs.dpm import sn_npr_mnist
  from dpm import experiment
  config = sn_npr_mnist.get_config()
  config.train.update(tensorboard=False)
  setup = experiment.Setup(config)
  repeats = 5 if args.quick else 20
  print(f"devices: {jax.device_count()} x {jax.devices()[0].platform}; load average "
        f"{os.getloadavg()[0]:.1f}; batch {config.data.batch_size}; {repeats} steps each")
  if args.only != "sample":
    rows = train_steps(config, setup, repeats)
    base = next(iter(rows.values()))
    print("| training step | median time | first step (compile) | XLA flops | time vs stage 1 |"
          " flops vs stage 1 |")
    print("|---|---|---|---|---|---|")
    for name, (t, first, flops) in rows.items():
      print(f"| {name} | {t * 1e3:.0f} ms | {first:.1f} s | {flops:.3g} | {t / base[0]:.2f} | "
            f"{flops / base[2]:.2f} |")
  if args.only == "train":
    return
  ks = [int(k) for k in args.ks.split(",")]
  out = sampling(config, setup, ks, 3 if args.quick else 5)
  print(f"\n| sampling, {config.sample.num_samples} samples, even trajectory | analytic | NPR | "
        "SN | NPR overhead | SN overhead |")
  print("|---|---|---|---|---|---|")
  for k, t in out.items():
    print(f"| K = {k} | {t['analytic']:.2f} s | {t['npr']:.2f} s | {t['sn']:.2f} s | "
          f"{t['npr'] / t['analytic'] - 1:+.1%} | {t['sn'] / t['analytic'] - 1:+.1%} |")


if __name__ == "__main__":
  main()
