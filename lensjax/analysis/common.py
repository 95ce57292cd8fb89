"""What every offline analysis shares: loading a run's checkpoint, reporting results.

`lensjax <analysis> --workdir DIR [--step N] [--json]` loads the resolved
config from DIR/config.json and the train state of checkpoint N (default: the
newest readable one), prints a human summary (or one JSON object with
--json), and logs its scalars to the run's TensorBoard under the names of
docs/metrics.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys

import jax

from lensjax import config as config_lib
from lensjax.errors import InputError
from lensjax.io.checkpoints import Checkpoints, abstract_like
from lensjax.io.tensorboard import SummaryWriter


@dataclasses.dataclass
class LoadedRun:
  """A run directory's config, its compiled run and one restored checkpoint: what an analysis works on."""
  workdir: str
  config: config_lib.Config
  run: object  # lensjax.train.loop.Run: source, mesh, compiled steps, schedule
  state: object  # the restored TrainState
  step: int

  @property
  def params(self):
    return self.state.params


def load_checkpoint_run(workdir: str, step: int | None = None) -> LoadedRun:
  """The run of `workdir` rebuilt from its config.json, with checkpoint `step` (default: newest readable) restored."""
  from lensjax.train import loop  # heavy import, only when an analysis runs
  config = loop.prepare(read_config(workdir))
  checkpoints = _reader(workdir)
  try:
    _require_steps(checkpoints, workdir)  # before the (slow) build
  finally:
    checkpoints.close()
  run = loop.build(config)
  step, state = restore_checkpoint(workdir, abstract_like(run.state), step)
  return LoadedRun(workdir, config, run, state, step)


def read_config(workdir: str) -> config_lib.Config:
  """The config.json of a `lensjax train` run directory."""
  config_path = os.path.join(workdir, "config.json")
  if not os.path.isfile(config_path):
    raise InputError(f"{workdir!r} holds no config.json; pass the --workdir of a lensjax train run.")
  return config_lib.load_json(config_path)


def restore_checkpoint(workdir: str, abstract_state, step: int | None = None) -> tuple[int, object]:
  """`(step, state)` of checkpoint `step` of `workdir` (default: the newest readable one), laid out like
  `abstract_state`; several runs of one setting (an ensemble's members) restore into the same abstract state
  without rebuilding the run."""
  checkpoints = _reader(workdir)
  try:
    steps = _require_steps(checkpoints, workdir)
    if step is None:
      step, state = checkpoints.restore_latest_valid(abstract_state)
    elif step not in steps:
      raise InputError(f"{workdir!r} has no checkpoint at step {step}; it has steps {steps}.")
    else:
      state = checkpoints.restore(step, abstract_state)
  finally:
    checkpoints.close()
  return int(step), state


def _reader(workdir: str) -> Checkpoints:
  from lensjax.train.state import MIGRATE  # pylint: disable=import-outside-toplevel
  return Checkpoints(os.path.join(workdir, "checkpoints"), keep=10**6, async_save=False, migrate=MIGRATE,
                     reader=True)


def _require_steps(checkpoints: Checkpoints, workdir: str) -> list[int]:
  steps = checkpoints.steps()
  if not steps:
    raise InputError(f"{workdir!r} holds no checkpoint; train it first (lensjax train --workdir {workdir}).")
  return steps


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--workdir", required=True, help="a run directory written by lensjax train")
  parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: the newest)")
  parser.add_argument("--json", action="store_true", help="print one JSON object instead of a summary")


ANALYSES_DIR = "analyses"  # W/analyses/{analysis}_{step:06d}.json: what `lensjax report` draws


def analysis_path(workdir: str, analysis: str, step: int) -> str:
  return os.path.join(workdir, ANALYSES_DIR, f"{analysis}_{step:06d}.json")


def _jsonable(value):
  """NaN and infinities become null, arrays lists: the file must parse with any JSON reader."""
  if isinstance(value, float):
    return value if math.isfinite(value) else None
  if isinstance(value, dict):
    return {k: _jsonable(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_jsonable(v) for v in value]
  if hasattr(value, "tolist"):
    return _jsonable(value.tolist())
  return value


def write_analysis(workdir: str, analysis: str, step: int, results: dict) -> str:
  """W/analyses/{analysis}_{step}.json = {"step", **results}, written whole then renamed (no partial file)."""
  path = analysis_path(workdir, analysis, step)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path + ".tmp", "w", encoding="utf-8") as f:
    json.dump(_jsonable({"step": step, **results}), f)
    f.write("\n")
  os.replace(path + ".tmp", path)
  return path


def report(loaded: LoadedRun, results: dict, summary: str, as_json: bool, scalars: dict | None = None,
           analysis: str | None = None) -> None:
  """Prints the summary or the JSON object, logs `scalars` (default: the numeric results) to TensorBoard and,
  given the `analysis` name, keeps the results in the run directory for `lensjax report` (`write_analysis`)."""
  if scalars is None:
    scalars = {k: v for k, v in results.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
  if jax.process_index() == 0 and scalars:
    writer = SummaryWriter(os.path.join(loaded.workdir, "tb"))
    writer.scalars(loaded.step, scalars)
    writer.close()
  if jax.process_index() == 0 and analysis is not None:
    write_analysis(loaded.workdir, analysis, loaded.step, results)
  if as_json:
    print(json.dumps({"step": loaded.step, **results}, default=float))
  else:
    print(summary)
  sys.stdout.flush()
