"""Discrete-time forward processes: beta schedules and their cumulative products.

Indices follow the papers: n = 1..N, with alpha_bar_0 = 1 stored at index 0, so every array of
per-step quantities has length N + 1 and `alphas_cumprod[n]` is alpha_bar_n.
"""

from __future__ import annotations

import numpy as np

from common.registry import Registry

BETA_SCHEDULES: Registry = Registry("beta schedule")


@BETA_SCHEDULES.register("linear")
def linear_betas(num_steps: int) -> np.ndarray:
  """DDPM's linear schedule, beta in [1e-4, 0.02] for N = 1000 (scaled by 1000/N otherwise)."""
  scale = 1000.0 / num_steps
  return np.linspace(scale * 1e-4, scale * 0.02, num_steps, dtype=np.float64)


@BETA_SCHEDULES.register("cosine")
def cosine_betas(num_steps: int, s: float = 0.008, max_beta: float = 0.999) -> np.ndarray:
  """Nichol & Dhariwal's cosine schedule: alpha_bar(t) = cos^2((t + s) / (1 + s) * pi / 2)."""
  t = np.arange(num_steps + 1, dtype=np.float64) / num_steps
  f = np.cos((t + s) / (1 + s) * np.pi / 2) ** 2
  return np.minimum(1.0 - f[1:] / f[:-1], max_beta)


def get_betas(name: str, num_steps: int, field: str = "diffusion.schedule") -> np.ndarray:
  """Returns beta_1..beta_N (float64, shape [N]) of the named schedule."""
  return BETA_SCHEDULES.get(name, field=field)(num_steps)


def alphas_cumprod_from_betas(betas: np.ndarray) -> np.ndarray:
  """alpha_bar_0..alpha_bar_N (shape [N + 1], alpha_bar_0 = 1)."""
  return np.concatenate([[1.0], np.cumprod(1.0 - np.asarray(betas, np.float64))])


def get_alphas_cumprod(name: str, num_steps: int) -> np.ndarray:
  return alphas_cumprod_from_betas(get_betas(name, num_steps))
