"""The consistency of a neuron (Dong et al., arXiv 1901.09035): consis(n) = p_n^T A p_n.

p_n is the class distribution of the k inputs that activate neuron n most (a conv channel's
activation is its spatial max) and A [C, C] a class-similarity matrix with entries in [0, 1] and a
unit diagonal. With A = I the score is the class purity sum_c p_c^2, in [1/C, 1] for k >= C; a
non-identity A also credits top-k inputs of similar classes. The papers compare the score over real
images, over adversarial images (labelled with their source image's class: the class a human sees)
and over their union.

Top-k search streams over batches (`top_k_inputs`) or runs on one array (`top_k_over_array`); both
order by activation and break ties towards the lower input index, so they agree exactly.
"""

from __future__ import annotations

import os
from typing import Callable, Iterable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from common.errors import ConfigError, DataError
from common.registry import Registry


class TopK(NamedTuple):
  """The k most activating inputs of each neuron: values [U, k] (descending), indices [U, k].

  NumPy arrays from the streaming search, jax arrays from `top_k_over_array`.
  """
  values: np.ndarray | jax.Array
  indices: np.ndarray | jax.Array


def consistency(top_labels, similarity) -> jax.Array:
  """consis = p^T A p per neuron (arXiv 1901.09035, the consistency metric).

  Args:
    top_labels: [num_neurons, k] integer classes of each neuron's top-k inputs.
    similarity: A [C, C]; the class count C comes from here, so classes absent from top_labels
      still count.

  Returns:
    [num_neurons] consistency scores.
  """
  similarity = jnp.asarray(similarity)
  if similarity.ndim != 2 or similarity.shape[0] != similarity.shape[1]:
    raise ValueError(f"similarity must be a square [C, C] matrix, got shape {similarity.shape}")
  if not jnp.issubdtype(similarity.dtype, jnp.floating):
    similarity = similarity.astype(jnp.float32)
  num_classes = similarity.shape[0]
  _check_labels(top_labels, num_classes)
  p = jnp.mean(jax.nn.one_hot(top_labels, num_classes, dtype=similarity.dtype), axis=1)
  return jnp.einsum("nc,cd,nd->n", p, similarity, p)


def _check_labels(top_labels, num_classes: int) -> None:
  """Rejects labels outside [0, C) when they are concrete (one_hot would silently drop them)."""
  if jnp.ndim(top_labels) != 2:
    raise ValueError(f"top_labels must be [num_neurons, k], got shape {jnp.shape(top_labels)}")
  if isinstance(top_labels, jax.core.Tracer):
    return
  labels = np.asarray(top_labels)
  if not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(f"top_labels must be integer classes, got dtype {labels.dtype}")
  if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
    raise ValueError(f"top_labels must lie in [0, {num_classes}) (C from similarity), got "
                     f"[{labels.min()}, {labels.max()}]")


def top_labels(top: TopK, labels) -> np.ndarray:
  """Classes [U, k] of each neuron's top-k inputs, from the labels [N] of the searched inputs."""
  return np.asarray(labels)[np.asarray(top.indices)]


# --- top-k activating inputs -------------------------------------------------------------------


def top_k_over_array(activations, k: int) -> TopK:
  """Top-k inputs of each neuron from all activations at once (jittable).

  Args:
    activations: [N, U] neuron activations (conv channels already reduced by spatial max).
    k: inputs per neuron, k <= N.

  Returns:
    TopK with values and indices [U, k]; ties go to the lower input index.
  """
  activations = jnp.asarray(activations)
  if k > activations.shape[0]:
    raise ValueError(f"k={k} exceeds the {activations.shape[0]} inputs")
  values, indices = jax.lax.top_k(activations.T, k)
  return TopK(values, indices)


def merge_top_k(a: TopK, b: TopK, k: int) -> TopK:
  """Top-k of the union of two candidate sets whose indices in `a` are all below those in `b`.

  A stable sort of the concatenation keeps equal values in position order, which is index order
  under that premise, so the result breaks ties as a one-shot search does.
  """
  values = np.concatenate([a.values, b.values], axis=1)
  indices = np.concatenate([a.indices, b.indices], axis=1)
  order = np.argsort(-values, axis=1, kind="stable")[:, :k]
  return TopK(np.take_along_axis(values, order, 1), np.take_along_axis(indices, order, 1))


def _pad_to(x: np.ndarray, size: int) -> np.ndarray:
  if len(x) == size:
    return x
  return np.concatenate([x, np.zeros((size - len(x),) + x.shape[1:], x.dtype)])


def top_k_inputs(activations_fn: Callable[[np.ndarray], jax.Array], batches: Iterable,
                 k: int) -> TopK:
  """Top-k inputs of each neuron over a stream of batches, keeping only [U, k] on the host.

  A batch smaller than the first is zero-padded to its size (and the padding dropped), so a jitted
  activations_fn compiles once.

  Args:
    activations_fn: x [b, ...] -> neuron activations [b, U] (e.g. models.layer_activations_fn).
    batches: iterable of input arrays [b, ...]; an input's index is its position in the stream.
    k: inputs per neuron.

  Returns:
    TopK with values and indices [U, k] into the concatenated stream.
  """
  best, seen, size = None, 0, None
  for x in batches:
    x = np.asarray(x)
    size = size or len(x)
    if len(x) > size:
      raise ValueError(f"batch of {len(x)} inputs after a first batch of {size}")
    acts = np.asarray(activations_fn(_pad_to(x, size)))[:len(x)].T  # [U, b]
    idx = np.broadcast_to(np.arange(seen, seen + len(x)), acts.shape)
    cand = TopK(acts, idx)
    if best is None:
      best = TopK(acts[:, :0], idx[:, :0])
    best = merge_top_k(best, cand, k)
    seen += len(x)
  if best is None or seen < k:
    raise ValueError(f"k={k} exceeds the {seen} inputs in the stream")
  return best


def union_top_k(real: TopK, adv: TopK, num_real: int, k: int) -> TopK:
  """Top-k over real ∪ adversarial inputs from the two top-k sets; adversarial indices shift by
  num_real (index i >= num_real is adversarial input i - num_real)."""
  return merge_top_k(real, TopK(adv.values, adv.indices + num_real), k)


def consistency_by_set(real: TopK, adv: TopK, labels_real, labels_adv, similarity,
                       k: int | None = None) -> dict[str, np.ndarray]:
  """Consistency of every neuron on real, adversarial and union top-k inputs.

  Args:
    real, adv: top-k of the real and of the adversarial inputs ([U, k] each).
    labels_real: [N] classes of the real inputs; labels_adv: [M] classes of the adversarial inputs
      (their source images' classes).
    similarity: A [C, C].
    k: top-k size of the union (default: that of `real`).

  Returns:
    {"real", "adversarial", "union"}: [U] scores each.
  """
  labels_real, labels_adv = np.asarray(labels_real), np.asarray(labels_adv)
  k = k or real.indices.shape[1]
  union = union_top_k(real, adv, len(labels_real), k)
  all_labels = np.concatenate([labels_real, labels_adv])
  return {"real": np.asarray(consistency(top_labels(real, labels_real), similarity)),
          "adversarial": np.asarray(consistency(top_labels(adv, labels_adv), similarity)),
          "union": np.asarray(consistency(top_labels(union, all_labels), similarity))}


def representation_distance(phi_x: jax.Array, phi_adv: jax.Array) -> jax.Array:
  """||phi(x) - phi(x*)||^2 per example [n] for representations [n, ...] (the consistent loss's
  distance term)."""
  diff = phi_x - phi_adv
  return jnp.sum(jnp.square(diff), axis=tuple(range(1, diff.ndim)))


# --- class-similarity matrices -----------------------------------------------------------------

def identity_similarity(num_classes: int) -> np.ndarray:
  """A = I [C, C]: consistency becomes class purity sum_c p_c^2."""
  return np.eye(num_classes, dtype=np.float32)


def load_similarity(path: str, num_classes: int, field: str = "similarity.path") -> np.ndarray:
  """A [C, C] from a .npy file, or a .npz file holding one array (or one named 'similarity').

  Raises ConfigError when the file is missing or of another type, DataError when its array is not
  a symmetric [C, C] matrix with entries in [0, 1].
  """
  if not os.path.isfile(path):
    raise ConfigError(f"{field}={path!r}: no such file")
  ext = os.path.splitext(path)[1].lower()
  if ext == ".npy":
    a = np.load(path, allow_pickle=False)
  elif ext == ".npz":
    with np.load(path, allow_pickle=False) as z:
      if "similarity" in z.files:
        a = z["similarity"]
      elif len(z.files) == 1:
        a = z[z.files[0]]
      else:
        raise DataError(f"{path}: holds {z.files}; name the matrix 'similarity'")
  else:
    raise ConfigError(f"{field}={path!r}: expected a .npy or .npz file")
  return _checked_similarity(np.asarray(a, np.float32), num_classes, path)


def _checked_similarity(a: np.ndarray, num_classes: int, where: str) -> np.ndarray:
  if a.shape != (num_classes, num_classes):
    raise DataError(f"{where}: similarity of shape {a.shape}, expected ({num_classes}, "
                    f"{num_classes})")
  if not np.all(np.isfinite(a)) or a.min() < 0 or a.max() > 1:
    raise DataError(f"{where}: similarity entries must lie in [0, 1]")
  if not np.allclose(a, a.T, atol=1e-6):
    raise DataError(f"{where}: similarity must be symmetric")
  return a


def class_means(features, labels, num_classes: int) -> np.ndarray:
  """Mean feature of each class [C, D] from features [N, ...] (flattened) and labels [N]."""
  f = np.asarray(features, np.float64).reshape(len(labels), -1)
  onehot = np.eye(num_classes)[np.asarray(labels)]
  counts = onehot.sum(0)
  if np.any(counts == 0):
    raise DataError(f"classes {np.flatnonzero(counts == 0).tolist()} have no examples")
  return onehot.T @ f / counts[:, None]


def feature_similarity(features, labels, num_classes: int) -> np.ndarray:
  """A_cd = max(0, cos(m_c - m, m_d - m)) from a reference model's class-mean features m_c.

  A stand-in for the paper's WordNet similarity where no class hierarchy exists (digits): centring
  at the mean m of the class means keeps the shared component of ReLU features (all cosines near 1
  otherwise) from making every pair look similar; negative cosines are unrelated classes, so they
  clip to 0. The diagonal is 1, entries lie in [0, 1] and A is symmetric.

  Args:
    features: [N, ...] representations of labelled inputs at the reference layer.
    labels: [N] classes.
    num_classes: C.

  Returns:
    A [C, C] float32.
  """
  m = class_means(features, labels, num_classes)
  m = m - m.mean(0, keepdims=True)
  unit = m / np.maximum(np.linalg.norm(m, axis=1, keepdims=True), 1e-12)
  a = np.clip(unit @ unit.T, 0.0, 1.0)
  np.fill_diagonal(a, 1.0)
  return a.astype(np.float32)


def _needs(kind: str, **given):
  missing = [name for name, value in given.items() if value is None]
  if missing:
    raise ConfigError(f"similarity {kind!r} needs {', '.join(missing)}")


def _from_file(num_classes, *, path=None, **_):
  _needs("file", path=path)
  return load_similarity(path, num_classes)


def _from_features(num_classes, *, features=None, labels=None, **_):
  _needs("features", features=features, labels=labels)
  return feature_similarity(features, labels, num_classes)


SIMILARITIES: Registry = Registry("class-similarity matrix")
SIMILARITIES.add("identity", lambda num_classes, **_: identity_similarity(num_classes))
SIMILARITIES.add("file", _from_file)
SIMILARITIES.add("features", _from_features)


def similarity_matrix(kind: str, num_classes: int, *, path: str | None = None, features=None,
                      labels=None, field: str = "similarity.kind") -> np.ndarray:
  """A [C, C] by name: 'identity', 'file' (needs path) or 'features' (needs features, labels)."""
  build = SIMILARITIES.get(kind, field=field)
  return build(num_classes, path=path, features=features, labels=labels)
