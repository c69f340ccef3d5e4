"""The VaES Fisher-divergence estimator on perturbed Gaussian RBMs, d = 200 (paper scale).

Command:   python main.py --config=configs/ebm/fisher_grbm_d200.py --workdir=runs/ebm_fisher_d200
Hardware:  one GPU (the official runs: one GPU per scale); the six scales are vmapped in one
           program. On the 2-core CPU container 17 minutes (1,027 s measured, 2026-12-03).
Setting:   the official `run_grbm_fisher.py` exactly (configs/ebm/fisher_grbm.py at d = 200): data
           N(0, I) 16k / 2k / 2k, GRBM m = d = 200, sigma = 1, perturbations 0, 0.2, ..., 1.0;
           3-layer ELU critic; Adam lr 2e-4; 20,000 minibatches of 100; VaES L = 1, K = 5 (-ELBO).
Expected:  the estimate ranks the scales and tracks the exact value (results.json); measured
           2026-12-03 (ebm/README.md, 1,027 s on the 2 cores): 4-11% below the exact value, as is
           the critic trained on the exact score (the critic's budget, not VaES).
Paper:     the estimate tracks the truth at d = 200 (a figure; no table in the accessible sources,
           ../shared/papers/sources/vages.md).
Variants:  `:smoke` (4 steps, 100 test points) checks that the configuration builds and runs.
"""

from configs.ebm import base, fisher_grbm
from configs.variant import select

DIM = 200


def get_config(arg=None):
  return select(fisher_grbm.official(base.get_config(), DIM), arg, __file__,
                smoke=fisher_grbm.tiny)
