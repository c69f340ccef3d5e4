"""interp consistency, top-k search, similarity matrices, prediction difference and pictures.

Truths: consistency values computed by hand on constructed label sets; top-k by a plain Python sort
on (-activation, index); cosine similarities from scipy; prediction differences from one masked
forward pass per neuron, and exactly zero for a neuron whose outgoing weights are zero.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image
from scipy.spatial.distance import cdist

from common.errors import ConfigError, DataError
from interp import consistency as cons
from interp import influence, models, pictures

A3 = np.array([[1.0, 0.5, 0.0],
               [0.5, 1.0, 0.2],
               [0.0, 0.2, 1.0]], np.float32)


def test_identity_gives_sum_of_squared_frequencies():
  labels = np.array([[0, 0, 0, 0], [0, 1, 2, 3], [1, 1, 2, 2], [3, 3, 3, 1]])
  got = cons.consistency(labels, np.eye(4))
  np.testing.assert_allclose(np.asarray(got), [1.0, 0.25, 0.5, 0.625], rtol=1e-6)


def test_non_identity_similarity_by_hand():
  labels = np.array([[0, 0, 1, 1], [0, 1, 2, 2], [2, 2, 2, 2]])
  # p = (.5, .5, 0): .25 + .25 + 2 * .25 * .5 = .75
  # p = (.25, .25, .5): .0625 + .0625 + .25 + 2 * (.0625 * .5 + .125 * 0 + .125 * .2) = .4875
  got = cons.consistency(labels, A3)
  np.testing.assert_allclose(np.asarray(got), [0.75, 0.4875, 1.0], rtol=1e-6)


def test_class_count_comes_from_similarity():
  labels = np.array([[0, 1, 1, 0, 0]])  # only classes 0 and 1 occur
  for c in (2, 3, 10):
    np.testing.assert_allclose(np.asarray(cons.consistency(labels, np.eye(c))), [0.52], rtol=1e-6)
  np.testing.assert_allclose(np.asarray(cons.consistency(labels, A3)), [0.52 + 2 * 0.24 * 0.5],
                             rtol=1e-6)
  jitted = jax.jit(cons.consistency)(jnp.asarray(labels), jnp.asarray(A3))
  np.testing.assert_allclose(np.asarray(jitted), [0.76], rtol=1e-6)
  with pytest.raises(ValueError, match=r"\[0, 3\)"):
    cons.consistency(np.array([[0, 3]]), A3)
  with pytest.raises(ValueError, match="square"):
    cons.consistency(labels, np.ones((2, 3)))


# --- top-k search --------------------------------------------------------------------------------


def _python_top_k(acts, k):
  """Each neuron's k inputs by descending activation, ties to the lower index."""
  return np.array([sorted(range(len(acts)), key=lambda i: (-acts[i, u], i))[:k]
                   for u in range(acts.shape[1])])


def _conv_activations():
  """[N=23, 2, 2, U=5] integer-valued maps: many ties, including between batches."""
  return np.random.RandomState(0).randint(0, 4, size=(23, 2, 2, 5)).astype(np.float32)


def test_streaming_top_k_equals_one_shot_and_python_sort():
  maps = _conv_activations()
  acts = maps.max(axis=(1, 2))
  calls = []
  fn = lambda x: (calls.append(len(x)), models.neuron_activations(jnp.asarray(x)))[1]
  batches = [maps[i:i + 6] for i in range(0, len(maps), 6)]  # 6, 6, 6, 5: the last is padded
  streamed = cons.top_k_inputs(fn, batches, k=7)
  one_shot = cons.top_k_over_array(acts, k=7)
  truth = _python_top_k(acts, 7)
  np.testing.assert_array_equal(streamed.indices, truth)
  np.testing.assert_array_equal(np.asarray(one_shot.indices), truth)
  np.testing.assert_array_equal(streamed.values, np.take_along_axis(acts.T, truth, 1))
  assert calls == [6, 6, 6, 6]
  with pytest.raises(ValueError, match="exceeds"):
    cons.top_k_inputs(fn, batches[:1], k=7)


def test_union_top_k_and_consistency_by_set():
  maps = _conv_activations()
  real, adv = maps[:12].max(axis=(1, 2)), maps[12:].max(axis=(1, 2))
  k = 4
  union = cons.union_top_k(cons.top_k_over_array(real, k), cons.top_k_over_array(adv, k), 12, k)
  np.testing.assert_array_equal(union.indices, _python_top_k(np.concatenate([real, adv]), k))
  # a constructed case: neuron 0 sees only class 0 in its real top-2, classes 1 and 2 in adversarial
  real_top = cons.TopK(np.array([[5.0, 4.0]]), np.array([[0, 1]]))
  adv_top = cons.TopK(np.array([[6.0, 3.0]]), np.array([[0, 1]]))
  got = cons.consistency_by_set(real_top, adv_top, np.array([0, 0]), np.array([1, 2]), np.eye(3))
  np.testing.assert_allclose(got["real"], [1.0])
  np.testing.assert_allclose(got["adversarial"], [0.5])
  np.testing.assert_allclose(got["union"], [0.5])  # top-2 of the union: adversarial 0, real 0


def test_representation_distance():
  a, b = np.arange(12.0).reshape(2, 2, 3), np.ones((2, 2, 3))
  np.testing.assert_allclose(np.asarray(cons.representation_distance(a, b)),
                             [np.sum((a[0] - 1) ** 2), np.sum((a[1] - 1) ** 2)])


# --- similarity matrices -------------------------------------------------------------------------


def test_similarity_files(tmp_path):
  npy, npz, named = (str(tmp_path / n) for n in ("a.npy", "a.npz", "b.npz"))
  np.save(npy, A3)
  np.savez(npz, A3)
  np.savez(named, similarity=A3, other=np.zeros(2))
  for path in (npy, npz, named):
    np.testing.assert_array_equal(cons.similarity_matrix("file", 3, path=path), A3)
  with pytest.raises(ConfigError, match="no such file"):
    cons.load_similarity(str(tmp_path / "missing.npy"), 3)
  txt = str(tmp_path / "a.txt")
  open(txt, "w").close()
  with pytest.raises(ConfigError, match=".npy or .npz"):
    cons.load_similarity(txt, 3)
  bad = {"shape": np.eye(4), "symmetric": np.triu(A3), "in \\[0, 1\\]": 2 * A3}
  for what, matrix in bad.items():
    np.save(npy, matrix)
    with pytest.raises(DataError, match=what):
      cons.load_similarity(npy, 3)
  np.savez(npz, x=A3, y=A3)
  with pytest.raises(DataError, match="'similarity'"):
    cons.load_similarity(npz, 3)


def test_similarity_registry():
  np.testing.assert_array_equal(cons.similarity_matrix("identity", 4), np.eye(4))
  with pytest.raises(ConfigError, match="features, file, identity"):
    cons.similarity_matrix("wordnet", 4)
  with pytest.raises(ConfigError, match="needs path"):
    cons.similarity_matrix("file", 4)


def test_feature_similarity_against_scipy_and_by_hand():
  rs = np.random.RandomState(1)
  labels = np.repeat(np.arange(4), 5)
  feats = rs.uniform(size=(20, 3, 2)) + labels[:, None, None] * np.array([1.0, 0.0])
  means = np.stack([feats[labels == c].reshape(5, -1).mean(0) for c in range(4)])
  centred = means - means.mean(0)
  expected = np.clip(1.0 - cdist(centred, centred, "cosine"), 0.0, 1.0)
  got = cons.similarity_matrix("features", 4, features=feats, labels=labels)
  np.testing.assert_allclose(got, expected, atol=1e-6)
  # two classes at means (1, 0) and (0, 1): centred at (.5, .5) they are opposite, so unrelated
  two = cons.feature_similarity(np.array([[1.0, 0.0], [0.0, 1.0]]), np.array([0, 1]), 2)
  np.testing.assert_allclose(two, np.eye(2), atol=1e-7)
  with pytest.raises(DataError, match=r"\[3\]"):
    cons.class_means(feats[:15], labels[:15], 4)  # class 3 has no examples


# --- prediction difference -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def silenced_model():
  """A tiny CNN whose fc1 unit 2 and conv2 channel 1 feed nothing (zero outgoing weights)."""
  model = models.build_model("digits", channels=(4, 6), hidden=10, seed=3)
  out = model.out.kernel[...]
  model.out.kernel[...] = out.at[2].set(0.0)
  fc1 = model.fc1.kernel[...]  # rows ordered (h, w, channel) by the flatten of [n, 2, 2, 6]
  model.fc1.kernel[...] = fc1.at[1::6].set(0.0)
  return model


X = np.random.RandomState(2).uniform(size=(5, 8, 8, 1)).astype(np.float32)
Y = np.array([0, 3, 5, 7, 9])


@pytest.mark.parametrize("layer, silent", [("fc1", 2), ("conv2", 1)])
def test_prediction_difference(silenced_model, layer, silent):
  model = silenced_model
  units = models.num_units(model, layer)
  pd = np.asarray(influence.model_prediction_difference(model, layer, chunk=4)(X, Y))
  assert pd.shape == (5, units)
  np.testing.assert_array_equal(pd[:, silent], 0.0)
  base = np.asarray(jax.nn.softmax(model(jnp.asarray(X))))[np.arange(5), Y]
  for j in range(units):  # one masked forward pass per neuron, outside the vmapped program
    masked = model(jnp.asarray(X), masks={layer: jnp.ones(units).at[j].set(0.0)})
    expected = base - np.asarray(jax.nn.softmax(masked))[np.arange(5), Y]
    np.testing.assert_allclose(pd[:, j], expected, atol=1e-6)
  assert np.abs(np.delete(pd, silent, axis=1)).max() > 1e-4  # the others do matter
  pd_fn = influence.model_prediction_difference(model, layer, chunk=4)
  mean = influence.mean_prediction_difference(pd_fn, [(X[:3], Y[:3]), (X[3:], Y[3:])])
  np.testing.assert_allclose(mean, pd.mean(0), atol=1e-6)
  np.testing.assert_array_equal(influence.most_influential(pd, 2)[:, 0], pd.argmax(1))


# --- pictures ------------------------------------------------------------------------------------


def test_neuron_pictures(tmp_path):
  rs = np.random.RandomState(3)
  real, adv = rs.uniform(size=(7, 8, 8, 1)), rs.uniform(size=(4, 8, 8, 1))
  real_top, adv_top = np.array([[6, 0], [1, 2], [3, 4]]), np.array([[3, 2], [0, 1], [1, 1]])
  tiles = pictures.neuron_rows(real, real_top, adv, adv_top, [2, 0])
  expected = [real[3], real[4], np.ones((8, 8, 1)), adv[1], adv[1],
              real[6], real[0], np.ones((8, 8, 1)), adv[3], adv[2]]
  np.testing.assert_array_equal(tiles, np.stack(expected))
  path = pictures.save_neuron_pictures(
      str(tmp_path / "n.png"), real, real_top, adv, adv_top, [2, 0], real_labels=np.arange(7),
      adv_labels=np.arange(4), scores={"real": np.ones(3), "adversarial": np.zeros(3)}, title="t")
  with Image.open(path) as im:
    assert im.format == "PNG" and im.size[0] > im.size[1] > 50
  assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]
