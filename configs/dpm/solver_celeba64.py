"""DPM-Solver on CelebA 64x64: a discrete-time DDPM model in DDIM's CelebA setting (U-Net ch 128,
multipliers 1,2,2,2,4, 2 res blocks, attention at 16x16; linear schedule, N = 1000), then DDIM,
DPM-Solver-fast and DPM-Solver++(2M)/(3M) at 10, 12, 15 and 20 NFE.

Command:   python main.py --config=configs/dpm/solver_celeba64.py --workdir=runs/ddpm_celeba64
Data:      CelebA prepared once with `tfds build celeb_a --file_format=array_record` (the image is
           centre-cropped and resized to 64x64 by common/data.py).
Hardware:  a TPU/GPU machine for days (the DDIM authors' model); the report takes minutes on a GPU.
Paper:     DPM-Solver (Lu et al., NeurIPS 2022), discrete-time CelebA 64 model (DDIM's), FID 3.71
           at 12 NFE. Not reproduced here (no accelerator in this project's CI; no FID yet).
Variant:   `:smoke` runs a tiny model on synthetic 32x32x3 images and one NFE (seconds).
"""

from configs.dpm import base


def get_config(arg: str | None = None):
  c = base.get_config()
  c.data.update(name="celeb_a", image_size=64, batch_size=128, random_flip=True)
  c.model.update(ch=128, ch_mult=(1, 2, 2, 2, 4), num_res_blocks=2, attn_resolutions=(16,),
                 dropout=0.1)
  c.optim.update(lr=2e-4, warmup_steps=5000)
  c.train.update(num_steps=500_000)
  c.reports = ("solver",)
  c.solver.update(nfes=(10, 12, 15, 20), num_samples=256)
  if arg == "smoke":
    c.data.update(name="synthetic", image_size=32, channels=3)
    c = base.smoke(c, image_size=32)
  elif arg:
    raise ValueError(f"unknown variant {arg!r} of solver_celeba64.py: expected 'smoke' or none")
  return c
