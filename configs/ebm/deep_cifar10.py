"""The deep EBLVM on CIFAR-10 at the paper's scale (BiSM, arXiv 2010.07856; VaGES, 2010.08258).

Command:   python main.py --config=configs/ebm/deep_cifar10.py --workdir=runs/ebm_deep_cifar10
           (--config.method=vages_mdsm for VaGES-MDSM; --mode=eval redraws the samples)
Data:      CIFAR-10 through TFDS, prepared once with
           `tfds build cifar10 --file_format=array_record` (common/data.py).
Hardware:  a GPU (the official runs: one GPU, 300k iterations); not run here (2-core CPU).
Setting:   the official `latent_ebm_resnet` CIFAR-10 config (../shared/papers/sources/bism.md)
           and the VaGES CIFAR-10 profile (sources/vages.md): ResNet9 (channels 128, 3 ELU
           residual blocks in each of 3 mean-pool stages, widths 256 / 512 / 1024), h_dim 50;
           q = Conv3GaussQ (64 / 128 / 256); images in [0, 1]; BiMDSM with sigma linear
           0.05 -> 1.2, sigma_0 = 0.1, K = 5 posterior-Fisher steps, N = 0 (VaGES-MDSM: L = 2);
           Adam betas (0.9, 0.95), lr 5e-5 cosine, batch 100, 300,000 iterations, EMA 0.999
           (VaGES; its evaluated checkpoint is 200,000); the official split is 40k / 10k / 10k,
           here the 50k TFDS train split. Samples: annealed Langevin via q (500 at T = 100, 2,000
           geometric 100 -> 1, 200 linear 1 -> 0, step 0.02, denoise 0.1).
           No offline FD: common/classifier.py has no CIFAR-10 classifier (eval.fd = False); the
           samples (samples_step_*.npz) are kept for an Inception FID. Not implemented from the
           VaGES profile: its SGLD refinement of the particles (5 steps, alpha 1e-2, sigma 1e-4).
Expected:  not measured here. Paper: an FID table exists in the papers but its values were not
           found in the accessible sources (sources/bism.md, vages.md).
Variants:  `:smoke` runs the same code path on random 32x32x3 images with tiny networks (seconds).
"""

from configs.ebm import base, deep_mnist
from configs.variant import select


def cifar(c):
  """The CIFAR-10 / CelebA-32 deep EBLVM on top of the MNIST one."""
  c.data.update(name="cifar10", pad_to=32)
  c.model.update(num_hidden=50, channels=128, blocks_per_stage=3)
  c.loss.update(sigma_begin=0.05, sigma_end=1.2, sigma_spacing="linear", sigma0=0.1)
  c.optim.lr = c.posterior_optim.lr = 5e-5
  c.train.update(num_steps=300_000, ckpt_every=5000)
  c.sample.num_samples = 50_000   # the official `test_ckpt` writes 50k images
  c.eval.fd = False
  return c


def smoke(c):
  c.data.update(name="synthetic", image_size=32, channels=3)   # offline stand-in of the data
  return deep_mnist.tiny(c)


def get_config(arg=None):
  return select(cifar(deep_mnist.deep(base.get_config())), arg, __file__, smoke=smoke)
