"""SN-DPM / NPR-DPM on CIFAR-10, cosine schedule (the paper's "CIFAR10 (CS)" rows): as
sn_npr_cifar10_ls.py with the cosine schedule (Nichol & Dhariwal, 2021).

Command:   python main.py --config=configs/dpm/sn_npr_cifar10_cs.py --workdir=runs/cifar10_cs
Data:      CIFAR-10 prepared once with `tfds build cifar10 --file_format=array_record`.
Hardware:  as sn_npr_cifar10_ls.py (TPU/GPU days for stage 1; GPU-hours for the report).
Paper:     Bao et al. (ICML 2022), CIFAR10 (CS), K = 10 / 25 / 50 / 100 / 200:
           NLL (bits/dim)   NPR-DDPM 5.03 4.33 3.99 3.76 3.59;  Analytic-DDPM 5.08 4.45 4.09 3.83 3.64
           FID (50k)        SN-DDPM 16.33 6.05 4.17 3.83 3.72;  NPR-DDPM 19.94 7.99 5.31 4.52 4.10
                            SN-DDIM 17.90 7.36 5.16 4.63 4.63;  NPR-DDIM 22.81 9.47 6.04 5.02 5.06
                            Analytic-DDPM 22.94 8.50 5.50 4.45 4.04; DDPM 34.76 16.18 11.11 8.38 6.66.
           Sampling clip c = 1 (cosine schedule). Not reproduced here (no accelerator in CI).
Expected:  the paper's rows with the official backbone; the same ordering with one trained here.
Variant:   `:smoke` runs a tiny U-Net on synthetic 8x8x3 images for a few steps (seconds).
"""

from configs.dpm import sn_npr_cifar10_ls


def get_config(arg: str | None = None):
  c = sn_npr_cifar10_ls.get_config(arg)
  c.diffusion.schedule = "cosine"
  return c
