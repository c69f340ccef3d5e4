"""UD cost and memory: one hypergradient (K unrolled inner steps, reverse mode through all of them)
against K plain inner SGD steps, and XLA's buffer sizes with and without rematerialisation.

  PYTHONPATH=. python benchmarks/bilevel_ud.py                  # K = 16, 64, 256; memory at 64, 512
  PYTHONPATH=. python benchmarks/bilevel_ud.py --ks 16 64 --repeats 2

The problem is the paper's data reweighting (stability_ho.md, `rw_mnist.py`): MLP 784-256-10 with
ELU, batch 100, 2,000 training examples with one weight logit each, lr 0.3. The data are random
(speed does not depend on the values). "plain" is `bilevel.ud.unroll` alone, jitted (K SGD steps,
what random search pays per candidate); "UD" is `bilevel.ud.hypergradient` with each remat scheme.
Times are process CPU seconds (all threads; robust to other jobs sharing the cores, unlike wall
time), the median of --repeats runs after one warm-up, compilation excluded; ratio = UD / plain.
Memory comes from `jax.jit(...).lower(...).compile().memory_analysis()`: temp = XLA's scratch
buffers (where stored residuals live), total = temp + arguments + outputs.
"""

from __future__ import annotations

import argparse
import functools
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

from bilevel import tasks, ud

NUM_TRAIN, BATCH, LR = 2000, 100, 0.3
SIZES = (784, 256, 10)


def problem():
  rs = np.random.RandomState(0)
  x = jnp.asarray(rs.rand(NUM_TRAIN, SIZES[0]), jnp.float32)
  y = jnp.asarray(rs.randint(0, SIZES[-1], NUM_TRAIN), jnp.int32)
  xv = jnp.asarray(rs.rand(BATCH, SIZES[0]), jnp.float32)
  yv = jnp.asarray(rs.randint(0, SIZES[-1], BATCH), jnp.int32)
  theta0 = tasks.mlp_init(jax.random.key(0), SIZES)
  inner = functools.partial(tasks.reweight_inner_loss, x=x, y=y)
  outer = lambda th: tasks.classification_loss(th, xv, yv)
  return inner, outer, theta0, jnp.zeros(NUM_TRAIN, jnp.float32)


def indices(k: int) -> jax.Array:
  return tasks.epoch_indices(jax.random.key(1), NUM_TRAIN, BATCH, k)


def compiled(k: int, remat: str | None):
  """The compiled program: plain K steps (remat None) or the UD hypergradient."""
  inner, outer, theta0, lam = problem()
  if remat is None:
    fn = jax.jit(lambda lam, idx: ud.unroll(inner, lam, theta0, idx, LR))
  else:
    fn = jax.jit(lambda lam, idx: ud.hypergradient(inner, outer, lam, theta0, idx, LR,
                                                   remat=remat))
  idx = indices(k)
  return fn.lower(lam, idx).compile(), (lam, idx)


def seconds(k: int, remat: str | None, repeats: int) -> float:
  program, args = compiled(k, remat)
  jax.block_until_ready(program(*args))
  times = []
  for _ in range(repeats):
    start = time.process_time()
    jax.block_until_ready(program(*args))
    times.append(time.process_time() - start)
  return float(np.median(times))


def memory_mb(k: int, remat: str) -> tuple[float, float]:
  stats = compiled(k, remat)[0].memory_analysis()
  total = stats.temp_size_in_bytes + stats.argument_size_in_bytes + stats.output_size_in_bytes
  return stats.temp_size_in_bytes / 2**20, total / 2**20


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--ks", type=int, nargs="+", default=[16, 64, 256])
  parser.add_argument("--memory-ks", type=int, nargs="+", default=[64, 512])
  parser.add_argument("--remat", nargs="+", default=ud.REMAT.names(), choices=ud.REMAT.names())
  parser.add_argument("--repeats", type=int, default=5)
  args = parser.parse_args()
  theta_mb = sum(a.size for a in jax.tree.leaves(problem()[2])) * 4 / 2**20
  print(f"jax {jax.__version__} on {jax.devices()[0].platform} ({platform.machine()}, "
        f"{jax.local_device_count()} device); MLP {'-'.join(map(str, SIZES))}, batch {BATCH}, "
        f"theta {theta_mb:.2f} MiB")
  print("\nCost of one UD outer step vs K plain inner steps (median CPU seconds, ratio UD / plain)")
  print(f"{'K':>5} {'plain':>8} " + " ".join(f"{'UD ' + r:>15}" for r in args.remat))
  for k in args.ks:
    plain = seconds(k, None, args.repeats)
    cells = []
    for remat in args.remat:
      t = seconds(k, remat, args.repeats)
      cells.append(f"{t:>8.3f} {t / plain:>5.2f}x")
    print(f"{k:>5} {plain:>8.3f} " + " ".join(f"{c:>15}" for c in cells))
  print("\nXLA buffers of the UD program, MiB: temp (total = temp + arguments + outputs)")
  print(f"{'K':>5} " + " ".join(f"{r:>17}" for r in args.remat))
  for k in args.memory_ks:
    cells = [f"{temp:.1f} ({total:.1f})" for temp, total in (memory_mb(k, r) for r in args.remat)]
    print(f"{k:>5} " + " ".join(f"{c:>17}" for c in cells))


if __name__ == "__main__":
  main()
