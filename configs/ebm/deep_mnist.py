"""The deep EBLVM on mnist_5k by BiMDSM (or VaGES), CPU scale: samples and offline FD.

Command:   python main.py --config=configs/ebm/deep_mnist.py --workdir=runs/ebm_deep_bimdsm
           python main.py --config=configs/ebm/deep_mnist.py --workdir=runs/ebm_deep_vages_mdsm \
               --config.method=vages_mdsm
           (methods: bimdsm, bidsm, vages_mdsm, vages_dsm; `--mode=eval` redraws the samples)
Hardware:  the 2-core CPU container (main.py splits it into 4 devices). BiMDSM took 46 min wall at
           load 7-15 (27 min training, 18 min for the 500 samples; 21 min of CPU), not the 10-15
           min aimed at; --config.sample.num_samples=250 halves the sampling.
Setting:   the official MNIST deep EBLVM (configs/ebm/deep_mnist_paper.py) shrunk to the CPU:
           ResNet6 at channels 8 (official 64) with h_dim 20, the posterior's convs 16/32/64
           (official 64/128/256); 4,500 training digits of mnist_5k in [0, 1] padded to 32x32;
           BiMDSM with sigma geometric 0.1 -> 3.0 over the batch positions, sigma_0 = 0.1, K = 5
           posterior-Fisher steps, N = 0; VaGES with L = 2; Adam betas (0.9, 0.95) lr 1e-3 cosine
           (official 1e-4 over 100k steps), batch 64, 1,500 steps, EMA 0.999. Samples: h = the
           posterior mean of random training digits ("via_q"), annealed Langevin 30 steps at
           T = 100, 120 geometric 100 -> 1, 30 linear 1 -> 0 (the official 500 / 2000 / 200) at
           step 0.05 (official 0.02: fewer steps need a larger one), denoise sigma_0 = 0.1;
           500 samples for FD (the real floor is the 500 test digits against the 4,500 train).
Expected:  measured 2026-12-04 (ebm/NOTES_deep.md): bimdsm offline FD 302.0, classifier score 5.19
           (500 samples; real test digits: FD 10.2, score 9.66; a per-pixel Gaussian: FD 773).
           vages_mdsm diverges at this lr (step 28); with --config.optim.lr=1e-4 it is stable, but
           300 steps gave only FD 1063 (not enough steps at that lr).
Paper:     the BiSM and VaGES papers show MNIST samples, no FID for MNIST (sources/bism.md).
Variants:  `:smoke` (tiny nets, 4 steps, 8 samples of 6 Langevin steps, no FD) in seconds.
"""

from ml_collections import ConfigDict

from configs.ebm import base
from configs.variant import select


def deep(c: ConfigDict) -> ConfigDict:
  """The deep EBLVM's official MNIST setting (sources/bism.md, vages.md) on the ebm base config."""
  c.experiment = "deep"
  c.method = "bimdsm"            # bimdsm | bidsm | vages_mdsm | vages_dsm
  c.num_devices = 0              # all devices (main.py splits the CPU into 4)
  c.data = ConfigDict(dict(name="mnist", batch_size=100, seed=0, pad_to=32))
  c.model = ConfigDict(dict(num_hidden=20, channels=64, blocks_per_stage=2, num_stages=3))
  c.posterior = ConfigDict(dict(channels=(64, 128, 256)))
  c.loss = ConfigDict(dict(
      sigma_begin=0.1, sigma_end=3.0, sigma_spacing="geometric", sigma0=0.1,   # (bi|vages_)mdsm
      sigma=0.1,                     # (bi|vages_)dsm
      inner_steps=5,                 # K
      unroll_steps=0,                # N (BiSM)
      lower="fisher",                # the posterior Fisher divergence (cond_fisher)
      shared_noise=False,
      vages_particles=2,             # L (VaGES)
  ))
  c.optim = base.adam(1e-4)
  c.optim.schedule = "cosine"
  c.posterior_optim = base.adam(1e-4)
  c.posterior_optim.schedule = "cosine"
  c.train = ConfigDict(dict(num_steps=100_000, log_every=1000, ckpt_every=10_000, num_seeds=1,
                            keep_checkpoints=2, tensorboard=False, ema_decay=0.999))
  c.sample = ConfigDict(dict(
      init="q_mean", seed=0, num_samples=10_000, batch_size=500, num_grid=100,
      init_mean=0.5, init_std=1.0,   # the official start 0.5 + N(0, 1)
      t_max=100.0, t_min=1.0, num_hot=500, num_anneal=2000, num_cool=200,
      step_size=0.02, denoise_sigma=0.1))
  c.eval = ConfigDict(dict(fd=True))
  return c


def cpu(c: ConfigDict) -> ConfigDict:
  """The CPU budget on mnist_5k (the docstring's setting)."""
  c.data.update(name="mnist_5k", batch_size=64)
  c.model.update(channels=8)
  c.posterior.channels = (16, 32, 64)
  c.optim.lr = c.posterior_optim.lr = 1e-3
  c.train.update(num_steps=1500, log_every=100, ckpt_every=500)
  c.sample.update(num_samples=500, batch_size=100, num_hot=30, num_anneal=120, num_cool=30,
                  step_size=0.05)
  return c


def tiny(c: ConfigDict) -> ConfigDict:
  """Seconds on a CPU: the smoke of every deep config (runs the code path, not its numbers)."""
  c.data.update(batch_size=8)
  c.model.update(num_hidden=4, channels=2, blocks_per_stage=1)
  c.posterior.channels = (2, 2, 2)
  c.loss.update(inner_steps=1)
  c.train.update(num_steps=4, log_every=2, ckpt_every=2, ema_decay=0.999)
  c.sample.update(num_samples=8, batch_size=8, num_grid=8, num_hot=2, num_anneal=2, num_cool=2)
  c.eval.fd = False
  return c


def get_config(arg=None):
  return select(cpu(deep(base.get_config())), arg, __file__, smoke=tiny)
