"""Feature-extraction throughput of the FID Inception (common/inception.py) and a 50k-FID estimate.

  python benchmarks/fid_throughput.py [--batch-sizes 8,32] [--batches 3] [--image-size 32]

Random weights (the cost does not depend on their values). For each batch size: the first call
(compilation included), then images/s over `--batches` further batches, counting what an FID
evaluation does per batch: the forward pass (resize to 299 inside), copying the pool features to
the host and adding them to the float64 running statistics. Also times one 2048-d
frechet_distance. Prints the estimated time of a 50,000-sample FID (features of the generated
samples + one distance; the reference statistics are computed once and reused) on this backend.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import jax  # noqa: E402
import numpy as np  # noqa: E402

from common import fid, inception  # noqa: E402


def measure(apply_fn, batch_size: int, image_size: int, batches: int) -> dict:
  rng = np.random.default_rng(0)
  images = rng.uniform(size=(batch_size, image_size, image_size, 3)).astype(np.float32)
  stats = fid.RunningStats(inception.POOL_DIM)
  t0 = time.perf_counter()
  pool, _ = apply_fn(images)
  stats.update(np.asarray(pool, np.float64))
  first = time.perf_counter() - t0
  t0 = time.perf_counter()
  for _ in range(batches):
    pool, _ = apply_fn(images)
    stats.update(np.asarray(pool, np.float64))  # blocks on the batch, as features_stats does
  elapsed = time.perf_counter() - t0
  return {"batch": batch_size, "first_call_s": first,
          "images_per_s": batches * batch_size / elapsed}


def time_frechet(dim: int = inception.POOL_DIM) -> float:
  rng = np.random.default_rng(1)
  a = rng.normal(size=(dim + 16, dim))
  mu, sigma = fid.feature_stats(a)
  t0 = time.perf_counter()
  fid.frechet_distance(mu, sigma, mu + 0.1, sigma)
  return time.perf_counter() - t0


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--batch-sizes", default="8,32")
  parser.add_argument("--batches", type=int, default=3, help="timed batches after the first call")
  parser.add_argument("--image-size", type=int, default=32, help="input side (CIFAR-10: 32)")
  parser.add_argument("--samples", type=int, default=50_000)
  parser.add_argument("--skip-fd", action="store_true", help="do not time the 2048-d distance")
  args = parser.parse_args()
  device = jax.devices()[0]
  print(f"backend {jax.default_backend()} ({device.device_kind}), {jax.device_count()} device(s), "
        f"{os.cpu_count()} CPU cores, {platform.machine()}; input {args.image_size}x"
        f"{args.image_size} -> 299x299, random weights")
  apply_fn = inception.build(inception.random_weights(0))
  rows = [measure(apply_fn, int(b), args.image_size, args.batches)
          for b in args.batch_sizes.split(",")]
  fd_s = 0.0 if args.skip_fd else time_frechet()
  print(f"{'batch':>6} {'first call s':>13} {'images/s':>10} {'50k FID (est.)':>15}")
  for row in rows:
    total = args.samples / row["images_per_s"] + fd_s
    print(f"{row['batch']:>6} {row['first_call_s']:>13.1f} {row['images_per_s']:>10.2f} "
          f"{total / 3600:>13.2f} h")
  if not args.skip_fd:
    print(f"frechet_distance at d=2048: {fd_s:.1f} s (included in the estimate)")


if __name__ == "__main__":
  main()
