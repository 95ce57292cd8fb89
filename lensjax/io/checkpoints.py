"""Orbax checkpoints of the whole train state, with the resolved config beside it.

Items: `state` (the TrainState pytree: step, params, optimiser state, RNG key,
the lenses' states) and `meta` (JSON: the resolved config and the names of the
lenses whose state is saved). Saves are asynchronous; the manager keeps the
newest `keep` checkpoints. A checkpoint whose meta names no lenses predates the
lenses' own states; `migrate` restores it in its old layout and converts it.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp

from lensjax import parallel
from lensjax.errors import CheckpointWriteError, InputError


LENSES_KEY = "lenses"


class Checkpoints:

  def __init__(self, directory: str, keep: int, async_save: bool = True, keep_every: int = 0,
               cleanup_unfinished: bool = False, migrate=None, reader: bool = False):
    """`cleanup_unfinished`: delete the partial writes of a killed run (STEP.orbax-checkpoint-tmp); only for the
    training run that owns the directory, never for a reader that may run beside it. `reader` (the analyses):
    never create, rename or delete anything there, since a trainer may be writing it right now. `migrate`:
    `(legacy_layout(abstract) -> abstract tree, convert(restored, abstract) -> state)` for older checkpoints."""
    self.directory = os.path.abspath(directory)
    self._migrate = migrate
    self._reader = reader
    _drop_disk_full_tracebacks()
    _drop_abandoned_write_errors()
    options = ocp.CheckpointManagerOptions(max_to_keep=None if reader else keep, keep_period=keep_every or None,
                                           create=not reader, enable_async_checkpointing=async_save,
                                           cleanup_tmp_directories=cleanup_unfinished and not reader)
    self._manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "meta"))

  def steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, state, meta: dict) -> None:
    with self._writing():
      self._manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                       meta=ocp.args.JsonSave(meta)), force=True)

  def delete(self, step: int) -> None:
    self._manager.delete(step)

  def read_meta(self, step: int) -> dict:
    return self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

  def restore(self, step: int, abstract_state):
    """Restores the state of `step` into the shapes, dtypes and shardings of `abstract_state`."""
    if self._is_legacy(step):
      legacy_layout, convert = self._migrate
      return convert(self._restore_tree(step, legacy_layout(abstract_state)), abstract_state)
    return self._restore_tree(step, abstract_state)

  def _is_legacy(self, step: int) -> bool:
    return self._migrate is not None and LENSES_KEY not in self._meta_or_empty(step)

  def check_layout(self, abstract_state) -> None:
    """Raises InputError when a checkpoint holds other arrays (names, shapes, dtypes) than `abstract_state`: a
    state of another layout, which no restore can fill, and no reason to fall back to an older checkpoint or set
    this one aside as unreadable. A checkpoint whose array metadata does not read is left to its restore."""
    for step in reversed(self.steps()):
      self._check_layout_of(step, abstract_state)

  def _check_layout_of(self, step: int, abstract_state) -> None:
    try:
      saved = self._manager.item_metadata(step)["state"]
    except Exception:  # unreadable: its restore reports it (and falls back)
      return
    if saved is None:
      return
    expected = self._migrate[0](abstract_state) if self._is_legacy(step) else abstract_state
    differences = layout_differences(getattr(saved, "tree", saved), expected)
    if differences:
      shown = "; ".join(differences[:2]) + (f"; and {len(differences) - 2} more" if len(differences) > 2 else "")
      raise InputError(f"checkpoint {step} in {self.directory} holds a train state laid out differently from the "
                       f"one this config builds ({shown}), so a setting that shapes the state differs from the one "
                       "it was trained with; resume with that run's config (its config.json), or use a new "
                       "--workdir.")

  def _restore_tree(self, step: int, abstract_tree):
    restored = self._manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_tree)))
    return restored["state"]

  def _meta_or_empty(self, step: int) -> dict:
    try:
      return self.read_meta(step)
    except Exception:  # unreadable metadata: the restore of the state reports the checkpoint
      return {}

  def restore_latest_valid(self, abstract_state):
    """Restores the newest checkpoint that reads back; warns about each one that does not.

    Returns `(step, state)`, or `(None, None)` when there is no checkpoint.
    """
    failed = []
    for step in reversed(self.steps()):
      self._check_layout_of(step, abstract_state)  # another layout is refused, never set aside
      try:
        state = self.restore(step, abstract_state)
      except Exception as e:  # a truncated or corrupt write: fall back to an older one
        failed.append(step)
        print(f"warning: checkpoint {step} in {self.directory} is unreadable ({type(e).__name__}: "
              f"{str(e).splitlines()[0] if str(e) else ''}); trying an older one.", file=sys.stderr)
        continue
      if failed and self._reader:
        print(f"warning: read checkpoint {step} instead of the newest, {failed[0]}, which could not be read (it may "
              "be being written); it is left as it is.", file=sys.stderr)
      elif failed:
        print(f"warning: resumed from checkpoint {step} instead of the newest, {failed[0]}, which could not be read; "
              f"it is kept as {failed[0]}.unreadable.", file=sys.stderr)
        self._set_aside(failed)
      return step, state
    if failed:
      fix = ("if a trainer is writing them, wait for its next checkpoint; otherwise train the run again."
             if self._reader else "remove the directory to start afresh.")
      raise InputError(f"no checkpoint in {self.directory} could be read (tried steps {failed}); {fix}")
    return None, None

  def check_compatible(self, config, keys: tuple[str, ...], lenses: list[str]) -> None:
    """Raises InputError when the newest checkpoint was written under an incompatible config: one of `keys`
    differs, or the checkpoint holds the state of other lenses than those named in `lenses`."""
    from lensjax.config.validation import override_flag, resume_differences
    step = self.latest_step()
    if step is None:
      return
    try:
      meta = self.read_meta(step)
    except Exception:  # unreadable metadata: restore_latest_valid reports it
      return
    differences = resume_differences(meta.get("config", {}), config, keys)
    conflicts = [f"{key} (checkpoint {old!r}, config {new!r})" for key, old, new in differences]
    saved_lenses, lenses = meta.get(LENSES_KEY), sorted(lenses)
    if saved_lenses is not None and saved_lenses != lenses:
      conflicts.append(f"the lenses with state (checkpoint {', '.join(saved_lenses) or 'none'}, "
                       f"config {', '.join(lenses) or 'none'})")
    if not conflicts:
      return
    if differences:
      flags = " ".join(override_flag(key, old) for key, old, _ in differences)
      fix = f"pass the checkpoint's values to resume from them ({flags})"
    else:  # only the lenses differ: a change of code, or of keys that were not recorded
      fix = "resume with the config they were written with (the run's config.json)"
    raise InputError(f"the checkpoints in {self.directory} come from a different model or setup: "
                     f"{'; '.join(conflicts)}; {fix}, or use a new --workdir to train with this config.")

  def set_aside(self, steps: list[int]) -> None:
    """Renames step directories to STEP.unreadable (kept, never deleted), so that the resumed run can save those
    steps again; a reader never renames."""
    if not self._reader and steps:
      self._set_aside(steps)

  def _set_aside(self, steps: list[int]) -> None:
    """Renames unreadable step directories to STEP.unreadable, so that the resumed run can save those steps again."""
    parallel.wait_for_all_processes("unreadable checkpoints found")
    if jax.process_index() == 0:
      for step in steps:
        path = os.path.join(self.directory, str(step))
        if os.path.isdir(path):
          os.replace(path, path + ".unreadable")
    parallel.wait_for_all_processes("unreadable checkpoints set aside")
    self._manager.reload()

  @contextlib.contextmanager
  def _writing(self):
    """Turns a failed write (here or in an earlier asynchronous save) into one sentence for people."""
    try:
      yield
    except Exception as e:
      if not (_disk_full(e) or isinstance(e, OSError)):
        raise
      try:
        self._manager.reload()
        newest = self.latest_step()
      except Exception:  # the error above is the one to report
        newest = None
      kept = (f"the checkpoints already there are intact (newest: step {newest}), so after freeing space the same "
              "command resumes from it." if newest is not None else "no earlier checkpoint was written.")
      if _disk_full(e):
        raise CheckpointWriteError(f"the disk holding {self.directory} is full, so a checkpoint could not be "
                                   f"written; {kept}") from e
      raise CheckpointWriteError(f"a checkpoint could not be written to {self.directory} ({e}); {kept}") from e

  def wait(self) -> None:
    with self._writing():
      self._manager.wait_until_finished()

  def close(self) -> None:
    self.wait()
    self._manager.close()


def _disk_full(error: BaseException | None) -> bool:
  """Whether `error`, or an error it was raised from, reports a full disk or an exhausted quota.

  Python raises OSError(ENOSPC); TensorStore, which writes the arrays, raises
  ValueError("RESOURCE_EXHAUSTED: ... No space left on device [os_error_code='28']").
  """
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
      return True
    if any(text in str(error) for text in ("No space left on device", "Disk quota exceeded")):
      return True
    error = error.__cause__ or error.__context__
  return False


DISK_FULL_TEXTS = ("No space left on device", "Disk quota exceeded", "[Errno 28]", "os_error_code='28'")


class _DiskFullFilter(logging.Filter):
  """On a full disk Orbax logs every failed background write (and its traceback), then the failed commit and
  finalisation, and asyncio the abandoned write tasks at exit; lensjax says all of it in one sentence, which
  these records would bury. So a record about the full disk goes, and once one has been seen, so does every
  later error record of these loggers (the process is on its way out with that sentence)."""

  def __init__(self):
    super().__init__()
    self.seen_full_disk = False

  def filter(self, record: logging.LogRecord) -> bool:
    about_full_disk = (record.exc_info is not None and _disk_full(record.exc_info[1])) or any(
        text in record.getMessage() for text in DISK_FULL_TEXTS)
    if about_full_disk:
      self.seen_full_disk = True
      return False
    return not (self.seen_full_disk and record.levelno >= logging.ERROR)


_DISK_FULL_FILTER = _DiskFullFilter()  # one for both loggers: a full disk seen by one silences the other's errors


def _drop_disk_full_tracebacks() -> None:
  # absl.logging (Orbax's logger) and asyncio (its abandoned write tasks, reported at exit).
  for logger in (logging.getLogger("absl"), logging.getLogger("asyncio")):
    if _DISK_FULL_FILTER not in logger.filters:
      logger.addFilter(_DISK_FULL_FILTER)


def _drop_abandoned_write_errors() -> None:
  """When a save fails (a full disk), TensorStore finishes the writes Orbax abandoned on its own threads and
  hands each result to Orbax's event loop, closed by then; every attempt reports a RuntimeError traceback
  through sys.unraisablehook. They say nothing the one sentence does not, so they are dropped; any other
  unraisable error still reaches the previous hook."""
  previous = sys.unraisablehook
  if getattr(previous, "drops_abandoned_writes", False):
    return

  def hook(unraisable):
    value = unraisable.exc_value
    if not (isinstance(value, RuntimeError) and str(value) == "Event loop is closed"):
      previous(unraisable)

  hook.drops_abandoned_writes = True
  sys.unraisablehook = hook


def meta_of(config_dict: dict, state) -> dict:
  """The `meta` item saved beside a state: its config and the names of the lenses whose state it holds."""
  return {"config": config_dict, LENSES_KEY: sorted(state.lens_state)}


def layout_differences(saved_tree, abstract_tree) -> list[str]:
  """What differs between the arrays of a checkpoint's metadata tree and those of `abstract_tree`, array by array:
  `NAME: checkpoint float32[8, 32], config absent`."""
  saved, expected = _arrays(saved_tree), _arrays(abstract_tree)

  def same(a, b) -> bool:  # what the metadata does not say (None) cannot differ
    return a is not None and b is not None and all(x is None or y is None or x == y for x, y in zip(a, b))

  def describe(array) -> str:
    return "absent" if array is None else f"{array[1] or '?'}{'[?]' if array[0] is None else list(array[0])}"

  return [f"{name}: checkpoint {describe(saved.get(name))}, config {describe(expected.get(name))}"
          for name in sorted(saved.keys() | expected.keys()) if not same(saved.get(name), expected.get(name))]


def _arrays(tree) -> dict[str, tuple]:
  """`{name: (shape, dtype)}` of a tree's arrays, named as Orbax names them on disk (the path's keys joined by
  dots); empty nodes (optax's EmptyState) hold none."""
  def key_name(key):
    for attribute in ("key", "idx", "name"):  # DictKey and FlattenedIndexKey, SequenceKey, GetAttrKey
      if hasattr(key, attribute):
        return str(getattr(key, attribute))
    return str(key)

  arrays = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    shape, dtype = getattr(leaf, "shape", None), getattr(leaf, "dtype", None)
    arrays[".".join(key_name(key) for key in path)] = (
        None if shape is None else tuple(shape), None if dtype is None else np.dtype(dtype).name)
  return arrays


def abstract_like(state):
  """Shape/dtype/sharding placeholders for restoring into the layout of `state`."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
