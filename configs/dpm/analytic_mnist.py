"""Analytic-DPM on the MNIST model of ddpm_mnist.py: the NLL table (bits/dim) for K = 10 ... 1000 with
the beta, beta_tilde and analytic variances on the even and DP-optimal trajectories, and sample grids
at K = 10 and 25 (DDPM vs Analytic-DDPM, DDIM vs Analytic-DDIM) from the same noise.

Command:   python main.py --config=configs/dpm/analytic_mnist.py --workdir=runs/ddpm_mnist
           (trains the ddpm_mnist model first if the workdir has none; with a trained workdir it
           only runs the report, like --mode=report)
Outputs:   runs/ddpm_mnist/analytic/{gamma.json, nll_step_*.{json,md,png}, samples_step_*.png,
           quality_step_*.{json,md} (offline FD of 500 samples at K = 10, 25, 50, 100)}
           (`--config.analytic.ks='()'` skips the NLL table, for the FD columns alone)
Hardware:  any; the report is ~6,000 passes of the U-Net over the 500 test images plus Gamma from
           1,000 training images at all 1,000 timesteps: about a minute on one GPU, hours on 2 CPU
           cores (see the README for measured times).
Paper:     Analytic-DPM (Bao et al., ICLR 2022) Table 1 reports CIFAR-10 / CelebA / ImageNet only;
           its claims to show here: analytic < beta < beta_tilde at every K, the gain largest at small
           K, and the DP trajectory below the even one. CIFAR-10 rows: analytic_cifar10_ls.py, _cs.py.
Variant:   `:smoke` runs a tiny model for a few steps and a two-K table (seconds).
"""

from configs.dpm import ddpm_mnist


def get_config(arg: str | None = None):
  c = ddpm_mnist.get_config(arg)
  c.reports = ("analytic",)
  if arg != "smoke":  # the offline FD of each column over 500 samples (the test split's size)
    c.analytic.quality_samples = 500
  return c
