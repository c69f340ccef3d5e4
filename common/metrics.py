"""Metrics to `workdir/metrics.jsonl` and TensorBoard event files (tensorboardX), on process 0 only."""

from __future__ import annotations

import json
import os
import time
from typing import Any, Mapping

import numpy as np

from common import mesh


class MetricWriter:
  """Appends one JSON line per (step, metrics) and mirrors scalars to TensorBoard."""

  def __init__(self, workdir: str, tensorboard: bool = True):
    self.enabled = mesh.is_main_process()
    self._tb = None
    if not self.enabled:
      return
    os.makedirs(workdir, exist_ok=True)
    self._path = os.path.join(workdir, "metrics.jsonl")
    if tensorboard:
      from tensorboardX import SummaryWriter
      self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

  def write(self, step: int, metrics: Mapping[str, Any]) -> None:
    if not self.enabled or not metrics:
      return
    scalars = {k: float(np.asarray(v)) for k, v in metrics.items() if np.size(v) == 1}
    with open(self._path, "a") as f:
      f.write(json.dumps({"step": int(step), "time": time.time(), **scalars}) + "\n")
    if self._tb is not None:
      for k, v in scalars.items():
        self._tb.add_scalar(k, v, global_step=int(step))
      self._tb.flush()

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


def read_metrics(workdir: str) -> list[dict[str, Any]]:
  """All records of `workdir/metrics.jsonl` (for tests, plots and result tables)."""
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]
