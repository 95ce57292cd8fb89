"""Ensembles: N runs that differ only in seeds (and per-member lr / weight decay) trained as one program.

The train state gains a leading member axis [N, ...] on every leaf, the batch
is [N, B, T], and the step is the solo step vmapped over members, each with
its own learning rate and weight decay as traced values of its optimiser. The
member axis is kept whole on every device (ensembles are for models small
enough to replicate); the batch axis is split over the devices as in a solo
run. Each member is a complete run directory `WORKDIR/member_<i>/`: its own
config.json (a solo config: `lensjax train --config WORKDIR/member_<i>/config.json
--workdir WORKDIR/member_<i>` continues it alone), metrics.jsonl, tb/,
event logs and Orbax checkpoints in a solo run's layout.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from typing import Sequence

import jax
import jax.numpy as jnp

from lensjax.config import Config, to_dict
from lensjax.errors import InputError
from lensjax.io.checkpoints import Checkpoints, meta_of
from lensjax.train import optim
from lensjax.train.step import train_step

ENSEMBLE_FILE = "ensemble.json"


def member_dirs(workdir: str, count: int) -> list[str]:
  return [os.path.join(workdir, f"member_{i}") for i in range(count)]


def member_of(tree, i: int):
  """Member i's slice of a tree with a leading member axis."""
  return jax.tree.map(lambda x: x[i], tree)


def stack(trees: Sequence):
  return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def write_ensemble_file(workdir: str, config: Config, count: int) -> None:
  """WORKDIR/ensemble.json: the base config and the member directories (WORKDIR itself is not a run)."""
  path = os.path.join(workdir, ENSEMBLE_FILE)
  record = {"members": count, "member_dirs": [os.path.basename(d) for d in member_dirs(workdir, count)],
            "config": to_dict(config)}
  with open(path + ".tmp", "w") as f:
    json.dump(record, f, indent=2, sort_keys=True)
    f.write("\n")
  os.replace(path + ".tmp", path)


def ensemble_step_fn(members: Sequence[Config], total_steps: int, **parts):
  """`(state [N, ...], batch [N, B, T]) -> (state, metrics [N, ...])`: the solo step vmapped over members.

  Each member's optimiser is the base chain with that member's learning-rate schedule and weight decay,
  their constants computed on the host as a solo run computes them, so that a member's arithmetic is its
  solo run's.
  """
  base = members[0].optim
  per_member = [optim.schedule_constants(m.optim) | {"weight_decay": m.optim.weight_decay} for m in members]
  hyper_N = {key: jnp.asarray([c[key] for c in per_member], jnp.float32) for key in per_member[0]}
  decays = any(m.optim.weight_decay > 0 for m in members)

  def member_step(state, batch, hyper):
    cfg = dataclasses.replace(base, weight_decay=hyper["weight_decay"])
    tx, schedule = optim.make_optimizer(cfg, total_steps, decays=decays, constants=hyper)
    return train_step(state, batch, tx=tx, schedule=schedule, **parts)

  return lambda state, batch: jax.vmap(member_step)(state, batch, hyper_N)


class EnsembleCheckpoints:
  """The members' checkpoint directories behind the interface of one `Checkpoints`.

  Each member's checkpoint is a solo run's; a step counts only when every member has it and it reads back.
  """

  def __init__(self, run_dirs: Sequence[str], members: Sequence[Config], **options):
    self.members = list(members)
    self.parts = [Checkpoints(os.path.join(d, "checkpoints"), **options) for d in run_dirs]
    self.directory = f"the checkpoints of the {len(run_dirs)} members in {os.path.commonpath(run_dirs)}"

  def check_compatible(self, config: Config, keys: tuple[str, ...], lenses: list[str]) -> None:
    """Each member's checkpoints against that member's config (`config` is the ensemble's)."""
    for part, member in zip(self.parts, self.members):
      part.check_compatible(member, keys, lenses)

  def latest_step(self) -> int | None:
    common = self._common_steps()
    return common[-1] if common else None

  def _common_steps(self) -> list[int]:
    steps = [set(part.steps()) for part in self.parts]
    return sorted(set.intersection(*steps)) if steps else []

  def restore_latest_valid(self, abstract_state):
    """`(step, state)` of the newest step every member restores; `(None, None)` when there is none.

    A member's checkpoints past that step (an interrupted save of the ensemble) are deleted: resuming
    rewrites them, bit for bit.
    """
    # A member's state without the member axis; ensembles replicate the state, so any rank takes the sharding.
    abstract_member = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape[1:], x.dtype, sharding=x.sharding),
                                   abstract_state)
    failed = []
    for step in reversed(self._common_steps()):
      try:
        states = [part.restore(step, abstract_member) for part in self.parts]
      except Exception as e:  # a truncated write in one member: an older common step
        failed.append(step)
        print(f"warning: the ensemble's checkpoint {step} is unreadable in a member ({type(e).__name__}); "
              "trying an older one.", file=sys.stderr)
        continue
      self._drop_after(step)
      return step, jax.device_put(stack(states), jax.tree.map(lambda x: x.sharding, abstract_state))
    if failed:  # nothing is deleted when no common step reads back: that is for a person to decide
      raise InputError(f"no checkpoint step that every member has could be read in {self.directory} (tried "
                       f"{failed}); remove the members' checkpoints/ folders to start afresh.")
    if any(part.steps() for part in self.parts):
      # No step every member has: the first save of the ensemble was interrupted. The members' lone
      # checkpoints are set aside (STEP.unreadable), never deleted, and the ensemble starts again.
      print(f"warning: no checkpoint step is common to every member in {self.directory}; the members' own "
            "checkpoints are kept as STEP.unreadable and the ensemble starts from step 0.", file=sys.stderr)
      for part in self.parts:
        part.set_aside(part.steps())
    return None, None

  def _drop_after(self, step: int) -> None:
    for part in self.parts:
      for later in [s for s in part.steps() if s > step]:
        part.delete(later)

  def save(self, step: int, state, meta: dict | None = None) -> None:
    for i, (part, member) in enumerate(zip(self.parts, self.members)):
      member_state = member_of(state, i)
      part.save(step, member_state, meta_of(to_dict(member), member_state))

  def wait(self) -> None:
    for part in self.parts:
      part.wait()

  def close(self) -> None:
    for part in self.parts:
      part.close()
