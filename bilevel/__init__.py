"""Bilevel hyperparameter optimisation: stability and generalisation (Bao et al., NeurIPS 2021).

Pure pieces only (../shared/papers/bilevel.md): `ud` (unrolled differentiation through K inner SGD
steps), `implicit` (closed-form implicit-differentiation reference on ridge regression), `tasks`
(data reweighting with noisy labels, feature learning) and `stability` (the stability meter and the
random-search baseline). The runner, configs and results come later through the shared loop.
"""
