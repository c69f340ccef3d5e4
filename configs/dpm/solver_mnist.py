"""DPM-Solver on the MNIST model of ddpm_mnist.py: sample grids at NFE 10, 15 and 20 for DDIM,
DPM-Solver-fast and DPM-Solver++(2M)/(3M) from the same noise, and each one's RMSE to a 200-NFE
solution of the same probability-flow ODE (how far each is from the ODE's answer).

Command:   python main.py --config=configs/dpm/solver_mnist.py --workdir=runs/ddpm_mnist
           (trains the ddpm_mnist model first if the workdir has none; with a trained workdir it
           only runs the report, like --mode=report)
Outputs:   runs/ddpm_mnist/solver/{samples_step_*.png, error_step_*.{json,md},
           quality_step_*.{json,md} (offline FD of 500 samples per method and NFE)}
Hardware:  any; seconds on a GPU, 13 minutes on 2 CPU cores (README, measured).
Paper:     DPM-Solver (Lu et al., NeurIPS 2022) reports CIFAR-10 FID 4.70 at 10 NFE and 2.87 at 20
           (solver_cifar10_continuous.py); the claim to show here is that at 10-20 NFE DPM-Solver is much
           closer to the ODE solution than DDIM at the same NFE.
Variant:   `:smoke` runs a tiny model for a few steps and one NFE (seconds).
"""

from configs.dpm import ddpm_mnist


def get_config(arg: str | None = None):
  c = ddpm_mnist.get_config(arg)
  c.reports = ("solver",)
  if arg != "smoke":  # the offline FD of each column over 500 samples (the test split's size)
    c.solver.quality_samples = 500
  return c
