"""Frechet distance, Inception Score and feature statistics against independent truth.

Truths: the Gaussian 2-Wasserstein closed forms (commuting covariances: sum (sqrt a_i - sqrt b_i)^2;
rank-one covariances a a^T, b b^T: |a|^2 + |b|^2 - 2 |a.b|), scipy.linalg.sqrtm on the textbook
formula for full-rank covariances, the same formula in 50-digit mpmath arithmetic for rank-deficient
sample covariances (n < d), np.cov on the concatenated features for the streaming statistics, and
the entropy identity IS = exp(H(mean p) - mean H(p)) with scipy.stats.entropy.
"""

import numpy as np
import pytest
import scipy.linalg
import scipy.stats

from common import fid
from common.errors import DataError


def random_orthogonal(d, rng):
  q, r = np.linalg.qr(rng.normal(size=(d, d)))
  return q * np.sign(np.diag(r))


def test_commuting_covariances_match_closed_form_including_singular():
  rng = np.random.default_rng(0)
  d = 64
  a, b = rng.uniform(0.0, 4.0, d), rng.uniform(0.0, 4.0, d)
  a[:20] = 0.0       # rank 44: fewer directions than dimensions
  b[10:30] = 0.0     # different null space
  a[40:44] = 1e-13   # nearly singular
  mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
  truth = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
  assert fid.frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(truth, rel=1e-12)
  # Shared eigenvectors: S1 and S2 commute but are not diagonal. Rounding Q diag(a) Q^T turns each
  # zero eigenvalue into ~1e-16, whose square root (1e-8) is what the exact distance of the stored
  # matrices differs by: the sqrt(eps) conditioning of the distance at singular covariances.
  q = random_orthogonal(d, rng)
  s1, s2 = (q * a) @ q.T, (q * b) @ q.T
  assert fid.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(truth, rel=1e-7)


def test_rank_one_sample_covariances_match_closed_form():
  # Two samples per set: sigma = a a^T with a = (x1 - x2) / sqrt(2), rank 1 in 512 dimensions.
  rng = np.random.default_rng(1)
  x, y = rng.normal(size=(2, 512)), rng.normal(size=(2, 512)) + 0.3
  a, b = (x[0] - x[1]) / np.sqrt(2), (y[0] - y[1]) / np.sqrt(2)
  mu1, s1 = fid.feature_stats(x)
  mu2, s2 = fid.feature_stats(y)
  truth = np.sum((mu1 - mu2) ** 2) + a @ a + b @ b - 2 * abs(a @ b)
  assert fid.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(truth, rel=1e-9)


def test_full_rank_matches_scipy_sqrtm():
  rng = np.random.default_rng(2)
  d = 16
  mu1, s1 = fid.feature_stats(rng.normal(size=(200, d)) @ rng.normal(size=(d, d)))
  mu2, s2 = fid.feature_stats(rng.normal(size=(300, d)) * rng.uniform(0.5, 2.0, d) + 0.4)
  root1 = scipy.linalg.sqrtm(s1)
  cross = scipy.linalg.sqrtm(root1 @ s2 @ root1)
  truth = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * cross.real)
  assert fid.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(truth, rel=1e-10)


def mpmath_frechet(mu1, s1, mu2, s2, digits=50):
  """The textbook formula in high precision (the matrices are taken as exact)."""
  import mpmath as mp
  with mp.workdps(digits):
    m1, m2 = mp.matrix(s1.tolist()), mp.matrix(s2.tolist())
    eig, vec = mp.eigsy(m1)
    root = vec * mp.diag([mp.sqrt(max(e, 0)) for e in eig]) * vec.T
    inner = root * m2 * root
    cross = sum(mp.sqrt(max(e, 0)) for e in mp.eigsy((inner + inner.T) / 2, eigvals_only=True))
    trace = sum(m1[i, i] + m2[i, i] for i in range(m1.rows))
    mean = sum((mp.mpf(p) - mp.mpf(q)) ** 2 for p, q in zip(mu1, mu2))
    return float(mean + trace - 2 * cross)


def test_rank_deficient_general_matches_high_precision():
  # n < d, different random subspaces (covariances neither commute nor share a null space).
  rng = np.random.default_rng(3)
  d = 12
  mu1, s1 = fid.feature_stats(rng.normal(size=(5, d)))
  mu2, s2 = fid.feature_stats(rng.normal(size=(7, d)) @ rng.normal(size=(d, d)) * 0.3)
  assert np.linalg.matrix_rank(s1) == 4 and np.linalg.matrix_rank(s2) == 6
  truth = mpmath_frechet(mu1, s1, mu2, s2)
  # The distance is a sqrt-type function of singular matrices: rounding of the inputs' null
  # directions moves it by ~sqrt(eps), not eps.
  assert fid.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(truth, rel=1e-7)


@pytest.mark.parametrize("n", [20, 600])  # rank 19 and full rank in 256 dimensions
def test_set_against_itself_is_zero(n):
  rng = np.random.default_rng(4)
  x = rng.normal(size=(n, 256)) * rng.uniform(0.1, 3.0, 256)
  mu, sigma = fid.feature_stats(x)
  assert fid.frechet_distance(mu, sigma, mu, sigma) <= 1e-10 * np.trace(sigma)


def test_invariant_to_sample_order():
  rng = np.random.default_rng(5)
  x, y = rng.normal(size=(100, 32)), rng.normal(size=(80, 32)) + 0.1
  base = fid.frechet_distance(*fid.feature_stats(x), *fid.feature_stats(y))
  shuffled = fid.frechet_distance(*fid.feature_stats(rng.permutation(x)),
                                  *fid.feature_stats(rng.permutation(y)))
  assert shuffled == pytest.approx(base, rel=1e-10) and base > 0.1


def test_feature_stats_is_unbiased_mean_and_covariance():
  rng = np.random.default_rng(6)
  x = rng.normal(size=(30, 5)).astype(np.float32)
  mu, sigma = fid.feature_stats(x)
  x64 = x.astype(np.float64)
  centred = x64 - x64.sum(0) / 30
  assert mu.dtype == sigma.dtype == np.float64
  np.testing.assert_allclose(mu, x64.sum(0) / 30, rtol=1e-14)
  np.testing.assert_allclose(sigma, centred.T @ centred / 29, rtol=1e-12)


def test_streaming_stats_equal_one_shot():
  rng = np.random.default_rng(7)
  # A large common offset: the naive sum-of-outer-products formula would lose ~12 digits here.
  x = rng.normal(size=(103, 8)) * rng.uniform(0.5, 2.0, 8)
  offset = 1e6
  stats, other = fid.RunningStats(8), fid.RunningStats(8)
  for start, stop in [(0, 1), (1, 40), (40, 40), (40, 77)]:
    stats.update((x[start:stop] + offset).astype(np.float64))
  other.update(x[77:] + offset)
  stats.merge(other)
  assert stats.count == 103
  mu, sigma = stats.stats()
  np.testing.assert_allclose(mu - offset, x.mean(0), atol=1e-8)
  np.testing.assert_allclose(sigma, np.cov(x, rowvar=False), rtol=1e-8, atol=1e-9)


def test_inception_score_of_uniform_predictions_is_one():
  mean, std = fid.inception_score(np.zeros((50, 1008)), splits=10)
  assert mean == pytest.approx(1.0, abs=1e-12) and std == pytest.approx(0.0, abs=1e-12)


def test_inception_score_of_confident_distinct_classes_is_the_class_count():
  classes = 7
  labels = np.tile(np.arange(classes), 4)  # each of the 2 splits holds every class twice
  logits = 60.0 * np.eye(1008)[labels]      # confident: p(y|x) ~ one-hot over all 1008 columns
  mean, std = fid.inception_score(logits, splits=2)
  assert mean == pytest.approx(classes, rel=1e-12) and std == pytest.approx(0.0, abs=1e-9)


def test_inception_score_matches_entropy_identity():
  rng = np.random.default_rng(8)
  logits = rng.normal(size=(103, 20)) * 3.0
  mean, std = fid.inception_score(logits, splits=4)
  p = np.exp(logits - logits.max(1, keepdims=True))
  p /= p.sum(1, keepdims=True)
  scores = []
  for i in range(4):  # the TF original's split boundaries
    part = p[i * 103 // 4:(i + 1) * 103 // 4]
    entropy_gap = scipy.stats.entropy(part.mean(0)) - scipy.stats.entropy(part, axis=1).mean()
    scores.append(np.exp(entropy_gap))
  assert mean == pytest.approx(np.mean(scores), rel=1e-10)
  assert std == pytest.approx(np.std(scores), rel=1e-8)


def test_saved_stats_load_back_unchanged(tmp_path, capsys):
  rng = np.random.default_rng(9)
  mu, sigma = fid.feature_stats(rng.normal(size=(40, 6)))
  path = str(tmp_path / "ref" / "stats.npz")
  fid.save_stats(path, mu, sigma)
  mu2, sigma2 = fid.load_stats(path)
  np.testing.assert_array_equal(mu2, mu)
  np.testing.assert_array_equal(sigma2, sigma)
  with np.load(path) as f:  # pytorch-fid's format
    assert sorted(f.files) == ["mu", "sigma"]
  assert fid.main(["distance", path, path]) == 0
  assert float(capsys.readouterr().out) == pytest.approx(0.0, abs=1e-9)


def test_missing_or_malformed_stats_are_one_line_data_errors(tmp_path):
  missing = str(tmp_path / "cifar10_train_stats.npz")
  with pytest.raises(DataError, match="not found.*python -m common.fid stats") as info:
    fid.load_stats(missing)
  assert missing in str(info.value) and "\n" not in str(info.value)
  wrong = str(tmp_path / "wrong.npz")
  np.savez(wrong, mean=np.zeros(3))
  with pytest.raises(DataError, match="wrong.npz"):
    fid.load_stats(wrong)


@pytest.mark.parametrize("args, message", [
    ((np.zeros(3), np.eye(3), np.zeros(4), np.eye(4)), "different dimensions"),
    ((np.zeros(3), np.eye(4), np.zeros(3), np.eye(3)), r"sigma1: expected a covariance \[3, 3\]"),
    ((np.zeros(3), np.eye(3), np.full(3, np.nan), np.eye(3)), "mu2: contains NaN"),
    ((np.zeros(3), np.eye(3), np.zeros(3), -np.eye(3)), "sigma2: not positive semi-definite"),
    ((np.zeros(3), np.triu(np.ones((3, 3))), np.zeros(3), np.eye(3)), "sigma1: not symmetric"),
    ((np.zeros((3, 1)), np.eye(3), np.zeros(3), np.eye(3)), "mu1: expected a mean vector"),
])
def test_bad_inputs_are_clear_value_errors(args, message):
  with pytest.raises(ValueError, match=message):
    fid.frechet_distance(*args)


def test_bad_feature_inputs():
  with pytest.raises(ValueError, match="at least 2 samples"):
    fid.feature_stats(np.zeros((1, 4)))
  with pytest.raises(ValueError, match=r"\[n, d\]"):
    fid.feature_stats(np.zeros(4))
  with pytest.raises(ValueError, match="splits"):
    fid.inception_score(np.zeros((3, 10)), splits=10)
  with pytest.raises(ValueError, match=r"RunningStats.update: expected features \[b, 4\]"):
    fid.RunningStats(4).update(np.zeros((2, 5)))
