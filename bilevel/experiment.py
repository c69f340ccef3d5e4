"""Bilevel HPO runner: UD or random search on the shared loop, results.json, figures, the meter.

One `common.train.fit` step is one outer step: the Program of bilevel/methods.py holds the
hyperparameters and the outer optimiser state (for random search: the best candidate so far), the
seed's fixed theta_0 and its split, and each step runs K inner steps inside the jitted step.
`train.num_seeds` vmaps seeds config.seed .. + S - 1, each with its own split, theta_0 and
minibatches.

Data: the pool's examples are the Program's consts ([N, D], read, never donated); each step's
minibatches come through the loop's data stream as int32 positions ({"inner": [B, K], "val":
[B_val]}, batch-major so that the loop shards B over the mesh), drawn in numpy from (data.seed,
seed, step): a resumed run, and the two runs of a stability pair, see the same batches. (Drawing
them from the step key inside the step would do as well for resume; the stream keeps the one
sharded input the loop expects meaningful, and the batches inspectable by tests.)

Variants: `config.variants` maps a name to a partial config (e.g. {"k64": {"inner": {"num_steps":
64}}}); each becomes a stage of `common.train.fit_stages` under workdir/<name>/ (a rerun skips the
finished ones), so one command runs a figure's whole grid. Without variants the run lives in the
workdir itself and is called "main". After training, workdir/results.json (bilevel/results.py)
and the figures in workdir/figures/ (config.plots) are written; results.json is also rewritten
every train.log_every outer steps.

Modes: train (default), plot (results.json and the figures again from the runs' metrics.jsonl).
"""

from __future__ import annotations

import os
from typing import Any, Iterator

import jax
import numpy as np
from absl import logging
from ml_collections import ConfigDict

from bilevel import data as data_lib, methods, results, tasks, ud
from common import checks, mesh as mesh_lib, train as train_lib
from common.errors import ConfigError, DataError
from common.registry import Registry

MODES: Registry = Registry("bilevel mode")
MAIN = "main"


# ---------------------------------------------------------------------------------------------
# Config: variants and validation.


def _merge(base: ConfigDict, overrides: Any, where: str) -> None:
  """Recursively sets `overrides` into `base` (in place); an unknown key is a ConfigError."""
  for key, value in overrides.items():
    if key not in base:
      raise ConfigError(f"{where}.{key} is not a field of the config (variants may only change "
                        "existing fields)")
    if isinstance(base[key], ConfigDict):
      if not hasattr(value, "items"):
        raise ConfigError(f"{where}.{key} must be a group of fields, got {value!r}")
      _merge(base[key], value, f"{where}.{key}")
    else:
      base[key] = value


def variant_configs(config) -> dict[str, ConfigDict]:
  """{run name: its full config}: one per `config.variants` entry, or {"main": config}."""
  variants = config.get("variants") or {}
  if not variants:
    return {MAIN: config}
  out = {}
  for name, overrides in variants.items():
    if not name or os.sep in name or name.startswith("."):
      raise ConfigError(f"variants.{name!r}: a variant name must be a plain directory name")
    c = ConfigDict(config.to_dict())
    c.variants = ConfigDict()
    _merge(c, overrides, f"variants.{name}")
    out[name] = c
  return out


def _num_val(c) -> int:
  d = c.data
  return d.num_val if c.task == "reweight" else d.num_classes * d.per_class[1]


def _num_train(c) -> int:
  d = c.data
  return d.num_train if c.task == "reweight" else d.num_classes * d.per_class[0]


def _validate_data(c) -> None:
  d = c.data
  data_lib.POOLS.get(d.name, field="data.name")
  if c.task == "reweight":
    for field in ("num_train", "num_val", "num_test", "num_mval", "num_pool"):
      checks.positive(c, f"data.{field}")
    if d.num_train < 2:
      raise ConfigError(f"data.num_train={d.num_train} is invalid: expected at least 2 (its "
                        "second half gets random labels)")
  else:
    checks.positive(c, "data.num_classes")
    counts = tuple(d.per_class)
    if len(counts) != 5 or min(counts) < 1:
      raise ConfigError(f"data.per_class={counts} is invalid: expected 5 positive counts per class "
                        "(train, val, test, mval, pool)")
  for field in ("batch_size", "val_batch_size"):
    checks.positive(c, f"data.{field}")
  if d.batch_size > _num_train(c):
    raise ConfigError(f"data.batch_size={d.batch_size} is invalid: expected at most the training "
                      f"set's size {_num_train(c)}")
  if d.val_batch_size > _num_val(c):
    raise ConfigError(f"data.val_batch_size={d.val_batch_size} is invalid: expected at most the "
                      f"validation set's size m={_num_val(c)}")


def _validate_one(c) -> None:
  train_lib.validate(c)
  tasks.TASKS.get(c.task, field="task")
  methods.METHODS.get(c.method, field="method")
  ud.REMAT.get(c.inner.remat, field="inner.remat")
  _validate_data(c)
  checks.positive(c, "inner.num_steps")
  checks.positive(c, "inner.lr")
  checks.positive(c, "outer.lr")
  checks.positive(c, "inner.weight_decay", allow_zero=True)
  checks.positive(c, "outer.weight_decay", allow_zero=True)
  checks.in_range(c, "outer.momentum", 0.0, 0.999)
  checks.positive(c, "num_devices", allow_zero=True)
  for field in ("model.hidden", "model.head_hidden"):
    if any(int(h) < 1 for h in checks.get_field(c, field)):
      raise ConfigError(f"{field}={tuple(checks.get_field(c, field))} is invalid: expected "
                        "positive layer widths")
  checks.positive(c, "model.features")
  for name in c.plots:
    results.PLOTS.get(name, field="plots")


def validate(config) -> None:
  """Rejects bad values at start, naming the field (and the variant)."""
  _validate_one(config)
  for name, c in variant_configs(config).items():
    if name == MAIN:
      continue
    try:
      _validate_one(c)
    except ConfigError as e:
      raise ConfigError(f"variants.{name}: {e}") from None


def batch_sizes(config) -> tuple[int, ...]:
  """The sizes split over the mesh's `data` axis: every variant's inner and validation batch."""
  sizes = []
  for c in variant_configs(config).values():
    sizes += [c.data.batch_size, c.data.val_batch_size]
  return tuple(sizes)


# ---------------------------------------------------------------------------------------------
# One run: pool, splits, Program, data stream.


def setting_summary(c) -> dict[str, Any]:
  """The fields of a run that results.json records and the figures group by."""
  return {"task": c.task, "method": c.method, "dataset": c.data.name,
          "num_inner": c.inner.num_steps, "inner_lr": c.inner.lr,
          "inner_weight_decay": c.inner.weight_decay, "outer_lr": c.outer.lr,
          "outer_weight_decay": c.outer.weight_decay, "num_train": _num_train(c),
          "num_val": _num_val(c), "batch_size": c.data.batch_size,
          "val_batch_size": c.data.val_batch_size, "num_outer": c.train.num_steps,
          "num_seeds": c.train.get("num_seeds", 1), "stability": bool(c.stability.enabled)}


class Run:
  """A run's task, per-seed splits, Program and data stream (for one variant's config)."""

  def __init__(self, c, pool: data_lib.Pool):
    self.config = c
    self.task = tasks.TASKS.get(c.task, field="task")(c, pool.x.shape[1], pool.num_classes)
    self.num_seeds = c.train.get("num_seeds", 1)
    self.splits = self._splits(pool)
    setting = methods.Setting(
        task=self.task, num_inner=c.inner.num_steps, lr=c.inner.lr,
        weight_decay=c.inner.weight_decay, remat=c.inner.remat,
        outer=ud.outer_optimizer(c.outer.lr, c.outer.weight_decay, c.outer.momentum))
    self.program = methods.program(setting, methods.METHODS.get(c.method, field="method"),
                                   self.splits, pool.x, c.seed, bool(c.stability.enabled))

  def _splits(self, pool: data_lib.Pool) -> dict[str, Any]:
    c = self.config
    try:
      per_seed = [self.task.split(pool.y, [c.data.split_seed, c.seed + i])
                  for i in range(self.num_seeds)]
    except ValueError as e:
      raise DataError(f"data.name={c.data.name!r} cannot hold the split of task={c.task!r}: "
                      f"{e}") from None
    return {k: np.stack([s[k] for s in per_seed]) for k in per_seed[0]}

  def stream(self, start: int, seed_index: int) -> Iterator[dict]:
    c = self.config
    for step in range(start, c.train.num_steps):
      yield methods.index_batches(c.data.seed, c.seed + seed_index, step, self.task.num_train,
                                  self.task.num_val, c.data.batch_size, c.data.val_batch_size,
                                  c.inner.num_steps)


class Pools:
  """Loads each dataset once per process (variants share it)."""

  def __init__(self):
    self._pools: dict[str, data_lib.Pool] = {}

  def get(self, c) -> data_lib.Pool:
    if c.data.name not in self._pools:
      self._pools[c.data.name] = data_lib.load_pool(c.data)
    return self._pools[c.data.name]


# ---------------------------------------------------------------------------------------------
# Modes.


def _run_dirs(config, workdir: str) -> dict[str, tuple[str, dict]]:
  return {name: (workdir if name == MAIN else os.path.join(workdir, name), setting_summary(c))
          for name, c in variant_configs(config).items()}


def make_mesh(config):
  """The mesh the batches are sharded over: all devices, or the first `config.num_devices`.

  The inner steps of UD are sequential and small (a batch of 20-100 examples): split over
  devices, each of the K steps ends in an all-reduce of the gradient. On 4 simulated CPU devices
  that made the CPU-scale runs 4-7x slower than one device (bilevel/README.md), so the CPU configs
  set num_devices = 1; on accelerators 0 (all) is the usual choice.
  """
  n = config.num_devices
  if not n:
    return mesh_lib.make_mesh()
  if jax.process_count() > 1:
    raise ConfigError(f"num_devices={n} is invalid on {jax.process_count()} processes: use 0 "
                      "(every device of every host)")
  if n > len(jax.devices()):
    raise ConfigError(f"num_devices={n} is invalid: only {len(jax.devices())} device(s)")
  return mesh_lib.make_mesh(jax.devices()[:n])


def _check_mesh(config, mesh) -> None:
  for c in variant_configs(config).values():
    for field in ("data.batch_size", "data.val_batch_size"):
      checks.divisible(c, field, mesh.size, f"the batch is split over {mesh.size} devices")


def write_outputs(config, workdir: str) -> dict:
  """results.json and the figures of config.plots, from the runs' metrics.jsonl."""
  out = results.write(workdir, _run_dirs(config, workdir))
  paths = results.plot(out, os.path.join(workdir, "figures"), tuple(config.plots))
  logging.info("Wrote %s and %d figure(s): %s", os.path.join(workdir, "results.json"),
               len(paths), ", ".join(os.path.basename(p) for p in paths))
  return out


@MODES.register("train")
def train(config, workdir: str) -> dict:
  mesh = make_mesh(config)
  _check_mesh(config, mesh)
  pools, dirs = Pools(), _run_dirs(config, workdir)
  variants = variant_configs(config)
  hook = lambda c: train_lib.Hook(c.train.log_every, lambda state, step: results.write(
      workdir, dirs) and None)
  if list(variants) == [MAIN]:
    run = Run(config, pools.get(config))
    train_lib.fit(run.program, config, workdir, run.stream, [hook(config)], mesh=mesh,
                  keys=methods.keys)
  else:
    built: dict[str, Run] = {}

    def get(name: str) -> Run:  # build() and data() of a stage share one Run
      if name not in built:
        built[name] = Run(variants[name], pools.get(variants[name]))
      return built[name]

    stages = [train_lib.Stage(name, build=lambda done, n=name: get(n).program,
                              data=lambda start, i, n=name: get(n).stream(start, i),
                              hooks=[hook(c)], train=c.train.to_dict())
              for name, c in variants.items()]
    train_lib.fit_stages(stages, config, workdir, mesh=mesh, keys=methods.keys)
  return write_outputs(config, workdir)


@MODES.register("plot")
def plot(config, workdir: str) -> dict:
  return write_outputs(config, workdir)


def run(config, workdir: str, mode: str = "train"):
  return MODES.get(mode, field="--mode")(config, workdir)
