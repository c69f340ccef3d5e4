"""The price of VaGES against exact-free-energy DSM, over the number of posterior draws (issue 15).

  PYTHONPATH=. python benchmarks/ebm_vages_cost.py [--repeats 1000] [--particles 2,5,20]

Prints the time of one training step of the runner (ebm/experiment.py's Program step, jitted,
state donated: K = 5 posterior steps, the VaGES gradient and both optimisers' updates; GRBM d = 2,
m = 4, batch 100, the checkerboard config) for VaGES-DSM and VaGES-KSD with L posterior draws, each
relative to one DSM step with the exact free energy on the same GRBM and batch, timed in
interleaved blocks of 20 calls (median block) after one compiling call.

L = 1 is not measured: the unbiased covariance term of VaGES needs two draws (L / (L - 1)), and
with one draw the plug-in covariance is identically zero, so the step would not estimate the
gradient of the score; the runner rejects `loss.vages_particles` < 2. Each step draws 3L particles
(independent sets for VaES, the expectation term and the covariance term).
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from ebm_bism_cost import interleaved_ms, step_fn  # noqa: E402  (the shared timing helpers)


def _ints(text: str) -> tuple[int, ...]:
  try:
    values = tuple(int(x) for x in text.split(","))
  except ValueError:
    raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")
  if any(v < 2 for v in values):
    raise argparse.ArgumentTypeError(f"every L must be >= 2 (the unbiased covariance), got {text!r}")
  return values


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--repeats", type=int, default=1000)
  parser.add_argument("--particles", type=_ints, default=(2, 5, 20),
                      help="posterior draws L per step, comma-separated, each >= 2")
  parser.add_argument("--methods", default="vages_dsm,vages_ksd")
  args = parser.parse_args(argv)
  import jax
  print(f"jax {jax.__version__} on {jax.devices()[0].device_kind} ({jax.default_backend()}), "
        f"{os.cpu_count()} CPU cores")
  methods = args.methods.split(",")
  fns = {"dsm": step_fn("dsm", 0)}
  for m in methods:
    for num in args.particles:
      fns[f"{m} L={num}"] = step_fn(m, 0, particles=num)
  ms = interleaved_ms(fns, args.repeats)
  print("\n| method | L | one step (ms) | relative to DSM |\n| --- | --- | --- | --- |")
  print(f"| dsm (exact free energy) | - | {ms['dsm']:.3f} | 1.00x |")
  for m in methods:
    for num in args.particles:
      t = ms[f"{m} L={num}"]
      print(f"| {m} | {num} | {t:.3f} | {t / ms['dsm']:.2f}x |", flush=True)


if __name__ == "__main__":
  main()
