"""A small classifier trained in-repo, for an offline Frechet distance (FD) and a classifier score.

FID needs Inception weights that cannot be fetched on an offline machine and a 299x299 network that
is slow on a CPU. For CPU-scale work on the embedded digit sets, a small CNN trained here plays the
Inception network's part: its penultimate features give a Frechet distance (common.fid), and its
predictions a classifier score (the Inception Score's formula on its logits) and a confidence that
tells a digit from noise.

  clf = classifier.load_or_train("mnist_5k")   # trains once through the shared loop, then cached
  feats, logits = clf.features(images)         # images [n, H, W, C] in [-1, 1], as the data
  fd = clf.frechet_distance(images)            # to the train split's statistics
  python -m common.classifier --dataset=mnist_5k [--workdir=DIR]

The workdir (default ~/.cache/jax-papers/classifiers/<dataset>) holds the checkpoint, the config,
`accuracy.json` and the reference statistics `stats_<split>.npz` (keys mu, sigma). A missing one is
rebuilt; a checkpoint of another architecture is an error naming the directory.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time
from typing import Iterable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from flax import nnx
from ml_collections import ConfigDict

from common import data as data_lib, fid, io, logs, mesh as mesh_lib, optim, train as train_lib
from common.errors import ConfigError
from common.registry import Registry
from common.supervised import supervised

# dataset -> (conv widths, penultimate width, training steps)
ARCHITECTURES: Registry = Registry("offline-FD classifier")
ARCHITECTURES.add("mnist_5k", ((32, 64), 128, 1500))
ARCHITECTURES.add("digits", ((16, 32), 64, 1500))
ARCHITECTURES.add("mnist", ((32, 64), 128, 5000))


class CNN(nnx.Module):
  """conv3x3-ReLU-maxpool blocks, a ReLU penultimate layer (the FD features) and the logits."""

  def __init__(self, channels: int, widths: tuple[int, ...], hidden: int, image_size: int,
               num_classes: int, *, rngs: nnx.Rngs):
    convs, cin = [], channels
    for w in widths:
      convs.append(nnx.Conv(cin, w, (3, 3), rngs=rngs))
      cin = w
    self.convs = nnx.List(convs)
    side = image_size // 2 ** len(widths)
    self.hidden = nnx.Linear(side * side * cin, hidden, rngs=rngs)
    self.out = nnx.Linear(hidden, num_classes, rngs=rngs)

  def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """x [n, H, W, C] in [-1, 1] -> (features [n, hidden], logits [n, classes])."""
    for conv in self.convs:
      x = nnx.max_pool(nnx.relu(conv(x)), (2, 2), (2, 2))
    feats = nnx.relu(self.hidden(x.reshape(x.shape[0], -1)))
    return feats, self.out(feats)


def config_for(dataset: str) -> ConfigDict:
  """The training config of the classifier of `dataset` (Adam 1e-3, cosine decay, batch 64)."""
  ARCHITECTURES.get(dataset, field="dataset")
  steps = ARCHITECTURES.get(dataset)[2]
  return ConfigDict(dict(
      seed=0, data=dict(name=dataset, batch_size=64, seed=0),
      optim=dict(name="adam", lr=1e-3, warmup_steps=50, schedule="cosine", b1=0.9, b2=0.999,
                 eps=1e-8, weight_decay=0.0, grad_clip=0.0),
      train=dict(num_steps=steps, log_every=250, ckpt_every=steps, keep_checkpoints=1,
                 ema_decay=0.99, tensorboard=False)))


def default_workdir(dataset: str) -> str:
  return io.cache_dir("classifiers", dataset)


def _cross_entropy(model, batch, rng):
  del rng
  _, logits = model(batch["image"])
  labels = batch["label"]
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
  return loss, {"accuracy": jnp.mean(jnp.argmax(logits, -1) == labels)}


def _program(config, ds: data_lib.Dataset):
  widths, hidden, _ = ARCHITECTURES.get(config.data.name)
  model = CNN(ds.shape[-1], widths, hidden, ds.shape[0], ds.num_classes, rngs=nnx.Rngs(config.seed))
  tx = optim.make_optimizer(config.optim, config.train.num_steps)
  return supervised(model, _cross_entropy, tx, ema_decay=config.train.ema_decay)


class Classifier:
  """A trained classifier's features, statistics and distances (see the module docstring)."""

  def __init__(self, model: nnx.Module, workdir: str, ds: data_lib.Dataset, batch_size: int = 500):
    self.workdir, self.dataset, self.batch_size = workdir, ds, batch_size
    graphdef, state = nnx.split(model)
    self._apply = jax.jit(lambda s, x: nnx.merge(graphdef, s)(jnp.clip(x, -1.0, 1.0)))
    self._state = state

  def features(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(features [n, d], logits [n, C]) in float32 of images [n, H, W, C] in [-1, 1]."""
    images = np.asarray(images, np.float32)
    if images.shape[1:] != tuple(self.dataset.shape):
      raise ValueError(f"images of shape {images.shape[1:]} given to the {self.dataset.name} "
                       f"classifier, which reads {tuple(self.dataset.shape)}")
    outs = [self._apply(self._state, images[i:i + self.batch_size])
            for i in range(0, len(images), self.batch_size)]
    return tuple(np.concatenate([np.asarray(o[k]) for o in outs]) for k in (0, 1))

  def stats_of(self, batches: Iterable[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Feature mean and covariance of streamed image batches (float64 running sums)."""
    running = None
    for batch in batches:
      feats, _ = self.features(batch)
      running = running or fid.RunningStats(feats.shape[1])
      running.update(feats)
    return running.stats()

  def reference(self, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """Statistics of a split of the real data, cached as workdir/stats_<split>.npz."""
    path = os.path.join(self.workdir, f"stats_{split}.npz")
    if os.path.exists(path):
      return fid.load_stats(path)
    mu, sigma = self.stats_of(self.dataset.eval_batches(split, self.batch_size))
    io.on_main_process(path, lambda p: fid.save_stats(p, mu, sigma))
    return mu, sigma

  def frechet_distance(self, images: np.ndarray, split: str = "train") -> float:
    """FD between the features of `images` and those of a real split."""
    mu, sigma = fid.feature_stats(self.features(images)[0])
    return fid.frechet_distance(mu, sigma, *self.reference(split))

  def real_floor(self) -> float:
    """FD of the test split to the train split: what real data of that size scores."""
    return fid.frechet_distance(*self.reference("test"), *self.reference("train"))

  def score(self, images: np.ndarray, splits: int = 1, threshold: float = 0.9) -> dict[str, float]:
    """The classifier score (the Inception Score's formula on this classifier's logits), the mean
    top-class probability, and the fraction of images classified with probability >= threshold."""
    _, logits = self.features(images)
    mean, std = fid.inception_score(logits, splits=splits)
    conf = jax.nn.softmax(jnp.asarray(logits, jnp.float32), -1).max(-1)
    return {"classifier_score": mean, "classifier_score_std": std,
            "mean_confidence": float(conf.mean()),
            f"fraction_confident_{threshold:g}": float(np.mean(np.asarray(conf) >= threshold))}


@functools.lru_cache(maxsize=4)
def load_or_train(dataset: str, workdir: str | None = None) -> Classifier:
  """The classifier of `dataset` from `workdir` (default: the user cache), trained if missing."""
  workdir = workdir or default_workdir(dataset)
  config = config_for(dataset)
  ds = data_lib.get_dataset(config.data)
  if ds.train_labels is None:
    raise ConfigError(f"the offline FD needs a labelled dataset; {dataset!r} has no labels")
  program = _program(config, ds)
  mesh = mesh_lib.make_mesh()
  done = train_lib.Run(program, config, workdir, mesh=mesh).checkpointer.latest_step()
  if done != config.train.num_steps:
    t0 = time.time()
    logging.info("Training the offline-FD classifier of %s in %s (%d steps)...", dataset, workdir,
                 config.train.num_steps)
    batches = lambda start, seed: ds.labeled_batches(config.data.batch_size, config.data.seed,
                                                     start)
    train_lib.fit(program, config, workdir, batches, mesh=mesh)
    logging.info("Classifier trained in %.1fs.", time.time() - t0)
  state, consts, _ = train_lib.restore(program, config, workdir, mesh)
  clf = Classifier(program.model(state, consts), workdir, ds)
  path = os.path.join(workdir, "accuracy.json")
  if not os.path.exists(path):
    correct = sum(int(np.sum(np.argmax(clf.features(b["image"])[1], -1) == b["label"]))
                  for b in ds.labeled_eval_batches("test", 500))
    acc = {"dataset": dataset, "test_accuracy": correct / len(ds.labels("test")),
           "test_examples": len(ds.labels("test"))}
    io.on_main_process(path, lambda p: io.atomic_write_json(p, acc))
    logging.info("Offline-FD classifier of %s: test accuracy %.4f.", dataset, acc["test_accuracy"])
  return clf


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m common.classifier",
                                   description="Train (or load) the offline-FD classifier.")
  parser.add_argument("--dataset", default="mnist_5k", help=", ".join(ARCHITECTURES.names()))
  parser.add_argument("--workdir", default="")
  args = parser.parse_args(argv)
  logs.quiet_library_logs()
  logging.set_verbosity(logging.INFO)
  try:
    clf = load_or_train(args.dataset, args.workdir or None)
  except ConfigError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  with open(os.path.join(clf.workdir, "accuracy.json")) as f:
    print(json.dumps({**json.load(f), "workdir": clf.workdir, "fd_test_vs_train": clf.real_floor()}))
  return 0


if __name__ == "__main__":
  sys.exit(main())
