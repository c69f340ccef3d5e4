"""Training throughput of the CPU-scale DDPM U-Net (configs/dpm/ddpm_mnist.py) on 1 and 8 devices.

  python benchmarks/train_throughput.py [--steps 20] [--devices 1,8] [--batch 64]

Each device count runs in its own process (XLA_FLAGS=--xla_force_host_platform_device_count=N must
be set before JAX starts) through the shared Trainer, on the same global batch. Prints time to first
step (compilation included) and examples/s over the following steps, side by side.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CHILD = r"""
import json, sys, tempfile, time
import jax, numpy as np
from common import mesh as mesh_lib, train as train_lib
from configs.dpm import ddpm_mnist
from dpm import experiment
steps, batch = int(sys.argv[1]), int(sys.argv[2])
config = ddpm_mnist.get_config()
config.data.batch_size = batch
config.train.update(num_steps=steps + 1, ckpt_every=10**9, log_every=10**9, tensorboard=False)
setup = experiment.Setup(config)
trainer = train_lib.Trainer(config, tempfile.mkdtemp(), setup.model, setup.loss_fn, setup.mesh)
batches = setup.data.train_batches(batch, 0)
rng = jax.random.key(0)
t0 = time.perf_counter()
state, m = trainer._step(trainer.state, mesh_lib.shard_batch(next(batches), setup.mesh), rng)
float(m["loss"])
first = time.perf_counter() - t0
t0 = time.perf_counter()
for _ in range(steps):
  state, m = trainer._step(state, mesh_lib.shard_batch(next(batches), setup.mesh), rng)
  float(m["loss"])  # block every step, as the Trainer does
elapsed = time.perf_counter() - t0
print("RESULT", json.dumps({"devices": jax.device_count(), "first_step_s": first,
                            "examples_per_s": steps * batch / elapsed,
                            "steps_per_s": steps / elapsed}))
"""


def measure(devices: int, steps: int, batch: int) -> dict:
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
  env.pop("JAX_COMPILATION_CACHE_DIR", None)  # time a real compilation
  if devices > 1:
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  out = subprocess.run([sys.executable, "-c", CHILD, str(steps), str(batch)], cwd=ROOT, env=env,
                       capture_output=True, text=True, check=False)
  lines = [l for l in out.stdout.splitlines() if l.startswith("RESULT ")]
  if out.returncode or not lines:
    raise RuntimeError(f"benchmark child failed ({devices} devices):\n{out.stderr[-3000:]}")
  return json.loads(lines[0][len("RESULT "):])


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=20)
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--devices", default="1,8")
  args = parser.parse_args()
  rows = [measure(int(d), args.steps, args.batch) for d in args.devices.split(",")]
  print(f"\nDDPM MNIST U-Net, global batch {args.batch}, {args.steps} timed steps, "
        f"{os.cpu_count()} CPU cores")
  print("| devices | time to first step (s) | examples/s | steps/s | relative |")
  print("|---|---|---|---|---|")
  for r in rows:
    print(f"| {r['devices']} | {r['first_step_s']:.1f} | {r['examples_per_s']:.1f} | "
          f"{r['steps_per_s']:.3f} | {r['examples_per_s'] / rows[0]['examples_per_s']:.2f}x |")


if __name__ == "__main__":
  main()
