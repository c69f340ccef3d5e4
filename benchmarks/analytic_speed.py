"""Analytic-DPM speed: Gamma-estimation throughput on 1 and 8 devices, and the overhead of
analytic sampling over plain DDPM sampling at equal K.

  PYTHONPATH=. python benchmarks/analytic_speed.py                 # MNIST-config U-Net, 28x28x1
  PYTHONPATH=. python benchmarks/analytic_speed.py --quick         # fewer repeats, smaller batch

Each measurement runs in its own subprocess, because XLA_FLAGS (the simulated device count) must
be set before jax is imported. The model is dpm.unet.UNet with the MNIST experiment's widths
(configs/dpm/ddpm_mnist.py) at random initialisation (speed does not depend on the weights); if
dpm.unet cannot be imported, a small stand-in conv net is used and the report says so.
On simulated CPU devices the 8-device number measures the sharding machinery, not a speed-up:
8 virtual devices share the same cores (see ../shared/design/ENVIRONMENT.md).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _model_eps_fn(image_size: int = 28):
  """(eps_fn as a jax.tree_util.Partial over the weights, description of the model)."""
  import jax
  import jax.numpy as jnp
  from flax import nnx
  try:
    from dpm.unet import UNet, count_params
    model = UNet(image_size=image_size, channels=1, ch=32, ch_mult=(1, 2, 2), num_res_blocks=1,
                 attn_resolutions=(7,), dropout=0.0, num_groups=8, rngs=nnx.Rngs(0))
    name = f"dpm.unet.UNet (MNIST config, {count_params(model) / 1e6:.2f}M params)"
  except ImportError:
    model = _stand_in(nnx.Rngs(0))
    name = "stand-in conv net (dpm.unet not importable)"
  graphdef, state = nnx.split(model)

  def apply(state, x, n):
    return nnx.merge(graphdef, state)(x, jnp.asarray(n, jnp.float32) - 1.0)
  return jax.tree_util.Partial(apply, state), name


def _stand_in(rngs):
  """A small conv net eps(x, t) (three 3x3 convs, time added after the first)."""
  from flax import nnx

  class StandIn(nnx.Module):
    def __init__(self, rngs):
      self.c1 = nnx.Conv(1, 32, (3, 3), rngs=rngs)
      self.t = nnx.Linear(1, 32, rngs=rngs)
      self.c2 = nnx.Conv(32, 32, (3, 3), rngs=rngs)
      self.c3 = nnx.Conv(32, 1, (3, 3), rngs=rngs)

    def __call__(self, x, t):
      h = nnx.silu(self.c1(x) + self.t(t[:, None] / 1000.0)[:, None, None, :])
      return self.c3(nnx.silu(self.c2(h)))
  return StandIn(rngs)


def child_gamma(args) -> dict:
  import jax
  import numpy as np
  from common import mesh as cmesh
  from dpm import analytic, schedules
  eps_fn, name = _model_eps_fn()
  ac = schedules.get_alphas_cumprod("linear", 1000)
  x0 = np.random.RandomState(0).uniform(-1, 1, (args.images, 28, 28, 1)).astype(np.float32)
  ts = np.linspace(1, 1000, args.timesteps).astype(np.int32)
  mesh = cmesh.make_mesh() if jax.device_count() > 1 else None
  run = lambda: analytic.estimate_gamma(eps_fn, ac, x0, ts, jax.random.PRNGKey(0),
                                        batch_size=args.batch, mesh=mesh)
  t0 = time.perf_counter()
  run()                                   # compiles (the timed runs reuse it)
  compile_s = time.perf_counter() - t0
  times = []
  for _ in range(args.repeats):
    t0 = time.perf_counter()
    run()                                 # estimate_gamma blocks on every chunk
    times.append(time.perf_counter() - t0)
  best = min(times)
  return {"devices": jax.device_count(), "model": name, "images": args.images,
          "timesteps": len(ts), "batch": args.batch, "first_call_s": compile_s,
          "seconds": best, "throughput": args.images * len(ts) / best}


def child_sampling(args) -> dict:
  import jax
  import numpy as np
  from dpm import analytic, reverse, schedules
  eps_fn, name = _model_eps_fn()
  ac = schedules.get_alphas_cumprod("linear", 1000)
  traj = reverse.make_trajectory("even", args.k, 1000)
  gamma = np.linspace(0.01, 1.0, args.k)          # any cached Gamma; the cost does not depend on it
  t0 = time.perf_counter()
  sig_analytic = analytic.sampling_variance("analytic", ac, traj, "ddpm", gamma=gamma,
                                            first_step_clip=2.0)
  host_s = time.perf_counter() - t0
  sig_ddpm = analytic.sampling_variance("beta_tilde", ac, traj, "ddpm")
  x_T = jax.random.normal(jax.random.PRNGKey(1), (args.samples, 28, 28, 1))

  def sampler(sigma2):
    return jax.jit(lambda x, rng: reverse.sample(eps_fn, x, rng, ac, traj, sigma2))
  fns = {"ddpm": sampler(sig_ddpm), "analytic": sampler(sig_analytic)}
  for fn in fns.values():
    fn(x_T, jax.random.PRNGKey(2)).block_until_ready()
  times = {key: [] for key in fns}
  for r in range(args.repeats):           # interleaved, so load changes hit both alike
    for key, fn in fns.items():
      t0 = time.perf_counter()
      fn(x_T, jax.random.PRNGKey(3 + r)).block_until_ready()
      times[key].append(time.perf_counter() - t0)
  med = {key: float(np.median(v)) for key, v in times.items()}
  return {"model": name, "k": args.k, "samples": args.samples, "ddpm_s": med["ddpm"],
          "analytic_s": med["analytic"], "sigma2_host_s": host_s,
          "overhead_pct": 100 * (med["analytic"] + host_s - med["ddpm"]) / med["ddpm"]}


def run_child(kind: str, devices: int, argv: list[str]) -> dict:
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT,
             XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
  out = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", kind] + argv,
                       env=env, capture_output=True, text=True, check=False)
  if out.returncode != 0:
    raise RuntimeError(f"{kind} child on {devices} device(s) failed:\n{out.stderr[-3000:]}")
  return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--child", choices=["gamma", "sampling"])
  p.add_argument("--images", type=int, default=128, help="data points for Gamma")
  p.add_argument("--timesteps", type=int, default=8, help="timesteps for Gamma")
  p.add_argument("--batch", type=int, default=64, help="chunk size for Gamma (multiple of 8)")
  p.add_argument("--k", type=int, default=10, help="K for the sampling comparison")
  p.add_argument("--samples", type=int, default=64, help="batch of samples")
  p.add_argument("--repeats", type=int, default=5)
  p.add_argument("--quick", action="store_true", help="images=64, samples=16, repeats=3")
  args = p.parse_args()
  if args.quick:
    args.images, args.samples, args.repeats = 64, 16, 3
  if args.child:
    sys.path.insert(0, ROOT)
    result = child_gamma(args) if args.child == "gamma" else child_sampling(args)
    print(json.dumps(result))
    return
  argv = [f"--images={args.images}", f"--timesteps={args.timesteps}", f"--batch={args.batch}",
          f"--k={args.k}", f"--samples={args.samples}", f"--repeats={args.repeats}"]
  print(f"machine: {os.cpu_count()} CPU cores, JAX on CPU; load average {os.getloadavg()[0]:.1f}")
  rows = [run_child("gamma", n, argv) for n in (1, 8)]
  print(f"model: {rows[0]['model']}")
  print(f"Gamma estimation ({args.images} images x {args.timesteps} timesteps, chunks of "
        f"{args.batch}; best of {args.repeats}):")
  for r in rows:
    print(f"  {r['devices']} device(s): {r['throughput']:8.1f} images x timesteps / s "
          f"({r['seconds']:.2f} s; first call incl. compile {r['first_call_s']:.1f} s)")
  s = run_child("sampling", 1, argv)
  print(f"Sampling, K = {s['k']}, {s['samples']} samples, median of {args.repeats} (interleaved):")
  print(f"  DDPM (beta_tilde) {s['ddpm_s']:.3f} s | Analytic-DDPM {s['analytic_s']:.3f} s + "
        f"{1e3 * s['sigma2_host_s']:.2f} ms for sigma2 from a cached Gamma | overhead "
        f"{s['overhead_pct']:+.1f}% (goal < 5%)")
  per_eval = rows[0]["seconds"] / (args.images * args.timesteps)
  print(f"  one-time Gamma cost, e.g. 1,000 images x K = {s['k']} timesteps on 1 device: about "
        f"{per_eval * 1000 * s['k']:.0f} s, cached in the workdir per model step")


if __name__ == "__main__":
  main()
