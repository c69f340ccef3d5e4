"""Figure 3 at CPU scale: UD data reweighting (K = 256) with outer weight decay wd_h or inner
weight decay wd_l, each against no decay, on digits, 2 seeds.

Command:   python main.py --config=configs/bilevel/reweight_wd.py --workdir=runs/bilevel_wd
Hardware:  2 CPU cores, a few minutes.
Expected:  more decay on either level gives a smaller gap; a moderate amount improves the final
           test loss (bilevel/README.md).
Paper:     Bao et al. (NeurIPS 2021), `wdh` / `wdl` on MNIST (wd_h 3e-6..3e-4, wd_l 1e-3..1e-1 at
           outer lr 10, inner lr 0.3, K = 512): the same shapes, no numbers. Our grids are scaled
           to this run's learning rates (outer lr 30, inner lr 1) and length.
Variant:   `:smoke` runs two tiny variants for a few steps (seconds).
"""

from ml_collections import ConfigDict

from configs.bilevel import base

OUTER = (1e-5, 1e-4, 1e-3)
INNER = (1e-3, 1e-2, 3e-2)


def get_config(arg: str | None = None):
  c = base.digits(base.get_config())
  c.train.num_seeds = 2
  variants = {"base": {}}
  variants.update({f"wdh_{base.short(wd)}": {"outer": {"weight_decay": wd}} for wd in OUTER})
  variants.update({f"wdl_{base.short(wd)}": {"inner": {"weight_decay": wd}} for wd in INNER})
  c.variants = ConfigDict(variants)
  return base.variant(c, arg, "reweight_wd.py")
