"""Training throughput of the CPU-scale DDPM U-Net (configs/dpm/ddpm_mnist.py).

  python benchmarks/train_throughput.py [--steps 20] [--devices 1,4] [--batch 64] [--compare-to REV]

Each measurement runs in its own process (the device count must be set before JAX starts) and
times the shared loop's compiled step (`common.train.Run.step`, blocking on every step's metrics as
`fit` does) on the same global batch: time to first step (compilation included) and examples/s over
the following steps. `--compare-to REV` also measures the training step of git revision REV (e.g.
the commit before a change to the loop), from a temporary worktree, alternating the two codes for
each device count, and prints the ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CHILD = r"""
import json, sys, tempfile, time
import jax, numpy as np
from configs.dpm import ddpm_mnist
from dpm import experiment
steps, batch = int(sys.argv[1]), int(sys.argv[2])
config = ddpm_mnist.get_config()
config.data.batch_size = batch
config.train.update(num_steps=steps + 1, ckpt_every=10**9, log_every=10**9, tensorboard=False)
setup = experiment.Setup(config)
batches = setup.data.train_batches(batch, 0)
try:  # the shared loop of today
  from common import train as train_lib
  run = train_lib.Run(setup.program, config, tempfile.mkdtemp(), mesh=setup.mesh,
                      keys=experiment.keys)
  run.restore_or_init()
  step = lambda t: run.step(next(batches), t)
except AttributeError:  # a revision before common.train.Run: its Trainer's compiled step
  from common import mesh as mesh_lib, train as train_lib
  trainer = train_lib.Trainer(config, tempfile.mkdtemp(), setup.model, setup.loss_fn, setup.mesh)
  rng = jax.random.key(0)
  def step(t):
    trainer.state, m = trainer._step(trainer.state, mesh_lib.shard_batch(next(batches), setup.mesh),
                                     rng)
    return m
t0 = time.perf_counter()
float(step(0)["loss"])
first = time.perf_counter() - t0
t0 = time.perf_counter()
for t in range(1, steps + 1):
  float(step(t)["loss"])  # block every step, as the loop does
elapsed = time.perf_counter() - t0
print("RESULT", json.dumps({"devices": jax.device_count(), "first_step_s": first,
                            "examples_per_s": steps * batch / elapsed,
                            "steps_per_s": steps / elapsed}))
"""


def measure(root: str, devices: int, steps: int, batch: int) -> dict:
  env = dict(os.environ, PYTHONPATH=root, JAX_PLATFORMS="cpu")
  env.pop("JAX_COMPILATION_CACHE_DIR", None)  # time a real compilation
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  out = subprocess.run([sys.executable, "-c", CHILD, str(steps), str(batch)], cwd=root, env=env,
                       capture_output=True, text=True, check=False)
  lines = [l for l in out.stdout.splitlines() if l.startswith("RESULT ")]
  if out.returncode or not lines:
    raise RuntimeError(f"benchmark child failed ({devices} devices, {root}):\n{out.stderr[-3000:]}")
  return json.loads(lines[0][len("RESULT "):])


def worktree(rev: str) -> str:
  path = tempfile.mkdtemp(prefix="bench-")
  subprocess.run(["git", "worktree", "add", "--detach", path, rev], cwd=ROOT, check=True,
                 capture_output=True)
  return path


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=20)
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--devices", default="1,4")
  parser.add_argument("--compare-to", default="", help="git revision to measure side by side")
  args = parser.parse_args()
  codes = [("this tree", ROOT)]
  if args.compare_to:
    codes.append((args.compare_to, worktree(args.compare_to)))
  rows = []
  try:
    for d in (int(x) for x in args.devices.split(",")):
      for label, root in codes:
        rows.append({"code": label, **measure(root, d, args.steps, args.batch)})
  finally:
    for label, root in codes[1:]:
      subprocess.run(["git", "worktree", "remove", "--force", root], cwd=ROOT, check=False)
  print(f"\nDDPM MNIST U-Net, global batch {args.batch}, {args.steps} timed steps, "
        f"{os.cpu_count()} CPU cores")
  print("| code | devices | time to first step (s) | examples/s | steps/s | relative |")
  print("|---|---|---|---|---|---|")
  for r in rows:
    base = next(x for x in rows if x["devices"] == r["devices"])
    print(f"| {r['code']} | {r['devices']} | {r['first_step_s']:.1f} | {r['examples_per_s']:.1f} "
          f"| {r['steps_per_s']:.3f} | {r['examples_per_s'] / base['examples_per_s']:.2f}x |")


if __name__ == "__main__":
  main()
