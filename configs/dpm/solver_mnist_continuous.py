"""A continuous-time VP model of MNIST sampled by DPM-Solver: the CPU-scale counterpart of
solver_cifar10_continuous.py. The U-Net, data, optimiser and 2,000 steps of ddpm_mnist.py, trained in
continuous time on the linear VP-SDE (beta_0 = 0.1, beta_1 = 20; t ~ U(1e-5, 1), network input 999 t),
then the solver report: DDIM, DPM-Solver-fast and DPM-Solver++(2M)/(3M) at NFE 10, 15, 20 with
NoiseScheduleVP("linear"), each one's RMSE to a 200-NFE solution and offline FD over 500 samples,
and sample grids. Sampling clips each data prediction to [-1, 1] (ddpm_mnist.py's thresholding).

Command:   python main.py --config=configs/dpm/solver_mnist_continuous.py --workdir=runs/vp_mnist
Outputs:   runs/vp_mnist/samples/ (DDPM-form grids of the model's 1000-step discretisation, during
           training), runs/vp_mnist/solver/{samples_step_*.png, error_step_*.{json,md},
           quality_step_*.{json,md}}
Hardware:  2 CPU cores, about as long as ddpm_mnist.py plus the report (README).
Paper:     DPM-Solver's continuous-VP CIFAR-10 rows (solver_cifar10_continuous.py); the claim to show
           here is that DPM-Solver at 10-20 NFE is much closer to the ODE solution than DDIM.
Variant:   `:smoke` runs a tiny model for a few steps and one NFE (seconds).
"""

from configs.dpm import ddpm_mnist


def get_config(arg: str | None = None):
  c = ddpm_mnist.get_config(arg)
  c.diffusion.update(time="continuous", schedule="linear", continuous_beta_0=0.1,
                     continuous_beta_1=20.0, t_eps=1e-5, time_scale=999.0)
  c.reports = ("solver",)
  if arg != "smoke":  # the offline FD of each column over 500 samples, as solver_mnist.py
    c.solver.quality_samples = 500
  return c
