"""Sample quality of a diffusion model: the offline FD or FID, for --mode=eval and the reports.

`eval.metric` picks the metric:
  fd    the Frechet distance in the features of the small classifier trained in-repo on the same
        dataset (common/classifier.py; mnist_5k, digits, mnist), with its classifier score and the
        fraction of samples it classifies with confidence >= 0.9 (a digit rather than noise);
        offline and fast on a CPU. Reference: the train split; floor: the test split's FD.
  fid   FID with the FID Inception network (common/inception.py, weights in eval.inception_weights,
        converted from pytorch-fid's file), against eval.fid_stats (pytorch-fid's .npz format) or
        the train split's statistics computed once and cached in the workdir; plus the Inception
        Score.
  auto  fd where a classifier exists for data.name, else fid.

Samples are scored streaming (float64 running statistics), so 50,000 of them never sit in memory.

`workdir/results.json` (written by --mode=eval) has one record per sampler, schema:
  {"metric": "fd_mnist_5k" | "fid", "value": float, "num_samples": int, "sampler": str,
   "steps": int (K for ddpm/ddim, NFE for DPM-Solver), "model_step": int, "reference": str,
   "floor": float | null (the real test split's own value), "extra": {score, confidence, ...},
   "config": {the sample.* and eval.* fields used}}
"""

from __future__ import annotations

import os
from typing import Any, Callable, Iterable

import numpy as np
from absl import logging

from common import classifier, fid, io
from common.errors import ConfigError, DataError

METRICS = ("auto", "fd", "fid")


def validate(config) -> None:
  e = config.eval
  if e.metric not in METRICS:
    raise ConfigError(f"eval.metric={e.metric!r} is invalid: expected one of {list(METRICS)}")
  if e.num_samples <= 0:
    raise ConfigError(f"eval.num_samples={e.num_samples} is invalid: expected a number > 0")
  if resolve(config) == "fd" and config.data.name not in classifier.ARCHITECTURES:
    raise ConfigError(f"eval.metric=fd needs a classifier of data.name={config.data.name!r}; "
                      f"there are ones for {', '.join(classifier.ARCHITECTURES.names())} "
                      "(use eval.metric=fid with eval.inception_weights)")


def resolve(config) -> str:
  metric = config.eval.metric
  if metric == "auto":
    return "fd" if config.data.name in classifier.ARCHITECTURES else "fid"
  return metric


class Scorer:
  """Scores streamed sample batches (images in [-1, 1]) with the configured metric."""

  def __init__(self, config, workdir: str, dataset):
    self.kind = resolve(config)
    self.config, self.workdir, self.dataset = config, workdir, dataset
    if self.kind == "fd":
      self.clf = classifier.load_or_train(config.data.name, config.eval.get("classifier_dir") or
                                          None)
      self.name = f"fd_{config.data.name}"
    else:
      self.apply = _inception(config)
      self.name = "fid"

  def __call__(self, batches: Iterable[np.ndarray]) -> dict[str, Any]:
    """{'value', 'num_samples', 'floor', 'reference', 'extra'} of the images in `batches`."""
    if self.kind == "fd":
      images = np.concatenate(list(batches))
      mu, sigma = fid.feature_stats(self.clf.features(images)[0])
      value = fid.frechet_distance(mu, sigma, *self.clf.reference("train"))
      return dict(value=value, num_samples=len(images), floor=self.clf.real_floor(),
                  reference=f"{self.config.data.name} train split", extra=self.clf.score(images))
    from common import inception
    mu, sigma, logits = inception.features_stats(self.apply, (_to_rgb01(b) for b in batches))
    ref_mu, ref_sigma, reference = self._fid_reference()
    is_mean, is_std = fid.inception_score(logits, splits=10 if len(logits) >= 10 else 1)
    return dict(value=fid.frechet_distance(mu, sigma, ref_mu, ref_sigma), num_samples=len(logits),
                floor=None, reference=reference,
                extra={"inception_score": is_mean, "inception_score_std": is_std})

  def _fid_reference(self):
    path = self.config.eval.get("fid_stats", "")
    if path:
      return (*fid.load_stats(path), path)
    cache = os.path.join(self.workdir, "fid_stats_train.npz")
    if not os.path.exists(cache):
      from common import inception
      logging.info("Computing the FID statistics of the %s train split (cached in %s)...",
                   self.config.data.name, cache)
      mu, sigma, _ = inception.features_stats(
          self.apply, (_to_rgb01(b) for b in self.dataset.eval_batches("train", 500)),
          keep_logits=False)
      io.on_main_process(cache, lambda p: fid.save_stats(p, mu, sigma))
      return mu, sigma, cache
    return (*fid.load_stats(cache), cache)


def _inception(config) -> Callable:
  path = config.eval.get("inception_weights", "")
  if not path:
    raise DataError("eval.metric=fid needs eval.inception_weights=<file.npz>: download "
                    "pt_inception-2015-12-05-6726825d.pth (pytorch-fid's weights) and convert it "
                    "with `python -m common.inception --convert <that .pth> --out <file.npz>` "
                    "(docs/EVALUATION.md)")
  from common import inception
  return inception.load(path)


def _to_rgb01(images: np.ndarray) -> np.ndarray:
  x = (np.clip(np.asarray(images, np.float32), -1.0, 1.0) + 1.0) / 2.0
  return np.repeat(x, 3, axis=-1) if x.shape[-1] == 1 else x
