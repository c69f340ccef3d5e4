"""The offline Frechet distance: a classifier trained here orders corrupted digits by corruption."""

import numpy as np
import pytest
from scipy import ndimage

from common import classifier, fid


@pytest.fixture(scope="module")
def clf(tmp_path_factory):
  return classifier.load_or_train("digits", str(tmp_path_factory.mktemp("clf")))


def _test_images(clf):
  return np.concatenate(list(clf.dataset.eval_batches("test", 500)))


def test_it_classifies_and_caches_its_statistics(clf):
  import json, os
  with open(os.path.join(clf.workdir, "accuracy.json")) as f:
    assert json.load(f)["test_accuracy"] > 0.9
  mu, sigma = clf.reference("train")
  assert os.path.exists(os.path.join(clf.workdir, "stats_train.npz"))
  np.testing.assert_array_equal(fid.load_stats(os.path.join(clf.workdir, "stats_train.npz"))[0], mu)
  # The streamed statistics equal those of all features at once.
  feats = np.concatenate([clf.features(b)[0] for b in clf.dataset.eval_batches("train", 500)])
  ref_mu, ref_sigma = fid.feature_stats(feats)
  np.testing.assert_allclose(mu, ref_mu, rtol=1e-10, atol=1e-10)
  np.testing.assert_allclose(sigma, ref_sigma, rtol=1e-8, atol=1e-10)


def test_fd_grows_with_blur_and_with_noise(clf):
  x = _test_images(clf)
  floor = clf.frechet_distance(x)
  np.testing.assert_allclose(floor, clf.real_floor(), rtol=1e-6)
  rng = np.random.default_rng(0)
  blurred = [clf.frechet_distance(ndimage.gaussian_filter(x, (0, s, s, 0))) for s in (0.5, 1, 2)]
  noised = [clf.frechet_distance(np.clip(x + s * rng.standard_normal(x.shape), -1, 1))
            for s in (0.2, 0.5, 1.0)]
  assert floor < blurred[0] < blurred[1] < blurred[2], (floor, blurred)
  assert floor < noised[0] < noised[1] < noised[2], (floor, noised)


def test_confidence_tells_digits_from_noise(clf):
  x = _test_images(clf)
  noise = np.random.default_rng(1).uniform(-1, 1, x.shape).astype(np.float32)
  real, fake = clf.score(x), clf.score(noise)
  assert real["fraction_confident_0.9"] > 0.8 > fake["fraction_confident_0.9"]
  assert real["classifier_score"] > 5 > fake["classifier_score"]
