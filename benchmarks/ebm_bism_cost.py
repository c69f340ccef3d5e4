"""The price of BiSM's unrolling, and the speed of exact log Z (issue 14, "Performance").

  PYTHONPATH=. python benchmarks/ebm_bism_cost.py [--repeats 1000]

Prints (1) the time of one training step of the runner (ebm/experiment.py's Program step, jitted,
state donated: the gradient and the optimiser updates, GRBM d = 2, m = 4, batch 100, the
checkerboard config) for exact-free-energy DSM and for BiDSM with K = 5 and N = 0, 5, 10, each
relative to DSM, timed in interleaved blocks of 20 calls (median block); (2) the time of ebm.grbm.log_z (enumeration of 2^m states) for m = 16 and 20 at
d = 2 and d = 560 (Frey face's size). Medians, after one compiling call.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _median_ms(fn, repeats: int) -> float:
  import jax
  import numpy as np
  jax.block_until_ready(fn(0))
  times = []
  for i in range(repeats):
    t = time.perf_counter()
    jax.block_until_ready(fn(i + 1))
    times.append(time.perf_counter() - t)
  return 1e3 * float(np.median(times))


def step_fn(method: str, unroll: int, particles: int | None = None):
  """One compiled runner step of `method` as call(i) -> metrics (state carried, donated);
  `unroll` is BiSM's N, `particles` VaGES's L (None: the config's)."""
  import jax
  import jax.numpy as jnp
  from configs.ebm import grbm_checkerboard
  from ebm import experiment
  config = grbm_checkerboard.get_config()
  config.method = method
  config.loss.unroll_steps = unroll
  if particles is not None:
    config.loss.vages_particles = particles
  s = experiment.setup(config)
  prog = s.program
  step = jax.jit(prog.step, donate_argnums=0)
  v = jnp.asarray(s.test[:config.data.batch_size])
  box = [prog.init(jax.random.key(0))]

  def call(i):
    box[0], metrics = step(box[0], v, jax.random.key(i), prog.consts)
    return metrics

  jax.block_until_ready(call(0))   # compile
  return call


def interleaved_ms(fns: dict, repeats: int, block: int = 20) -> dict[str, float]:
  """Median ms per call of each fn, timed in alternating blocks of `block` calls so that a shared
  machine's load changes hit every variant alike."""
  import jax
  import numpy as np
  times = {k: [] for k in fns}
  for r in range(max(repeats // block, 1)):
    for name, fn in fns.items():
      t = time.perf_counter()
      for i in range(block):
        out = fn(r * block + i)
      jax.block_until_ready(out)
      times[name].append((time.perf_counter() - t) / block)
  return {k: 1e3 * float(np.median(v)) for k, v in times.items()}


def log_z_time(m: int, d: int, repeats: int) -> float:
  import jax
  from flax import nnx
  from ebm import grbm
  p = grbm.GRBM(d, m, rngs=nnx.Rngs(0)).params()
  return _median_ms(lambda i: grbm.log_z(p), repeats)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--repeats", type=int, default=1000)
  parser.add_argument("--logz_repeats", type=int, default=10)
  args = parser.parse_args(argv)
  import jax
  print(f"jax {jax.__version__} on {jax.devices()[0].device_kind} ({jax.default_backend()}), "
        f"{os.cpu_count()} CPU cores")
  fns = {"dsm": step_fn("dsm", 0)}
  fns.update({f"bidsm N={n}": step_fn("bidsm", n) for n in (0, 5, 10)})
  ms = interleaved_ms(fns, args.repeats)
  print("\n| method | K | N | one step (ms) | relative to DSM |\n| --- | --- | --- | --- | --- |")
  print(f"| dsm (exact free energy) | - | - | {ms['dsm']:.3f} | 1.00x |")
  for n in (0, 5, 10):
    t = ms[f"bidsm N={n}"]
    print(f"| bidsm | 5 | {n} | {t:.3f} | {t / ms['dsm']:.2f}x |", flush=True)
  print("\n| hidden units m | states 2^m | d | exact log Z (ms) |\n| --- | --- | --- | --- |")
  for m in (16, 20):
    for d in (2, 560):
      print(f"| {m} | {2 ** m:,} | {d} | {log_z_time(m, d, args.logz_repeats):.1f} |", flush=True)


if __name__ == "__main__":
  main()
