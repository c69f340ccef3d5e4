"""The checkerboard table from a sweep's runs: `python -m ebm.report runs/ebm_table`.

Reads every `<sweep dir>/*/results.json` (written by ebm/experiment.py) and prints a markdown
table of the exact test log-likelihood per method (mean and standard error over the vmapped
seeds), the difference to DSM's mean, the test Hyvarinen score, and the references (a single
Gaussian fitted to training draws, the true density's log 2).
"""

from __future__ import annotations

import glob
import json
import os
import sys

ORDER = ("cd1", "cd5", "cd10", "pcd1", "ssm", "dsm", "mdsm", "nce", "bissm", "bidsm", "bimdsm",
         "vnce", "vages_dsm", "vages_mdsm", "vages_ksd", "ksd", "ml")


def load(sweep_dir: str) -> dict[str, dict]:
  out = {}
  for path in sorted(glob.glob(os.path.join(sweep_dir, "*", "results.json"))):
    with open(path) as f:
      res = json.load(f)
    out[res["method"]] = res
  return out


def table(results: dict[str, dict]) -> str:
  names = [m for m in ORDER if m in results] + sorted(set(results) - set(ORDER))
  if not names:
    raise SystemExit("no results.json under the sweep directory")
  dsm = results.get("dsm", {}).get("test_log_likelihood_mean")
  lines = ["| method | exact test log-likelihood (nats, mean +- s.e.) | seeds | minus DSM | "
           "test Hyvarinen score | steps |", "| --- | --- | --- | --- | --- | --- |"]
  for m in names:
    r = results[m]
    diff = "" if dsm is None else f"{r['test_log_likelihood_mean'] - dsm:+.3f}"
    lines.append(f"| {m} | {r['test_log_likelihood_mean']:.3f} +- "
                 f"{r['test_log_likelihood_stderr']:.3f} | {r['num_seeds']} | {diff} | "
                 f"{r['test_hyvarinen_mean']:.2f} | {r['step']:,} |")
  ref = results[names[0]]
  lines.append(f"| single Gaussian (ML fit to {ref.get('num_fit', 'the')} training draws) | "
               f"{ref['gaussian_test_log_likelihood']:.3f} | | | | |")
  lines.append(f"| true density | {ref['true_test_log_likelihood']:.3f} (log 2) | | | | |")
  return "\n".join(lines)


def main(argv=None):
  argv = sys.argv[1:] if argv is None else argv
  if len(argv) != 1:
    raise SystemExit("usage: python -m ebm.report <sweep dir>")
  print(table(load(argv[0])))


if __name__ == "__main__":
  main()
