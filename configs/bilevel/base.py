"""Base config of the bilevel family; experiment configs override only what differs.

The defaults are the paper's data-reweighting setting (stability_ho.md, `rw_mnist.py`) on TFDS
MNIST; the CPU-scale figure configs shrink it to the 8x8 digits.
"""

from ml_collections import ConfigDict

from configs.variant import select


def get_config() -> ConfigDict:
  c = ConfigDict()
  c.family = "bilevel"
  c.seed = 0                  # seeds seed .. seed + train.num_seeds - 1, vmapped
  c.task = "reweight"         # bilevel/tasks.py TASKS: reweight | feature
  c.method = "ud"             # bilevel/methods.py METHODS: ud | random_search
  c.num_devices = 0           # devices the batches are sharded over (0: all; CPU configs: 1)

  c.data = ConfigDict(dict(
      name="mnist",           # bilevel/data.py POOLS: mnist_5k, digits (offline), mnist, omniglot
      tfds_data_dir="",       # '' -> $TFDS_DATA_DIR or ~/tensorflow_datasets
      cache=True,             # keep a parsed TFDS pool in the user cache
      seed=0,                 # the minibatch streams: (data.seed, seed, step)
      split_seed=0,           # the split of seed s: numpy seed (split_seed, s)
      # Reweighting: a permutation cut into these parts; train's second half gets random labels.
      num_train=2000, num_val=200, num_test=1000, num_mval=200,
      num_pool=8,             # unseen examples for the stability meter's swap
      # Feature learning: classes drawn, and per class train / val / test / mval / pool examples.
      num_classes=100, per_class=(5, 1, 10, 1, 1),
      batch_size=100,         # inner minibatch B (the official code uses one size for all)
      val_batch_size=100,     # UD's validation minibatch
  ))
  c.model = ConfigDict(dict(
      hidden=(256,),          # reweighting: theta = MLP D-hidden-C with ELU
      features=256,           # feature learning: lambda = Linear D -> features, ELU
      head_hidden=(128,),     # feature learning: theta = MLP features-head_hidden-C
  ))
  c.inner = ConfigDict(dict(
      num_steps=512,          # K
      lr=0.3,
      weight_decay=0.0,       # wd_l (coupled, in the unrolled steps)
      remat="dots",           # bilevel/ud.py REMAT: dots | sqrt | step | none (README)
  ))
  c.outer = ConfigDict(dict(lr=10.0, weight_decay=0.0, momentum=0.0))  # SGD on lambda, wd_h
  c.stability = ConfigDict(dict(enabled=False))  # the meter: two runs on S and S' (methods.py)
  c.train = ConfigDict(dict(num_steps=5000, log_every=10, ckpt_every=500, num_seeds=5,
                            keep_checkpoints=2, tensorboard=True))
  c.variants = ConfigDict()   # name -> partial config: one stage each (bilevel/experiment.py)
  c.plots = ("curves",)       # bilevel/results.py PLOTS: curves | stability
  return c


def digits(c: ConfigDict) -> ConfigDict:
  """The CPU scale: reweighting on the 1,797 8x8 digits (400 train, half of them with random
  labels; 40 val, 600 test, 40 mval), MLP 64-32-10, batch 20, inner lr 1, outer lr 30, K = 256,
  T = 2,000, 4 seeds: the test loss turns up within the run on 2 CPU cores (bilevel/README.md)."""
  c.data.update(name="digits", num_train=400, num_val=40, num_test=600, num_mval=40,
                num_pool=8, batch_size=20, val_batch_size=20)
  c.model.hidden = (32,)
  c.num_devices = 1           # 4-7x faster than sharding the small batches (bilevel/README.md)
  c.inner.update(num_steps=256, lr=1.0)
  c.outer.lr = 30.0
  c.train.update(num_steps=2000, log_every=20, ckpt_every=500, num_seeds=4)
  return c


def smoke(c: ConfigDict) -> ConfigDict:
  """Shrinks any bilevel config to a seconds-long CPU run (digits, K = 3, a few outer steps)."""
  c.data.update(name="digits", num_train=40, num_val=8, num_test=40, num_mval=8, num_pool=2,
                num_classes=4, per_class=(4, 2, 4, 2, 1), batch_size=8, val_batch_size=8)
  c.model.update(hidden=(8,), features=8, head_hidden=(8,))
  c.inner.num_steps = 3
  c.train.update(num_steps=4, log_every=2, ckpt_every=2, num_seeds=2)
  for name in list(c.variants.keys())[2:]:   # at most two variants, each shrunk as above
    del c.variants[name]
  for name in c.variants:
    v = c.variants[name]
    if "inner" in v and "num_steps" in v.inner:
      v.inner.num_steps = 3
    for group in ("data", "train"):
      if group in v:
        del v[group]
  return c


def short(value: float) -> str:
  """1e-05 -> '1e-5', 0.03 -> '3e-2': a variant name without dots (ConfigDict keys have none)."""
  return f"{value:.0e}".replace("e-0", "e-").replace("e+0", "e")


def variant(c: ConfigDict, arg: str | None, filename: str) -> ConfigDict:
  """The `:arg` suffix of a bilevel config file: none, or 'smoke'."""
  return select(c, arg, filename, smoke=smoke)


def official_grid(ks, wd_h, wd_l, wd_both) -> list[dict]:
  """The official code's sweep (stability_ho.md): UD and random search over K, then the outer
  (wd_h), inner (wd_l) and joint ((wd_l, wd_h) pairs) weight-decay grids at the config's K."""
  sweep = [{"method": "ud", "inner.num_steps": k} for k in ks]
  sweep += [{"method": "random_search", "inner.num_steps": k} for k in ks]
  sweep += [{"outer.weight_decay": wd} for wd in wd_h]
  sweep += [{"inner.weight_decay": wd} for wd in wd_l]
  sweep += [{"inner.weight_decay": l, "outer.weight_decay": h} for l, h in wd_both]
  return sweep
