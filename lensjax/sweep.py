"""`lensjax sweep --config FILE --workdir DIR [--print-commands] [--config.a.b=V ...]`: one run per sweep member.

A sweep config is an ordinary config file (its `get_config()` is the base)
that also defines a module-level list

    SWEEP = [{"name": "d64", "model.d_model": 64, "model.num_layers": 2}, ...]

of members: a folder-safe unique `name` and dotted config overrides (Python
values or strings, as on the command line). Member M trains into `DIR/M/`
with the base config, then M's overrides, then those given on the command line
(so `--config.train.steps=100` shortens every member). Every member is
checked before anything trains: a bad entry is an InputError (exit 2).

Members run in turn in this process. A member that already has an
`entropy.json` for its final step is skipped; any other resumes from its
checkpoints (a finished run trains no further). After training, when the data
is a controlled target, the whole-sequence entropy analysis runs on the final
state and writes `DIR/M/entropy.json` (the `lensjax entropy --json` object plus
the member's name, overrides, parameter count and last losses), and
`DIR/sweep_summary.json` collects them all, so that a report can plot H(Q)
against H(P) per member without recomputing anything.

Members that differ only in their seeds (with `--ensembles seeds+hyper`
also in learning rate and weight decay) train together as one ensemble
(`train.members`): one vmapped program, each member still writing its own
`DIR/M/`. The sweep says when a group cannot (a sharded model, periodic
analyses, members resumed at different steps) and trains those members one by
one; `--ensembles none` always does.

With `--print-commands` nothing runs: one `lensjax train ...` line per member
is printed, for a cluster's job array; `lensjax sweep` on the finished folders
then only writes the entropy files.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import re
import shlex
import sys

from lensjax import config as config_lib
from lensjax.errors import InputError
from lensjax.signals import SigtermFlag

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
ENTROPY_FILE = "entropy.json"
SUMMARY_FILE = "sweep_summary.json"
# The last value of these metrics goes into each member's entropy.json.
FINAL_METRICS = ("train/loss", "eval/loss", "entropy/model_token", "entropy/target_token", "entropy/kl_token")


@dataclasses.dataclass
class Member:
  name: str
  overrides: dict[str, str]  # dotted key -> text, the member's own then the command line's
  config: config_lib.Config  # base + overrides, validated


def override_text(key: str, value) -> str:
  """A SWEEP value as the text a `--config.KEY=TEXT` flag would carry."""
  if isinstance(value, bool):
    return "true" if value else "false"
  if isinstance(value, (int, float, str)):
    return str(value)
  raise InputError(f"SWEEP value {value!r} of {key} is a {type(value).__name__}; use a number, a string or a bool.")


def load_sweep_list(path: str) -> list:
  """The SWEEP list of a config file (its get_config() is checked by config.load_config_file)."""
  spec = importlib.util.spec_from_file_location("_lensjax_sweep", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)  # load_config_file has already run it once without error
  sweep = getattr(module, "SWEEP", None)
  if not isinstance(sweep, (list, tuple)) or not sweep:
    raise InputError(f"config file {path!r} defines no SWEEP list of members; add "
                     "SWEEP = [{\"name\": \"small\", \"model.d_model\": 64}, ...].")
  return list(sweep)


def parse_members(sweep: list, base: config_lib.Config, cli_overrides: dict[str, str], check) -> list[Member]:
  """Checks every SWEEP entry and builds its config; `check(config)` validates (and may resolve) it."""
  members, seen = [], set()
  for position, entry in enumerate(sweep):
    if not isinstance(entry, dict):
      raise InputError(f"SWEEP entry {position} is a {type(entry).__name__}; each member is a dict with a \"name\".")
    name = entry.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
      raise InputError(f"SWEEP entry {position} has name {name!r}; give each member a \"name\" of letters, digits, "
                       "'.', '_' or '-' (it names the member's folder).")
    if name in seen:
      raise InputError(f"SWEEP has two members named {name!r}; names must be unique (they name the folders).")
    seen.add(name)
    overrides = {}
    for key, value in entry.items():
      if key != "name":
        if not isinstance(key, str):
          raise InputError(f"SWEEP member {name!r} has key {key!r}; keys are dotted config paths like \"model.d_ff\".")
        overrides[key] = override_text(key, value)
    overrides.update(cli_overrides)
    try:
      config = check(config_lib.apply_overrides(base, overrides))
    except InputError as e:
      raise InputError(f"SWEEP member {name!r}: {e}") from None
    members.append(Member(name, overrides, config))
  return members


def train_command(config_path: str, workdir: str, member: Member) -> str:
  """The `lensjax train` line that trains `member` into `workdir/<name>`."""
  args = ["lensjax", "train", "--config", config_path, "--workdir", os.path.join(workdir, member.name)]
  args += [f"--config.{key}={text}" for key, text in member.overrides.items()]
  return " ".join(shlex.quote(a) for a in args)


def last_metrics(workdir: str) -> dict:
  from lensjax.io.metrics_log import read_metrics
  path = os.path.join(workdir, "metrics.jsonl")
  found = {}
  for record in read_metrics(path) if os.path.exists(path) else []:
    found.update({name: record[name] for name in FINAL_METRICS if name in record})
  return found


def read_entropy_file(member_dir: str) -> dict | None:
  path = os.path.join(member_dir, ENTROPY_FILE)
  if not os.path.isfile(path):
    return None
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None  # a partial file from a killed run: recompute it


def write_json(path: str, value) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(value, f, indent=2, sort_keys=True, default=float)
    f.write("\n")
  os.replace(tmp, path)


def entropy_record(member: Member, member_dir: str, state) -> dict | None:
  """Runs the entropy analysis on a member's final state; None when its data has no known law."""
  import jax
  from lensjax.analysis import common, entropy
  from lensjax.data.factory import make_source
  from lensjax.model import count_params
  source = make_source(member.config)
  if not entropy.supports(source):
    return None
  step = int(jax.device_get(state.step))
  results = entropy.SequenceEntropy(member.config.model, source).evaluate(
      state.params, entropy.analysis_key(member.config, step))
  loaded = common.LoadedRun(member_dir, member.config, None, state, step)
  common.report(loaded, results, entropy.summary(results, step), as_json=False, scalars=entropy.metrics_only(results))
  return {"name": member.name, "overrides": member.overrides, "step": step,
          "num_params": count_params(state.params), **last_metrics(member_dir), **results}


ENSEMBLE_MODES = {"seeds": config_lib.ensemble.SEED_KEYS,
                  "seeds+hyper": config_lib.ensemble.SEED_KEYS + config_lib.ensemble.HYPER_KEYS, "none": None}


def ensemble_jobs(members: list[Member], workdir: str, mode: str, check) -> list[list[Member]]:
  """The members grouped into jobs, in the order of each job's first member: a group of members that differ
  only in the keys `mode` frees trains as one ensemble; the sweep says why when it cannot."""
  free = ENSEMBLE_MODES[mode]
  groups: dict[str, list[Member]] = {}
  for member in members:
    key = member.name if free is None else config_lib.setting_key(member.config, free)
    groups.setdefault(key, []).append(member)
  jobs = []
  for group in groups.values():
    reason = None if len(group) == 1 else _why_not_an_ensemble(group, workdir, check)
    if reason:
      print(f"sweep: {', '.join(m.name for m in group)} differ only in {' and '.join(free)} but train one by one: "
            f"{reason}", file=sys.stderr, flush=True)
    jobs.extend([[m] for m in group] if reason else [group])
  return jobs


def _why_not_an_ensemble(group: list[Member], workdir: str, check) -> str | None:
  try:
    check(config_lib.ensemble_of([m.config for m in group]))
  except InputError as e:
    return str(e)
  resumed = {m.name: checkpoint_steps(os.path.join(workdir, m.name))[-1:] for m in group}
  if len({tuple(steps) for steps in resumed.values()}) > 1:
    return ("their checkpoints stand at different steps ("
            + ", ".join(f"{name}: {steps[0] if steps else 'none'}" for name, steps in resumed.items()) + ")")
  return None


def checkpoint_steps(member_dir: str) -> list[int]:
  path = os.path.join(member_dir, "checkpoints")
  return sorted(int(s) for s in os.listdir(path) if s.isdigit()) if os.path.isdir(path) else []


def run_members(members: list[Member], workdir: str, mode: str = "seeds", check=None) -> list[dict]:
  """Trains each job in turn (resuming, skipping finished members) and writes the entropy files."""
  from lensjax.train import loop
  unfinished = [m for m in members if not _finished(m, workdir)]
  jobs = ensemble_jobs(unfinished, workdir, mode, check or loop.prepare)
  # SIGTERM outside a member's training (which handles its own) stops the sweep before the next member.
  with SigtermFlag() as stop:
    return _run_jobs(members, jobs, workdir, stop)


def _finished(member: Member, workdir: str) -> bool:
  done = read_entropy_file(os.path.join(workdir, member.name))
  return done is not None and done.get("step") == member.config.train.steps


def _run_jobs(members: list[Member], jobs: list[list[Member]], workdir: str, stop: SigtermFlag) -> list[dict]:
  import jax
  from lensjax import runner
  from lensjax.train.ensemble import member_of
  done = {m.name: read_entropy_file(os.path.join(workdir, m.name)) for m in members if _finished(m, workdir)}
  for name in done:
    print(f"sweep: member {name}: finished, skipped", file=sys.stderr, flush=True)
  for number, job in enumerate(jobs, 1):
    if stop.requested:
      print("sweep: SIGTERM: stopping before the next member (run the sweep again to go on)", file=sys.stderr,
            flush=True)
      break
    dirs = [os.path.join(workdir, m.name) for m in job]
    print(f"sweep: job {number}/{len(jobs)}: {', '.join(m.name for m in job)}"
          + (f" as one ensemble of {len(job)}" if len(job) > 1 else "") + f" -> {', '.join(dirs)}",
          file=sys.stderr, flush=True)
    if len(job) == 1:
      state = runner.train(job[0].config, dirs[0])
    else:
      state = runner.train(config_lib.ensemble_of([m.config for m in job]), workdir,
                           members=[m.config for m in job], run_dirs=dirs)
    stopped_at = int(min(jax.device_get(state.step).reshape(-1)))
    if stopped_at < job[0].config.train.steps:  # SIGTERM: train saved a checkpoint; so does the sweep, by stopping
      print(f"sweep: {', '.join(m.name for m in job)} stopped at step {stopped_at}; stopping the sweep (run it "
            "again to resume)", file=sys.stderr, flush=True)
      break
    for i, (member, member_dir) in enumerate(zip(job, dirs)):
      record = entropy_record(member, member_dir, member_of(state, i) if len(job) > 1 else state)
      if record is not None:
        if jax.process_index() == 0:
          write_json(os.path.join(member_dir, ENTROPY_FILE), record)
        done[member.name] = record
  records = [done[m.name] for m in members if done.get(m.name) is not None]
  if jax.process_index() == 0 and records:
    write_json(os.path.join(workdir, SUMMARY_FILE), records)
  return records


def summary_table(records: list[dict]) -> str:
  header = f"{'member':<20} {'params':>10} {'H(P)':>9} {'H(Q)':>9} {'H(Q)-H(P)':>10} {'KL(P||Q)':>9}  method"
  rows = [header] + [
      f"{r['name']:<20} {r['num_params']:>10,} {r['eval/entropy_target_seq']:9.4f} {r['eval/entropy_model_seq']:9.4f} "
      f"{r['entropy_gap_seq']:+10.4f} {r['eval/kl_seq']:9.4f}  {r['method']}" for r in records]
  return "\n".join(rows)


def main(args, extra: list[str]) -> int:
  base = config_lib.load_config_file(args.config)
  sweep = load_sweep_list(args.config)
  cli_overrides = config_lib.parse_override_args(extra)
  if args.print_commands:
    # The cluster's machines are not this one: check everything but the device counts.
    def check(config):
      config_lib.validate(config, device_count=1, process_count=1, platform="gpu")
      return config
    for member in parse_members(sweep, base, cli_overrides, check):
      print(train_command(args.config, args.workdir, member))
    print(f"sweep: once they have run, `lensjax sweep --config {args.config} --workdir {args.workdir}` "
          "(same overrides) writes each member's entropy.json without training again", file=sys.stderr)
    return 0
  from lensjax import parallel
  from lensjax.train import loop
  parallel.initialize_distributed()
  members = parse_members(sweep, base, cli_overrides, loop.prepare)
  records = run_members(members, args.workdir, args.ensembles, loop.prepare)
  if records:
    print(summary_table(records))
  return 0


def add_parser(commands) -> argparse.ArgumentParser:
  """Registers `lensjax sweep` on the CLI's subparsers."""
  parser = commands.add_parser("sweep", help="train every member of a config's SWEEP list into WORKDIR/<name>/ "
                                             "and write each member's entropy.json",
                               epilog="Override any config value of every member with --config.SECTION.KEY=VALUE.")
  parser.add_argument("--config", required=True, help="a config file with get_config() and a SWEEP list, "
                                                      "such as configs/entropy_ladder.py")
  parser.add_argument("--workdir", required=True, help="the sweep's folder; member M trains into WORKDIR/M")
  parser.add_argument("--print-commands", action="store_true",
                      help="print one `lensjax train` command line per member instead of running them")
  parser.add_argument("--ensembles", choices=tuple(ENSEMBLE_MODES), default="seeds",
                      help="train members that differ only in seeds (seeds+hyper: also in optim.lr and "
                           "optim.weight_decay) as one ensemble; none: one by one (default: seeds)")
  parser.set_defaults(handler=main)
  return parser
