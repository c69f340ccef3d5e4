"""SN-DPM and NPR-DPM on the MNIST model of ddpm_mnist.py: the second stage (light covariance
heads on the frozen U-Net's last feature map, SN and NPR trained together) and the NLL table for
K = 10, 25, 50, 100 (beta_tilde, analytic, NPR, SN and their dimension-averaged ablations; DDPM
and DDIM (eta = 0.5) forms; even and DP trajectories), plus sample grids at K = 10 and 25.

Command:   python main.py --config=configs/dpm/sn_npr_mnist.py --workdir=runs/ddpm_mnist
           (trains the ddpm_mnist U-Net first if the workdir has none, then the heads under
           runs/ddpm_mnist/sn_npr/; or take the U-Net of another run and write nothing into it:
           --workdir=runs/sn_npr_mnist --config.sn_npr.init_from=runs/ddpm_mnist)
           python main.py --config=configs/dpm/sn_npr_mnist.py --workdir=runs/ddpm_mnist \\
               --mode=sample --config.sample.variance=sn --config.sample.sampler=ddim \\
               --config.sample.num_steps=10
Outputs:   <workdir>/sn_npr/{checkpoints, metrics.jsonl, report/nll_step_*.{json,md},
           report/moments.json, report/samples_step_*.png}
Hardware:  2 CPU cores: 1,000 head steps in minutes, the report (moments at all 1,000 timesteps
           from 100 training digits, the NLL on 500 test digits) in tens of minutes; dpm/README.md
           has the measured times and numbers.
Expected:  NPR below analytic at every K in both forms (dpm/README.md has the measured table).
Paper:     Bao et al. (ICML 2022) report CIFAR-10 / CelebA / ImageNet only; their claims: NPR gives
           the best likelihood (CIFAR-10 LS NPR-DDPM 5.40 / 4.64 / 4.25 / 3.98 / 3.79 bits/dim at
           K = 10 / 25 / 50 / 100 / 200 vs Analytic-DDPM 5.47 / 4.79 / 4.38 / 4.07 / 3.84), SN the best
           samples at small K (SN-DDIM FID 12.19 / 4.28 / 3.39 / 3.23 / 3.22). sn_npr_cifar10_*.py,
           sn_npr_celeba64.py, sn_npr_imagenet64.py hold the paper-scale settings.
Variant:   `:smoke` runs a tiny U-Net and heads for a few steps and a two-K table (seconds).
"""

from ml_collections import ConfigDict

from configs.dpm import ddpm_mnist


def enable(c: ConfigDict) -> ConfigDict:
  """Turns a dpm config into a two-stage SN/NPR run: heads after stage 1, then the report."""
  c.sn_npr.enabled = True
  c.reports = tuple(r for r in c.reports if r != "sn_npr") + ("sn_npr",)
  return c


def get_config(arg: str | None = None):
  c = enable(ddpm_mnist.get_config(arg))
  return c
