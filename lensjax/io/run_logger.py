"""Where a run's numbers go: TensorBoard, metrics.jsonl and the progress line.

Records are queued as device arrays and fetched on `flush()`, which the loop
calls right after dispatching the next step, so fetching never stalls the
device. Only process 0 writes. Heat maps are drawn by one background thread
(`FigureWorker`) from the fetched NumPy arrays; `close()` waits for them.
"""

from __future__ import annotations

import abc
import os
import time
from typing import Sequence

import jax
import numpy as np

from lensjax import perf
from lensjax.io.figure_worker import FigureWorker
from lensjax.io.heatmap_figure import heatmap_figure_png
from lensjax.io.hparams import hparams_summaries
from lensjax.io.metric_descriptions import description_of
from lensjax.io.metrics_log import MetricsLog, read_metrics
from lensjax.io.names import flatten_metrics
from lensjax.io.progress import Progress
from lensjax.io.step_arrays import write_step_arrays
from lensjax.io.tb_cards import families_of, layout_summary, tensorboard_scalars
from lensjax.io.tensorboard import SummaryWriter
from lensjax.stats import lens as lens_lib

MAX_HISTORY_COLUMNS = 400


def layer_history(records: list[dict], name: str, num_layers: int) -> list[tuple[int, np.ndarray]]:
  """`(step, [L] vector)` of `name` in metrics.jsonl records, oldest first."""
  keys = [f"{name}/layer_{l}" for l in range(num_layers)]
  return [(r["step"], np.array([r[k] for k in keys])) for r in records if all(k in r for k in keys)]


class _Sink:
  """The HostSink the lenses' host halves write to: TensorBoard images and histograms, event logs, per-step
  array files."""

  def __init__(self, workdir: str, writer: SummaryWriter, train_records: list[dict], num_layers: int,
               event_logs: Sequence[str], figures: FigureWorker):
    self.workdir, self.writer, self.num_layers, self.figures = workdir, writer, num_layers, figures
    self._train_records, self._history = train_records, {}
    self._logs = {log: MetricsLog(os.path.join(workdir, f"{log}.jsonl")) for log in event_logs}

  def histogram(self, step, tag, values):
    self.writer.histogram(step, tag, values)

  def heatmap(self, step, tag, matrix_RxC, units=""):
    """A layer x head heat map, drawn on the figure thread."""
    matrix = np.array(matrix_RxC, np.float64)  # a copy: the record may be reused once this returns
    self.figures.submit(step, tag, lambda: heatmap_figure_png(matrix, f"{tag} at step {step}", "layer", "head",
                                                              units))

  def layer_history_heatmap(self, step, name, vector_L, units=""):
    """A layer-by-logging-step heat map of `name`, redrawn at every logging step (resumed runs keep theirs)."""
    if name not in self._history:
      self._history[name] = layer_history(self._train_records, name, self.num_layers)
    history = self._history[name]
    history.append((step, np.array(vector_L, np.float64)))
    del history[:-MAX_HISTORY_COLUMNS]
    steps = np.array([s for s, _ in history])
    columns = np.stack([vector for _, vector in history], axis=1)  # [L, logging steps]
    self.figures.submit(step, name + "/heatmap", lambda: heatmap_figure_png(
        columns, f"{name} up to step {step}", "layer", "step", units, column_values=steps))

  def event(self, log, step, record):
    self._logs[log].write(step, record)

  def arrays(self, step, name, arrays):
    write_step_arrays(os.path.join(self.workdir, name), step, arrays)

  def close(self):
    for log in self._logs.values():
      log.close()


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
               progress_mode: str, num_layers: int, lenses: Sequence[lens_lib.Lens] = (),
               per_layer_scalars: bool = False):
    """`per_layer_scalars`: TensorBoard also gets one scalar per layer (and head), not only the summaries."""
    self.is_writer = jax.process_index() == 0
    self.lenses = tuple(lenses)
    self.per_layer_scalars, self._families, self._closed = per_layer_scalars, set(), False
    if self.is_writer:
      metrics_path = os.path.join(workdir, "metrics.jsonl")
      train_records = [r for r in read_metrics(metrics_path) if "train/loss" in r] if os.path.exists(metrics_path) else []
      self.writer = SummaryWriter(os.path.join(workdir, "tb"), describe=description_of)
      self.figures = FigureWorker(self.writer.image)
      self.metrics_log = MetricsLog(metrics_path)
      self.sink = _Sink(workdir, self.writer, train_records, num_layers, lens_lib.event_logs(self.lenses),
                        self.figures)
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
    families = families_of(raw)
    if not families <= self._families:  # a new family (evaluation records come later): a layout that has it
      self._families |= families
      self.writer.summary(step, layout_summary(self._families, self.per_layer_scalars))
    self.writer.scalars(step, tensorboard_scalars(raw, metrics, self.per_layer_scalars))
    self.metrics_log.write(step, metrics)
    record = {**raw, **units}
    for lens in self.lenses:
      lens.write(step, record, self.sink)
    return skipped

  def text(self, step: int, tag: str, text: str, description: str = "") -> None:
    if self.is_writer:
      self.writer.text(step, tag, text, description)

  def hparams(self, step: int, config_dict: dict) -> None:
    """The HParams tab's entry for this run: its resolved config's values."""
    if self.is_writer:
      for summary in hparams_summaries(config_dict):
        self.writer.summary(step, summary)

  def close(self) -> None:
    """Drops what was never fetched, then writes out everything fetched: queued heat maps, events, files.
    Idempotent (the loop also calls it when it raises)."""
    if self._closed:
      return
    self._closed = True
    self._pending.clear()
    self.progress.close()
    if self.is_writer:
      self.figures.close()  # before the writer: the figure thread writes through it
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

  def text(self, step: int, tag: str, texts: Sequence[str], description: str = "") -> None:
    for logger, text in zip(self.loggers, texts):
      logger.text(step, tag, text, description)

  def hparams(self, step: int, config_dicts: Sequence[dict]) -> None:
    for logger, config_dict in zip(self.loggers, config_dicts):
      logger.hparams(step, config_dict)

  def close(self) -> None:
    self._pending.clear()
    for logger in self.loggers:
      logger.close()
