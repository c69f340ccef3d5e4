"""DPM-Solver on CIFAR-10: the discrete-time DDPM model of ddpm_cifar10.py sampled with DDIM,
DPM-Solver-fast and DPM-Solver++(2M)/(3M) at 10, 12, 15 and 20 NFE (sample grids, and each method's
RMSE to a 200-NFE solution of the same ODE).

Command:   python main.py --config=configs/dpm/solver_cifar10.py --workdir=runs/ddpm_cifar10
           (trains the 800k-step DDPM model first if the workdir has none; else only the report)
Data:      CIFAR-10 prepared once with `tfds build cifar10 --file_format=array_record`.
Hardware:  training as ddpm_cifar10.py (TPU/GPU, days); the report takes minutes on one GPU.
Paper:     DPM-Solver (Lu et al., NeurIPS 2022). Discrete-time CIFAR-10 model (DDPM's), 12 NFE:
           FID 4.65. CIFAR-10 continuous VP (score_sde's deep VP network): FID 4.70 / 3.75 / 3.24 /
           2.87 at 10 / 12 / 15 / 20 NFE (DPM-Solver-fast); DPM-Solver-2 at 12 / 18 / 24 / 48 NFE:
           5.28 / 3.43 / 3.02 / 2.69; DPM-Solver-3: 6.03 / 2.90 / 2.75 / 2.65. The continuous-VP
           rows are configs/dpm/solver_cifar10_continuous.py (a continuous-time VP model). No FID
           is computed by default; the paper's FID protocol (50,000 samples per method and NFE,
           against the CIFAR-10 train statistics) is
             --config.solver.quality_samples=50000 --config.eval.metric=fid \
             --config.eval.inception_weights=<pt_inception.npz> [--config.eval.fid_stats=<.npz>]
           (docs/EVALUATION.md). The Inception features alone run at 3-10 images/s on 2 CPU cores
           (1.4-5 h per 50,000); this needs an accelerator. Not reproduced here (no accelerator).
Variant:   `:smoke` runs a tiny model on synthetic 32x32x3 images and one NFE (seconds).
"""

from configs.dpm import ddpm_cifar10


def get_config(arg: str | None = None):
  c = ddpm_cifar10.get_config(arg)
  c.reports = ("solver",)
  if arg != "smoke":
    c.solver.update(nfes=(10, 12, 15, 20), num_samples=256)
  return c
