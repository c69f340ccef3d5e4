"""The stability meter at CPU scale: UD reweighting run twice with identical randomness on
validation sets S and S' that differ in one example; beta(t) = mean over the test points of the
absolute change of their test loss, against T (every run's curve), K, m and the weight decays.

Command:   python main.py --config=configs/bilevel/stability.py --workdir=runs/bilevel_stability
Hardware:  2 CPU cores, a few minutes.
Expected:  beta grows with T and with K, falls roughly as 1/m, and shrinks with weight decay on
           either level (figures/stability.png; bilevel/README.md).
Paper:     Bao et al. (NeurIPS 2021), Theorems: UD beta = O(T^kappa / m) with kappa growing with K;
           weight decay shrinks it. The paper measures no beta; this is our direct measurement.
Variant:   `:smoke` runs two tiny variants for a few steps (seconds).
"""

from ml_collections import ConfigDict

from configs.bilevel import base


def get_config(arg: str | None = None):
  c = base.digits(base.get_config())
  c.stability.enabled = True
  c.plots = ("curves", "stability")
  c.inner.num_steps = 64
  c.data.update(num_val=40, num_pool=8)
  c.train.update(num_steps=500, log_every=10, num_seeds=8)
  variants = {"base": {}}
  variants.update({f"k{k}": {"inner": {"num_steps": k}} for k in (16, 256)})
  variants.update({f"m{m}": {"data": {"num_val": m}} for m in (20, 80, 160)})
  variants.update({"wdh_1e-3": {"outer": {"weight_decay": 1e-3}},
                   "wdl_1e-2": {"inner": {"weight_decay": 1e-2}}})
  c.variants = ConfigDict(variants)
  return base.variant(c, arg, "stability.py")
