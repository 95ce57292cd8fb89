"""Before a run trains in its directories: the lock that keeps a second trainer out, and the checks that the
checkpoints there fit the run (its config keys, its number of members, the layout of its state).

All of it raises InputError (exit 2) before anything is written or renamed.
"""

from __future__ import annotations

import json
import os
import re
from typing import Sequence

import jax
import numpy as np
from jax.experimental import multihost_utils

from lensjax import config as config_lib
from lensjax.config.validation import override_flag
from lensjax.errors import InputError
from lensjax.io import run_lock
from lensjax.stats import lenses as lens_lib
from lensjax.stats.lens import resume_keys
from lensjax.train.ensemble import ENSEMBLE_FILE, member_dirs


def claim_run_dirs(run_dirs: Sequence[str]) -> list:
  """Process 0 makes and locks every run directory; all processes learn whether it could (an InputError on every
  process if not), and then make the directories they write."""
  locks, error = [], None
  if jax.process_index() == 0:
    try:
      for run_dir in run_dirs:
        locks.append(run_lock.claim(run_dir))
    except InputError as e:
      error = e
      for lock in locks:
        lock.release()
      locks = []
  if jax.process_count() > 1:
    claimed = bool(multihost_utils.broadcast_one_to_all(np.int32(error is None)))
    if not claimed and error is None:
      error = InputError("process 0 could not take the run directory (its error says why); fix that and run all "
                         "processes again.")
  if error is not None:
    raise error
  for run_dir in run_dirs:
    os.makedirs(run_dir, exist_ok=True)
  return locks


def resume_config_keys(config: config_lib.Config) -> tuple[str, ...]:
  """The config keys a checkpoint must share with this run: the state's own and those of its lenses."""
  return config_lib.STATE_KEYS + resume_keys(lens_lib.train_lenses(config))


def trained_members(workdir: str) -> int | None:
  """The train.members of the checkpoints in `workdir`: N for an ensemble's (in WORKDIR/member_<i>/, N as its
  ensemble.json says), 1 for a solo run's (WORKDIR/checkpoints/), None when it holds none."""
  has_steps = lambda directory: os.path.isdir(directory) and any(
      name.isdigit() and os.path.isdir(os.path.join(directory, name)) for name in os.listdir(directory))
  indices = [int(name[len("member_"):]) for name in (os.listdir(workdir) if os.path.isdir(workdir) else [])
             if re.fullmatch(r"member_\d+", name) and has_steps(os.path.join(workdir, name, "checkpoints"))]
  if indices:
    try:
      with open(os.path.join(workdir, ENSEMBLE_FILE)) as f:
        return int(json.load(f)["members"])
    except (OSError, ValueError, KeyError, TypeError):  # no record (killed before it was written): the directories
      return max(indices) + 1
  return 1 if has_steps(os.path.join(workdir, "checkpoints")) else None


def check_members(workdir: str, config: config_lib.Config) -> None:
  """Raises InputError, before anything is written, when `workdir` holds the checkpoints of a run with another
  train.members: every leaf of the state would gain or lose members along its leading axis, and the members' run
  directories would not match (an ensemble's resume deletes member checkpoints past the newest step all share)."""
  saved, members = trained_members(workdir), config.train.members
  if saved is None or saved == members:
    return
  alone = f" (or --workdir {member_dirs(workdir, 1)[0]} to continue member 0 alone)" if members == 1 else ""
  raise InputError(f"the checkpoints in {workdir} come from a run of another size: train.members (checkpoint "
                   f"{saved}, config {members}); pass {override_flag('train.members', saved)} "
                   f"to resume them{alone}, or use a new --workdir to train with this config.")


def check_layouts(checkpoints, abstract, ensemble: bool) -> None:
  """Raises InputError when the checkpoints hold a state of another layout than `abstract` (the run's, with the
  member axis in an ensemble), whichever config key made it so: refused, never taken for unreadable and set aside
  (nor, in an ensemble, deleted for want of a step every member restores)."""
  if not ensemble:
    checkpoints.check_layout(abstract)
    return
  one_member = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape[1:], x.dtype), abstract)
  for part in checkpoints.parts:
    part.check_layout(one_member)
