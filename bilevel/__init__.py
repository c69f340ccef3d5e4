"""Bilevel hyperparameter optimisation: stability and generalisation (Bao et al., NeurIPS 2021).

Pure pieces (../shared/papers/bilevel.md): `ud` (unrolled differentiation through K inner SGD
steps), `implicit` (closed-form implicit-differentiation reference on ridge regression), `tasks`
(data reweighting with noisy labels, feature learning) and `stability` (the stability meter and the
random-search baseline as whole-trajectory functions). The runner on the shared training loop:
`methods` (one outer step of UD or random search, the Program, the stability pair), `data` (the
example pools), `results` (results.json and figures) and `experiment` (`run`, `validate`,
`batch_sizes`, variants and modes).
"""

from bilevel.experiment import batch_sizes, run, validate

__all__ = ["batch_sizes", "run", "validate"]
