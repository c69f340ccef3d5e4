"""Energy-based latent variable models (issue 14): exact Gaussian-RBM tools, score matching, BiSM.

The pure core only (no runner yet): ebm.grbm (model and exact tools), ebm.ais, ebm.samplers,
ebm.posteriors, ebm.losses (single-level losses), ebm.bism (BiSM and variational NCE).
See ebm/README.md.
"""
