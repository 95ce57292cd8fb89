"""The train loop's host-side guards: preemption, the non-finite-step messages, and each run directory's files
before the first step."""

from __future__ import annotations

import os
import sys

import jax
import numpy as np
from jax.experimental import multihost_utils

from lensjax import config as config_lib
from lensjax.errors import TrainingHalted
from lensjax.io.metrics_log import truncate_after
from lensjax.io.step_arrays import drop_step_arrays_after
from lensjax.signals import SigtermFlag
from lensjax.stats.lens import array_dirs, event_logs


def log(message: str) -> None:
  if jax.process_index() == 0:
    print(message, file=sys.stderr, flush=True)


def halt_message(run, state, checkpoints) -> str:
  checkpoints.wait()
  bad_steps = first_bad_steps(state)
  member = int(np.argmax(bad_steps >= 0))
  bad, d, source = int(bad_steps[member]), run.members[member].data, run.sources[member]
  where = f"batch of step {bad} (data.source={d.source}, data.seed={d.seed}, rows 0..{run.config.train.batch_size - 1}"
  if hasattr(source, "window_starts"):
    starts = source.window_starts(bad, run.config.train.batch_size, "train")
    where += f", token offsets {', '.join(map(str, starts[:8]))}{', ...' if len(starts) > 8 else ''}"
  last = checkpoints.latest_step()
  who = f"member {member} of the ensemble: " if run.ensemble else ""
  fix = (" or --config.train.nan_policy=freeze to keep the other members going" if run.ensemble else "")
  return (f"{who}non-finite loss or gradient at step {bad}, on the {where}); nothing after it was saved and the last "
          f"good checkpoint is {'step ' + str(last) if last is not None else 'none'}. Lower optim.lr or "
          f"optim.clip_norm, or pass --config.train.nan_policy=skip to skip such steps{fix}.")


class SkipStreak:
  """Under nan_policy=skip, the updates skipped in a row, read one step late: each step's cumulative
  `train/skipped_steps` (per member) is fetched after the next step is dispatched, so the device never waits.
  More than `limit` in a row is a run that has diverged, not an occasional overflow: TrainingHalted (exit 3).
  A resumed run counts from 0 again."""

  def __init__(self, limit: int, run, state):
    self.limit, self.run = limit, run
    self._pending = None  # (step, device array) of the last step dispatched
    self._count = np.atleast_1d(np.asarray(jax.device_get(state.skipped_steps), np.int64))  # before that step
    self._streak = np.zeros_like(self._count)  # per member: skipped updates in a row so far
    self._first = np.full_like(self._count, -1)  # per member: the first step of the current streak

  def update(self, step: int, skipped) -> None:
    """Queues step `step`'s cumulative count and looks at the previous one."""
    self._look()
    self._pending = (step, skipped)

  def finish(self) -> None:
    self._look()
    self._pending = None

  def _look(self) -> None:
    if self._pending is None:
      return
    step, skipped = self._pending
    count = np.atleast_1d(np.asarray(jax.device_get(skipped), np.int64))
    grew = count > self._count
    self._first = np.where(grew & (self._streak == 0), step, self._first)
    self._streak = np.where(grew, self._streak + 1, 0)
    self._count = count
    over = np.flatnonzero(self._streak > self.limit)
    if over.size:
      member = int(over[0])
      who = f"member {member} of the ensemble: " if self.run.ensemble else ""
      raise TrainingHalted(
          f"{who}{int(self._streak[member])} updates in a row were skipped for a non-finite loss or gradient "
          f"(steps {int(self._first[member])} to {step}; train.max_skipped={self.limit}), so the run has diverged "
          "and nothing after the last checkpoint was saved. Lower optim.lr or optim.clip_norm and resume or start "
          "again, or raise --config.train.max_skipped (0: no limit) if such stretches are expected.")


class Preemption(SigtermFlag):
  """Turns SIGTERM into a stop between steps.

  One process: a flag of its own. Several (jax.distributed): JAX's preemption
  notifier catches SIGTERM and the processes agree on the step at which all of
  them stop; flags of their own would stop them at different steps, each then
  waiting for the others in a collective.
  """

  def __init__(self):
    super().__init__()
    self._agreed = jax.distributed.is_initialized()

  def requested_before_start(self) -> bool:
    """Whether this process already knows it is to stop (one process only: several agree at a step)."""
    return not self._agreed and self.requested

  def reached(self, step: int) -> bool:
    """Whether to stop before `step`; every process asks at every step."""
    if self._agreed:
      return multihost_utils.reached_preemption_sync_point(step)
    return self.requested

  def __enter__(self):
    if self._agreed:  # leave SIGTERM to JAX's notifier
      return self
    return super().__enter__()


def prepare_run_dirs(run, run_dirs: list[str], start_step: int, restored: bool, checkpoint_dir: str) -> None:
  """Drops the records logged after the checkpoint resumed from (they are logged again) and writes config.json."""
  for i, (run_dir, member) in enumerate(zip(run_dirs, run.members)):
    # Without a checkpoint (a run killed before its first save) every record is logged again.
    dropped = truncate_after(os.path.join(run_dir, "metrics.jsonl"), start_step - 1)
    for event_log in event_logs(run.lenses):
      truncate_after(os.path.join(run_dir, f"{event_log}.jsonl"), start_step - 1)
    for name in array_dirs(run.lenses):
      drop_step_arrays_after(os.path.join(run_dir, name), start_step - 1)
    if i == 0 and restored:  # said once: every member of an ensemble resumes from the same step
      log(f"resuming from the checkpoint at step {start_step} in {checkpoint_dir}"
           + (f" (dropped {dropped} metric records logged after it)" if dropped else ""))
    elif i == 0 and dropped:
      log(f"no checkpoint in {checkpoint_dir}: starting at step 0 (dropped {dropped} metric records logged "
           "by an earlier attempt)")
    config_lib.save_json(member if run.ensemble else run.config, os.path.join(run_dir, "config.json"))


def skipped_steps(state) -> float:
  """The updates skipped for a non-finite loss or gradient, by all members together."""
  return float(np.sum(jax.device_get(state.skipped_steps)))


def first_bad_steps(state) -> np.ndarray:
  """Per member, the first step with a non-finite loss or gradient (-1: none)."""
  return np.asarray(jax.device_get(state.first_bad_step)).reshape(-1)
