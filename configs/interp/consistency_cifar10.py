"""Neuron consistency on CIFAR-10 at paper-like scale (GPU/TPU): the three training modes, 3
seeds each, with the CIFAR-10 budget of Madry et al.

Command:   python main.py --config=configs/interp/consistency_cifar10.py --workdir=runs/interp_cifar10
           (add --multihost on a TPU pod or multi-node GPU job)
Data:      CIFAR-10 prepared once with `tfds build cifar10 --file_format=array_record` (point
           data.tfds_data_dir or TFDS_DATA_DIR at it); labels come from TFDS.
Hardware:  one GPU or TPU host; not run here (no accelerator and no CIFAR-10 on this machine).
Model:     the `cifar10` preset CNN (conv 64, conv 128, fc 256, batch norm) -- the papers' ImageNet
           networks are not public; Adam 1e-3 cosine, batch 128, 40,000 steps, random flips.
Attacks:   eps 8/255; training PGD 7 steps of 2/255 from a random start (Madry et al.); report PGD
           20 steps of 2/255 from a random start; consistency over 10,000 random training
           images (about 1,000 per class), k = 50.
Expected:  not measured; on digits and MNIST see interp/README.md.
Paper:     arXiv 1708.05493 / 1901.09035 report ImageNet results only in figures and tables that are
           not public (see ../shared/papers/sources/interp.md).
Variant:   `:smoke` runs the same code on the 8x8 digits with a tiny model (seconds): no labelled
           synthetic data exists offline.
"""

from configs.interp import base
from configs.variant import select


def get_config(arg: str | None = None):
  c = base.get_config()
  c.data.update(name="cifar10", batch_size=128, random_flip=True)
  c.optim.update(lr=1e-3, warmup_steps=1000)
  c.train.update(num_seeds=3, num_steps=40_000, log_every=200, ckpt_every=2000, ema_decay=0.999)
  c.attack.update(eps=8 / 255, step_size=2 / 255, num_steps=7)
  c.report.attack.update(eps=8 / 255, step_size=2 / 255, num_steps=20)
  c.report.update(num_examples=10_000, k=50, batch_size=500)
  return select(c, arg, "consistency_cifar10.py", smoke=base.smoke)
