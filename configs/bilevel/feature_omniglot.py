"""Paper scale: feature learning on Omniglot (stability_ho.md, `fl_omniglot.py`). 100 classes drawn
from the 964 background characters, images resized to 28 x 28, flattened and inverted; per class
5 train / 1 validation / 10 test / 1 mval drawings (in dataset order); lambda = Linear 784 -> 256
with ELU (the shared feature extractor), theta = MLP 256-128-100 with ELU; batch 50, inner and
outer lr 0.1, T = 10,000, 4 seeds vmapped. This file is UD with K = 256; get_sweep() is the
official grid: ablo_K and rs_K for K in {1, 4, 16, 64, 128, 256}, wdh, wdl, wdboth at K = 256.

Command:   python main.py --config=configs/bilevel/feature_omniglot.py --workdir=runs/fl_omniglot
           python -m common.sweep --config=configs/bilevel/feature_omniglot.py \
               --workdir=runs/fl_sweep
Hardware:  one GPU or TPU host with TFDS Omniglot prepared in array_record format (`tfds build
           omniglot --file_format=array_record`; bilevel/data.py reads it without TensorFlow).
           Batch 50 splits over at most 2 devices.
Expected:  the shapes of the CPU-scale feature_k.py; not run here (no GPU, no Omniglot offline).
Paper:     Bao et al. (NeurIPS 2021), the feature-learning figures; no numbers are published.
           Official seeds {33, 777, 1341, 25731}; ours are seed .. seed + 3 (vmapped).
Variant:   `:smoke` runs the same code on the offline digits for a few steps (seconds).
"""

from configs.bilevel import base

KS = (1, 4, 16, 64, 128, 256)
WD_H = (1e-3, 3e-3, 1e-2, 3e-2, 1e-1)
WD_L = (1e-2, 3e-2, 1e-1)


def get_config(arg: str | None = None):
  c = base.get_config()
  c.task = "feature"
  c.data.update(name="omniglot", num_classes=100, per_class=(5, 1, 10, 1, 1), batch_size=50,
                val_batch_size=50)
  c.model.update(features=256, head_hidden=(128,))
  c.inner.update(num_steps=256, lr=0.1)
  c.outer.lr = 0.1
  c.train.update(num_steps=10_000, num_seeds=4)
  return base.variant(c, arg, "feature_omniglot.py")


def get_sweep():
  """The official grid (stability_ho.md): one launch per entry, 4 seeds each."""
  return base.official_grid(KS, WD_H, WD_L, [(1e-2, wd) for wd in WD_H])
