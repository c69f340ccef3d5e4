"""Analytic-DPM on CIFAR-10, cosine schedule (the paper's "CIFAR10 (CS)" rows): the DDPM U-Net of
ddpm_cifar10.py trained on the cosine schedule (Nichol & Dhariwal, 2021), then the NLL table on the
10,000 test images for K = 10 ... 1000 and sample grids.

Command:   python main.py --config=configs/dpm/analytic_cifar10_cs.py --workdir=runs/ddpm_cifar10_cs
Data:      CIFAR-10 prepared once with `tfds build cifar10 --file_format=array_record`.
Hardware:  as analytic_cifar10_ls.py: days of TPU/GPU time to train, a few GPU-hours for the report.
Paper:     Analytic-DPM (Bao et al., ICLR 2022), Table 1, CIFAR10 (CS), NLL bits/dim,
           K =                     10     25     50     100    200    400    1000
           even, analytic          5.08   4.45   4.09   3.83   3.64   3.53   3.42
           DP, analytic            3.99   3.56   3.47   3.44   3.43   3.42   3.42
           (the paper's CS model was trained by the authors; its fixed-variance rows are in the
           paper's Table 1). Sampling clip c = 1 (cosine schedule).
           Not reproduced here (no accelerator in this project's CI).
Variant:   `:smoke` runs a tiny model on synthetic 32x32x3 images and a two-K table (seconds).
"""

from configs.dpm import analytic_cifar10_ls


def get_config(arg: str | None = None):
  c = analytic_cifar10_ls.get_config(arg)
  c.diffusion.schedule = "cosine"
  return c
