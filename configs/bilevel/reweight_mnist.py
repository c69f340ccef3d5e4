"""Paper scale: data reweighting on MNIST (stability_ho.md, `rw_mnist.py`). A random permutation of
MNIST train gives 2,000 training examples whose second half gets uniform random labels, 200
validation, 1,000 test and 200 second-validation (mval) examples; theta = MLP 784-256-10 with ELU,
lambda = 2,000 weight logits (init 0, weights sigmoid(lambda)); batch 100, inner lr 0.3, outer SGD
lr 10, T = 5,000, 5 seeds vmapped in one launch. This file is UD with K = 512; get_sweep() is the
official grid: ablo_K and rs_K for K in {64, 128, 256, 512}, wdh, wdl and wdboth at K = 512.

Command:   python main.py --config=configs/bilevel/reweight_mnist.py --workdir=runs/rw_mnist
           python -m common.sweep --config=configs/bilevel/reweight_mnist.py \
               --workdir=runs/rw_mnist_sweep
Hardware:  one GPU or TPU host (TFDS MNIST prepared in array_record format: `tfds build mnist
           --file_format=array_record`); a 2-core CPU needs about 1.5 s per UD outer step at
           K = 512 per seed (bilevel/README.md), i.e. days for the grid.
Expected:  the shapes of the CPU-scale figures (reweight_k.py, reweight_cv.py, reweight_wd.py);
           not run here (no GPU and no MNIST download in this container).
Paper:     Bao et al. (NeurIPS 2021), the reweighting figures; no numbers are published. The
           official seeds are {0, 33, 777, 1341, 25731}; ours are seed .. seed + 4 (vmapped), each
           with its own split (data.split_seed, seed), theta_0 and minibatches.
Variant:   `:smoke` runs the same code on the offline digits for a few steps (seconds).
"""

from configs.bilevel import base

KS = (64, 128, 256, 512)
WD_H = (3e-6, 1e-5, 3e-5, 1e-4, 3e-4)
WD_L = (1e-3, 3e-3, 1e-2, 3e-2, 1e-1)
WD_BOTH = ((1e-3, 3e-6), (1e-3, 1e-5), (1e-3, 3e-5), (1e-3, 1e-4))


def get_config(arg: str | None = None):
  c = base.get_config()   # the base config is this setting
  return base.variant(c, arg, "reweight_mnist.py")


def get_sweep():
  """The official grid (stability_ho.md): one launch per entry, 5 seeds each."""
  return base.official_grid(KS, WD_H, WD_L, WD_BOTH)
