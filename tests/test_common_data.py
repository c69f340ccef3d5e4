"""Data: seeded, resumable, per-process batches; scaling; clear errors for missing datasets."""

import numpy as np
import pytest
import tensorflow_datasets as tfds
from ml_collections import ConfigDict

from common import data as data_lib
from common.errors import ConfigError, DataError


def _ds(name, **kw):
  return data_lib.get_dataset(ConfigDict(dict(name=name, **kw)))


def test_batches_are_a_function_of_seed_and_step():
  ds = _ds("digits")
  first = [b for _, b in zip(range(5), ds.train_batches(64, seed=3))]
  resumed = [b for _, b in zip(range(2), ds.train_batches(64, seed=3, start_step=3))]
  np.testing.assert_array_equal(first[3], resumed[0])
  np.testing.assert_array_equal(first[4], resumed[1])
  other = next(ds.train_batches(64, seed=4))
  assert not np.array_equal(first[0], other)


def test_epochs_cover_every_example_once():
  ds = _ds("digits")
  n = len(ds.train)
  idx = np.concatenate([ds._train_indices(s, 100, seed=0) for s in range(n // 100)])
  assert len(np.unique(idx)) == len(idx)  # no repeats within the first epoch
  crossing = ds._train_indices(n // 100, 100, seed=0)  # spans the epoch boundary
  assert len(crossing) == 100


def test_image_scaling_and_dequantisation():
  ds = _ds("digits")
  x = next(ds.eval_batches("test", 200))
  assert x.shape == (200, 8, 8, 1)
  levels = np.unique(x)
  np.testing.assert_allclose(levels, np.linspace(-1, 1, 17)[np.isin(np.linspace(-1, 1, 17), levels)],
                             atol=1e-6)
  assert x.min() == -1.0 and x.max() == 1.0
  deq = next(_ds("digits", dequantize=True).train_batches(500, seed=0))
  assert deq.min() >= -1.0 and deq.max() <= 1.0
  # Dequantised values fall in the bin of their pixel: [k, k+1) / 17 scaled to [-1, 1].
  assert len(np.unique(deq)) > 17 * 10


def test_mnist_5k_split_is_stratified():
  ds = _ds("mnist_5k")
  assert len(ds.train) == 4500 and len(ds.test) == 500 and ds.shape == (28, 28, 1)


def test_toy_distribution_samples_fresh_batches():
  ds = _ds("gaussian_mixture", dim=3, num_components=5)
  b0, b1 = [b for _, b in zip(range(2), ds.train_batches(256, seed=0))]
  assert b0.shape == (256, 3) and not np.array_equal(b0, b1)
  weights, means, stds = data_lib.mixture_params(ConfigDict(dict(dim=3, num_components=5)))
  big = ds.global_batch(0, 200_000, seed=0)
  np.testing.assert_allclose(big.mean(0), weights @ means, atol=0.01)


def test_unknown_dataset_names_the_field_and_choices():
  with pytest.raises(ConfigError, match=r"data.name='mnist_6k'.*valid names: .*mnist_5k"):
    _ds("mnist_6k")


def test_missing_tfds_dataset_says_how_to_prepare(tmp_path):
  with pytest.raises(DataError, match=r"tfds build cifar10 --file_format=array_record"):
    _ds("cifar10", tfds_data_dir=str(tmp_path))


def test_tfds_path_reads_prepared_data():
  with tfds.testing.mock_data(num_examples=24):
    ds = _ds("cifar10", random_flip=True)
    assert ds.shape == (32, 32, 3) and len(ds.train) == 24
    b = next(ds.train_batches(8, seed=0))
    assert b.shape == (8, 32, 32, 3) and b.dtype == np.float32
    assert -1.0 <= b.min() and b.max() <= 1.0
    labeled = next(ds.labeled_batches(8, seed=0))
    assert labeled["label"].shape == (8,) and labeled["label"].dtype == np.int32
    assert 0 <= labeled["label"].min() and labeled["label"].max() < ds.num_classes == 10


def test_labels_belong_to_their_images():
  from sklearn.datasets import load_digits
  d = load_digits()
  ds = _ds("digits")
  batch = next(ds.labeled_batches(16, seed=3, start_step=5))
  np.testing.assert_array_equal(batch["image"], next(ds.train_batches(16, seed=3, start_step=5)))
  for image, label in zip(batch["image"], batch["label"]):  # find each image among the originals
    raw = np.rint((image[..., 0] + 1) / 2 * 16)
    matches = np.flatnonzero(np.all(d.images == raw, axis=(1, 2)))
    assert len(matches) and np.all(d.target[matches] == label)
  test = list(ds.labeled_eval_batches("test", 64))
  assert sum(len(b["label"]) for b in test) == 200
  assert np.bincount(np.concatenate([b["label"] for b in test])).tolist() == [20] * 10
  with pytest.raises(DataError, match="has no class labels"):
    next(_ds("two_moons").labeled_batches(8, seed=0))
