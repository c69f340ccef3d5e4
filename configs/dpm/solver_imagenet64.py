"""DPM-Solver on ImageNet 64x64 (unconditional): a discrete-time model on the cosine schedule with
N = 4000 as in Improved DDPM (Nichol & Dhariwal, 2021), with this codebase's U-Net at that size
(ch 128, multipliers 1,2,3,4, 3 res blocks, attention at 16 and 8), then DDIM, DPM-Solver-fast and
DPM-Solver++(2M)/(3M) at 10, 12, 15 and 20 NFE.

Command:   python main.py --config=configs/dpm/solver_imagenet64.py --workdir=runs/imagenet64
Data:      prepared once with `tfds build downsampled_imagenet/64x64 --file_format=array_record`
           (data.name='imagenet64').
Hardware:  a TPU pod or multi-GPU job for weeks (add --multihost); the report: minutes on a GPU.
Paper:     DPM-Solver (Lu et al., NeurIPS 2022), discrete-time ImageNet 64 model (Improved DDPM's,
           which also learns the variance: L_hybrid; this codebase trains the eps loss only), FID
           19.97 at 12 NFE. Not reproduced here (no accelerator in this project's CI; no FID yet).
Variant:   `:smoke` runs a tiny model on synthetic 32x32x3 images and one NFE (seconds).
"""

from configs.dpm import base


def get_config(arg: str | None = None):
  c = base.get_config()
  c.data.update(name="imagenet64", batch_size=128)
  c.diffusion.update(schedule="cosine", num_steps=4000)
  c.model.update(ch=128, ch_mult=(1, 2, 3, 4), num_res_blocks=3, attn_resolutions=(16, 8),
                 dropout=0.0)
  c.optim.update(lr=1e-4, warmup_steps=0)
  c.train.update(num_steps=1_500_000)
  c.reports = ("solver",)
  c.solver.update(nfes=(10, 12, 15, 20), num_samples=256)
  if arg == "smoke":
    c.data.update(name="synthetic", image_size=32, channels=3)
    c.diffusion.num_steps = 100
    c = base.smoke(c, image_size=32)
  elif arg:
    raise ValueError(f"unknown variant {arg!r} of solver_imagenet64.py: expected 'smoke' or none")
  return c
