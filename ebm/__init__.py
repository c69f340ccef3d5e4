"""Energy-based latent variable models: exact Gaussian-RBM tools, score matching, BiSM, VaES/VaGES,
the Fisher-divergence estimator and cascaded boosting.

Roles: ebm.grbm (model and exact tools), ebm.ais, ebm.samplers, ebm.posteriors, ebm.losses
(single-level losses), ebm.bism (BiSM and variational NCE), ebm.vages, ebm.ksd, ebm.deep (the deep
EBLVM), and the runners, one per `config.experiment` (EXPERIMENTS): `grbm` (ebm.experiment, the
default: any training method of METHODS on the checkerboard), `fisher` (ebm.fisher: the VaES
Fisher-divergence estimator on perturbed GRBMs) and `boost` (ebm.boost: cascaded meta-model
stacks). Each runner module has `run(config, workdir, mode)` and `validate(config)`, and may have
`batch_sizes(config)`. See ebm/README.md.
"""

from __future__ import annotations

import importlib

from common.registry import Registry

EXPERIMENTS: Registry[str] = Registry("ebm experiment")
EXPERIMENTS.add("grbm", "ebm.experiment")
EXPERIMENTS.add("fisher", "ebm.fisher")
EXPERIMENTS.add("boost", "ebm.boost")
EXPERIMENTS.add("deep", "ebm.deep_runner")


def runner(config):
  """The runner module of config.experiment (default 'grbm')."""
  name = EXPERIMENTS.get(config.get("experiment", "grbm"), field="experiment")
  return importlib.import_module(name)


def validate(config) -> None:
  runner(config).validate(config)


def batch_sizes(config) -> tuple[int, ...]:
  module = runner(config)
  return module.batch_sizes(config) if hasattr(module, "batch_sizes") else ()


def run(config, workdir: str, mode: str = "train"):
  return runner(config).run(config, workdir, mode)


__all__ = ["EXPERIMENTS", "batch_sizes", "run", "runner", "validate"]
