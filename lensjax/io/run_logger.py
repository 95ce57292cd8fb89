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
from lensjax.io.metrics_log import MetricsLog, read_metrics
from lensjax.io.names import flatten_metrics
from lensjax.io.progress import Progress
from lensjax.io.tensorboard import SummaryWriter

# [L, H] metrics drawn as a layer-by-head heat map on TensorBoard.
HEAD_HEATMAPS = ("attn/entropy", "eval/attn/entropy")
# [L] metrics drawn as a layer-by-logging-step heat map, redrawn at every logging step.
HISTORY_HEATMAPS = ("ffn/active_batch", "ffn/dead", "attn/bypass")
# Per-unit [L, F] arrays drawn as one histogram per layer.
UNIT_HISTOGRAMS = {"units/frequency": "ffn/unit_frequency", "units/steps_since_active": "ffn/steps_since_active"}
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


def neuron_events(step: int, units: dict) -> list[dict]:
  """One record per unit that died or revived, with its firing frequency and Adam v̂."""
  events = []
  for event in ("died", "revived"):
    for layer, unit in zip(*np.nonzero(units.get(f"units/{event}", np.zeros((0, 0))))):
      record = {"step": step, "layer": int(layer), "unit": int(unit), "event": event}
      for key in ("frequency", "steps_since_active", "adam_v"):
        if f"units/{key}" in units:
          record[key] = float(units[f"units/{key}"][layer, unit])
      events.append(record)
  return events


class RunLogger:

  def __init__(self, workdir: str, total_steps: int, start_step: int, tokens_per_step: int, flops_per_token: float,
               progress_mode: str, num_layers: int):
    self.is_writer = jax.process_index() == 0
    self.history = {name: [] for name in HISTORY_HEATMAPS}
    if self.is_writer:
      metrics_path = os.path.join(workdir, "metrics.jsonl")
      train_records = [r for r in read_metrics(metrics_path) if "train/loss" in r] if os.path.exists(metrics_path) else []
      self.history = {name: layer_history(train_records, name, num_layers) for name in HISTORY_HEATMAPS}
      self.writer = SummaryWriter(os.path.join(workdir, "tb"))
      self.metrics_log = MetricsLog(metrics_path)
      self.events_log = MetricsLog(os.path.join(workdir, "neuron_events.jsonl"))
    self.progress = Progress(progress_mode, total_steps, start_step)
    self.tokens_per_step, self.flops_per_token = tokens_per_step, flops_per_token
    self._pending: dict[int, tuple[dict, dict]] = {}
    self._last_train: tuple[int, float] | None = None

  def add(self, step: int, metrics: dict) -> None:
    """Queues device arrays for `step`; records of the same step are merged."""
    scalars, units = self._pending.setdefault(step, ({}, {}))
    for name, value in metrics.items():
      (units if name.startswith("units/") else scalars)[name] = value

  def flush(self) -> float:
    """Fetches and writes the queued records; returns the largest `train/skipped_steps` seen."""
    skipped = 0.0
    for step in sorted(self._pending):
      scalars, units = jax.device_get(self._pending[step])
      skipped = max(skipped, float(scalars.get("train/skipped_steps", 0.0)))
      self._write(step, scalars, units)
    self._pending.clear()
    return skipped

  def _write(self, step: int, raw: dict, units: dict) -> None:
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
    for key, name in UNIT_HISTOGRAMS.items():
      for layer, row in enumerate(np.asarray(units.get(key, []))):
        self.writer.histogram(step, f"{name}/layer_{layer}", row)
    for event in neuron_events(step, units):
      self.events_log.write(event.pop("step"), event)
    for name in HEAD_HEATMAPS:
      if name in raw and np.ndim(raw[name]) == 2:
        self.writer.image(step, name + "/heatmap", heatmap_png(raw[name]))
    for name, history in self.history.items():
      if name in raw and "train/loss" in metrics:
        history.append(np.asarray(raw[name], np.float64))
        columns = np.stack(history[-MAX_HISTORY_COLUMNS:], axis=1)  # [L, logging steps]
        top = 1.0 if name.startswith("ffn/") else float(np.nanmax(columns, initial=1e-12))
        self.writer.image(step, name + "/heatmap", heatmap_png(columns, cell=(16, 2), top=top))

  def text(self, step: int, tag: str, text: str) -> None:
    if self.is_writer:
      self.writer.text(step, tag, text)

  def close(self) -> None:
    self._pending.clear()
    self.progress.close()
    if self.is_writer:
      self.writer.close()
      self.metrics_log.close()
      self.events_log.close()
