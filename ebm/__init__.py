"""Energy-based latent variable models (issue 14): exact Gaussian-RBM tools, score matching, BiSM.

Roles: ebm.grbm (model and exact tools), ebm.ais, ebm.samplers, ebm.posteriors, ebm.losses
(single-level losses), ebm.bism (BiSM and variational NCE), ebm.deep (the deep EBLVM), and the
runner ebm.experiment (`run`, `validate`, `batch_sizes`; METHODS). See ebm/README.md.
"""

from ebm.experiment import batch_sizes, run, validate

__all__ = ["batch_sizes", "run", "validate"]
