"""SN-DPM / NPR-DPM on CelebA 64x64: the DDIM authors' model setting (U-Net ch 128, multipliers
1,2,2,2,4, 2 res blocks, attention at 16, dropout 0.1; linear schedule, N = 1000), then the light
SN and NPR heads, the NLL table and the sample grids.

Command:   python main.py --config=configs/dpm/sn_npr_celeba64.py --workdir=runs/celeba64
Data:      CelebA prepared once with `tfds build celeb_a --file_format=array_record`
           (centre-cropped and resized to 64x64 by common/data.py; the official crop is rows
           57-185, cols 25-153).
Hardware:  a TPU/GPU machine for days (stage 1); the report takes GPU-hours.
Paper:     Bao et al. (ICML 2022), CelebA 64, K = 10 / 25 / 50 / 100 / 200:
           NLL (bits/dim)   NPR-DDPM 4.46 3.78 3.40 3.11 2.89;  Analytic-DDPM 4.54 3.89 3.48 3.16 2.92
           FID (50k)        SN-DDIM 10.20 5.48 3.83 3.04 2.85;  NPR-DDIM 14.98 8.93 6.04 4.27 3.59
                            SN-DDPM 20.60 12.00 7.88 5.89 5.02; NPR-DDPM 28.37 15.74 10.89 8.23 7.03
                            Analytic-DDIM 15.62 9.22 6.13 4.29 3.46; DDPM 36.69 24.46 18.96 14.31 10.48.
           Sampling clip c = 2 (DDPM form), 1 (DDIM). The official CelebA head's last conv has the
           default (not zero) initialisation; this config keeps the zero-initialised light head.
           Not reproduced here (no accelerator in this project's CI).
Expected:  the paper's rows with the official backbone; the same ordering with one trained here.
Variant:   `:smoke` runs a tiny U-Net on synthetic 8x8x3 images for a few steps (seconds).
"""

from configs.dpm import solver_celeba64, sn_npr_cifar10_ls


def get_config(arg: str | None = None):
  c = solver_celeba64.get_config()
  c.reports = ()  # the SN/NPR report only
  c = sn_npr_cifar10_ls.paper_sn_npr(c)
  c.sn_npr.update(moment_examples=10_000, nll_examples=19_962)  # the paper's M; the test split
  if arg == "smoke":
    c = sn_npr_cifar10_ls.smoke(c)
  elif arg:
    raise ValueError(f"unknown variant {arg!r} of sn_npr_celeba64.py: expected 'smoke' or none")
  return c
