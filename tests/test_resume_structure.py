"""Which config keys shape the train state, found rather than listed, and a resume refuses a change of each.

Every key of every config section (read from the dataclasses, so a key added later is varied too) is changed to
other valid values in a few base configs; `loop.abstract_state` traces the state each builds (`jax.eval_shape`,
nothing compiled) and its tree, shapes and dtypes are compared with the base's. Every change that alters them must
be one the resume check refuses, naming the key. Then the same refusal end to end: a real `lensjax train`
resumed after such a change exits 2 with one sentence and leaves the checkpoints as they were.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import re
import typing

import jax
import numpy as np
import optax
import pytest

from conftest import make_tiny_config, run_cli, write_config_file
from lensjax import config as config_lib
from lensjax.config.sections import CHOICES, STATE_SWITCHES
from lensjax.config.validation import resume_differences
from lensjax.data.factory import make_source
from lensjax.errors import InputError
from lensjax.io.checkpoints import Checkpoints
from lensjax.stats.lenses import train_lenses
from lensjax.train import loop, resume
from lensjax.train.ensemble import EnsembleCheckpoints, ensemble_step_fn
from lensjax.train.step import model_for

# Every key is changed in each of these (on top of the tiny config: adamw with weight decay 0.01 and clipping at
# 1.0, attention+ffn, one member). Each optimiser builds its own chain, which other optim keys switch parts of; the
# model's block decides which shapes the model keys give; an ensemble puts a member axis on every leaf and reads the
# per-member keys.
BASES = {
    "adamw, attention+ffn": {},
    "adam, ffn only": {"optim.name": "adam", "model.block": "ffn_only"},
    "sgd, attention only": {"optim.name": "sgd", "model.block": "attention_only"},
    "adafactor, an ensemble of 2": {"optim.name": "adafactor", "train.members": 2},
}

TOKENS = "{tokens}"  # stands for a token file the `token_files` fixture writes
OTHER_TOKENS = "{other_tokens}"
# A token file as data.source: its vocabulary is model.vocab_size's (8, the tiny Markov chain's, unless changed).
TOKEN_SOURCE = {"data.source": "tokens", "data.path": TOKENS, "model.vocab_size": 8}

# Changes beside the generic ones (below) for keys whose generic changes validate in no base, or that mean
# something only beside another value: `(before, after)` overrides of a base.
SPECIAL = {
    # Whole sequences, as many on each of the 8 devices: a multiple of 8 × data.seq_len (16).
    "stats.probe_tokens": [({}, {"stats.probe_tokens": 128})],
    # A Markov or teacher source needs it to equal data.vocab_size (0 takes that); a token file's is free.
    "model.vocab_size": [(TOKEN_SOURCE, {**TOKEN_SOURCE, "model.vocab_size": 16})],
    # A token file needs a path and a vocabulary; the other sources are among the generic changes.
    "data.source": [({}, TOKEN_SOURCE)],
    # Ignored by a Markov source; a token file's is read by the data source, not the state.
    "data.path": [({}, {"data.path": TOKENS}), (TOKEN_SOURCE, {**TOKEN_SOURCE, "data.path": OTHER_TOKENS})],
    # Free-form: any of init, data, target joined by +; it matters in the ensemble base.
    "train.vary": [({}, {"train.vary": "init"}), ({}, {"train.vary": "data+target"})],
}

# Keys or values left out, with the reason. Every other key must have a change that validates in some base.
NOT_VARIED = {
    # cudnn is refused off a GPU and auto resolves to xla on CPU, so no change of it validates here; it picks the
    # kernel that computes attention, not anything the model holds.
    "model.attention": "cudnn needs a GPU",
}

# train.members is the run directory's layout, refused by `resume.check_members` (tested below), not by the config
# comparison (each member's checkpoints hold a solo config).
REFUSED_BY_LAYOUT = {"train.members"}


def all_keys() -> list[tuple[str, type]]:
  config = config_lib.Config()
  hints = {section.name: typing.get_type_hints(type(getattr(config, section.name)))
           for section in dataclasses.fields(config)}
  return [(f"{section}.{name}", kind) for section, fields in hints.items() for name, kind in fields.items()]


def generic_changes(key: str, value, kind, members: int) -> list:
  """Other values of a key: every other choice, the flipped bool; for a number 0 (many parts switch off at 0) and
  three times it (odd, so that no rounding up to a multiple hides the change), or twice or half it where that does
  not validate (from 0: 1, or 0.5); for a per-member list, one value per member."""
  if key in CHOICES:
    return [[choice] for choice in CHOICES[key] if choice != value]
  if kind is bool:
    return [[not value]]
  if kind in (int, float):
    if value == 0:
      return [[1 if kind is int else 0.5]]
    half = value // 2 if kind is int else value / 2
    return [[kind(0)], [3 * value, 2 * value, half]]  # each list: the first of its values that validates
  if typing.get_origin(kind) is tuple:
    return [[tuple(0.5 * (i + 1) for i in range(members))]]
  return []  # a free-form string: in SPECIAL


def variations(key: str, kind, base: config_lib.Config) -> list[tuple[dict, dict]]:
  """`(before, after)` overrides of `base` that change `key` (and no other key but a companion both share)."""
  section, name = key.split(".")
  value = getattr(getattr(base, section), name)
  generic = [({}, {key: candidates}) for candidates in generic_changes(key, value, kind, base.train.members)]
  return generic + SPECIAL.get(key, [])


def prepared(base: config_lib.Config, overrides: dict, files: dict) -> config_lib.Config | None:
  """The prepared config of `base` with `overrides`, a list of values standing for the first of them that
  validates (symbolic file names, the keys of `files`, replaced by their paths); None when none does."""
  as_list = lambda value: value if isinstance(value, list) else [value]
  options = {key: [files.get(v, v) if isinstance(v, str) else v for v in as_list(value)]
             for key, value in overrides.items()}
  for values in itertools.product(*options.values()):
    try:
      return loop.prepare(base.updated(dict(zip(options, values))))
    except InputError:
      continue
  return None


def layout(config: config_lib.Config):
  state = loop.abstract_state(config)
  return jax.tree.structure(state), [(leaf.shape, leaf.dtype) for leaf in jax.tree.leaves(state)]


def refused_keys(saved: config_lib.Config, config: config_lib.Config) -> set[str]:
  """The keys the resume check names when it refuses checkpoints of `saved` for `config`, member by member as
  `loop.train` checks them (from the config each member's checkpoints hold)."""
  refused = set()
  for old, new in zip(config_lib.member_configs(saved), config_lib.member_configs(config)):
    refused |= {key for key, _, _ in resume_differences(config_lib.to_dict(old), new, resume.resume_config_keys(new))}
  return refused


@pytest.fixture(scope="module")
def token_files(tmp_path_factory):
  directory = tmp_path_factory.mktemp("tokens")
  files = {}
  for name in (TOKENS, OTHER_TOKENS):
    path = directory / f"{name.strip('{}')}.bin"
    np.arange(4096, dtype="<u2").__mod__(8).astype("<u2").tofile(path)
    files[name] = str(path)
  return files


@pytest.fixture(scope="module")
def survey(token_files):
  """`{key: [(base, before, after, alters, refused keys)]}` for every change of every key that validates."""
  found = {key: [] for key, _ in all_keys()}
  for base_name, base_overrides in BASES.items():
    base = make_tiny_config(**base_overrides)
    layouts = {}
    for key, kind in all_keys():
      for before, after in variations(key, kind, base):
        old, new = prepared(base, before, token_files), prepared(base, after, token_files)
        if old is None or new is None or old == new:
          continue
        for config in (old, new):
          if config not in layouts:
            layouts[config] = layout(config)
        found[key].append((base_name, old, new, layouts[old] != layouts[new], refused_keys(old, new)))
  return found


def test_every_key_is_varied_somewhere(survey):
  unvaried = {key for key, changes in survey.items() if not changes} - NOT_VARIED.keys()
  assert not unvaried, f"give these keys a change that validates (SPECIAL) or a reason (NOT_VARIED): {unvaried}"


def test_every_change_that_alters_the_state_is_refused_naming_its_key(survey):
  altering = sorted({key for key, changes in survey.items() for change in changes if change[3]})
  print("keys that alter the train state:", altering)
  missed = [(key, base, _diff(old, new)) for key, changes in survey.items()
            for base, old, new, alters, refused in changes
            if alters and key not in refused and key not in REFUSED_BY_LAYOUT]
  assert not missed, f"changes that alter the state but resume would try to restore: {missed}"


def test_a_switch_refuses_only_where_it_alters_the_state(survey):
  """The STATE_SWITCHES are exact: clipping at 0.5 instead of 1.0, or another weight decay, still resumes."""
  wrong = [(key, base, _diff(old, new), alters) for key in STATE_SWITCHES
           for base, old, new, alters, refused in survey[key] if alters != (key in refused)]
  assert not wrong, wrong
  assert {key for key in STATE_SWITCHES for change in survey[key] if change[3]} == set(STATE_SWITCHES)


def _diff(old: config_lib.Config, new: config_lib.Config) -> dict:
  a, b = config_lib.to_dict(old), config_lib.to_dict(new)
  return {f"{s}.{k}": (a[s][k], b[s][k]) for s in a for k in a[s] if a[s][k] != b[s][k]}


def test_an_ensemble_whose_first_member_does_not_decay_builds_the_state_its_step_updates():
  """adam's coupled decay is a part of the chain when any member decays: the state must have it too (built from
  member 0's optimiser alone, it lacked it, and the step failed: "The number of updates and states has to be the
  same in chain")."""
  config = loop.prepare(make_tiny_config(**{"train.members": 2, "optim.name": "adam",
                                           "optim.weight_decay_per_member": (0.0, 0.01)}))
  members = config_lib.member_configs(config)
  lenses = tuple(lens for lens in train_lenses(config) if lens.every_step)
  step = ensemble_step_fn(members, config.train.steps, model=model_for(config.model, lenses), lenses=lenses,
                          logging=False, nan_policy=config.train.nan_policy)
  one = make_source(members[0]).batch(0, config.train.batch_size)
  batch = {key: jax.ShapeDtypeStruct((2,) + value.shape, value.dtype) for key, value in one.items()}
  state = loop.abstract_state(config)
  new_state, _ = jax.eval_shape(step, state, batch)
  assert jax.tree.structure(new_state) == jax.tree.structure(state)


# ---------------------------------------------------------------------------
# train.members: the run directory's layout


def make_checkpoint_dirs(root, names) -> None:
  for name in names:
    os.makedirs(os.path.join(root, name, "6"))


@pytest.mark.parametrize("trained, layout_dirs, members, refused", [
    (1, ["checkpoints"], 2, True),
    (2, ["member_0/checkpoints", "member_1/checkpoints"], 3, True),
    (2, ["member_0/checkpoints", "member_1/checkpoints"], 1, True),
    (2, ["member_0/checkpoints", "member_1/checkpoints"], 2, False),
    (1, ["checkpoints"], 1, False),
    (None, [], 3, False),
])
def test_a_resume_with_another_number_of_members_is_refused_before_anything_is_written(
    tmp_path, trained, layout_dirs, members, refused):
  workdir = str(tmp_path / "run")
  os.makedirs(workdir)
  make_checkpoint_dirs(workdir, layout_dirs)
  if trained and trained > 1:
    with open(os.path.join(workdir, "ensemble.json"), "w") as f:
      f.write(f'{{"members": {trained}}}')
  before = sorted(os.walk(workdir))
  config = make_tiny_config(**{"train.members": members})
  if not refused:
    resume.check_members(workdir, config)
    return
  with pytest.raises(InputError) as info:
    resume.check_members(workdir, config)
  message = str(info.value)
  assert f"train.members (checkpoint {trained}, config {members})" in message, message
  assert f"--config.train.members={trained}" in message and "new --workdir" in message, message
  assert ("member_0 to continue member 0 alone" in message) == (members == 1), message
  assert sorted(os.walk(workdir)) == before


# ---------------------------------------------------------------------------
# Whatever the key: a checkpoint of another layout is refused, never set aside


def optimiser_states(clip: bool):
  """A small state of the train state's kind, with or without optax's (array-less) clipping part."""
  params = {"dense": {"kernel": np.zeros((2, 3), np.float32), "bias": np.zeros(3, np.float32)}}
  parts = ([optax.clip_by_global_norm(1.0)] if clip else []) + [optax.adam(1e-3)]
  return {"step": np.zeros((), np.int32), "params": params, "opt_state": optax.chain(*parts).init(params)}


def abstract_of(tree, members: int = 0):
  sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  lead = (members,) if members else ()
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(lead + np.shape(x), np.asarray(x).dtype, sharding=sharding),
                      tree)


def test_a_checkpoint_of_another_layout_is_refused_and_kept_as_it_is(tmp_path):
  directory = str(tmp_path / "checkpoints")
  checkpoints = Checkpoints(directory, keep=3, async_save=False, cleanup_unfinished=True)
  try:
    for step in (2, 4):
      checkpoints.save(step, optimiser_states(clip=True), {"config": {}, "lenses": []})
    checkpoints.wait()
    before = listing(directory)
    assert checkpoints.restore_latest_valid(abstract_of(optimiser_states(clip=True)))[0] == 4
    with pytest.raises(InputError, match=r"checkpoint 4 in .* holds a train state laid out differently from the one "
                                         r"this config builds \(opt_state\.0\.0\.count: checkpoint absent, config "
                                         r"int32\[\]; .* more\).*new --workdir"):
      checkpoints.restore_latest_valid(abstract_of(optimiser_states(clip=False)))
    assert listing(directory) == before
  finally:
    checkpoints.close()


def test_an_ensemble_whose_members_hold_another_layout_is_refused_before_a_restore_could_drop_them(tmp_path):
  run_dirs = [str(tmp_path / f"member_{i}") for i in range(2)]
  config = make_tiny_config()
  checkpoints = EnsembleCheckpoints(run_dirs, [config, config], keep=3, async_save=False)
  try:
    for part in checkpoints.parts:
      part.save(2, optimiser_states(clip=True), {"config": {}, "lenses": []})
      part.wait()
    before = listing(str(tmp_path))
    resume.check_layouts(checkpoints, abstract_of(optimiser_states(clip=True), members=2), ensemble=True)
    with pytest.raises(InputError, match="laid out differently"):
      resume.check_layouts(checkpoints, abstract_of(optimiser_states(clip=False), members=2), ensemble=True)
    assert listing(str(tmp_path)) == before
  finally:
    checkpoints.close()


# ---------------------------------------------------------------------------
# End to end


def listing(directory: str) -> list[tuple[str, int, bytes]]:
  """Every file under `directory` with its size and bytes."""
  files = []
  for root, _, names in os.walk(directory):
    for name in names:
      path = os.path.join(root, name)
      with open(path, "rb") as f:
        files.append((os.path.relpath(path, directory), os.path.getsize(path), f.read()))
  return sorted(files)


def test_turning_clipping_off_at_resume_exits_2_naming_the_key_and_keeps_the_checkpoints(tmp_path):
  """The tiny run trains 2 steps as in test_reliability (its compiled steps come from the session's cache), then
  resumes through the CLI without gradient clipping: the optimiser's chain loses its first part."""
  workdir = str(tmp_path / "run")
  config = make_tiny_config(**{"train.steps": 2})
  loop.train(config, workdir)
  checkpoint_dir = os.path.join(workdir, "checkpoints")
  before = listing(checkpoint_dir)
  config_file = write_config_file(tmp_path / "tiny.py", config)
  result = run_cli("train", "--config", config_file, "--workdir", workdir, "--config.train.steps=4",
                   "--config.optim.clip_norm=0.0")
  assert result.returncode == 2, result.stderr
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("lensjax: error: "), result.stderr
  message = lines[0]
  assert re.fullmatch(r"lensjax: error: [^.]+(\.[^ ][^.]*)*\.", message), f"not one sentence: {message}"
  assert "optim.clip_norm (checkpoint 1.0, config 0.0)" in message, message
  assert "--config.optim.clip_norm=1.0" in message and "new --workdir" in message, message
  assert listing(checkpoint_dir) == before
  assert not any(name.endswith(".unreadable") for name in os.listdir(checkpoint_dir))
