"""Neuron-consistency runner: train the classifiers of each training mode (--mode=train), then the
report; --mode=report (or eval) redoes the report on the trained models of the workdir.

Each mode of `train.modes` is one stage of `common.train.fit_stages` (workdir/<mode>/), and each
stage trains `train.num_seeds` independently initialised models at once (seeds vmapped in one
program). The modes share the seeds' initialisations and data streams (seed index i: init key of
config.seed + i, batches of data.seed + i), so they are paired comparisons.
"""

from __future__ import annotations

import os

import jax
from absl import logging
from flax import nnx

from common import checks, data as data_lib, mesh as mesh_lib, optim, train as train_lib
from common.errors import ConfigError, DataError
from common.registry import Registry
from interp import attacks, consistency as cons, models, report as report_lib, training

MODES: Registry = Registry("interp mode")
SPLITS = ("train", "test")


def names(value) -> list[str]:
  """A tuple of names, or a comma-separated string from the command line (`--config.x=a,b`)."""
  items = [value] if isinstance(value, str) else list(value)
  return [n.strip() for item in items for n in str(item).split(",") if n.strip()]


def training_modes(config) -> list[str]:
  return names(config.train.modes)


def _validate_attack(config, prefix: str) -> None:
  block = checks.get_field(config, prefix)
  attacks.ATTACKS.get(block.name, field=f"{prefix}.name")
  training.ATTACK_LOSSES.get(block.loss, field=f"{prefix}.loss")
  checks.in_range(config, f"{prefix}.eps", 0.0, 1.0)
  checks.positive(config, f"{prefix}.step_size")
  checks.positive(config, f"{prefix}.num_steps")
  if not isinstance(block.num_steps, int):
    raise ConfigError(f"{prefix}.num_steps={block.num_steps!r} is invalid: expected an integer")


def _validate_names(config, field: str, registry) -> list[str]:
  values = names(checks.get_field(config, field))
  if not values:
    raise ConfigError(f"{field} is empty: name at least one of {', '.join(registry)}")
  if len(set(values)) != len(values):
    raise ConfigError(f"{field}={tuple(values)} names one twice")
  for v in values:
    registry.get(v, field=field)
  return values


def validate(config) -> None:
  """Rejects bad values at start, naming the field."""
  train_lib.validate(config)
  optim.validate(config)
  checks.positive(config, "data.batch_size")
  data_lib.DATASETS.get(config.data.name, field="data.name")
  models.PRESETS.get(config.data.name, field="data.name")
  modes = _validate_names(config, "train.modes", training.TRAINING_MODES)
  _validate_attack(config, "attack")
  _validate_attack(config, "report.attack")
  if "consistent" in modes:
    checks.positive(config, "consistent.lambda_c")
  training.DISTANCES.get(config.consistent.distance, field="consistent.distance")
  m = config.model
  if m.layer not in models.LAYERS:
    raise ConfigError(f"model.layer={m.layer!r} is invalid: expected one of {models.LAYERS}")
  if tuple(m.channels) and (len(m.channels) != 2 or min(m.channels) < 1):
    raise ConfigError(f"model.channels={tuple(m.channels)} is invalid: expected () (the preset) "
                      "or two positive integers")
  checks.positive(config, "model.hidden", allow_zero=True)
  _validate_report(config, modes)


def _validate_report(config, modes: list[str]) -> None:
  r = config.report
  for field in ("report.k", "report.batch_size", "report.picture_k"):
    checks.positive(config, field)
  checks.positive(config, "report.num_examples", allow_zero=True)
  checks.positive(config, "report.picture_neurons", allow_zero=True)
  checks.one_of(config, "report.split", SPLITS)
  for layer in names(r.layers) or [""]:
    if layer not in models.LAYERS:
      raise ConfigError(f"report.layers has {layer!r}: expected names from {models.LAYERS}")
  sims = _validate_names(config, "report.similarities", cons.SIMILARITIES)
  if "file" in sims and not os.path.isfile(r.similarity_path):
    raise ConfigError(f"report.similarity_path={r.similarity_path!r}: no such file (needed by "
                      "report.similarities 'file')")
  if "features" in sims and r.reference_mode not in modes:
    raise ConfigError(f"report.reference_mode={r.reference_mode!r} is invalid: the 'features' "
                      f"similarity needs a trained mode, one of train.modes={tuple(modes)}")
  if 0 < r.num_examples < r.k:
    raise ConfigError(f"report.num_examples={r.num_examples} is invalid: expected at least "
                      f"report.k={r.k} (or 0 for the whole split)")


def batch_sizes(config) -> tuple[int, ...]:
  """The sizes split over the mesh's `data` axis (main.py picks a CPU device count from them)."""
  return (config.data.batch_size, config.report.batch_size)


class Setup:
  """What every mode needs: labelled data, the mesh and one Program per training mode."""

  def __init__(self, config):
    self.config = config
    self.data = data_lib.get_dataset(config.data)
    if self.data.num_classes is None or self.data.train_labels is None:
      raise DataError(f"data.name={config.data.name!r} has no class labels: the classifiers need "
                      "a labelled dataset")
    preset = models.PRESETS.get(config.data.name, field="data.name")
    if tuple(self.data.shape) != preset.image_shape:
      raise ConfigError(f"data.name={config.data.name!r} gives images of shape "
                        f"{self.data.shape}, the model preset expects {preset.image_shape}")
    self.mesh = mesh_lib.make_mesh()
    for field in ("data.batch_size", "report.batch_size"):
      checks.divisible(config, field, self.mesh.size,
                       f"the batch is split over {self.mesh.size} devices")
    self.modes = training_modes(config)
    model = training.initial_model(config, jax.random.key(config.seed))
    self.graphdef = nnx.graphdef(model)
    self.programs = {mode: training.program(config, mode, model) for mode in self.modes}
    self.num_seeds = int(config.train.get("num_seeds", 1))

  def batches(self, start: int, seed_index: int):
    return self.data.labeled_batches(self.config.data.batch_size,
                                     self.config.data.seed + seed_index, start)

  def stages(self) -> list[train_lib.Stage]:
    return [train_lib.Stage(mode, lambda done, m=mode: self.programs[m], self.batches)
            for mode in self.modes]

  def restore(self, workdir: str) -> dict[str, tuple[list, int]]:
    """{mode: (each seed's EMA model state, checkpoint step)} from workdir/<mode>/."""
    out = {}
    for mode, program in self.programs.items():
      state, _, step = train_lib.restore(program, self.config, os.path.join(workdir, mode),
                                         self.mesh)
      out[mode] = (report_lib.seed_states(program, state, self.num_seeds), step)
    return out


def run_report(setup: Setup, workdir: str, skip_if_done: bool) -> dict:
  """Writes results.json / results.md / pictures for the models in the workdir; returns results."""
  config = setup.config
  trained = setup.restore(workdir)
  stamp = report_lib.fingerprint(config, {m: step for m, (_, step) in trained.items()})
  path = os.path.join(workdir, "results.json")
  if skip_if_done and report_lib.already_done(workdir, stamp):
    logging.info("Report already done for these checkpoints: %s", path)
    return {}
  r = config.report
  pool = report_lib.split_arrays(setup.data, r.split, r.num_examples, r.seed)
  if len(pool[1]) < r.k:
    raise ConfigError(f"report.k={r.k} exceeds the {len(pool[1])} images of the probe pool")
  test = report_lib.split_arrays(setup.data, "test")
  ev = report_lib.Evaluator(config, setup.graphdef, setup.mesh)
  reference = lambda: (report_lib.reference_features(ev, trained[r.reference_mode][0][0], pool),
                       pool[1])
  sims = report_lib.similarity_matrices(config, setup.data.num_classes, reference)
  results = report_lib.build(config, trained, ev, test, pool, sims, workdir)
  results["fingerprint"] = stamp
  report_lib.write(workdir, results)
  logging.info("Results -> %s and %s", path, os.path.join(workdir, "results.md"))
  return results


@MODES.register("train")
def train(config, workdir: str) -> dict:
  setup = Setup(config)
  logging.info("Training modes %s, %d seed(s) each, on %s %s (%d train images).",
               ", ".join(setup.modes), setup.num_seeds, config.data.name, setup.data.shape,
               len(setup.data.train))
  train_lib.fit_stages(setup.stages(), config, workdir, mesh=setup.mesh)
  return run_report(setup, workdir, skip_if_done=True)


@MODES.register("report")
def report(config, workdir: str) -> dict:
  return run_report(Setup(config), workdir, skip_if_done=False)


MODES.add("eval", report)


def run(config, workdir: str, mode: str = "train"):
  return MODES.get(mode, field="--mode")(config, workdir)
