"""Neuron consistency and interpretability via adversarial examples (Dong, Su, Zhu, Bao; arXiv
1708.05493 and 1901.09035).

The pure core: L_inf attacks with one signature (`interp.attacks`), small NNX classifiers with named
intermediate activations (`interp.models`), the consistency metric consis = p^T A p over each
neuron's top-k inputs (`interp.consistency`), influential neurons by prediction difference
(`interp.influence`) and pictures of top-k real / adversarial inputs (`interp.pictures`). The
training modes (standard, adversarial, consistent loss) are losses for the shared loop
(`interp.training`); `interp.experiment` runs them and the results table (`interp.report`).
See interp/README.md.
"""

from interp.experiment import batch_sizes, run, validate

__all__ = ["batch_sizes", "run", "validate"]
