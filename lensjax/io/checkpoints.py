"""Orbax checkpoints of the whole train state, with the resolved config beside it.

Items: `state` (the TrainState pytree: step, params, optimiser state, RNG key,
dead-neuron tracker) and `meta` (JSON: the resolved config). Saves are
asynchronous; the manager keeps the newest `keep` checkpoints.
"""

from __future__ import annotations

import os
import sys

import jax
import orbax.checkpoint as ocp

from lensjax.errors import InputError


class Checkpoints:

  def __init__(self, directory: str, keep: int, async_save: bool = True, keep_every: int = 0):
    self.directory = os.path.abspath(directory)
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, keep_period=keep_every or None, create=True,
                                           enable_async_checkpointing=async_save)
    self._manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "meta"))

  def steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, state, meta: dict) -> None:
    self._manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                     meta=ocp.args.JsonSave(meta)), force=True)

  def read_meta(self, step: int) -> dict:
    return self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

  def restore(self, step: int, abstract_state):
    """Restores the state of `step` into the shapes, dtypes and shardings of `abstract_state`."""
    restored = self._manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state)))
    return restored["state"]

  def restore_latest_valid(self, abstract_state):
    """Restores the newest checkpoint that reads back; warns about each one that does not.

    Returns `(step, state)`, or `(None, None)` when there is no checkpoint.
    """
    failed = []
    for step in reversed(self.steps()):
      try:
        state = self.restore(step, abstract_state)
      except Exception as e:  # a truncated or corrupt write: fall back to an older one
        failed.append(step)
        print(f"warning: checkpoint {step} in {self.directory} is unreadable ({type(e).__name__}: "
              f"{str(e).splitlines()[0] if str(e) else ''}); trying an older one.", file=sys.stderr)
        continue
      if failed:
        print(f"warning: resumed from checkpoint {step} instead of the newest, {failed[0]}, which could not be read.",
              file=sys.stderr)
      return step, state
    if failed:
      raise InputError(f"no checkpoint in {self.directory} could be read (tried steps {failed}); "
                       "remove the directory to start afresh.")
    return None, None

  def check_compatible(self, config) -> None:
    """Raises InputError when the newest checkpoint was written under an incompatible config."""
    from lensjax.config import resume_conflicts
    step = self.latest_step()
    if step is None:
      return
    try:
      saved = self.read_meta(step).get("config", {})
    except Exception:  # unreadable metadata: restore_latest_valid reports it
      return
    conflicts = resume_conflicts(saved, config)
    if conflicts:
      raise InputError(f"the checkpoints in {self.directory} come from a different model or setup: "
                       f"{'; '.join(conflicts)}; use a new --workdir, or the checkpoint's values to resume.")

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


def abstract_like(state):
  """Shape/dtype/sharding placeholders for restoring into the layout of `state`."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
