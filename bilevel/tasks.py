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

from common.registry import Registry

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


def noisy_label_split(x: np.ndarray, y: np.ndarray, seed: Any, num_train: int = 2000,
                      num_val: int = 200, num_test: int = 1000, num_mval: int = 200,
                      num_classes: int = 10, num_pool: int = 0) -> dict[str, np.ndarray]:
  """The reweighting split: a seeded permutation cut into train / val / test / mval (/ pool).

  The second half of the training part (its last num_train // 2 examples) gets uniform random
  labels; val, test and mval (the second validation set, never optimised on) stay clean. The
  optional pool (clean, cut after mval) holds fresh examples for the stability meter's swaps.

  Args:
    x: [N, ...] examples; y: [N] integer labels in 0..num_classes-1.
    seed: the split (and corruption) seed: an int or a sequence of ints (numpy SeedSequence).

  Returns:
    dict with train_x, train_y (noisy), train_y_clean, train_corrupted (bool [num_train], True on
    the replaced half), val_x, val_y, test_x, test_y, mval_x, mval_y (and pool_x, pool_y).
  """
  sizes = {"train": num_train, "val": num_val, "test": num_test, "mval": num_mval}
  if num_pool:
    sizes["pool"] = num_pool
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


def class_split(x: np.ndarray, y: np.ndarray, seed: Any, num_classes: int = 100,
                counts: Sequence[int] = (5, 1, 10, 1)) -> dict[str, np.ndarray]:
  """The feature-learning split: num_classes classes drawn at random, per-class train/val/test/mval.

  Per class the examples are taken in dataset order: the first counts[0] to train, the next
  counts[1] to val, and so on (stability_ho.md, `fl_omniglot.py`: 5 / 1 / 10 / 1). A fifth count
  adds a "pool" part (fresh examples for the stability meter). Labels are renumbered
  0..num_classes-1 in the order the classes were drawn.

  Returns:
    dict with {train,val,test,mval}_{x,y} (and pool_{x,y}); each split ordered by class.
  """
  y = np.asarray(y)
  classes = np.unique(y)
  if num_classes > len(classes):
    raise ValueError(f"class_split wants {num_classes} classes; the labels have {len(classes)}")
  chosen = np.random.default_rng(seed).choice(classes, num_classes, replace=False)
  bounds = np.concatenate([[0], np.cumsum(counts)])
  if not 1 <= len(counts) <= 5:
    raise ValueError(f"class_split takes 1 to 5 per-class counts; got {tuple(counts)}")
  parts: dict[str, list] = {name: [] for name in ("train", "val", "test", "mval",
                                                  "pool")[:len(counts)]}
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


# ---------------------------------------------------------------------------------------------
# The tasks as the runner sees them (bilevel/experiment.py): chosen by `config.task`.


class Reweighting:
  """Data reweighting with noisy labels: lambda [m_tr] weight logits, theta an MLP (D-hidden-C).

  Args:
    config: the experiment config (data sizes, model.hidden).
    num_features, num_classes: D and C of the data pool.
  """
  name = "reweight"

  def __init__(self, config, num_features: int, num_classes: int):
    self.data, self.num_classes = config.data, num_classes
    self.sizes = (num_features, *config.model.hidden, num_classes)

  @property
  def num_train(self) -> int:
    return self.data.num_train

  @property
  def num_val(self) -> int:
    return self.data.num_val

  def split(self, labels: np.ndarray, seed: Any) -> dict[str, np.ndarray]:
    """Positions into the pool (int32) and labels of every part for one seed."""
    d = self.data
    ids = np.arange(len(labels))[:, None]
    s = noisy_label_split(ids, labels, seed, d.num_train, d.num_val, d.num_test, d.num_mval,
                          self.num_classes, d.num_pool)
    out = {name: s[f"{name}_x"][:, 0].astype(np.int32) for name in PARTS}
    out.update({f"{name}_y": np.asarray(s[f"{name}_y"], np.int32) for name in PARTS})
    out["train_corrupted"] = s["train_corrupted"]
    return out

  def init(self, key: jax.Array) -> tuple[Params, jax.Array]:
    """(theta_0, lambda_0): a Kaiming-uniform MLP and zero logits (weights 1/2), `rw_mnist.py`."""
    return mlp_init(key, self.sizes), jnp.zeros(self.num_train, jnp.float32)

  def logits(self, theta: Params, hparams: jax.Array, x: jax.Array) -> jax.Array:
    del hparams
    return mlp_apply(theta, x)

  inner_loss = staticmethod(reweight_inner_loss)

  def prior(self, key: jax.Array) -> jax.Array:
    return reweight_prior(key, self.num_train)

  def hparam_metrics(self, hparams: jax.Array, split: dict[str, jax.Array]) -> dict:
    """Mean weight sigmoid(lambda_i) on the clean and on the corrupted training examples."""
    w = jax.nn.sigmoid(hparams)
    noisy = split["train_corrupted"].astype(w.dtype)
    return {"weight_clean": jnp.sum(w * (1 - noisy)) / jnp.maximum(jnp.sum(1 - noisy), 1),
            "weight_noisy": jnp.sum(w * noisy) / jnp.maximum(jnp.sum(noisy), 1)}


class FeatureLearning:
  """Feature learning: lambda a shared extractor (Linear D -> F, ELU), theta a head MLP on it.

  Args:
    config: the experiment config (data.num_classes, data.per_class, model.features,
      model.head_hidden).
    num_features: D of the data pool; num_classes is the number drawn, data.num_classes.
  """
  name = "feature"

  def __init__(self, config, num_features: int, num_classes: int):
    del num_classes  # the task draws data.num_classes of them
    self.data = config.data
    self.extractor_sizes = (num_features, config.model.features)
    self.head_sizes = (config.model.features, *config.model.head_hidden, config.data.num_classes)

  @property
  def num_train(self) -> int:
    return self.data.num_classes * self.data.per_class[0]

  @property
  def num_val(self) -> int:
    return self.data.num_classes * self.data.per_class[1]

  def split(self, labels: np.ndarray, seed: Any) -> dict[str, np.ndarray]:
    ids = np.arange(len(labels))[:, None]
    s = class_split(ids, labels, seed, self.data.num_classes, tuple(self.data.per_class))
    out = {name: s[f"{name}_x"][:, 0].astype(np.int32) for name in PARTS}
    out.update({f"{name}_y": np.asarray(s[f"{name}_y"], np.int32) for name in PARTS})
    return out

  def init(self, key: jax.Array) -> tuple[Params, Params]:
    """(theta_0, lambda_0): the head and the extractor, both Kaiming-uniform (`fl_omniglot.py`)."""
    k_head, k_features = jax.random.split(key)
    return mlp_init(k_head, self.head_sizes), mlp_init(k_features, self.extractor_sizes)

  def logits(self, theta: Params, hparams: Params, x: jax.Array) -> jax.Array:
    return feature_logits(theta, hparams, x)

  inner_loss = staticmethod(feature_inner_loss)

  def prior(self, key: jax.Array) -> Params:
    return feature_prior(key, self.extractor_sizes)

  def hparam_metrics(self, hparams: Params, split: dict[str, jax.Array]) -> dict:
    del hparams, split
    return {}


PARTS = ("train", "val", "test", "mval", "pool")
TASKS: Registry = Registry("bilevel task")
TASKS.add("reweight", Reweighting)
TASKS.add("feature", FeatureLearning)
