"""Where a run's numbers go: TensorBoard, metrics.jsonl and the progress line.

Records are queued as device arrays and fetched on `flush()`, which the loop
calls right after dispatching the next step, so fetching never stalls the
device. Only process 0 writes.
"""

from __future__ import annotations

import abc
import os
import time
from typing import Sequence

import jax
import numpy as np
from matplotlib import colormaps

from lensjax import perf
from lensjax.io.metrics_log import MetricsLog, read_metrics
from lensjax.io.names import flatten_metrics
from lensjax.io.progress import Progress
from lensjax.io.step_arrays import write_step_arrays
from lensjax.io.tensorboard import SummaryWriter
from lensjax.stats import lens as lens_lib

MAX_HISTORY_COLUMNS = 400


def heatmap_png(matrix: np.ndarray, cell: tuple[int, int] = (16, 16), top: float = 1.0) -> np.ndarray:
  """An RGB image of `matrix`, each entry a cell of (height, width) pixels, colours over [0, top]."""
  scaled = np.clip(np.nan_to_num(np.asarray(matrix, np.float64)) / max(top, 1e-12), 0.0, 1.0)
  rgb = (colormaps["viridis"](scaled)[..., :3] * 255).astype(np.uint8)
  return np.kron(rgb, np.ones(cell + (1,), np.uint8))


def layer_history(records: list[dict], name: str, num_layers: int) -> list[np.ndarray]:
  """The [L] vectors of `name` in metrics.jsonl records, oldest first."""
  keys = [f"{name}/layer_{l}" for l in range(num_layers)]
  return [np.array([r[k] for k in keys]) for r in records if all(k in r for k in keys)]


class _Sink:
  """The HostSink the lenses' host halves write to: TensorBoard images and histograms, event logs, per-step
  array files."""

  def __init__(self, workdir: str, writer: SummaryWriter, train_records: list[dict], num_layers: int,
               event_logs: Sequence[str]):
    self.workdir, self.writer, self.num_layers = workdir, writer, num_layers
    self._train_records, self._history = train_records, {}
    self._logs = {log: MetricsLog(os.path.join(workdir, f"{log}.jsonl")) for log in event_logs}

  def histogram(self, step, tag, values):
    self.writer.histogram(step, tag, values)

  def heatmap(self, step, tag, matrix_RxC, top=None):
    matrix = np.asarray(matrix_RxC, np.float64)
    self.writer.image(step, tag, heatmap_png(matrix, top=_top(matrix, top)))

  def layer_history_heatmap(self, step, name, vector_L, top=None):
    """A layer-by-logging-step heat map of `name`, redrawn at every logging step (resumed runs keep theirs)."""
    if name not in self._history:
      self._history[name] = layer_history(self._train_records, name, self.num_layers)
    history = self._history[name]
    history.append(np.asarray(vector_L, np.float64))
    columns = np.stack(history[-MAX_HISTORY_COLUMNS:], axis=1)  # [L, logging steps]
    self.writer.image(step, name + "/heatmap", heatmap_png(columns, cell=(16, 2), top=_top(columns, top)))

  def event(self, log, step, record):
    self._logs[log].write(step, record)

  def arrays(self, step, name, arrays):
    write_step_arrays(os.path.join(self.workdir, name), step, arrays)

  def close(self):
    for log in self._logs.values():
      log.close()


def _top(matrix: np.ndarray, top: float | None) -> float:
  return float(np.nanmax(matrix, initial=1e-12)) if top is None else top


class RecordQueue(abc.ABC):
  """Records queued as device arrays, fetched in one transfer per step on `flush()`."""

  def __init__(self):
    self._pending: dict[int, tuple[dict, dict]] = {}

  def add(self, step: int, metrics: dict) -> None:
    """Queues device arrays for `step`; records of the same step are merged."""
    scalars, units = self._pending.setdefault(step, ({}, {}))
    for name, value in metrics.items():
      (units if name.startswith("units/") else scalars)[name] = value

  def flush(self) -> float:
    """Fetches and writes the queued records; returns the largest `train/skipped_steps` seen (for an ensemble, summed over its members)."""
    skipped = 0.0
    for step in sorted(self._pending):
      scalars, units = jax.device_get(self._pending[step])
      skipped = max(skipped, self.write(step, scalars, units))
    self._pending.clear()
    return skipped

  @abc.abstractmethod
  def write(self, step: int, scalars: dict, units: dict) -> float:
    """Writes one fetched record; returns its `train/skipped_steps` (0 without one)."""


class RunLogger(RecordQueue):

  def __init__(self, workdir: str, total_steps: int, start_step: int, tokens_per_step: int, flops_per_token: float,
               progress_mode: str, num_layers: int, lenses: Sequence[lens_lib.Lens] = ()):
    self.is_writer = jax.process_index() == 0
    self.lenses = tuple(lenses)
    if self.is_writer:
      metrics_path = os.path.join(workdir, "metrics.jsonl")
      train_records = [r for r in read_metrics(metrics_path) if "train/loss" in r] if os.path.exists(metrics_path) else []
      self.writer = SummaryWriter(os.path.join(workdir, "tb"))
      self.metrics_log = MetricsLog(metrics_path)
      self.sink = _Sink(workdir, self.writer, train_records, num_layers, lens_lib.event_logs(self.lenses))
    self.progress = Progress(progress_mode, total_steps)
    self.tokens_per_step, self.flops_per_token = tokens_per_step, flops_per_token
    self._last_train: tuple[int, float] | None = None
    super().__init__()

  def write(self, step: int, raw: dict, units: dict) -> float:
    skipped = float(raw.get("train/skipped_steps", 0.0))
    metrics = flatten_metrics(raw)
    if "train/loss" in metrics:  # step time from one train record to the next
      now = time.perf_counter()
      if self._last_train is not None and step > self._last_train[0]:
        seconds = (now - self._last_train[1]) / (step - self._last_train[0])
        metrics.update(perf.perf_metrics(seconds, self.tokens_per_step, self.flops_per_token))
      self._last_train = (step, now)
    self.progress.update(step, metrics)
    if not self.is_writer:
      return skipped
    self.writer.scalars(step, metrics)
    self.metrics_log.write(step, metrics)
    record = {**raw, **units}
    for lens in self.lenses:
      lens.write(step, record, self.sink)
    return skipped

  def text(self, step: int, tag: str, text: str) -> None:
    if self.is_writer:
      self.writer.text(step, tag, text)

  def close(self) -> None:
    self._pending.clear()
    self.progress.close()
    if self.is_writer:
      self.writer.close()
      self.metrics_log.close()
      self.sink.close()


class EnsembleLogger(RecordQueue):
  """The loggers of an ensemble's members: each record (leading member axis) fetched once, written per member."""

  def __init__(self, loggers: Sequence[RunLogger]):
    self.loggers = list(loggers)
    super().__init__()

  def write(self, step: int, scalars: dict, units: dict) -> float:
    member = lambda tree, i: {name: value[i] for name, value in tree.items()}
    # The sum over members: it rises whenever any member skips another update.
    return sum(logger.write(step, member(scalars, i), member(units, i)) for i, logger in enumerate(self.loggers))

  def text(self, step: int, tag: str, texts: Sequence[str]) -> None:
    for logger, text in zip(self.loggers, texts):
      logger.text(step, tag, text)

  def close(self) -> None:
    self._pending.clear()
    for logger in self.loggers:
      logger.close()
