"""Wall time to sample a batch: our compiled DPM-Solver++(2M) vs diffusers' Flax scheduler loop.

Command:  python benchmarks/solver_speed.py --out=runs/solver_speed [--batches=16,256]
Machine:  any; a few minutes on the 2-core CPU container (most of it compiling), seconds on a GPU.
Model:    dpm.unet.UNet as configured in configs/dpm/ddpm_mnist.py, randomly initialised (timing
          does not depend on the weights; the zero-initialised output layer gets random weights so
          the sampler sees a non-trivial eps). 28x28x1 float32, discrete linear schedule (N = 1000).
Compared, side by side at NFE 10 and 20 on the same model and the same 'linspace' grid:
  ours:      the whole sampling loop in one jitted XLA program (model parameters passed as arguments);
  diffusers: FlaxDPMSolverMultistepScheduler (0.39.0) driven by the usual Python loop, with the model
             call and scheduler.step each jitted (the fastest way it is meant to be used).
Overhead = total - NFE x (time of one jitted model call on the same batch).
Writes:   solver_speed.md and solver_speed.json.
"""

from __future__ import annotations

import argparse
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

from common import io  # noqa: E402
from dpm.solver import DPMSolver, NoiseScheduleVP, model_wrapper  # noqa: E402

N = 1000


def median_time(fn, repeats: int) -> float:
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return float(np.median(times))


def build(batch: int):
  from configs.dpm import ddpm_mnist
  from dpm import experiment
  model = experiment.build_model(ddpm_mnist.get_config(), (28, 28, 1), seed=0)
  # The output conv is zero-initialised; give it weights so the sampler sees a non-trivial eps.
  kernel = model.conv_out.kernel
  kernel.set_value(0.05 * jax.random.normal(jax.random.PRNGKey(1), kernel.get_value().shape))
  graphdef, state = nnx.split(model)
  apply = lambda state, x, t: nnx.merge(graphdef, state)(x, t)
  x_T = jax.random.normal(jax.random.PRNGKey(0), (batch, 28, 28, 1), jnp.float32)
  return apply, state, x_T


def ours_fn(apply, ns, grid):
  n = len(grid) - 1

  @jax.jit
  def run(state, x, grid):
    model_fn = model_wrapper(lambda x, t: apply(state, x, t), ns)
    solver = DPMSolver(model_fn, ns, algorithm_type="dpmsolver++")
    sample = solver.sampling_fn(max_steps=n, order=2, method="multistep")
    return sample(x, n, grid[0], grid[-1], 0.0, 0.0, grid=grid)[0]
  return run


def diffusers_fn(apply, steps: int, shape):
  import diffusers
  sched = diffusers.FlaxDPMSolverMultistepScheduler(
      num_train_timesteps=N, beta_schedule="linear", solver_order=2, algorithm_type="dpmsolver++",
      solver_type="midpoint", lower_order_final=True, timestep_spacing="linspace")
  state0 = sched.set_timesteps(sched.create_state(), steps, shape)
  step = jax.jit(lambda st, eps, t, x: sched.step(st, eps, t, x, return_dict=False))
  model = jax.jit(apply)
  timesteps = [int(t) for t in np.asarray(state0.timesteps)]

  def run(params, x):
    st = state0
    for t in timesteps:
      eps = model(params, x, jnp.full((x.shape[0],), t, jnp.float32))
      x, st = step(st, eps, jnp.int32(t), x)
    return x
  return run, timesteps


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", default="runs/solver_speed")
  parser.add_argument("--batches", default="16", help="comma-separated batch sizes")
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args()
  device = jax.devices()[0]
  load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
  lines = [f"Device: {device.platform} ({device.device_kind}), jax {jax.__version__}; "
           f"{os.cpu_count()} CPUs, load average at the start {load}.", ""]
  records = []
  for batch in [int(b) for b in args.batches.split(",")]:
    table, record = run_batch(batch, args.repeats)
    lines += table
    records.append(record)
  text = "\n".join(lines) + "\n"
  os.makedirs(args.out, exist_ok=True)
  io.atomic_write_text(os.path.join(args.out, "solver_speed.md"), text)
  io.atomic_write_json(os.path.join(args.out, "solver_speed.json"),
                       dict(device=str(device.device_kind), batches=records))
  print(text)


def run_batch(batch: int, repeats: int):
  apply, params, x_T = build(batch)
  probe = __import__("diffusers").FlaxDPMSolverMultistepScheduler(num_train_timesteps=N)
  alphas_cumprod = np.asarray(probe.create_state().common.alphas_cumprod, np.float64)
  ns = NoiseScheduleVP("discrete", alphas_cumprod=alphas_cumprod)

  model_jit = jax.jit(apply)
  t_in = jnp.full((batch,), 500.0)
  jax.block_until_ready(model_jit(params, x_T, t_in))
  model_time = median_time(lambda: model_jit(params, x_T, t_in), 5 * repeats)

  results = []
  for nfe in (10, 20):
    theirs, timesteps = diffusers_fn(apply, nfe, x_T.shape)
    grid = jnp.asarray((np.array(timesteps + [0]) + 1.0) / N, jnp.float32)
    ours = ours_fn(apply, ns, grid)
    start = time.perf_counter()
    out_ours = jax.block_until_ready(ours(params, x_T, grid))
    compile_ours = time.perf_counter() - start
    start = time.perf_counter()
    out_theirs = jax.block_until_ready(theirs(params, x_T))
    compile_theirs = time.perf_counter() - start
    t_ours = median_time(lambda: ours(params, x_T, grid), repeats)
    t_theirs = median_time(lambda: theirs(params, x_T), repeats)
    results.append(dict(
        nfe=nfe, ours_s=t_ours, diffusers_s=t_theirs, speedup=t_theirs / t_ours,
        ours_overhead=(t_ours - nfe * model_time) / t_ours,
        diffusers_overhead=(t_theirs - nfe * model_time) / t_theirs,
        first_call_ours_s=compile_ours, first_call_diffusers_s=compile_theirs,
        max_abs_diff=float(jnp.max(jnp.abs(out_ours - out_theirs)))))

  lines = [f"Batch {batch} x 28x28x1: one jitted model call {1e3 * model_time:.2f} ms "
           f"(median of {5 * repeats}).", "",
           "| NFE | ours (s) | diffusers loop (s) | speed-up | ours overhead | diffusers overhead "
           "| first call ours / diffusers (s) | max abs diff |",
           "| --- | --- | --- | --- | --- | --- | --- | --- |"]
  for r in results:
    lines.append(f"| {r['nfe']} | {r['ours_s']:.4f} | {r['diffusers_s']:.4f} | {r['speedup']:.2f}x "
                 f"| {100 * r['ours_overhead']:.1f}% | {100 * r['diffusers_overhead']:.1f}% "
                 f"| {r['first_call_ours_s']:.1f} / {r['first_call_diffusers_s']:.1f} "
                 f"| {r['max_abs_diff']:.1e} |")
  lines.append("")
  return lines, dict(batch=batch, model_time_s=model_time, results=results)


if __name__ == "__main__":
  main()
