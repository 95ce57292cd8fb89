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
    # The step as metrics.jsonl and the checkpoints number it (docs/metrics.md, "Step numbering": step t starts
    # from t completed updates), and beside it the updates completed once it ran.
    parts = [f"step {step} ({step + 1}/{self.total} updates)"]
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


class Stages:
  """What a long command is doing, on stderr: one line per stage, and per item of a counted stage with an ETA.

  On a terminal a counted stage rewrites its line in place; elsewhere (a log file, a pipe, a test) every stage
  and item is a line of its own, so that a log shows how far the command got. The ETA of item i of n is the
  mean time of the items after the first (which compiles) times the items left; none before the second item.
  """

  def __init__(self, command: str, stream=None, enabled: bool | None = None):
    self.command = command
    self.stream = stream or sys.stderr
    self.live = bool(getattr(self.stream, "isatty", lambda: False)())
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    self._start = time.perf_counter()
    self._items: list[float] = []  # start times of the current counted stage's items
    self._pending_newline = False

  def _write(self, text: str, rewrite: bool = False) -> None:
    if not self.enabled:
      return
    line = f"{self.command}: {text}  [{_duration(time.perf_counter() - self._start)}]"
    if self.live and rewrite:
      self.stream.write("\r" + line.ljust(100))
      self._pending_newline = True
    else:
      self.stream.write(("\n" if self._pending_newline else "") + line + "\n")
      self._pending_newline = False
    self.stream.flush()

  def stage(self, text: str) -> None:
    """A stage of its own line (`compiling and running the power iterations`)."""
    self._items = []
    self._write(text)

  def item(self, index: int, count: int, text: str) -> None:
    """Item `index` (0-based) of `count` starts: `text 2/5, ETA 0:01:10`."""
    now = time.perf_counter()
    if index == 0:
      self._items = []
    self._items.append(now)
    eta = ""
    if len(self._items) > 2:  # the first item compiles: the rate comes from the ones after it
      per_item = (now - self._items[1]) / (len(self._items) - 2)
      eta = f", ETA {_duration(per_item * (count - index))}"
    elif index == 0:
      eta = ", compiling" if count else ""
    self._write(f"{text} {index + 1}/{count}{eta}", rewrite=True)

  def done(self, text: str = "done") -> None:
    self._items = []
    self._write(text)
