"""SN-DPM / NPR-DPM on ImageNet 64x64: an Improved-DDPM-sized model on the cosine schedule with
N = 4000 (U-Net ch 128, multipliers 1,2,3,4, 3 res blocks, attention at 16 and 8), then the heads:
the heavy head (a residual block first), which the official code uses for SN on ImageNet 64, for
both SN and NPR; the NLL table for K = 25 ... 4000 and the sample grids.

Command:   python main.py --config=configs/dpm/sn_npr_imagenet64.py --workdir=runs/imagenet64
Data:      prepared once with `tfds build downsampled_imagenet/64x64 --file_format=array_record`.
Hardware:  a TPU pod or multi-GPU job for weeks (stage 1, add --multihost); the report GPU-hours.
Paper:     Bao et al. (ICML 2022) report ImageNet 64 too, but those rows were not found in the
           sources read so far (../shared/papers/sources/sn_npr_dpm.md, "Missing"); the Analytic-DPM
           rows on this model (Improved DDPM's, which also learns its variance) for comparison:
           NLL ET analytic 4.78 4.42 4.15 3.95 3.81 3.69 3.61 at K = 25 / 50 / 100 / 200 / 400 /
           1000 / 4000. Not reproduced here (no accelerator in this project's CI).
Expected:  NPR below analytic at every K, SN-DDIM with the best FID at small K.
Variant:   `:smoke` runs a tiny U-Net on synthetic 8x8x3 images for a few steps (seconds).
"""

from configs.dpm import solver_imagenet64, sn_npr_cifar10_ls


def get_config(arg: str | None = None):
  c = solver_imagenet64.get_config()
  c.reports = ()  # the SN/NPR report only
  c = sn_npr_cifar10_ls.paper_sn_npr(c, ks=(25, 50, 100, 200, 400, 1000, 4000))
  c.sn_npr.update(head="heavy", moment_examples=10_000, nll_examples=50_000)
  if arg == "smoke":
    c.diffusion.num_steps = 100
    c = sn_npr_cifar10_ls.smoke(c)
  elif arg:
    raise ValueError(f"unknown variant {arg!r} of sn_npr_imagenet64.py: expected 'smoke' or none")
  return c
