"""Neuron consistency and interpretability via adversarial examples (Dong, Su, Zhu, Bao; arXiv
1708.05493 and 1901.09035).

The pure core: L_inf attacks with one signature (`interp.attacks`), small NNX classifiers with named
intermediate activations (`interp.models`), the consistency metric consis = p^T A p over each
neuron's top-k inputs (`interp.consistency`), influential neurons by prediction difference
(`interp.influence`) and pictures of top-k real / adversarial inputs (`interp.pictures`).
Training modes, configs and the results table come later (see interp/README.md).
"""
