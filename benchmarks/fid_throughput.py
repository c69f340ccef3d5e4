"""Feature-extraction throughput of the FID Inception (common/inception.py) and a 50k-FID estimate.

  python benchmarks/fid_throughput.py [--batch-sizes 8,32] [--batches 3] [--image-size 32]

Random weights (the cost does not depend on their values). For each batch size: the first call
(compilation included), then images/s over `--batches` further batches, counting what an FID
evaluation does per batch: the forward pass (resize to 299 inside), copying the pool features to
the host and adding them to the float64 running statistics. Also times one 2048-d
frechet_distance. Prints the estimated time of a 50,000-sample FID (features of the generated
samples + one distance; the reference statistics are computed once and reused) on this backend.

Then the same for the offline-FD classifiers of common/classifier.py (`--classifiers
mnist_5k,digits`, random weights, their native image sizes): images/s of features + running
statistics, and the time of a 50,000-sample offline FD.
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

from flax import nnx  # noqa: E402

from common import classifier, fid, inception  # noqa: E402

# dataset -> (image side, channels, classes) of the offline-FD classifiers' inputs.
CLASSIFIER_INPUTS = {"mnist_5k": (28, 1, 10), "mnist": (28, 1, 10), "digits": (8, 1, 10)}


def measure(apply_fn, batch_size: int, image_size: int, batches: int, channels: int = 3,
            dim: int = inception.POOL_DIM) -> dict:
  rng = np.random.default_rng(0)
  images = rng.uniform(size=(batch_size, image_size, image_size, channels)).astype(np.float32)
  stats = fid.RunningStats(dim)
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


def classifier_apply(dataset: str):
  """(jitted images -> (features, logits), feature dim, image side, channels) with random weights."""
  widths, hidden, _ = classifier.ARCHITECTURES.get(dataset, field="--classifiers")
  side, channels, classes = CLASSIFIER_INPUTS[dataset]
  model = classifier.CNN(channels, widths, hidden, side, classes, rngs=nnx.Rngs(0))
  graphdef, state = nnx.split(model)
  fn = jax.jit(lambda x: nnx.merge(graphdef, state)(x))
  return fn, hidden, side, channels


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--batch-sizes", default="8,32")
  parser.add_argument("--batches", type=int, default=3, help="timed batches after the first call")
  parser.add_argument("--image-size", type=int, default=32, help="input side (CIFAR-10: 32)")
  parser.add_argument("--samples", type=int, default=50_000)
  parser.add_argument("--skip-fd", action="store_true", help="do not time the 2048-d distance")
  parser.add_argument("--classifiers", default="mnist_5k,digits",
                      help="offline-FD classifiers to time ('' for none)")
  parser.add_argument("--classifier-batch", type=int, default=500,
                      help="batch of the classifiers (common.classifier.Classifier's default)")
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
  names = [n for n in args.classifiers.split(",") if n]
  if names:
    print(f"\noffline-FD classifiers (batch {args.classifier_batch}, random weights):")
    print(f"{'dataset':>9} {'input':>8} {'dim':>5} {'first call s':>13} {'images/s':>10} "
          f"{'50k FD (est.)':>14}")
  for name in names:
    fn, dim, side, channels = classifier_apply(name)
    row = measure(fn, args.classifier_batch, side, args.batches, channels, dim)
    print(f"{name:>9} {f'{side}x{side}x{channels}':>8} {dim:>5} {row['first_call_s']:>13.2f} "
          f"{row['images_per_s']:>10.0f} {args.samples / row['images_per_s']:>12.1f} s")


if __name__ == "__main__":
  main()
