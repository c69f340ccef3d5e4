"""SN-DPM / NPR-DPM on CIFAR-10, linear schedule (the paper's "CIFAR10 (LS)" rows): a stage-1
noise predictor in the official backbone's setting (U-Net ch 128, multipliers 1,2,2,2, 3 res
blocks, attention at 16 and 8, dropout 0.3; N = 1000), then the light SN and NPR heads on its last
feature map (Adam 1e-4, batch 128, EMA 0.9999), the NLL table on the 10,000 test images and the
sample grids.

Command:   python main.py --config=configs/dpm/sn_npr_cifar10_ls.py --workdir=runs/cifar10_ls
           (trains stage 1 first if the workdir has none; or --config.sn_npr.init_from=<a trained
           stage-1 workdir> to train the heads only, under <workdir>/sn_npr/)
Data:      CIFAR-10 prepared once with `tfds build cifar10 --file_format=array_record`.
Hardware:  a TPU/GPU machine: days for stage 1; stage 2 costs about a third of a stage-1 step per
           step (benchmarks/sn_npr_speed.py); the report (moments from 50,000 images at 1,000
           timesteps, the NLL over 10,000 test images) a few GPU-hours.
Paper:     Bao et al., "Estimating the Optimal Covariance with Imperfect Mean in Diffusion
           Probabilistic Models" (ICML 2022), CIFAR10 (LS), K = 10 / 25 / 50 / 100 / 200:
           NLL (bits/dim)   NPR-DDPM 5.40 4.64 4.25 3.98 3.79;  Analytic-DDPM 5.47 4.79 4.38 4.07 3.84
                            SN-DDPM 30.79 11.83 7.13 5.24 4.39 (as cited by a later paper)
           FID (50k)        SN-DDIM 12.19 4.28 3.39 3.23 3.22;  NPR-DDIM 13.34 5.38 3.95 3.53 3.42
                            SN-DDPM 24.06 6.91 4.63 3.67 3.11;  NPR-DDPM 32.35 10.55 6.18 4.52 3.57
                            Analytic-DDIM 14.00 5.81 4.04 3.55 3.39; DDPM (beta_tilde) 44.45 21.83
                            15.21 10.94 8.23. Sampling clip c = 2 (DDPM form), 1 (DDIM form).
           Not reproduced here (no accelerator in this project's CI); the FD columns come from the
           offline FD of the evaluation issue.
Expected:  the paper's rows with the official backbone weights; with a backbone trained here, the
           same ordering (NPR < Analytic < beta_tilde in NLL; SN-DDIM best in FID at small K).
Variant:   `:smoke` runs a tiny U-Net on synthetic 8x8x3 images, a few head steps and a one-form,
           one-K table (seconds).
"""

from ml_collections import ConfigDict

from configs.dpm import base, ddpm_cifar10, sn_npr_mnist


def paper_sn_npr(c: ConfigDict, ks=(10, 25, 50, 100, 200, 1000)) -> ConfigDict:
  """The official second-stage settings (../shared/papers/sources/sn_npr_dpm.md)."""
  c = sn_npr_mnist.enable(c)
  c.sn_npr.update(num_steps=500_000, log_every=1000, ckpt_every=10_000, ema_decay=0.9999,
                  moment_examples=50_000, moment_batch=500, ks=ks, forms=("ddpm", "ddim"),
                  nll_examples=10_000, nll_batch=500, grid_ks=(10, 25), grid_samples=64)
  c.sn_npr.optim.update(lr=1e-4, warmup_steps=0, schedule="constant", grad_clip=0.0)
  return c


def smoke(c: ConfigDict, image_size: int = 8) -> ConfigDict:
  """A seconds-long run of any paper-scale SN/NPR config: a tiny U-Net on 8x8x3 synthetic images,
  a few head steps, one form, even steps, two variances and one K. It checks the config's
  plumbing; the numerics of every variance are tested on the MNIST smoke and in the unit tests."""
  c.data.update(name="synthetic", image_size=image_size, channels=3)
  c = base.smoke(c, image_size=image_size)
  c.reports = ()   # the other dpm reports have their own smoke configs
  c.sn_npr.update(forms=("ddpm",), trajectories=("even",), grid_ks=(), ks=(2,),
                  variances=("analytic", "npr"), dp_variances=())
  return c


def get_config(arg: str | None = None):
  c = ddpm_cifar10.get_config()
  c.diffusion.schedule = "linear"
  c.model.update(ch=128, ch_mult=(1, 2, 2, 2), num_res_blocks=3, attn_resolutions=(16, 8),
                 dropout=0.3)
  c = paper_sn_npr(c)
  if arg == "smoke":
    c = smoke(c)
  elif arg:
    raise ValueError(f"unknown variant {arg!r} of sn_npr_cifar10_ls.py: expected 'smoke' or none")
  return c
