"""DDPM on CIFAR-10 in the paper's setting (Ho et al., 2020): 35.7M-parameter U-Net (ch 128,
multipliers 1,2,2,2, 2 res blocks, attention at 16x16, dropout 0.1), linear schedule N = 1000,
Adam 2e-4 with 5,000 warmup steps, batch 128, 800k steps, EMA 0.9999, random flips.

Command:   python main.py --config=configs/dpm/ddpm_cifar10.py --workdir=runs/ddpm_cifar10
           (add --multihost on a TPU pod or multi-node GPU job)
Data:      CIFAR-10 prepared once with `tfds build cifar10 --file_format=array_record`.
Hardware:  a GPU/TPU machine (the paper: TPU v3-8, about 10.6 hours per 100k steps... 21 steps/s).
Paper:     FID 3.17, IS 9.46, NLL <= 3.75 bits/dim (L_simple). Not reproduced here (no accelerator).
Variant:   `:smoke` runs the same code path on a synthetic batch of random 32x32x3 images (seconds).
"""

from configs.dpm import base


def get_config(arg: str | None = None):
  c = base.get_config()
  c.data.update(name="cifar10", batch_size=128, random_flip=True)
  c.eval.update(num_examples=10_000, batch_size=500)
  if arg == "smoke":
    c.data.update(name="synthetic", image_size=32, channels=3)
    c = base.smoke(c, image_size=32)
  elif arg:
    raise ValueError(f"unknown variant {arg!r} of ddpm_cifar10.py: expected 'smoke' or none")
  return c
