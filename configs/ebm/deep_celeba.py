"""The deep EBLVM on CelebA 32x32 at the paper's scale (BiSM, arXiv 2010.07856).

Command:   python main.py --config=configs/ebm/deep_celeba.py --workdir=runs/ebm_deep_celeba
           (--config.method=vages_mdsm for VaGES-MDSM; --mode=eval redraws the samples)
Data:      CelebA through TFDS, prepared once with
           `tfds build celeb_a --file_format=array_record` (common/data.py: central 140x140 crop,
           resized to data.image_size = 32), random horizontal flips.
Hardware:  a GPU; not run here (2-core CPU container).
Setting:   the official `latent_ebm_resnet` CelebA config (../shared/papers/sources/bism.md): as
           configs/ebm/deep_cifar10.py (ResNet9 channels 128, h_dim 50, Conv3GaussQ, BiMDSM sigma
           linear 0.05 -> 1.2, sigma_0 = 0.1, K = 5 posterior Fisher, N = 0, Adam (0.9, 0.95) lr
           5e-5 cosine, batch 100, 300,000 iterations) on CenterCrop140 -> Resize32 with flips.
           The VaGES CelebA profile (sources/vages.md) is 64x64 on 4 GPUs (--config.data.image_size=64
           --config.data.pad_to=64; its 50 SGLD particle-refinement steps are not implemented).
           No offline FD: common/classifier.py has no CelebA classifier (eval.fd = False).
Expected:  not measured here. Paper: FID values not found in the accessible sources.
Variants:  `:smoke` runs the same code path on random 32x32x3 images with tiny networks (seconds).
"""

from configs.ebm import base, deep_cifar10, deep_mnist
from configs.variant import select


def celeba(c):
  c = deep_cifar10.cifar(c)
  c.data.update(name="celeb_a", image_size=32, random_flip=True)
  return c


def get_config(arg=None):
  return select(celeba(deep_mnist.deep(base.get_config())), arg, __file__,
                smoke=deep_cifar10.smoke)
