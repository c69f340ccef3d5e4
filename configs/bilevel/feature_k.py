"""Feature learning at CPU scale: UD learns a shared feature extractor (Linear 64 -> 32, ELU) as the
hyperparameter, with a linear head as theta, K = 1, 4, 16, 64 inner steps, on the 8x8 digits (10
classes; per class 10 train / 4 val / 50 test / 4 mval examples), 2 seeds.

Command:   python main.py --config=configs/bilevel/feature_k.py --workdir=runs/bilevel_feature
Hardware:  2 CPU cores, about a minute.
Expected:  the validation loss falls far below the test loss and the gap grows with t; small K
           underfits (bilevel/README.md).
Paper:     Bao et al. (NeurIPS 2021), feature learning on Omniglot (100 classes, 5/1/10 per class,
           K in {1, 4, 16, 64, 128, 256}; feature_omniglot.py): the same shapes, no numbers.
           Omniglot is not available offline; digits stand in.
Variant:   `:smoke` runs two tiny variants for a few steps (seconds).
"""

from ml_collections import ConfigDict

from configs.bilevel import base


def get_config(arg: str | None = None):
  c = base.digits(base.get_config())
  c.task = "feature"
  c.data.update(num_classes=10, per_class=(10, 4, 50, 4, 1), batch_size=20, val_batch_size=20)
  c.model.update(features=32, head_hidden=())
  c.inner.lr = 0.3
  c.outer.lr = 0.1   # 0.3 diverged (NaN) at K = 16 in one seed
  c.train.update(num_steps=2000, log_every=25, num_seeds=2)
  c.variants = ConfigDict({f"k{k}": {"inner": {"num_steps": k}} for k in (1, 4, 16, 64)})
  return base.variant(c, arg, "feature_k.py")
