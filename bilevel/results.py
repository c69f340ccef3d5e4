"""`workdir/results.json` from the runs' metrics.jsonl, and the figures drawn from it.

Schema "bilevel-results/1":

  {"schema": "bilevel-results/1",
   "runs": {"<run name>": {             # "main" for a config without variants, else the variant
      "workdir": "<dir of its checkpoints and metrics.jsonl, relative to the workdir>",
      "setting": {"task", "method", "dataset", "num_inner" (K), "inner_lr", "inner_weight_decay",
                  "outer_lr", "outer_weight_decay", "num_train", "num_val" (m), "batch_size",
                  "val_batch_size", "num_outer" (T), "num_seeds", "stability"},
      "steps": [t, ...],                 # outer steps logged (every train.log_every and the last)
      "mean": {"<metric>": [...]},       # per logged step: mean over the log interval and seeds
      "stderr": {"<metric>": [...]},     # standard error over seeds (only when num_seeds > 1)
      "seeds": {"<metric>": [[...], ...]},  # [seed][step] (only when num_seeds > 1)
      "final": {"<metric>": value},      # the last logged step's means
      "best_test": {"step": t, "test_loss": value}}}}   # lowest mean test loss over the steps

Metrics (bilevel/methods.py): val_loss (the optimised loss: the validation minibatch's for UD, the
best full validation loss for random search), val_full_loss, val_error, test_loss, test_error,
gap = test_loss - val_loss (the official definitions of each method), gap_full = test_loss -
val_full_loss, mval_loss, mval_error (the second validation set, never optimised on),
inner_steps, grad_norm (UD: the hypergradient's norm), trial_val_loss and best_index (random
search), weight_clean and weight_noisy (reweighting), beta and beta_error (stability runs), loss
(= val_loss).
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable, Mapping

import numpy as np

from common import io
from common.metrics import read_metrics
from common.registry import Registry

SCHEMA = "bilevel-results/1"
_SKIP = ("time", "steps_per_sec", "step")


def run_record(records: list[dict], setting: Mapping[str, Any], workdir: str) -> dict:
  """One run's entry of results.json from its metrics.jsonl records (later lines win a step)."""
  by_step: dict[int, dict] = {}
  for r in records:
    by_step.setdefault(int(r["step"]), {}).update(r)
  steps = sorted(by_step)
  names = sorted({k for r in by_step.values() for k in r
                  if k not in _SKIP and "/seed" not in k and not k.endswith("_stderr")})
  column = lambda key: [by_step[s].get(key, float("nan")) for s in steps]
  out = {"workdir": workdir, "setting": dict(setting), "steps": steps,
         "mean": {k: column(k) for k in names}}
  if setting.get("num_seeds", 1) > 1:
    out["stderr"] = {k: column(f"{k}_stderr") for k in names}
    out["seeds"] = {k: [column(f"{k}/seed{i}") for i in range(setting["num_seeds"])]
                    for k in names}
  out["final"] = {k: v[-1] for k, v in out["mean"].items()} if steps else {}
  test = np.asarray(out["mean"].get("test_loss", []), np.float64)
  if test.size and np.isfinite(test).any():
    i = int(np.nanargmin(test))
    out["best_test"] = {"step": steps[i], "test_loss": float(test[i])}
  return out


def write(workdir: str, runs: Mapping[str, tuple[str, Mapping[str, Any]]]) -> dict:
  """Rebuilds workdir/results.json from runs {name: (run dir, setting)}; returns its content."""
  results = {"schema": SCHEMA, "runs": {}}
  for name, (run_dir, setting) in runs.items():
    records = read_metrics(run_dir)
    rel = os.path.relpath(run_dir, workdir)
    results["runs"][name] = run_record(records, setting, rel)
  io.on_main_process(os.path.join(workdir, "results.json"),
                     lambda p: io.atomic_write_json(p, results))
  return results


def read(workdir: str) -> dict:
  path = os.path.join(workdir, "results.json")
  with open(path) as f:
    results = json.load(f)
  if results.get("schema") != SCHEMA:
    raise ValueError(f"{path}: schema {results.get('schema')!r}, expected {SCHEMA!r}")
  return results


# ---------------------------------------------------------------------------------------------
# Figures: PLOTS names -> fn(results, figure_dir) -> list of PNG paths.

PLOTS: Registry = Registry("bilevel plot")


def _pyplot():
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  return plt


def _save(fig, figure_dir: str, name: str) -> str:
  path = os.path.join(figure_dir, name)
  io.on_main_process(path, lambda p: io.atomic_save_figure(fig, p, dpi=110, bbox_inches="tight"))
  _pyplot().close(fig)
  return path


def _band(ax, run: dict, key: str, **style) -> None:
  """The seed mean of `key` against t, with a +-1 standard-error band when there are seeds."""
  if key not in run["mean"]:
    return
  t, y = np.asarray(run["steps"]), np.asarray(run["mean"][key], np.float64)
  line, = ax.plot(t, y, **style)
  if "stderr" in run and key in run["stderr"]:
    err = np.asarray(run["stderr"][key], np.float64)
    ax.fill_between(t, y - err, y + err, color=line.get_color(), alpha=0.2, linewidth=0)


def _order(results: dict) -> list[str]:
  """Runs sorted by method, then K, then the weight decays, then m: a stable legend order."""
  def key(name):
    s = results["runs"][name]["setting"]
    return (s.get("method", ""), s.get("num_inner", 0), s.get("inner_weight_decay", 0),
            s.get("outer_weight_decay", 0), s.get("num_val", 0), name)
  return sorted(results["runs"], key=key)


@PLOTS.register("curves")
def plot_curves(results: dict, figure_dir: str) -> list[str]:
  """losses.png: per run, the optimised validation loss, the full validation, test and mval
  losses against t; gap.png: every run's gap and test loss against t on shared axes."""
  plt = _pyplot()
  names = _order(results)
  cols = min(len(names), 4)
  rows = -(-len(names) // cols)
  fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 2.9 * rows), squeeze=False,
                           sharey=True)
  for ax, name in zip(axes.flat, names):
    run = results["runs"][name]
    _band(ax, run, "val_loss", label="val (optimised)", color="C0", linestyle=":")
    _band(ax, run, "val_full_loss", label="val (full set)", color="C0")
    _band(ax, run, "test_loss", label="test", color="C3")
    _band(ax, run, "mval_loss", label="second val (never optimised)", color="C2",
          linestyle="--")
    ax.set_title(name, fontsize=9)
    ax.set_xlabel("outer step t")
  for ax in list(axes.flat)[len(names):]:
    ax.axis("off")
  axes[0, 0].set_ylabel("cross-entropy")
  axes[0, 0].legend(fontsize=7)
  paths = [_save(fig, figure_dir, "losses.png")]
  fig, (ax_gap, ax_test) = plt.subplots(1, 2, figsize=(9, 3.2))
  for i, name in enumerate(names):
    run = results["runs"][name]
    _band(ax_gap, run, "gap", label=name, color=f"C{i % 10}")
    _band(ax_test, run, "test_loss", label=name, color=f"C{i % 10}")
  ax_gap.set(title="gap = test loss - optimised val loss", xlabel="outer step t")
  ax_test.set(title="test loss", xlabel="outer step t")
  ax_gap.axhline(0, color="k", linewidth=0.5)
  ax_gap.legend(fontsize=7)
  paths.append(_save(fig, figure_dir, "gap.png"))
  return paths


# The fields a stability run may vary, with their axis labels.
_STABILITY_FIELDS = (("num_inner", "K (inner steps)"), ("num_val", "m (validation size)"),
                     ("inner_weight_decay", "inner weight decay"),
                     ("outer_weight_decay", "outer weight decay"))


def _varied(results: dict, base: str) -> dict[str, list[str]]:
  """For each field, the runs equal to run `base` in every other field (base included)."""
  fields = [f for f, _ in _STABILITY_FIELDS]
  ref = results["runs"][base]["setting"]
  out = {}
  for field in fields:
    same = [n for n, r in results["runs"].items()
            if all(r["setting"].get(f) == ref.get(f) for f in fields if f != field)]
    if len({results["runs"][n]["setting"].get(field) for n in same}) > 1:
      out[field] = sorted(same, key=lambda n: results["runs"][n]["setting"].get(field))
  return out


@PLOTS.register("stability")
def plot_stability(results: dict, figure_dir: str) -> list[str]:
  """stability.png: the meter beta against T for every run (log-log), and its value at the last
  step against each field the runs vary (K, m, the weight decays), around the 'base' run."""
  plt = _pyplot()
  names = [n for n in _order(results) if "beta" in results["runs"][n]["mean"]]
  if not names:
    return []
  base = "base" if "base" in names else names[0]
  groups = _varied(results, base)
  fig, axes = plt.subplots(1, 1 + len(groups), figsize=(3.8 * (1 + len(groups)), 3.2),
                           squeeze=False)
  ax = axes[0, 0]
  for i, name in enumerate(names):
    _band(ax, results["runs"][name], "beta", label=name, color=f"C{i % 10}")
  ax.set(xscale="log", yscale="log", xlabel="outer steps T", ylabel="beta: mean |change| of "
         "test loss", title="stability vs T")
  ax.legend(fontsize=6)
  labels = dict(_STABILITY_FIELDS)
  for ax, (field, group) in zip(axes[0, 1:], groups.items()):
    xs = [results["runs"][n]["setting"][field] for n in group]
    ys = [results["runs"][n]["final"]["beta"] for n in group]
    errs = [results["runs"][n].get("stderr", {}).get("beta", [np.nan])[-1] for n in group]
    ax.errorbar(xs, ys, yerr=errs, marker="o", capsize=3)
    if field == "num_val":
      ref = ys[0] * xs[0] / np.asarray(xs, np.float64)
      ax.plot(xs, ref, "k--", linewidth=0.8, label="1/m from the smallest m")
      ax.legend(fontsize=7)
    if min(xs) > 0:
      ax.set_xscale("log")
    else:  # no decay (0) beside decays on a log scale
      ax.set_xscale("symlog", linthresh=min(x for x in xs if x > 0))
    ax.set(yscale="log" if field == "num_val" else "linear", xlabel=labels[field],
           title=f"beta at T = {results['runs'][group[0]]['steps'][-1]}")
    ax.minorticks_off()
    ax.set_xticks(xs, [f"{x:g}" for x in xs])
  return [_save(fig, figure_dir, "stability.png")]


def plot(results: dict, figure_dir: str, names: tuple[str, ...]) -> list[str]:
  """Draws the named PLOTS; returns the PNG paths."""
  paths = []
  for name in names:
    fn: Callable = PLOTS.get(name, field="plots")
    paths += fn(results, figure_dir)
  return paths
