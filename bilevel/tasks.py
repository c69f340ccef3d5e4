"""The two tasks of the paper as pure pieces: data splits, an MLP, and inner/outer losses.

Data reweighting with noisy labels (bilevel.md, "Tasks"; stability_ho.md, `rw_mnist.py`): lambda in
R^{m_tr} are per-example logits, the inner loss weights each training cross-entropy by
sigmoid(lambda_i); the second half of the training labels is replaced by uniform random labels; the
outer loss is the plain cross-entropy on a clean validation set.

Feature learning (`fl_omniglot.py`): lambda is a feature extractor (Linear 784 -> 256 then ELU),
theta a head MLP on the features; the outer loss depends on lambda directly, so it is differentiated
with `bilevel.ud.solve_and_hypergrad`.

Inner losses follow the pinned signature inner_loss(theta, hparams, batch) with batch = integer
indices into the training arrays, which the caller binds with functools.partial (inside a jitted
step, from its consts):

  inner = functools.partial(reweight_inner_loss, x=consts["train_x"], y=consts["train_y"])

Indices instead of gathered examples keep the K stacked inner batches small ([K, B] int32) and give
the reweighting loss the example identities it needs.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

Params = list[dict[str, jax.Array]]


# ---------------------------------------------------------------------------------------------
# Splits (numpy, deterministic in the seed).


def corrupt_labels(labels: np.ndarray, num_classes: int, rng: np.random.Generator,
                   start: int) -> np.ndarray:
  """labels with entries [start:] replaced by uniform draws from 0..num_classes-1.

  A draw may coincide with the true label (as in the official code), so about
  (1 - 1/num_classes) of the replaced labels end up wrong.
  """
  noisy = np.array(labels, copy=True)
  noisy[start:] = rng.integers(0, num_classes, size=len(noisy) - start)
  return noisy


def noisy_label_split(x: np.ndarray, y: np.ndarray, seed: int, num_train: int = 2000,
                      num_val: int = 200, num_test: int = 1000, num_mval: int = 200,
                      num_classes: int = 10) -> dict[str, np.ndarray]:
  """The reweighting split: a seeded permutation cut into train / val / test / mval.

  The second half of the training part (its last num_train // 2 examples) gets uniform random
  labels; val, test and mval (the second validation set, never optimised on) stay clean.

  Args:
    x: [N, ...] examples; y: [N] integer labels in 0..num_classes-1.
    seed: the split (and corruption) seed.

  Returns:
    dict with train_x, train_y (noisy), train_y_clean, train_corrupted (bool [num_train], True on
    the replaced half), val_x, val_y, test_x, test_y, mval_x, mval_y.
  """
  sizes = {"train": num_train, "val": num_val, "test": num_test, "mval": num_mval}
  if sum(sizes.values()) > len(x):
    raise ValueError(f"noisy_label_split needs {sum(sizes.values())} examples ({sizes}); "
                     f"the arrays hold {len(x)}")
  rng = np.random.default_rng(seed)
  perm = rng.permutation(len(x))
  out, start = {}, 0
  for name, size in sizes.items():
    idx = perm[start:start + size]
    out[f"{name}_x"], out[f"{name}_y"] = x[idx], np.asarray(y)[idx]
    start += size
  clean_from = num_train - num_train // 2
  out["train_y_clean"] = out["train_y"]
  out["train_y"] = corrupt_labels(out["train_y"], num_classes, rng, clean_from)
  out["train_corrupted"] = np.arange(num_train) >= clean_from
  return out


def class_split(x: np.ndarray, y: np.ndarray, seed: int, num_classes: int = 100,
                counts: Sequence[int] = (5, 1, 10, 1)) -> dict[str, np.ndarray]:
  """The feature-learning split: num_classes classes drawn at random, per-class train/val/test/mval.

  Per class the examples are taken in dataset order: the first counts[0] to train, the next
  counts[1] to val, and so on (stability_ho.md, `fl_omniglot.py`: 5 / 1 / 10 / 1). Labels are
  renumbered 0..num_classes-1 in the order the classes were drawn.

  Returns:
    dict with {train,val,test,mval}_{x,y}; each split ordered by class.
  """
  y = np.asarray(y)
  classes = np.unique(y)
  if num_classes > len(classes):
    raise ValueError(f"class_split wants {num_classes} classes; the labels have {len(classes)}")
  chosen = np.random.default_rng(seed).choice(classes, num_classes, replace=False)
  bounds = np.concatenate([[0], np.cumsum(counts)])
  parts: dict[str, list] = {name: [] for name in ("train", "val", "test", "mval")}
  for new_label, c in enumerate(chosen):
    idx = np.flatnonzero(y == c)
    if len(idx) < bounds[-1]:
      raise ValueError(f"class {c} has {len(idx)} examples; class_split needs {bounds[-1]}")
    for (name, part), lo, hi in zip(parts.items(), bounds[:-1], bounds[1:]):
      part.append((x[idx[lo:hi]], np.full(hi - lo, new_label, y.dtype)))
  out = {}
  for name, part in parts.items():
    out[f"{name}_x"] = np.concatenate([p[0] for p in part])
    out[f"{name}_y"] = np.concatenate([p[1] for p in part])
  return out


def flatten_unit(images: np.ndarray, num_levels: int = 256, invert: bool = False) -> np.ndarray:
  """uint8-style images [N, ...] -> float32 [N, D] in [0, 1] (1 - x for Omniglot's inversion)."""
  x = np.asarray(images, np.float32).reshape(len(images), -1) / (num_levels - 1)
  return 1.0 - x if invert else x


# ---------------------------------------------------------------------------------------------
# Minibatch indices (jittable).


def epoch_indices(rng: jax.Array, num_examples: int, batch_size: int, num_batches: int
                  ) -> jax.Array:
  """[num_batches, batch_size] int32 indices: consecutive shuffled epochs, no repeats inside one."""
  total = num_batches * batch_size
  epochs = -(-total // num_examples)
  keys = jax.random.split(rng, epochs)
  perms = jax.vmap(lambda k: jax.random.permutation(k, num_examples))(keys)
  return perms.reshape(-1)[:total].reshape(num_batches, batch_size).astype(jnp.int32)


# ---------------------------------------------------------------------------------------------
# MLP in pure jax.


def mlp_init(rng: jax.Array, sizes: Sequence[int], dtype: Any = jnp.float32) -> Params:
  """Layers [{"w": [fan_in, fan_out], "b": [fan_out]}]; w, b ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)).

  That bound is the Kaiming-uniform default of a PyTorch Linear layer.
  """
  params = []
  for key, fan_in, fan_out in zip(jax.random.split(rng, len(sizes) - 1), sizes[:-1], sizes[1:]):
    kw, kb = jax.random.split(key)
    bound = 1.0 / np.sqrt(fan_in)
    params.append({"w": jax.random.uniform(kw, (fan_in, fan_out), dtype, -bound, bound),
                   "b": jax.random.uniform(kb, (fan_out,), dtype, -bound, bound)})
  return params


def mlp_apply(params: Params, x: jax.Array, final_activation: bool = False) -> jax.Array:
  """x [B, sizes[0]] -> [B, sizes[-1]]; ELU between layers (and after the last if asked)."""
  for i, layer in enumerate(params):
    x = x @ layer["w"] + layer["b"]
    if final_activation or i < len(params) - 1:
      x = jax.nn.elu(x)
  return x


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Per-example softmax cross-entropy [B] of logits [B, C] and integer labels [B]."""
  logp = jax.nn.log_softmax(logits)
  return -jnp.take_along_axis(logp, labels[:, None].astype(jnp.int32), axis=1)[:, 0]


def error_rate(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """The 0-1 loss: fraction of argmax predictions that differ from labels."""
  return jnp.mean(jnp.argmax(logits, -1) != labels)


# ---------------------------------------------------------------------------------------------
# Data reweighting.


def reweight_inner_loss(theta: Params, weight_logits: jax.Array, idx: jax.Array, x: jax.Array,
                        y: jax.Array) -> jax.Array:
  """mean_i sigmoid(lambda_i) CE(mlp(theta, x_i), y_i) over the minibatch idx [B].

  Args:
    theta: MLP parameters (e.g. sizes 784-256-10).
    weight_logits: lambda [m_tr], one logit per training example.
    idx: [B] integer indices into the training set.
    x: [m_tr, D] training inputs; y: [m_tr] (noisy) labels.
  """
  weights = jax.nn.sigmoid(weight_logits[idx]).astype(x.dtype)
  return jnp.mean(weights * cross_entropy(mlp_apply(theta, x[idx]), y[idx]))


def classification_loss(theta: Params, x: jax.Array, y: jax.Array) -> jax.Array:
  """Mean cross-entropy of the MLP on (x [B, D], y [B]): the reweighting outer and test loss."""
  return jnp.mean(cross_entropy(mlp_apply(theta, x), y))


def reweight_prior(rng: jax.Array, num_train: int, dtype: Any = jnp.float32) -> jax.Array:
  """Random-search prior for reweighting: lambda ~ U(-5, 5)^{m_tr} (stability_ho.md, `rs_K`)."""
  return jax.random.uniform(rng, (num_train,), dtype, -5.0, 5.0)


# ---------------------------------------------------------------------------------------------
# Feature learning.


def features(extractor: Params, x: jax.Array) -> jax.Array:
  """The shared feature extractor lambda: [B, D] -> [B, F], Linear layers with ELU after each."""
  return mlp_apply(extractor, x, final_activation=True)


def feature_logits(theta: Params, extractor: Params, x: jax.Array) -> jax.Array:
  """Head theta on the features of x: [B, D] -> [B, C]."""
  return mlp_apply(theta, features(extractor, x))


def feature_inner_loss(theta: Params, extractor: Params, idx: jax.Array, x: jax.Array,
                       y: jax.Array) -> jax.Array:
  """Mean CE of the head on the minibatch idx [B] of the training set (x [m_tr, D], y [m_tr])."""
  return jnp.mean(cross_entropy(feature_logits(theta, extractor, x[idx]), y[idx]))


def feature_outer_loss(theta: Params, extractor: Params, x: jax.Array, y: jax.Array) -> jax.Array:
  """Mean CE on (x [B, D], y [B]); depends on lambda directly as well as through theta_K."""
  return jnp.mean(cross_entropy(feature_logits(theta, extractor, x), y))


def feature_prior(rng: jax.Array, sizes: Sequence[int] = (784, 256),
                  dtype: Any = jnp.float32) -> Params:
  """Random-search prior for feature learning: a fresh extractor initialisation (`rs_K`)."""
  return mlp_init(rng, sizes, dtype)
