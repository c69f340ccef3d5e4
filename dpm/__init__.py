"""Diffusion probabilistic models: DDPM training, Analytic-DPM variances, DPM-Solver sampling."""

from dpm.experiment import batch_sizes, run, validate

__all__ = ["batch_sizes", "run", "validate"]
