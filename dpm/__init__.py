"""Diffusion probabilistic models: DDPM training, Analytic-DPM variances, DPM-Solver sampling."""

from dpm.experiment import run, validate

__all__ = ["run", "validate"]
