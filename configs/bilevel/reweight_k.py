"""Figure 1 at CPU scale: UD data reweighting with K = 16, 64, 256 inner steps (bilevel.md,
"What the paper's figures show", 1 and 4).

Command:   python main.py --config=configs/bilevel/reweight_k.py --workdir=runs/bilevel_k
Hardware:  2 CPU cores (one device: num_devices = 1, see bilevel/README.md), a few minutes.
Expected:  the optimised validation loss keeps falling while the test loss turns up and the gap
           grows with t, soonest for the largest K; the never-optimised second validation set
           follows the test loss (figures/losses.png, gap.png; numbers in bilevel/README.md).
Paper:     Bao et al. (NeurIPS 2021), reweighting on MNIST, K in {64, 128, 256, 512}: the same
           shapes, no numbers published (reweight_mnist.py is the paper-scale config).
Variant:   `:smoke` runs two tiny variants for a few steps (seconds).
"""

from ml_collections import ConfigDict

from configs.bilevel import base


def get_config(arg: str | None = None):
  c = base.digits(base.get_config())
  c.variants = ConfigDict({f"k{k}": {"inner": {"num_steps": k}} for k in (16, 64, 256)})
  return base.variant(c, arg, "reweight_k.py")
