"""Frechet Inception Distance and Inception Score from network outputs (numpy/scipy, float64).

FID (Heusel et al. 2017, eq. 6) is the squared 2-Wasserstein distance between two Gaussians fitted
to Inception pool3 features:

  FID = ||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1^{1/2} S2 S1^{1/2})^{1/2}).

The Inception Score (Salimans et al. 2016, sec. 4) is exp(E_x KL(p(y|x) || p(y))).

Statistics are float64 throughout: with 2048-d features and 50,000 samples, float32 sums lose the
digits that separate two good generators.

Command line:
  python -m common.fid stats --weights inception.npz --images images.npz --out ref_stats.npz
  python -m common.fid distance a_stats.npz b_stats.npz
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

import numpy as np
from scipy import special

from common import io
from common.errors import DataError

# A covariance whose smallest eigenvalue is below -_PSD_TOL * its largest is not a covariance;
# anything above is rounding and is clipped to 0.
_PSD_TOL = 1e-6


def feature_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Mean and unbiased covariance of a feature set (pytorch-fid's np.mean / np.cov(rowvar=False)).

  Args:
    features: [n, d] with n >= 2.

  Returns:
    mu [d] and sigma [d, d], float64; sigma uses ddof=1.
  """
  x = _as_features(features, "features")
  if x.shape[0] < 2:
    raise ValueError(f"features: need at least 2 samples for a covariance, got {x.shape[0]}")
  return x.mean(axis=0), np.cov(x, rowvar=False, ddof=1).reshape(x.shape[1], x.shape[1])


def _as_features(features: np.ndarray, name: str) -> np.ndarray:
  x = np.asarray(features, dtype=np.float64)
  if x.ndim != 2:
    raise ValueError(f"{name}: expected features of shape [n, d], got shape {x.shape}")
  if not np.all(np.isfinite(x)):
    raise ValueError(f"{name}: contains NaN or Inf")
  return x


class RunningStats:
  """Mean and covariance of a stream of feature batches, without keeping the features.

  Keeps the count, the mean and the centred scatter matrix M2 = sum (x - mean)(x - mean)^T in
  float64 and merges each batch with Chan et al.'s pairwise update (1979):
    M2 = M2_a + M2_b + delta delta^T n_a n_b / n,   delta = mean_b - mean_a.
  Why not the raw sums sum x and sum x x^T: sigma = (sum x x^T - n mu mu^T) / (n - 1) cancels
  catastrophically when |mu| is large against the spread; centred sums do not, and cost the same
  O(b d^2) per batch.

  Example:
    stats = RunningStats(2048)
    for batch in batches:
      stats.update(features_of(batch))
    mu, sigma = stats.stats()   # == feature_stats(all features) to rounding
  """

  def __init__(self, dim: int):
    if dim < 1:
      raise ValueError(f"RunningStats: dim must be >= 1, got {dim}")
    self.dim = int(dim)
    self.count = 0
    self._mean = np.zeros(self.dim, np.float64)
    self._m2 = np.zeros((self.dim, self.dim), np.float64)

  def update(self, features: np.ndarray) -> None:
    """Adds a batch of features [b, dim] (any float dtype; accumulated in float64)."""
    x = _as_features(features, "RunningStats.update")
    if x.shape[1] != self.dim:
      raise ValueError(f"RunningStats.update: expected features [b, {self.dim}], got {x.shape}")
    if x.shape[0] == 0:
      return
    mean = x.mean(axis=0)
    centred = x - mean
    self._merge(x.shape[0], mean, centred.T @ centred)

  def merge(self, other: "RunningStats") -> None:
    """Adds the samples summarised by another RunningStats (e.g. from another host)."""
    if other.dim != self.dim:
      raise ValueError(f"RunningStats.merge: dims differ ({self.dim} vs {other.dim})")
    if other.count:
      self._merge(other.count, other._mean, other._m2)

  def _merge(self, n_b: int, mean_b: np.ndarray, m2_b: np.ndarray) -> None:
    n_a, n = self.count, self.count + n_b
    delta = mean_b - self._mean
    self._mean = self._mean + delta * (n_b / n)
    self._m2 = self._m2 + m2_b + np.outer(delta, delta) * (n_a * n_b / n)
    self.count = n

  def stats(self) -> tuple[np.ndarray, np.ndarray]:
    """(mu [dim], sigma [dim, dim]) of everything seen so far; sigma with ddof=1."""
    if self.count < 2:
      raise ValueError(f"RunningStats: need at least 2 samples, have {self.count}")
    sigma = self._m2 / (self.count - 1)
    return self._mean.copy(), 0.5 * (sigma + sigma.T)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray,
                     sigma2: np.ndarray) -> float:
  """Squared 2-Wasserstein distance between N(mu1, S1) and N(mu2, S2) (FID, Heusel et al. eq. 6).

  Method: with symmetric eigendecompositions S = U diag(l) U^T (eigenvalues clipped at 0),
  S^{1/2} = U diag(sqrt(l)) U^T, and
    tr((S1^{1/2} S2 S1^{1/2})^{1/2}) = sum of singular values of A = S1^{1/2} S2^{1/2},
  because S1^{1/2} S2 S1^{1/2} = A A^T. Why this and not scipy.linalg.sqrtm(S1 S2) plus an eps * I
  offset (pytorch-fid): S1 S2 is not symmetric, so its Schur-based square root goes complex and
  unstable when S1 or S2 is singular (fewer samples than dimensions), and the offset changes the
  answer. Here every step is a backward-stable symmetric or SVD routine whose answer is defined and
  continuous for singular PSD matrices, and taking singular values of A (not the square roots of the
  eigenvalues of A A^T) avoids doubling the rounding error of the tiny eigenvalues. tr(S) is the sum
  of the same clipped eigenvalues, so a set against itself gives 0 to rounding.

  Args:
    mu1, mu2: means [d].
    sigma1, sigma2: covariances [d, d] (symmetric positive semi-definite).

  Returns:
    The distance (>= 0; rounding below 0 is clipped).

  Raises:
    ValueError: on mismatched shapes, NaN/Inf, or a matrix that is not a covariance.
  """
  mu1, mu2 = _as_vector(mu1, "mu1"), _as_vector(mu2, "mu2")
  d = mu1.shape[0]
  if mu2.shape[0] != d:
    raise ValueError(f"mu1 and mu2 have different dimensions ({d} vs {mu2.shape[0]})")
  root1, trace1 = _psd_sqrt(_as_covariance(sigma1, d, "sigma1"), "sigma1")
  root2, trace2 = _psd_sqrt(_as_covariance(sigma2, d, "sigma2"), "sigma2")
  cross = np.linalg.svd(root1 @ root2, compute_uv=False).sum()
  diff = mu1 - mu2
  return float(max(diff @ diff + trace1 + trace2 - 2.0 * cross, 0.0))


def _as_vector(mu: np.ndarray, name: str) -> np.ndarray:
  mu = np.asarray(mu, dtype=np.float64)
  if mu.ndim != 1:
    raise ValueError(f"{name}: expected a mean vector [d], got shape {mu.shape}")
  if not np.all(np.isfinite(mu)):
    raise ValueError(f"{name}: contains NaN or Inf")
  return mu


def _as_covariance(sigma: np.ndarray, d: int, name: str) -> np.ndarray:
  sigma = np.asarray(sigma, dtype=np.float64)
  if sigma.shape != (d, d):
    raise ValueError(f"{name}: expected a covariance [{d}, {d}], got shape {sigma.shape}")
  if not np.all(np.isfinite(sigma)):
    raise ValueError(f"{name}: contains NaN or Inf")
  scale = max(np.abs(sigma).max(), np.finfo(np.float64).tiny)
  if np.abs(sigma - sigma.T).max() > _PSD_TOL * scale:
    raise ValueError(f"{name}: not symmetric, so not a covariance")
  return 0.5 * (sigma + sigma.T)


def _psd_sqrt(sigma: np.ndarray, name: str) -> tuple[np.ndarray, float]:
  """Symmetric square root [d, d] and trace of a PSD matrix, from its clipped eigenvalues."""
  eigvals, eigvecs = np.linalg.eigh(sigma)
  if eigvals[0] < -_PSD_TOL * max(eigvals[-1], 0.0) - np.finfo(np.float64).tiny:
    raise ValueError(f"{name}: not positive semi-definite (smallest eigenvalue {eigvals[0]:.3g}, "
                     f"largest {eigvals[-1]:.3g})")
  eigvals = np.clip(eigvals, 0.0, None)
  return (eigvecs * np.sqrt(eigvals)) @ eigvecs.T, float(eigvals.sum())


def inception_score(logits: np.ndarray, splits: int = 10) -> tuple[float, float]:
  """Inception Score exp(E_x KL(p(y|x) || p(y))) (Salimans et al. 2016), mean and std over splits.

  Follows the TF original (improved-gan's inception_score): the softmax runs over all columns given
  (all 1008 of the FID Inception, the 8 unused classes included; no renormalisation over 1000),
  p(y) is the mean prediction within each split, the splits are the contiguous slices
  [i n // splits, (i + 1) n // splits), and std is the population std (ddof=0) of the split scores.
  Which logits: the TF original multiplies pool3 by the softmax weights without the bias;
  common.inception's callable returns exactly those by default (see common/inception.py).

  Args:
    logits: [n, C] unnormalised log-probabilities, n >= splits.
    splits: number of disjoint splits.

  Returns:
    (mean, std) of the per-split scores.
  """
  x = _as_features(logits, "logits")
  n = x.shape[0]
  if splits < 1 or n < splits:
    raise ValueError(f"inception_score: need 1 <= splits <= n, got splits={splits}, n={n}")
  log_p = special.log_softmax(x, axis=1)
  scores = []
  for i in range(splits):
    part = log_p[i * n // splits:(i + 1) * n // splits]
    log_marginal = special.logsumexp(part, axis=0) - np.log(part.shape[0])
    # p * (log p - log p_y) in log space: a confident p(y|x) = 0 entry contributes 0, not 0 * -inf.
    kl = np.sum(np.exp(part) * (part - log_marginal), axis=1)
    scores.append(np.exp(kl.mean()))
  return float(np.mean(scores)), float(np.std(scores))


def save_stats(path: str, mu: np.ndarray, sigma: np.ndarray) -> None:
  """Writes statistics as pytorch-fid's .npz (keys `mu` [d], `sigma` [d, d]), atomically."""
  mu = _as_vector(mu, "mu")
  sigma = _as_covariance(sigma, mu.shape[0], "sigma")
  io.atomic_save_npz(path, mu=mu, sigma=sigma)


def load_stats(path: str) -> tuple[np.ndarray, np.ndarray]:
  """Reads (mu, sigma) from a .npz with keys `mu` and `sigma` (ours or pytorch-fid's).

  Raises:
    DataError: the file is missing or is not a statistics file.
  """
  if not os.path.isfile(path):
    raise DataError(
        f"FID statistics file {path} not found: compute it with `python -m common.fid stats "
        f"--weights <inception.npz> --images <images.npz> --out {path}` (docs/EVALUATION.md), "
        f"or use a pytorch-fid statistics .npz (keys mu, sigma)")
  try:
    with np.load(path) as f:
      mu, sigma = np.asarray(f["mu"], np.float64), np.asarray(f["sigma"], np.float64)
  except (OSError, KeyError, ValueError) as e:
    raise DataError(f"{path} is not an FID statistics file (.npz with keys mu, sigma): "
                    f"{e}") from None
  if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
    raise DataError(f"{path}: mu {mu.shape} and sigma {sigma.shape} are not [d] and [d, d]")
  return mu, sigma


# ---------------------------------------------------------------------------------------------
# Command line.


def load_images(path: str) -> np.ndarray:
  """Images [n, H, W, C] in [0, 1] (float32) from a .npy, or a .npz with key `images`.

  uint8 arrays are divided by 255 (the range pytorch-fid's image loader gives); float arrays must
  already lie in [0, 1]. [n, H, W] is read as grayscale.
  """
  if not os.path.isfile(path):
    raise DataError(f"image file {path} not found: expected a .npy array [n, H, W, C] or a .npz "
                    f"with key `images` (uint8 0..255 or float in [0, 1])")
  loaded = np.load(path)
  if isinstance(loaded, np.lib.npyio.NpzFile):
    with loaded:
      if "images" not in loaded:
        raise DataError(f"{path}: no `images` array (has {', '.join(loaded.files)})")
      images = loaded["images"]
  else:
    images = np.asarray(loaded)
  if images.ndim == 3:
    images = images[..., None]
  if images.ndim != 4 or images.shape[-1] not in (1, 3):
    raise DataError(f"{path}: expected images [n, H, W, 1|3], got shape {images.shape}")
  if images.dtype == np.uint8:
    return images.astype(np.float32) / 255.0
  images = images.astype(np.float32)
  if images.min() < 0.0 or images.max() > 1.0:
    raise DataError(f"{path}: float images must lie in [0, 1], found [{images.min()}, "
                    f"{images.max()}]; store uint8 or rescale")
  return images


def _cmd_stats(args: argparse.Namespace) -> None:
  from common import inception  # JAX only for this command
  apply_fn = inception.load(args.weights)
  images = load_images(args.images)
  batches = (images[i:i + args.batch_size] for i in range(0, len(images), args.batch_size))
  mu, sigma, _ = inception.features_stats(apply_fn, batches, keep_logits=False)
  save_stats(args.out, mu, sigma)
  print(f"wrote {args.out}: {len(images)} images, d={mu.shape[0]}")


def _cmd_distance(args: argparse.Namespace) -> None:
  print(f"{frechet_distance(*load_stats(args.a), *load_stats(args.b)):.6f}")


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m common.fid", description=__doc__.split("\n")[0])
  sub = parser.add_subparsers(dest="command", required=True)
  stats = sub.add_parser("stats", help="reference statistics of an image file")
  stats.add_argument("--weights", required=True, help="converted Inception weights (.npz)")
  stats.add_argument("--images", required=True, help=".npy or .npz (key images), [n, H, W, C]")
  stats.add_argument("--out", required=True, help="statistics file to write (.npz: mu, sigma)")
  stats.add_argument("--batch-size", type=int, default=50)
  stats.set_defaults(run=_cmd_stats)
  dist = sub.add_parser("distance", help="Frechet distance between two statistics files")
  dist.add_argument("a")
  dist.add_argument("b")
  dist.set_defaults(run=_cmd_distance)
  args = parser.parse_args(argv)
  try:
    args.run(args)
  except (DataError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
