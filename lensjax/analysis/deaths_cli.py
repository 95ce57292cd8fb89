"""`lensjax deaths --workdir RUN [--json [OUT.json]] [--extract OUT.npz] [--from-extract X.npz] [--window-points K]
[--matches M] [--null-sample S] [--max-deaths-per-layer N] [--permutations N] [--level-candidates K] [--match-on {start,window-mean}]
[--seed S]`: do FFN units die of the dynamics of training?

Reads RUN/unit_trace/ (a run trained with --config.stats.unit_trace=true), RUN/neuron_events.jsonl and
RUN/config.json, and compares what each dying unit did before it stopped firing with matched survivors and
with shuffled death times, uniform and level-matched (lensjax.analysis.deaths). Prints a summary, or with a bare --json the report as one
JSON object; `--json OUT.json` writes the report there instead. `--extract OUT.npz` writes the few megabytes
the report is computed from, and `--from-extract X.npz` computes the same report from such a file alone.
"""

from __future__ import annotations

import argparse
import json
import os
import zipfile

import numpy as np

from lensjax.analysis import deaths
from lensjax.errors import InputError

USAGE = ("pass --workdir RUN [--json [OUT.json]] [--extract OUT.npz] [--window-points K] [--matches M] "
         "[--null-sample S] [--max-deaths-per-layer N] [--permutations N] [--level-candidates K] [--match-on {start,window-mean}] [--seed S], or --from-extract X.npz instead of --workdir")


def add_parser(commands) -> argparse.ArgumentParser:
  """Registers `lensjax deaths` on the CLI's subparsers."""
  parser = commands.add_parser("deaths", help="whether FFN units die of the dynamics of training, of outlier "
                                              "updates or at random (needs a run with stats.unit_trace=true)")
  parser.add_argument("--workdir", default=None, help="a run directory trained with --config.stats.unit_trace=true")
  parser.add_argument("--json", nargs="?", const="-", default=None, metavar="OUT.json",
                      help="print the report as one JSON object, or write it to OUT.json")
  parser.add_argument("--extract", default=None, metavar="OUT.npz",
                      help="also write the compact file the report is computed from")
  parser.add_argument("--from-extract", default=None, metavar="X.npz", help="compute the report from an extract")
  parser.add_argument("--window-points", type=int, default=None, metavar="K",
                      help=f"trace points per pre-death window (default {deaths.DEFAULT_WINDOW_POINTS})")
  parser.add_argument("--matches", type=int, default=None, metavar="M",
                      help=f"matched survivors per dying unit (default {deaths.DEFAULT_MATCHES})")
  parser.add_argument("--null-sample", type=int, default=None, metavar="S",
                      help=f"units per layer in the shuffled-time null's pool (default {deaths.DEFAULT_NULL_SAMPLE})")
  parser.add_argument("--max-deaths-per-layer", type=int, default=None, metavar="N",
                      help="analyse a uniform random sample of N of a layer's deaths when it has more (0: all; "
                           f"default {deaths.DEFAULT_MAX_DEATHS_PER_LAYER})")
  parser.add_argument("--permutations", type=int, default=deaths.DEFAULT_PERMUTATIONS, metavar="N",
                      help=f"shuffles of the death times (default {deaths.DEFAULT_PERMUTATIONS})")
  parser.add_argument("--level-candidates", type=int, default=deaths.DEFAULT_LEVEL_CANDIDATES, metavar="K",
                      help="nearest-in-frequency candidates per death in the level-matched null (post-hoc check "
                           f"of the firing-level confound; default {deaths.DEFAULT_LEVEL_CANDIDATES})")
  parser.add_argument("--match-on", choices=deaths.MATCH_ON, default="start",
                      help="the frequency both matched comparisons match on: at the window's first point (start, "
                           "the default) or its mean over the window (window-mean; post-hoc check of regression to "
                           "the mean)")
  parser.add_argument("--seed", type=int, default=0, help="seed of the null pool, the shuffles and the bootstrap")
  parser.set_defaults(handler=handler)
  return parser


def handler(args, extra: list[str]) -> int:
  if extra:
    raise InputError(f"lensjax deaths takes no {' '.join(extra)}; {USAGE}.")
  _check_arguments(args)
  if args.from_extract:
    extract = read_extract(args.from_extract, args)
  else:
    extract = extract_of_run(args.workdir, args)
  report = deaths.death_report(extract, args.permutations, args.seed, args.level_candidates,
                               args.match_on)
  report["source"] = args.from_extract or args.workdir
  if args.extract:
    _replace(args.extract, lambda f: np.savez_compressed(f, **extract.to_arrays()))
  if args.json not in (None, "-"):
    _replace(args.json, lambda f: f.write(json.dumps(report).encode()))
  print(json.dumps(report) if args.json == "-" else deaths.summary_text(report))
  return 0


def _check_arguments(args) -> None:
  if bool(args.workdir) == bool(args.from_extract):
    raise InputError(f"lensjax deaths reads one run or one extract; {USAGE}.")
  if args.from_extract and args.extract:
    raise InputError(f"{args.from_extract} is already an extract; drop --extract or pass --workdir instead.")
  for name, value, least in (("--window-points", args.window_points, deaths.MIN_WINDOW_POINTS),
                             ("--matches", args.matches, 1), ("--null-sample", args.null_sample, 1),
                             ("--permutations", args.permutations, 1),
                             ("--max-deaths-per-layer", args.max_deaths_per_layer, 0),
                             ("--level-candidates", args.level_candidates, 1)):
    if value is not None and value < least:
      raise InputError(f"{name} is {value}; it must be at least {least}.")
  for name, path in (("--json", args.json), ("--extract", args.extract)):
    if path not in (None, "-"):
      folder = os.path.dirname(os.path.abspath(path))
      if not os.path.isdir(folder):
        raise InputError(f"{name} {path}: the folder {folder} does not exist; create it or pick another path.")


def extract_of_run(workdir: str, args) -> deaths.Extract:
  """The extract of a run directory's full trace; InputError for anything missing or malformed."""
  from lensjax import config as config_lib  # pylint: disable=import-outside-toplevel
  from lensjax.io.metrics_log import read_metrics  # pylint: disable=import-outside-toplevel
  from lensjax.io.step_arrays import step_files  # pylint: disable=import-outside-toplevel
  from lensjax.stats.dead_units import EVENT_LOG  # pylint: disable=import-outside-toplevel
  from lensjax.stats.unit_trace import TRACE_DIR  # pylint: disable=import-outside-toplevel
  config_path = os.path.join(workdir, "config.json")
  if not os.path.isfile(config_path):
    if os.path.isfile(os.path.join(workdir, "ensemble.json")):
      raise InputError(f"{workdir!r} is an ensemble; pass one member's run directory, e.g. "
                       f"--workdir {os.path.join(workdir, 'member_0')}.")
    raise InputError(f"{workdir!r} holds no config.json; pass the --workdir of a lensjax train run.")
  config = config_lib.load_json(config_path)
  trace_dir = os.path.join(workdir, TRACE_DIR)
  files = step_files(trace_dir) if os.path.isdir(trace_dir) else []
  if not files:
    raise InputError(f"{workdir!r} holds no {TRACE_DIR}/ step files; train it with --config.stats.unit_trace=true.")
  events_path = os.path.join(workdir, f"{EVENT_LOG}.jsonl")
  if not os.path.isfile(events_path):
    raise InputError(f"{workdir!r} holds no {EVENT_LOG}.jsonl (no neuron events); train it with lensjax train, "
                     "which writes one for a model with an FFN.")
  found = deaths.first_deaths(read_metrics(events_path))
  if not len(found.layer_D):
    raise InputError(f"{events_path} records no unit that died, so there is no death to explain; train longer or "
                     "with a shorter --config.stats.dead_window.")
  steps, trace = read_trace(files)
  L, F = trace["frequency"].shape[1:]
  if found.layer_D.max() >= L or found.unit_D.max() >= F:
    raise InputError(f"{events_path} names units outside the trace's {L} layers x {F} units; the two files come "
                     "from different runs.")
  return deaths.build_extract(
      steps, trace, found, dead_window=config.stats.dead_window, active_threshold=config.model.active_threshold,
      window_points=args.window_points or deaths.DEFAULT_WINDOW_POINTS, matches=args.matches or deaths.DEFAULT_MATCHES,
      null_sample=args.null_sample or deaths.DEFAULT_NULL_SAMPLE, seed=args.seed,
      max_deaths_per_layer=(deaths.DEFAULT_MAX_DEATHS_PER_LAYER if args.max_deaths_per_layer is None
                            else args.max_deaths_per_layer))


def read_trace(files: list[tuple[int, str]]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
  """The trace files stacked: steps [P] and, per field, float32 [P, L, F]."""
  per_step, shape, optional = [], None, "steps_since_active"
  for step, path in files:
    try:
      with np.load(path, allow_pickle=False) as arrays:
        fields = {name: arrays[name] for name in (*deaths.TRACE_FIELDS, optional) if name in arrays.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
      raise InputError(f"{path} is not a readable trace file ({error}); delete it and run the step again or "
                       "analyse the run without it.") from None
    missing = [name for name in deaths.TRACE_FIELDS if name not in fields]
    shapes = {np.shape(value) for value in fields.values()}
    if missing or len(shapes) != 1 or len(next(iter(shapes))) != 2 or (shape and shapes != {shape}):
      raise InputError(f"{path} lacks {', '.join(missing)} or holds arrays of another shape than [layers, units] "
                       f"{shape or ''}; every trace file of a run must come from the same model.")
    shape = next(iter(shapes))
    per_step.append(fields)
  names = [name for name in per_step[0] if all(name in fields for fields in per_step)]
  trace = {name: np.stack([fields[name] for fields in per_step]).astype(np.float32) for name in names}
  return np.asarray([step for step, _ in files], np.int64), trace


def read_extract(path: str, args) -> deaths.Extract:
  try:
    with np.load(path, allow_pickle=False) as arrays:
      extract = deaths.Extract.from_arrays({name: arrays[name] for name in arrays.files}, path)
  except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
    raise InputError(f"{path} is not a readable extract ({error}); pass a file written by lensjax deaths "
                     "--extract.") from None
  for name, value, fixed in (("--window-points", args.window_points, extract.window_points),
                             ("--matches", args.matches, extract.matches),
                             ("--null-sample", args.null_sample, extract.null_sample),
                             ("--max-deaths-per-layer", args.max_deaths_per_layer, extract.max_deaths_per_layer)):
    if value is not None and value != fixed:
      raise InputError(f"{path} was extracted with {name} {fixed}, not {value}; extract the run again with "
                       f"{name} {value} or drop the option.")
  return extract


def _replace(path: str, write) -> None:
  """Writes a file under a temporary name beside `path`, then renames it over `path`: all or nothing."""
  temporary = os.path.join(os.path.dirname(os.path.abspath(path)), f".{os.path.basename(path)}.tmp")
  try:
    with open(temporary, "wb") as f:
      write(f)
    os.replace(temporary, path)
  except BaseException:
    if os.path.exists(temporary):
      os.unlink(temporary)
    raise
