"""The deep EBLVM on MNIST at the paper's scale (BiSM, arXiv 2010.07856; VaGES, arXiv 2010.08258).

Command:   python main.py --config=configs/ebm/deep_mnist_paper.py --workdir=runs/ebm_deep_mnist_paper
           (--config.method=vages_mdsm for VaGES-MDSM; --mode=eval redraws samples and FD)
Data:      full MNIST through TFDS, prepared once with
           `tfds build mnist --file_format=array_record` (common/data.py).
Hardware:  a GPU (the official runs: one GPU per model); not run here (2-core CPU container).
Setting:   the official `latent_ebm_resnet` MNIST config (../shared/papers/sources/bism.md) and the
           VaGES `profiles/eblvm` MNIST profile (sources/vages.md):
           E(v, h) = sum ELU(A [f(v) + h; h] + b)^2, f = Linear(ResNet6: channels 64, 2 ELU
           residual blocks in each of 3 mean-pool stages), images in [0, 1] padded to 32x32;
           h_dim 20 (BiSM's choices 20 / 50 / 100; VaGES uses 50); q = Conv3GaussQ (stride-2 convs
           64 / 128 / 256, LeakyReLU 0.2, diagonal Gaussian); BiMDSM with sigma geometric
           0.1 -> 3.0 over the batch positions, sigma_0 = 0.1, K = 5 posterior-Fisher steps,
           N = 0 (VaGES-MDSM: L = 2, K = 5, posterior Fisher); Adam betas (0.9, 0.95), lr 1e-4
           cosine, batch 100, 100,000 iterations, EMA 0.999 (VaGES). Samples: annealed Langevin
           via q (h = q-mean of random training images), 500 steps at T = 100, 2,000 geometric
           100 -> 1, 200 linear 1 -> 0, step 0.02, denoise sigma_0 = 0.1; 10,000 samples for the
           offline FD (common/classifier.py's MNIST classifier; the official code has no FID).
           Not implemented from the VaGES profile: its 5 SGLD steps on h refining the particles.
Expected:  not measured here. Paper: MNIST samples shown; no MNIST FID reported (sources/*.md).
Variants:  `:smoke` runs the same code path offline on mnist_5k with tiny networks (seconds).
"""

from configs.ebm import base, deep_mnist
from configs.variant import select


def smoke(c):
  c.data.name = "mnist_5k"   # offline: the TFDS MNIST may not be prepared
  return deep_mnist.tiny(c)


def get_config(arg=None):
  return select(deep_mnist.deep(base.get_config()), arg, __file__, smoke=smoke)
