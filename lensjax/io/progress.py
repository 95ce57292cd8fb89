"""A live progress line on a terminal, plain log lines otherwise."""

from __future__ import annotations

import sys
import time

import jax


def _duration(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Progress:

  def __init__(self, mode: str, total_steps: int, stream=None):
    self.stream = stream or sys.stderr
    self.live = mode == "auto" and self.stream.isatty()
    self.enabled = mode != "none" and jax.process_index() == 0
    self.total = total_steps
    # The clock starts at the first line, once the steps are compiled: the ETA is the time the remaining steps
    # take at the rate measured since then (none on the first line).
    self._clock: tuple[int, float] | None = None

  def update(self, step: int, metrics: dict) -> None:
    if not self.enabled:
      return
    now = time.perf_counter()
    if self._clock is None:
      self._clock = (step, now)
    first_step, first_time = self._clock
    parts = [f"step {step + 1}/{self.total}"]
    for key, label in (("train/loss", "loss"), ("eval/loss", "eval"), ("perf/tokens_per_s", "tok/s")):
      if key in metrics:
        parts.append(f"{label} {metrics[key]:.4g}" if label != "tok/s" else f"{label} {metrics[key]:,.0f}")
    if metrics.get("train/skipped_steps", 0) > 0:  # nan_policy=skip: how many updates were skipped so far
      parts.append(f"skipped {metrics['train/skipped_steps']:,.0f}")
    if step > first_step:
      parts.append(f"ETA {_duration((now - first_time) / (step - first_step) * (self.total - step - 1))}")
    line = "  ".join(parts)
    if self.live:
      self.stream.write("\r" + line.ljust(100))
    else:
      self.stream.write(line + "\n")
    self.stream.flush()

  def close(self) -> None:
    if self.enabled and self.live:
      self.stream.write("\n")
      self.stream.flush()
