"""A live progress line on a terminal, plain log lines otherwise."""

from __future__ import annotations

import sys
import time

import jax


def _duration(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Progress:

  def __init__(self, mode: str, total_steps: int, start_step: int, stream=None):
    self.stream = stream or sys.stderr
    self.live = mode == "auto" and self.stream.isatty()
    self.enabled = mode != "none" and jax.process_index() == 0
    self.total, self.start_step = total_steps, start_step
    self.start_time = time.perf_counter()

  def update(self, step: int, metrics: dict) -> None:
    if not self.enabled:
      return
    done = step + 1 - self.start_step
    elapsed = time.perf_counter() - self.start_time
    eta = elapsed / max(done, 1) * (self.total - step - 1)
    parts = [f"step {step + 1}/{self.total}"]
    for key, label in (("train/loss", "loss"), ("eval/loss", "eval"), ("perf/tokens_per_s", "tok/s")):
      if key in metrics:
        parts.append(f"{label} {metrics[key]:.4g}" if label != "tok/s" else f"{label} {metrics[key]:,.0f}")
    if metrics.get("train/skipped_steps", 0) > 0:  # nan_policy=skip: how many updates were skipped so far
      parts.append(f"skipped {metrics['train/skipped_steps']:,.0f}")
    parts.append(f"ETA {_duration(eta)}")
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
