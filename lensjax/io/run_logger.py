"""Where a run's numbers go: TensorBoard, metrics.jsonl and the progress line.

Records are queued as device arrays and fetched on `flush()`, which the loop
calls right after dispatching the next step, so fetching never stalls the
device. Only process 0 writes.
"""

from __future__ import annotations

import os
import time

import jax
import numpy as np
from matplotlib import colormaps

from lensjax import perf
from lensjax.io.metrics_log import MetricsLog
from lensjax.io.names import flatten_metrics
from lensjax.io.progress import Progress
from lensjax.io.tensorboard import SummaryWriter

# [L, H] metrics also drawn as a layer-by-head heat map on TensorBoard.
HEATMAPS = ("attn/entropy", "eval/attn/entropy")


def heatmap_png(matrix_LxH: np.ndarray, cell: int = 16) -> np.ndarray:
  """An RGB image, one `cell`-pixel square per entry, colour scale [0, 1]."""
  rgba = colormaps["viridis"](np.clip(np.nan_to_num(matrix_LxH), 0.0, 1.0))
  rgb = (rgba[..., :3] * 255).astype(np.uint8)
  return np.kron(rgb, np.ones((cell, cell, 1), np.uint8))


class RunLogger:

  def __init__(self, workdir: str, total_steps: int, start_step: int, tokens_per_step: int, flops_per_token: float,
               progress_mode: str):
    self.is_writer = jax.process_index() == 0
    if self.is_writer:
      self.writer = SummaryWriter(os.path.join(workdir, "tb"))
      self.metrics_log = MetricsLog(os.path.join(workdir, "metrics.jsonl"))
    self.progress = Progress(progress_mode, total_steps, start_step)
    self.tokens_per_step, self.flops_per_token = tokens_per_step, flops_per_token
    self._pending: dict[int, tuple[dict, dict]] = {}
    self._last_train: tuple[int, float] | None = None

  def add(self, step: int, metrics: dict, histograms: dict | None = None) -> None:
    """Queues device arrays for `step`; records of the same step are merged."""
    scalars, hists = self._pending.setdefault(step, ({}, {}))
    scalars.update(metrics)
    hists.update(histograms or {})

  def flush(self) -> None:
    for step in sorted(self._pending):
      scalars, hists = jax.device_get(self._pending[step])
      self._write(step, scalars, hists)
    self._pending.clear()

  def _write(self, step: int, raw: dict, hists: dict) -> None:
    metrics = flatten_metrics(raw)
    if "train/loss" in metrics:  # step time from one train record to the next
      now = time.perf_counter()
      if self._last_train is not None and step > self._last_train[0]:
        seconds = (now - self._last_train[1]) / (step - self._last_train[0])
        metrics.update(perf.perf_metrics(seconds, self.tokens_per_step, self.flops_per_token))
      self._last_train = (step, now)
    self.progress.update(step, metrics)
    if not self.is_writer:
      return
    self.writer.scalars(step, metrics)
    self.metrics_log.write(step, metrics)
    for name, value in hists.items():
      for layer, row in enumerate(np.asarray(value)):
        self.writer.histogram(step, f"{name}/layer_{layer}", row)
    for name in HEATMAPS:
      if name in raw and np.ndim(raw[name]) == 2:
        self.writer.image(step, name + "/heatmap", heatmap_png(np.asarray(raw[name])))

  def text(self, step: int, tag: str, text: str) -> None:
    if self.is_writer:
      self.writer.text(step, tag, text)

  def close(self) -> None:
    self.flush()
    self.progress.close()
    if self.is_writer:
      self.writer.close()
      self.metrics_log.close()
