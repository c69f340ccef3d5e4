"""Figure 2 at CPU scale: UD against the cross-validation baseline (random search) with the same
inner budget, K = 256 inner steps per outer step, T = 2,000 outer steps (candidates), on digits.

Command:   python main.py --config=configs/bilevel/reweight_cv.py --workdir=runs/bilevel_cv
Hardware:  2 CPU cores, a few minutes.
Expected:  random search's gap (test loss minus the best full validation loss) is smaller and
           grows more slowly than UD's; UD reaches the lower best test loss (bilevel/README.md).
Paper:     Bao et al. (NeurIPS 2021), `rs_K` vs `ablo_K` on MNIST: the same shapes, no numbers.
Variant:   `:smoke` runs both methods for a few steps (seconds).
"""

from ml_collections import ConfigDict

from configs.bilevel import base


def get_config(arg: str | None = None):
  c = base.digits(base.get_config())
  c.variants = ConfigDict({"rs_k256": {"method": "random_search"}, "ud_k256": {"method": "ud"}})
  return base.variant(c, arg, "reweight_cv.py")
