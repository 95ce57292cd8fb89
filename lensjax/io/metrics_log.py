"""The run's `metrics.jsonl`: one JSON object per logged step.

Each line is `{"step": int, "<metric name>": float, ...}` and ends with a
newline. A line without its newline is the tail of a run killed mid-write: it
is never a record, so readers skip it and writers cut it off before appending.
NaN and infinities are written as `NaN`/`Infinity`, which Python's `json`
(and most JSON-lines tools) read back.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from typing import TextIO

from lensjax.errors import InputError


class MetricsLog:
  """Appends one flushed line per `write`, so a crash loses at most one step."""

  def __init__(self, path: str):
    self.path = path
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    # Appending right after a partial line would glue the next record onto it.
    _drop_partial_last_line(path)
    self._file: TextIO = open(path, "a", encoding="utf-8")

  def write(self, step: int, metrics: Mapping[str, float]) -> None:
    self._file.write(format_record(step, metrics))
    self._file.flush()

  def close(self) -> None:
    self._file.close()

  def __enter__(self) -> MetricsLog:
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()


def format_record(step: int, metrics: Mapping[str, float]) -> str:
  """One newline-terminated JSON line; numpy/jax scalars become floats."""
  if "step" in metrics:
    raise ValueError("'step' is the step number, not a metric name")
  record = {"step": int(step)}
  # Numbers become floats; strings and Python ints (an event's kind, a unit's index) stay as they are.
  keep = lambda v: isinstance(v, str) or (type(v) is int)
  record.update((name, value if keep(value) else float(value)) for name, value in metrics.items())
  return json.dumps(record) + "\n"


def read_metrics(path: str) -> list[dict]:
  """All records in `path`, in file order, skipping a partial last line."""
  with open(path, "rb") as f:
    lines = complete_lines(f.read())
  return [_parse_line(path, number, line)
          for number, line in enumerate(lines, start=1) if line.strip()]


def truncate_after(path: str, step: int) -> int:
  """Drops records with step > `step`; returns how many were dropped.

  On resume from a checkpoint at `step` the later steps are logged again, so
  keeping them would duplicate them. Kept lines stay byte-identical and the
  file is replaced atomically, so a crash here leaves the old or new file,
  never a mix. A missing file has nothing to drop.
  """
  try:
    with open(path, "rb") as f:
      data = f.read()
  except FileNotFoundError:
    return 0
  kept, dropped = [], 0
  for number, line in enumerate(complete_lines(data), start=1):
    if line.strip() and _step_of(path, number, line) > step:
      dropped += 1
    else:
      kept.append(line)
  kept_data = b"".join(kept)
  if kept_data != data:  # also true when only a partial last line goes
    _replace_atomically(path, kept_data)
  return dropped


def complete_lines(data: bytes) -> list[bytes]:
  """The newline-terminated lines of `data`, each keeping its newline."""
  # Split on b"\n" only: `splitlines` would also break on a stray b"\r".
  *complete, _partial_or_empty = data.split(b"\n")
  return [line + b"\n" for line in complete]


def _parse_line(path: str, number: int, line: bytes) -> dict:
  try:
    record = json.loads(line)
  except ValueError:
    record = None
  if not isinstance(record, dict):
    raise InputError(f"{path} line {number} is not a JSON object; fix or "
                     "delete that line.")
  return record


def _step_of(path: str, number: int, line: bytes) -> int:
  record = _parse_line(path, number, line)
  if not isinstance(record.get("step"), int):
    raise InputError(f"{path} line {number} has no integer 'step'; fix or "
                     "delete that line.")
  return record["step"]


def _drop_partial_last_line(path: str) -> None:
  try:
    f = open(path, "rb+")
  except FileNotFoundError:
    return
  with f:
    size = f.seek(0, os.SEEK_END)
    if size == 0:
      return
    f.seek(size - 1)
    if f.read(1) == b"\n":
      return
    f.seek(0)
    f.truncate(len(b"".join(complete_lines(f.read()))))


def _replace_atomically(path: str, data: bytes) -> None:
  directory = os.path.dirname(os.path.abspath(path))
  fd, temp_path = tempfile.mkstemp(
      dir=directory, prefix=os.path.basename(path) + ".", suffix=".tmp")
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())
    shutil.copymode(path, temp_path)  # mkstemp files are 0600
    os.replace(temp_path, path)
  except BaseException:
    os.unlink(temp_path)
    raise
