"""Analytic-DPM on CIFAR-10, linear schedule (the paper's "CIFAR10 (LS)" rows): the DDPM model of
ddpm_cifar10.py, then the NLL table on the 10,000 test images for K = 10 ... 1000 (beta, beta_tilde,
analytic; even and DP trajectories) with Gamma from 50,000 training images, and sample grids.

Command:   python main.py --config=configs/dpm/analytic_cifar10_ls.py --workdir=runs/ddpm_cifar10
           (trains the 800k-step DDPM model first if the workdir has none; with a trained workdir,
           only the report)
Data:      CIFAR-10 prepared once with `tfds build cifar10 --file_format=array_record`.
Hardware:  the model: a TPU/GPU machine for days (see ddpm_cifar10.py). The report: Gamma is 50,000
           x 1,000 U-Net passes and the table about 6,000 passes over the 10,000 test images, i.e.
           ~1.1e8 image passes of a 35.7M-parameter U-Net: a few GPU-hours on one H100/H200.
Paper:     Analytic-DPM (Bao et al., ICLR 2022), Table 1, CIFAR10 (LS), NLL bits/dim,
           K =                     10     25     50     100    200    400    1000
           even, beta_tilde        74.95  24.98  12.01  7.08   5.03   4.29   3.73
           even, beta              6.99   6.11   5.44   4.86   4.39   4.07   3.75
           even, analytic          5.47   4.79   4.38   4.07   3.84   3.71   3.59
           DP, beta                5.38   4.34   3.97   3.82   3.77   3.75   3.75
           DP, analytic            4.11   3.68   3.61   3.59   3.59   3.59   3.59
           FID (even, 50k samples): DDPM 44.45 21.83 15.21 10.94 8.23 (K = 10 ... 200);
           Analytic-DDPM 34.26 11.60 7.25 5.40 4.01; DDIM 21.31 10.70 7.74 6.08 5.07;
           Analytic-DDIM 14.00 5.81 4.04 3.55 3.39. Sampling clip c = 2 (DDPM form, linear).
           Those FID columns: add --config.analytic.quality_samples=50000
           "--config.analytic.quality_ks=(10,25,50,100,200)" --config.eval.metric=fid
           --config.eval.inception_weights=<pt_inception.npz> (docs/EVALUATION.md); 4 samplers x
           385 steps x 50,000 images of U-Net passes plus the Inception features: GPU-hours.
           Not reproduced here (no accelerator in this project's CI); the MNIST rows in the README
           show the same trends.
Variant:   `:smoke` runs a tiny model on synthetic 32x32x3 images and a two-K table (seconds).
"""

from configs.dpm import ddpm_cifar10


def get_config(arg: str | None = None):
  c = ddpm_cifar10.get_config(arg)
  c.diffusion.schedule = "linear"
  c.reports = ("analytic",)
  if arg != "smoke":
    c.analytic.update(gamma_examples=50_000, ks=(10, 25, 50, 100, 200, 400, 1000),
                      nll_examples=10_000, nll_batch=500)
  return c
