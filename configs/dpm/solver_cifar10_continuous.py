"""DPM-Solver on a continuous-time VP model of CIFAR-10: the paper's "CIFAR-10 continuous VP" rows.

Training is score_sde's "DDPM cont. (VP)" setting: the DDPM U-Net of ddpm_cifar10.py (35.7M
parameters) trained in continuous time on the linear VP-SDE (beta_0 = 0.1, beta_1 = 20): t ~ U(1e-5, 1),
x_t = alpha_t x_0 + sigma_t eps, the network sees 999 t, the simple eps loss (reduce_mean, no
likelihood weighting); Adam 2e-4, 5,000 warmup steps, grad clip 1, batch 128, 1.3M steps, EMA 0.9999,
random flips. The solver report then samples with NoiseScheduleVP("linear") in the model's own time
(DDIM, DPM-Solver-fast, DPM-Solver++(2M)/(3M) at 10, 12, 15 and 20 NFE; RMSE to a 200-NFE solution).
The evaluation grid during training (and Analytic-DPM, if asked) uses the model's discretisation to
N = 1000 steps, t_n = n / 1000 (dpm/process.py).

Command:   python main.py --config=configs/dpm/solver_cifar10_continuous.py --workdir=runs/cifar10_vp
           (trains first if the workdir has no checkpoint; the report runs after training, or alone
           with --mode=report)
Data:      CIFAR-10 prepared once with `tfds build cifar10 --file_format=array_record`.
Hardware:  a GPU/TPU machine (days of training); the report takes minutes on one GPU.
Paper:     DPM-Solver (Lu et al., NeurIPS 2022), CIFAR-10 continuous VP, DPM-Solver-fast:
           FID 4.70 / 3.75 / 3.24 / 2.87 at 10 / 12 / 15 / 20 NFE; DPM-Solver-2 at 12 / 18 / 24 / 48
           NFE: 5.28 / 3.43 / 3.02 / 2.69; DPM-Solver-3: 6.03 / 2.90 / 2.75 / 2.65. The paper's model is
           score_sde's deeper continuous-VP network, which this codebase does not implement, so a
           run of this config is expected to give higher FIDs at every NFE, with the same ordering
           of the solvers. No FID is computed yet (the evaluation issue). Not reproduced here (no
           accelerator in this project's CI).
Variant:   `:smoke` runs a tiny model on synthetic 32x32x3 images and one NFE (seconds).
"""

from configs.dpm import ddpm_cifar10


def get_config(arg: str | None = None):
  c = ddpm_cifar10.get_config(arg)
  c.diffusion.update(time="continuous", schedule="linear", continuous_beta_0=0.1,
                     continuous_beta_1=20.0, t_eps=1e-5, time_scale=999.0)
  c.reports = ("solver",)
  if arg != "smoke":
    c.train.num_steps = 1_300_000
    c.diffusion.num_steps = 1000
    c.solver.update(nfes=(10, 12, 15, 20), num_samples=256)
  return c
