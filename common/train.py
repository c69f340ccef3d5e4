"""The one training loop of the codebase, for every family.

A family describes what it trains as a `Program` and hands it to `fit`:

  program = train.Program(
      init=lambda key: state,         # any pytree: models, optimiser states, counters
      step=lambda state, batch, key, consts: (state, metrics),  # pure; metrics["loss"] required
      consts=frozen,                  # arrays the step reads but never changes (not saved)
      finite=("loss", "grad_norm"))   # metrics that must stay finite
  state = train.fit(program, config, workdir, data=lambda start, seed: batches)

`fit` jits the step with the state donated and the batch sharded over the mesh's `data` axis,
resumes from the newest checkpoint in `workdir/checkpoints`, stops on a non-finite metric, logs
progress, writes `metrics.jsonl` and TensorBoard, saves checkpoints and runs hooks. The step's key is
folded with the step index, so a resumed run draws the same randomness. Options (config.train):

  num_seeds     S > 1 vmaps init and step over a leading seed axis: seeds config.seed .. +S-1 in
                one compiled program, each with its own data stream (data(start, i)); metrics are
                logged per seed and as mean and standard error.
  init_from     a warm start: the workdir (or stage directory) of another run, whose checkpoint
                (`init_step`, 0 = newest) part `init_source` is grafted into `init_target`
                ('state.<path>' on a fresh start, 'consts.<path>' at every start), shapes checked.
  finite_metrics  names checked every step (default: the program's `finite`).

`fit_stages` runs a list of named stages, each its own program under `workdir/<stage>/`; a rerun
skips finished stages (reading their final state) and resumes the first unfinished one.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from ml_collections import ConfigDict

from common import checks, mesh as mesh_lib
from common.checkpoint import Checkpointer, abstract, path_name
from common.errors import CheckpointError, ConfigError, NonFiniteError
from common.metrics import MetricWriter

# data(start_step, seed_index) -> iterator of this process's numpy batches from step start_step + 1.
DataFn = Callable[[int, int], Iterable[Any]]
# seed -> (init key, step key)
KeysFn = Callable[[int], tuple[jax.Array, jax.Array]]


@dataclasses.dataclass
class Program:
  """What a family trains: see the module docstring."""
  init: Callable[[jax.Array], Any]
  step: Callable[[Any, Any, jax.Array, Any], tuple[Any, Mapping[str, jax.Array]]]
  consts: Any = None
  finite: Sequence[str] = ("loss", "grad_norm")


@dataclasses.dataclass
class Hook:
  """Runs `fn(state, step) -> metrics | None` every `every` steps and after the last step."""
  every: int
  fn: Callable[[Any, int], Mapping[str, Any] | None]


@dataclasses.dataclass
class Stage:
  """One stage of a multi-stage run.

  Attributes:
    name: its directory under the workdir (checkpoints, metrics).
    build: the final states of the stages before it, by name -> its Program.
    data: its batches (see DataFn).
    hooks: run during this stage only.
    train: overrides of config.train for this stage (e.g. {"num_steps": 500}).
  """
  name: str
  build: Callable[[Mapping[str, Any]], Program]
  data: DataFn
  hooks: Sequence[Hook] = ()
  train: Mapping[str, Any] = dataclasses.field(default_factory=dict)


def default_keys(seed: int) -> tuple[jax.Array, jax.Array]:
  init_key, step_key = jax.random.split(jax.random.key(seed))
  return init_key, step_key


def validate(config) -> None:
  """Checks the shared `train` fields; errors name the field."""
  for field in ("train.num_steps", "train.log_every", "train.ckpt_every"):
    checks.positive(config, field)
  train = config.train
  if "num_seeds" in train:
    checks.positive(config, "train.num_seeds")
  if "ema_decay" in train:
    checks.in_range(config, "train.ema_decay", 0.0, 1.0)
  source = train.get("init_from", "")
  if source and not os.path.isdir(os.path.join(source, "checkpoints")):
    raise ConfigError(f"train.init_from={source!r} is invalid: expected a workdir (or a stage "
                      "directory of one) that holds checkpoints/")
  for target in _targets(train):
    if target.split(".")[0] not in ("state", "consts"):
      raise ConfigError(f"train.init_target={target!r} is invalid: expected 'state.<path>' or "
                        "'consts.<path>'")


def _targets(train) -> list[str]:
  return [t.strip() for t in str(train.get("init_target", "state.params")).split(",") if t.strip()]


# ------------------------------------------------------------------------------------------------
# Warm starts


def load_part(workdir: str, part: str, step: int = 0) -> Any:
  """Part `part` ('ema_params', 'params/base', ...) of a run's checkpoint, as nested dicts of numpy
  arrays; step 0 means the newest. Fingerprint-verified by common.checkpoint."""
  ckpt = Checkpointer(os.path.join(workdir, "checkpoints"))
  step = step or ckpt.latest_step()
  if step is None:
    raise CheckpointError(f"train.init_from={workdir!r}: no checkpoint in "
                          f"{os.path.join(workdir, 'checkpoints')}")
  tree = ckpt.restore_raw(step)
  for name in [p for p in part.replace(".", "/").split("/") if p]:
    if not isinstance(tree, Mapping) or name not in tree:
      have = sorted(tree) if isinstance(tree, Mapping) else type(tree).__name__
      raise ConfigError(f"train.init_source={part!r}: checkpoint {ckpt.step_dir(step)} has no "
                        f"{name!r} (it has {have})")
    tree = tree[name]
  logging.info("Warm start: %r of %s.", part, ckpt.step_dir(step))
  return tree


def _flat_named(tree: Any) -> dict[str, Any]:
  return {path_name(p): leaf for p, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def graft(tree: Any, target: str, loaded: Any, source: str = "checkpoint") -> Any:
  """`tree` with the leaves under path `target` ('params/base', '' = all) replaced by `loaded`.

  The leaves of `loaded` must match those of the target subtree one for one, by relative path,
  shape and dtype; a mismatch raises ConfigError naming the parameter.
  """
  prefix = target.replace(".", "/").strip("/")
  new = _flat_named(loaded)
  paths, leaves = [], []
  for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
    name = path_name(path)
    paths.append(name)
    rel = name[len(prefix) + 1:] if prefix and name.startswith(prefix + "/") else (
        name if not prefix else None)
    if rel is None:
      leaves.append(leaf)
      continue
    if rel not in new:
      raise ConfigError(f"{source} has no parameter {rel!r} for {name!r} of this model")
    value = new.pop(rel)
    if tuple(np.shape(value)) != tuple(leaf.shape):
      raise ConfigError(f"parameter {rel!r} has shape {tuple(np.shape(value))} in {source} but "
                        f"{tuple(leaf.shape)} in this model ({name})")
    leaves.append(jnp.asarray(value, dtype=leaf.dtype))
  if not any(p == prefix or p.startswith(prefix + "/") for p in paths):
    raise ConfigError(f"train.init_target: this run's state has no part {target!r}")
  if new:
    raise ConfigError(f"{source} has parameters this model lacks under {target!r}: "
                      f"{sorted(new)[:5]}")
  return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(tree), leaves)


def _warm_start(train, state: Any, consts: Any, fresh: bool) -> tuple[Any, Any]:
  source = train.get("init_from", "")
  if not source:
    return state, consts
  loaded = load_part(source, train.get("init_source", "ema_params"), train.get("init_step", 0))
  where = f"train.init_from={source!r}"
  for target in _targets(train):
    which, _, sub = target.partition(".")
    if which == "consts":
      consts = graft(consts, sub, loaded, where)
    elif fresh:
      state = graft(state, sub, loaded, where)
  return state, consts


# ------------------------------------------------------------------------------------------------
# The loop


def _format_eta(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def _matches(name: str, key: str) -> bool:
  return key == name or key.startswith(name + "/")


class _Checker:
  """Fails fast on a non-finite metric, naming the step, the seed and the last good checkpoint."""

  def __init__(self, names: Sequence[str], checkpointer: Checkpointer, field: str):
    self.names, self.checkpointer, self.field = list(names), checkpointer, field

  def __call__(self, step: int, metrics: Mapping[str, np.ndarray]) -> None:
    if "loss" not in metrics:
      raise ConfigError("the training step must return metrics['loss']")
    keys = []
    for name in self.names:
      found = [k for k in metrics if _matches(name, k)]
      if not found:
        raise ConfigError(f"{self.field} names {name!r}, which the step does not return (it "
                          f"returns {sorted(metrics)})")
      keys += found
    bad = {k: metrics[k] for k in keys if not np.all(np.isfinite(metrics[k]))}
    if not bad:
      return
    good = self.checkpointer.last_good_step()
    last = self.checkpointer.step_dir(good) if good is not None else "none (no checkpoint yet)"
    values = ", ".join(f"{k}={_show(metrics[k])}" for k in keys)
    seeds = sorted({int(i) for v in bad.values() for i in np.flatnonzero(~np.isfinite(v))})
    where = f" (seed index {seeds})" if np.ndim(next(iter(bad.values()))) else ""
    raise NonFiniteError(f"non-finite training at step {step}{where}: {values}. "
                         f"Last good checkpoint: {last}")


def _show(v: np.ndarray) -> str:
  return str(float(v)) if np.ndim(v) == 0 else np.array2string(np.asarray(v), precision=4)


class _Averager:
  """Running means of the step metrics between two log lines; per-seed summaries when S > 1."""

  def __init__(self):
    self.sums, self.count = {}, 0

  def add(self, metrics: Mapping[str, np.ndarray]) -> None:
    for k, v in metrics.items():
      self.sums[k] = self.sums.get(k, 0.0) + np.asarray(v, np.float64)
    self.count += 1

  def flush(self, num_seeds: int) -> dict[str, float]:
    out = {}
    for k, total in self.sums.items():
      mean = total / max(self.count, 1)
      if num_seeds > 1 and np.ndim(mean) == 1:
        out[k] = float(mean.mean())
        out[f"{k}_stderr"] = float(mean.std(ddof=1) / math.sqrt(len(mean)))
        out.update({f"{k}/seed{i}": float(x) for i, x in enumerate(mean)})
      elif np.size(mean) == 1:
        out[k] = float(mean)
    self.sums, self.count = {}, 0
    return out


def _stack_batches(iterators: list[Iterator[Any]]) -> Any:
  batches = [next(it) for it in iterators]
  return jax.tree.map(lambda *xs: np.stack(xs), *batches) if len(batches) > 1 else batches[0]


def _compile_step(program: Program, num_seeds: int, mesh) -> Callable:
  rep = mesh_lib.replicated(mesh)

  def one(state, batch, key, t, consts):
    return program.step(state, batch, jax.random.fold_in(key, t), consts)

  def step(state, batch, keys, t, consts):
    if num_seeds == 1:
      return one(state, batch, keys, t, consts)
    return jax.vmap(one, in_axes=(0, 0, 0, None, None))(state, batch, keys, t, consts)

  return jax.jit(step, donate_argnums=0, out_shardings=(rep, rep))


class Run:
  """One program bound to a workdir, a mesh and seeds: initial or restored state, compiled step.

  `fit` drives it; benchmarks and tests may call `step` directly.
  """

  def __init__(self, program: Program, config, workdir: str, train=None, mesh=None,
               keys: KeysFn | None = None):
    self.program, self.config, self.workdir = program, config, workdir
    self.train = train if train is not None else config.train
    self.mesh = mesh or mesh_lib.make_mesh()
    self.num_seeds = int(self.train.get("num_seeds", 1))
    keys = keys or default_keys
    pairs = [keys(config.seed + i) for i in range(self.num_seeds)]
    stack = (lambda ks: ks[0]) if self.num_seeds == 1 else jnp.stack
    self.init_keys = stack([p[0] for p in pairs])
    self.step_keys = stack([p[1] for p in pairs])
    self._init = program.init if self.num_seeds == 1 else jax.vmap(program.init)
    self.checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"),
                                     self.train.get("keep_checkpoints", 3))
    self.state, self.consts, self.start = None, None, 0
    self._step = _compile_step(program, self.num_seeds, self.mesh)

  def abstract_state(self) -> Any:
    """The state's shapes and dtypes, replicated over the mesh (no arrays are made)."""
    return abstract(jax.eval_shape(self._init, self.init_keys), mesh_lib.replicated(self.mesh))

  def restore_or_init(self) -> int:
    """The newest checkpoint of the workdir, or a fresh (warm-started) state; returns its step."""
    latest = self.checkpointer.latest_step()
    for path in self.checkpointer.unfinished():
      logging.warning("Ignoring %s: a save that never finished (the run was stopped while saving).",
                      path)
    consts = self.program.consts
    if latest is None:
      state = self._init(self.init_keys)
    else:
      state = self.checkpointer.restore(latest, self.abstract_state())
      logging.info("Restored checkpoint %s", self.checkpointer.step_dir(latest))
    state, consts = _warm_start(self.train, state, consts, fresh=latest is None)
    self.state = mesh_lib.replicate(state, self.mesh)
    self.consts = mesh_lib.replicate(consts, self.mesh)
    self.start = latest or 0
    return self.start

  def step(self, batch: Any, t: int) -> Mapping[str, Any]:
    """Runs step t + 1 (t steps done) on this process's numpy batch; returns device metrics."""
    sharded = mesh_lib.shard_batch(batch, self.mesh, seed_axis=self.num_seeds > 1)
    self.state, metrics = self._step(self.state, sharded, self.step_keys,
                                     jnp.asarray(t, jnp.int32), self.consts)
    return metrics


def fit(program: Program, config, workdir: str, data: DataFn, hooks: Iterable[Hook] = (), *,
        train=None, mesh=None, keys: KeysFn | None = None, name: str = "") -> Any:
  """Trains `program` up to train.num_steps, resuming from the newest checkpoint in the workdir.

  Args:
    program: what to train (see Program).
    config: the experiment config (seed, train, data.batch_size).
    workdir: where checkpoints/, metrics.jsonl and tensorboard/ go.
    data: batches from a start step, per seed index.
    hooks: evaluations, run every `hook.every` steps and after the last step.
    train: the train block to use instead of config.train (a stage's).
    mesh: the device mesh (default: all devices).
    keys: seed -> (init key, step key); default: split(key(seed)).
    name: the stage name, for log lines.

  Returns:
    The final state (leading seed axis when train.num_seeds > 1).
  """
  run = Run(program, config, workdir, train, mesh, keys)
  cfg, label = run.train, f"stage {name!r}: " if name else ""
  start = run.restore_or_init()
  if start >= cfg.num_steps:
    logging.info("%sAlready trained to step %d (train.num_steps=%d); nothing to do.", label, start,
                 cfg.num_steps)
    return run.state
  check = _Checker(cfg.get("finite_metrics", program.finite), run.checkpointer,
                   "train.finite_metrics")
  streams = [iter(data(start, i)) for i in range(run.num_seeds)]
  hooks = list(hooks)
  writer = MetricWriter(workdir, cfg.get("tensorboard", True))
  batch_size = config.get("data", {}).get("batch_size", "?")
  logging.info("%sTraining steps %d..%d on %d device(s), global batch %s%s.", label, start,
               cfg.num_steps, run.mesh.size, batch_size,
               f", {run.num_seeds} seeds vmapped" if run.num_seeds > 1 else "")
  t_start = t_log = time.time()
  averager = _Averager()
  for step in range(start + 1, cfg.num_steps + 1):
    metrics = jax.device_get(run.step(_stack_batches(streams), step - 1))  # blocks: CPU deadlock
    check(step, metrics)
    averager.add(metrics)
    if step == start + 1:
      logging.info("%sFirst step (compilation included) took %.1fs.", label, time.time() - t_start)
      t_log = time.time()
    last = step == cfg.num_steps
    if step % cfg.log_every == 0 or last:
      now, n = time.time(), averager.count
      rate = n / max(now - t_log, 1e-9)
      means = averager.flush(run.num_seeds)
      writer.write(step, {**means, "steps_per_sec": rate})
      logging.info("%sstep %d/%d  loss %.4f  |  %.2f steps/s  ETA %s", label, step, cfg.num_steps,
                   means["loss"], rate, _format_eta((cfg.num_steps - step) / max(rate, 1e-9)))
      t_log = now
    if step % cfg.ckpt_every == 0 or last:
      run.checkpointer.save(step, run.state)
    for hook in hooks:
      if step % hook.every == 0 or last:
        out = hook.fn(run.state, step)
        if out:
          writer.write(step, out)
  writer.close()
  return run.state


def fit_stages(stages: Sequence[Stage], config, workdir: str, *, mesh=None,
               keys: KeysFn | None = None) -> dict[str, Any]:
  """Runs the stages in order, each under `workdir/<stage.name>/`; returns their final states."""
  names = [s.name for s in stages]
  if len(set(names)) != len(names) or not all(n and os.sep not in n for n in names):
    raise ConfigError(f"stage names must be distinct directory names, got {names}")
  done: dict[str, Any] = {}
  for stage in stages:
    train = ConfigDict(config.train.to_dict())
    train.update(dict(stage.train))
    done[stage.name] = fit(stage.build(dict(done)), config, os.path.join(workdir, stage.name),
                           stage.data, stage.hooks, train=train, mesh=mesh, keys=keys,
                           name=stage.name)
  return done


def restore(program: Program, config, workdir: str, mesh=None, step: int | None = None,
            keys: KeysFn | None = None, train=None) -> tuple[Any, Any, int]:
  """(state, consts, step) of a run's checkpoint (newest by default), placed on the mesh as training
  places them, for evaluation and sampling; shapes come from the program, no optimiser is rebuilt."""
  run = Run(program, config, workdir, train, mesh, keys)
  step = step or run.checkpointer.latest_step()
  if step is None:
    raise CheckpointError(f"no checkpoint in {run.checkpointer.directory}: train first "
                          "(--mode=train) with the same --workdir")
  state = run.checkpointer.restore(step, run.abstract_state())
  _, consts = _warm_start(run.train, None, program.consts, fresh=False)
  return state, mesh_lib.replicate(consts, run.mesh), int(step)
