"""Per-step array files: RUNDIR/<name>/step_{step:08d}.npz, one per logging step, float32.

A file appears whole or not at all: it is written under a hidden temporary
name in the same folder and renamed over the final one, so a run killed
mid-write leaves at most a stray `.step_*.tmp` (never read) and the older
file, and a step written again on resume replaces its file.
"""

from __future__ import annotations

import os
import re

import numpy as np

_NAME = re.compile(r"^step_(\d{8,})\.npz$")


def step_file(directory: str, step: int) -> str:
  return os.path.join(directory, f"step_{step:08d}.npz")


def write_step_arrays(directory: str, step: int, arrays: dict) -> str:
  """Writes `arrays` (name -> array, stored as float32) for `step`; returns the file's path."""
  os.makedirs(directory, exist_ok=True)
  path = step_file(directory, step)
  temporary = os.path.join(directory, f".step_{step:08d}.tmp")
  try:
    # A file object, not a name: np.savez would append ".npz" to the temporary name.
    with open(temporary, "wb") as f:
      np.savez_compressed(f, **{name: np.asarray(value, np.float32) for name, value in arrays.items()})
      f.flush()
      os.fsync(f.fileno())
    os.replace(temporary, path)
  except BaseException:
    if os.path.exists(temporary):
      os.unlink(temporary)
    raise
  return path


def step_files(directory: str) -> list[tuple[int, str]]:
  """`(step, path)` of every complete step file in `directory`, by step (temporary files are not listed)."""
  found = []
  for name in os.listdir(directory):
    match = _NAME.match(name)
    if match:
      found.append((int(match.group(1)), os.path.join(directory, name)))
  return sorted(found)


def drop_step_arrays_after(directory: str, step: int) -> int:
  """Deletes the step files (and stray temporaries) of steps after `step`, as a resume from a checkpoint at
  step + 1 logs them again; returns how many files went. A missing folder has nothing to drop."""
  if not os.path.isdir(directory):
    return 0
  dropped = 0
  for name in os.listdir(directory):
    match = _NAME.match(name) or re.match(r"^\.step_(\d{8,})\.tmp$", name)
    if match and int(match.group(1)) > step:
      os.unlink(os.path.join(directory, name))
      dropped += 1
  return dropped
