"""DPM-Solver and DPM-Solver++: fast ODE samplers for diffusion models, compiled end to end.

The public DPM-Solver API (LuChengTHU/dpm-solver), re-implemented in JAX from the papers
(arXiv 2206.00927, 2211.01095):

  ns = NoiseScheduleVP("discrete", alphas_cumprod=alphas_cumprod)   # length N: alpha_bar_1..N
  model_fn = model_wrapper(model, ns, model_type="noise")
  solver = DPMSolver(model_fn, ns, algorithm_type="dpmsolver++")
  x0 = solver.sample(x_T, steps=20, order=2, skip_type="time_uniform", method="multistep")

See dpm/SOLVER.md for the methods, the measured accuracy and speed, and the differences from the
public implementations.
"""

from dpm.solver.plan import METHODS, SKIP_TYPES
from dpm.solver.sampler import ALGORITHMS, DPMSolver
from dpm.solver.schedule import SCHEDULES, NoiseScheduleVP
from dpm.solver.wrapper import GUIDANCE_TYPES, MODEL_TYPES, model_wrapper

__all__ = ["NoiseScheduleVP", "model_wrapper", "DPMSolver", "SCHEDULES", "MODEL_TYPES",
           "GUIDANCE_TYPES", "ALGORITHMS", "METHODS", "SKIP_TYPES"]
