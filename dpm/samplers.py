"""Every sampler of the diffusion family by name, with the config fields it reads.

`sample.sampler` picks one for `--mode=sample`, `--mode=eval` and the sample grids written during
training; the reports build theirs from the same registry.

  ddpm   the reverse process in DDPM form (Ho et al. 2020; Analytic-DPM eq. 7): K = sample.num_steps
         steps on sample.trajectory (even | quad | dp), reverse variance sample.variance
         (beta | beta_tilde | analytic).
  ddim   the same in DDIM form (Song et al. 2021) with sample.eta; variance ddim or analytic.
         Both forms also take the state-dependent diagonal variances of SN-DPM / NPR-DPM
         (Bao et al. 2022): npr, sn and their dimension-averaged ablations npr_avg, sn_avg
         (dpm/covariance.py), which need the second-stage heads (dpm/second_stage.py samples them).
  dpm_solver_1, dpm_solver_2m, dpm_solver_3m, dpm_solver_fast, dpm_solver++_2m, dpm_solver++_3m,
  dpm_solver++_2s
         DPM-Solver(++) (Lu et al. 2022, arXiv 2206.00927 / 2211.01095) on the probability-flow ODE
         with sample.nfe model evaluations, time-uniform steps unless the name says otherwise
         (dpm_solver_fast: singlestep orders 3,...,3,2/1 on logSNR steps, the paper's choice).
         dpm_solver_1 is DDIM as an ODE solver (continuous time). sample.thresholding (none |
         static | dynamic) corrects every data prediction (`thresholded`).

  sampler = samplers.build(config, process, graphdef, mesh, gamma)   # jitted (state, rng, shape)
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable

import jax
import numpy as np
from flax import nnx

from common import checks, mesh as mesh_lib
from common.errors import ConfigError
from common.registry import Registry
from dpm import analytic, covariance, reverse

SAMPLERS: Registry = Registry("sampler")
REVERSE_FORMS = ("ddpm", "ddim")


@dataclasses.dataclass(frozen=True)
class SolverMethod:
  """A DPM-Solver method: the fields of DPMSolver.sample besides the step count."""
  algorithm_type: str
  order: int
  method: str = "multistep"
  skip_type: str = "time_uniform"


for _name, _spec in {
    "dpm_solver_1": SolverMethod("dpmsolver", 1),
    "dpm_solver_2m": SolverMethod("dpmsolver", 2),
    "dpm_solver_3m": SolverMethod("dpmsolver", 3),
    "dpm_solver_fast": SolverMethod("dpmsolver", 3, "singlestep", "logSNR"),
    "dpm_solver++_2m": SolverMethod("dpmsolver++", 2),
    "dpm_solver++_3m": SolverMethod("dpmsolver++", 3),
    "dpm_solver++_2s": SolverMethod("dpmsolver++", 2, "singlestep_fixed"),
}.items():
  SAMPLERS.add(_name, _spec)
for _form in REVERSE_FORMS:
  SAMPLERS.add(_form, _form)


def is_solver(name: str) -> bool:
  return isinstance(SAMPLERS.get(name, field="sample.sampler"), SolverMethod)


def needs_gamma(config) -> bool:
  """Analytic variances and DP trajectories need Gamma of the model being sampled."""
  s = config.sample
  return not is_solver(s.sampler) and (s.variance == "analytic" or s.trajectory == "dp")


def validate(config) -> None:
  """Checks sample.* for the chosen sampler; errors name the field."""
  s = config.sample
  SAMPLERS.get(s.sampler, field="sample.sampler")
  THRESHOLDING.get(s.get("thresholding", "none"), field="sample.thresholding")
  if is_solver(s.sampler):
    checks.positive(config, "sample.nfe")
    return
  if s.trajectory != "dp":
    reverse.TRAJECTORIES.get(s.trajectory, field="sample.trajectory")
  elif s.sampler == "ddim" and not s.get("eta", 0.0) > 0:
    raise ConfigError(f"sample.trajectory='dp' with sample.sampler=ddim needs sample.eta > 0 (got "
                      f"{s.get('eta', 0.0)!r}): the DP trajectory minimises the NLL bound, which "
                      "the deterministic DDIM (eta = 0) does not have")
  if is_state_dependent(s.variance):
    return  # any form; dpm.second_stage.validate checks that its head is trained
  if s.variance not in analytic.VARIANCES:
    raise ConfigError(f"sample.variance={s.variance!r} is invalid: expected one of "
                      f"{list(analytic.VARIANCES) + list(covariance.VARIANCES)}")
  if s.sampler == "ddpm" and s.variance == "ddim":
    raise ConfigError("sample.variance='ddim' is the DDIM form's: use sample.sampler=ddim, or a "
                      "DDPM variance (beta, beta_tilde, analytic)")
  if s.sampler == "ddim" and s.variance not in ("ddim", "analytic"):
    raise ConfigError(f"sample.variance={s.variance!r} is invalid for sample.sampler=ddim: "
                      "expected 'ddim' (eta-scaled beta_tilde) or 'analytic'")


def is_state_dependent(name: str) -> bool:
  """SN/NPR's variances (dpm/covariance.py), which read the second-stage heads."""
  return name in covariance.VARIANCES


def isotropic_config(config):
  """config, or a copy whose state-dependent sample.variance is the form's fixed one (beta_tilde
  for ddpm, ddim for ddim): what stage 1's sample grids use, before any head is trained."""
  if not is_state_dependent(config.sample.variance):
    return config
  from ml_collections import ConfigDict
  c = ConfigDict(config.to_dict())
  c.sample.variance = "ddim" if c.sample.sampler == "ddim" else "beta_tilde"
  return c


def describe(config, steps: int | None = None) -> str:
  """A file-name tag for the configured sampler: 'ddpm_beta_even_K100', 'dpm_solver++_2m_nfe10'."""
  s = config.sample
  if is_solver(s.sampler):
    return f"{s.sampler}_nfe{steps or s.nfe}"
  return f"{s.sampler}_{s.variance}_{s.trajectory}_K{steps or s.num_steps}"


def trajectory_for(config, num_steps: int, gamma: np.ndarray | None, dp_trajectory: Callable):
  s = config.sample
  if s.trajectory == "dp":
    variance = s.variance if s.sampler == "ddpm" else "analytic"
    return dp_trajectory(config, gamma, variance, [num_steps])[num_steps]
  return reverse.make_trajectory(s.trajectory, num_steps, config.diffusion.num_steps)


def build(config, process, graphdef: nnx.GraphDef, mesh, *, steps: int | None = None,
          gamma: np.ndarray | None = None, variance_for: Callable | None = None,
          dp_trajectory: Callable | None = None) -> Callable:
  """The configured sampler as a jitted (state, rng, shape) -> samples [shape], batch-sharded.

  Args:
    config: reads sample.* (and diffusion.*, analytic.* for the reverse process).
    process: the model's dpm.process.Process.
    graphdef: the noise predictor's graph; `state` is its nnx.State (the model's weights).
    mesh: the batch of samples is split over its `data` axis.
    steps: K (reverse process) or the NFE (solvers); default sample.num_steps / sample.nfe.
    gamma: Gamma_1..Gamma_N of these weights, for analytic variances and DP trajectories.
    variance_for, dp_trajectory: dpm.reports' helpers (the Analytic-DPM variance with its clips and
      the DP-optimal trajectory), passed in so that this module does not import the reports.
  """
  s = config.sample
  spec = SAMPLERS.get(s.sampler, field="sample.sampler")
  if isinstance(spec, SolverMethod):
    return _solver(spec, process, graphdef, mesh, int(steps or s.nfe),
                   s.get("thresholding", "none"))
  k = int(steps or s.num_steps)
  trajectory = trajectory_for(config, k, gamma, dp_trajectory)
  sigma2 = variance_for(config, s.variance, trajectory, s.sampler, s.eta, gamma)
  alphas_cumprod = process.alphas_cumprod
  sharding = mesh_lib.batch_sharding(mesh)

  @functools.partial(jax.jit, static_argnums=2, out_shardings=sharding)
  def sample(state, rng, shape):
    net = nnx.merge(graphdef, state)
    eps_fn = lambda x, n: net(x, process.step_input(n))
    n_rng, s_rng = jax.random.split(rng)
    x_T = jax.lax.with_sharding_constraint(jax.random.normal(n_rng, shape), sharding)
    return reverse.sample(eps_fn, x_T, s_rng, alphas_cumprod, trajectory, sigma2, spec, s.eta,
                          s.clip_denoised)

  return sample


def solver_end_time(process, nfe: int) -> float:
  """The solver's default end time at `nfe` steps: 1/N for discrete models; for continuous ones the
  paper's 1e-3 below 15 steps and 1e-4 from 15 on."""
  from dpm.solver import DPMSolver
  return DPMSolver(lambda x, t: x, process.noise_schedule).default_times(nfe)[1]


def thresholded(eps_fn: Callable, ns, kind: str) -> Callable:
  """The noise predictor eps(x, t) whose data prediction x0 = (x - sigma_t eps) / alpha_t is
  corrected by `kind` (THRESHOLDING), returned as the eps it implies: (x - alpha_t x0') / sigma_t.

  DPM-Solver++ integrates x0', exactly the published `correcting_x0_fn`; the noise-prediction
  methods integrate the implied eps, as the DDIM step with DDPM's clip_denoised does (dpm/reverse.py),
  so one switch means the same for every method (the published DPM-Solver ignores it there)."""
  correct = THRESHOLDING.get(kind, field="sample.thresholding")
  if correct is None:
    return eps_fn
  from dpm.solver.wrapper import expand_to

  def fn(x, t):
    alpha, sigma = (expand_to(v, x) for v in (ns.marginal_alpha(t), ns.marginal_std(t)))
    x0 = correct((x - sigma * eps_fn(x, t)) / alpha)
    return (x - alpha * x0) / sigma
  return fn


def _static(x0):
  return jax.numpy.clip(x0, -1.0, 1.0)


def _dynamic(x0):
  from dpm.solver.sampler import dynamic_threshold
  return dynamic_threshold(x0, ratio=0.995, max_val=1.0)


# sample.thresholding: the correction of the data prediction in the DPM-Solver methods.
THRESHOLDING: Registry = Registry("thresholding")
THRESHOLDING.add("none", None)
THRESHOLDING.add("static", _static)    # clip x0 to the data range [-1, 1] (DDPM's clip_denoised)
THRESHOLDING.add("dynamic", _dynamic)  # Imagen's dynamic thresholding, the DPM-Solver++ setting


def solve(spec: SolverMethod, process, graphdef: nnx.GraphDef, nfe: int,
          t_end: float | None = None, thresholding: str = "none") -> Callable:
  """Jitted (state, x_T) -> x_{t_end}: one solver method at `nfe` model evaluations, integrating the
  model in the time of its process (a continuous-time model on its own VP schedule, a discrete-time
  one on the interpolated alpha_bar table). t_end: the solver's default. thresholding: a name in
  THRESHOLDING, the correction of every data prediction (`thresholded`)."""
  from dpm.solver import DPMSolver, model_wrapper
  ns = process.noise_schedule

  @jax.jit
  def run(state, x):
    net = lambda x, t: nnx.merge(graphdef, state)(x, process.solver_input(t))
    model_fn = thresholded(model_wrapper(net, ns, model_type="noise"), ns, thresholding)
    solver = DPMSolver(model_fn, ns, algorithm_type=spec.algorithm_type)
    return solver.sample(x, steps=nfe, t_end=t_end, order=spec.order, method=spec.method,
                         skip_type=spec.skip_type)
  return run


def _solver(spec: SolverMethod, process, graphdef, mesh, nfe: int,
            thresholding: str = "none") -> Callable:
  run = solve(spec, process, graphdef, nfe, thresholding=thresholding)
  sharding = mesh_lib.batch_sharding(mesh)

  def sample(state, rng, shape):
    x_T = jax.device_put(jax.random.normal(jax.random.split(rng)[0], shape), sharding)
    return jax.device_put(run(state, x_T), sharding)

  return sample


def solver_method(name: str, field: str = "solver.methods") -> SolverMethod:
  spec = SAMPLERS.get(name, field=field)
  if not isinstance(spec, SolverMethod):
    raise ConfigError(f"{field} has {name!r}, a reverse-process sampler: expected a DPM-Solver "
                      f"method ({', '.join(n for n in SAMPLERS if is_solver(n))})")
  return spec
