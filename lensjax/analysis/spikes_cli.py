"""`lensjax spikes --workdir W [--window 20] [--k 6] [--json]`: what happened at each loss spike.

Finds the spikes in W/metrics.jsonl (train/loss above the rolling median of
the previous `--window` logged losses by `--k` median absolute deviations),
groups detections at most `--after` steps apart into one event, and for each
event (up to `--max-spikes`, oldest first) restores the nearest checkpoint at
or before `--before` steps ahead of it, replays training exactly, and measures
every step from there to `--after` steps past it: λ_max(H), λ_max of Adam's
preconditioned Hessian against the stability threshold, the curvature along
the update and the loss change predicted to first and second order next to
the actual one, `adam/g2_over_v` and dead / died / revived units per layer.

Writes W/spikes/report.json and one PNG timeline per event
(W/spikes/spike_{step}.png), logs `hessian/*` and `spike/*` at every measured
step to W/tb, and prints a summary (or, with --json, the report).
`--step N` analyses an event at step N whether or not it was detected.
`--precision` (float32, tf32, bf16; default the run's `stats.hessian_precision`)
sets the precision of the curvature measurements; the report records it.
"""

from __future__ import annotations

import json
import math
import os
import sys

from lensjax.analysis.common import add_common_arguments
from lensjax.analysis.records import family_layers, metric_names
from lensjax.errors import InputError
from lensjax.hessian.precision import add_precision_argument, check_precision_flag, chosen_precision

TB_PREFIXES = ("hessian/", "spike/")


def add_parser(commands):
  """Adds `spikes` to an argparse subparsers object."""
  parser = commands.add_parser("spikes", help="detect loss spikes, replay them from checkpoints, measure curvature",
                               description=__doc__.split("\n\n")[1])
  add_common_arguments(parser)
  for action in parser._actions:
    if action.dest == "step":
      action.help = "analyse an event at this step, detected or not (default: every detected spike)"
  parser.add_argument("--window", type=int, default=20, help="rolling window, in logged losses (default 20)")
  parser.add_argument("--k", type=float, default=6.0, help="median absolute deviations above the median (default 6)")
  parser.add_argument("--before", type=int, default=None, help="steps measured before a spike (default: --window)")
  parser.add_argument("--after", type=int, default=5, help="steps measured after a spike (default 5)")
  parser.add_argument("--max-spikes", type=int, default=3, help="events analysed, oldest first (default 3)")
  parser.add_argument("--power-iters", type=int, default=20,
                      help="power iterations per step, warm-started (3x on the first step; default 20)")
  add_precision_argument(parser)
  parser.set_defaults(handler=run_command)
  return parser


def _check_arguments(args, extra: list[str]) -> None:
  if extra:
    raise InputError(f"lensjax spikes takes no {' '.join(extra)}; see lensjax spikes --help.")
  for name, low in (("window", 2), ("after", 0), ("max_spikes", 1), ("power_iters", 1)):
    if getattr(args, name) < low:
      raise InputError(f"--{name.replace('_', '-')} is {getattr(args, name)}; it must be at least {low}.")
  if args.before is not None and args.before < 0:
    raise InputError(f"--before is {args.before}; it must be zero or positive.")
  if not (args.k > 0 and math.isfinite(args.k)):
    raise InputError(f"--k is {args.k}; it must be a positive number.")
  check_precision_flag(args.precision)


def _read_config_and_metrics(workdir: str):
  from lensjax import config as config_lib
  from lensjax.io.metrics_log import read_metrics
  for name in ("config.json", "metrics.jsonl"):
    if not os.path.isfile(os.path.join(workdir, name)):
      raise InputError(f"{workdir!r} holds no {name}; pass the --workdir of a lensjax train run.")
  return config_lib.load_json(os.path.join(workdir, "config.json")), read_metrics(os.path.join(workdir, "metrics.jsonl"))


def run_command(args, extra: list[str]) -> int:
  _check_arguments(args, extra)
  import jax  # heavy imports only once the arguments are good

  from lensjax.analysis import spikes
  from lensjax.report.figures_spikes import spike_timeline_figure
  from lensjax.train import loop

  config, records = _read_config_and_metrics(args.workdir)
  steps, losses = spikes.loss_series(records)
  if not steps:
    raise InputError(f"{args.workdir}/metrics.jsonl has no train/loss record; train the run first.")
  verdicts = spikes.judge_series(losses, args.window, args.k)
  detected = [s for s, d in zip(steps, verdicts.detected) if d]
  if args.step is not None:
    if not 0 <= args.step <= steps[-1]:
      raise InputError(f"--step {args.step} is outside the trained steps 0..{steps[-1]}.")
    events = [spikes.SpikeEvent(args.step, args.step, [args.step])]
  else:
    events = spikes.group_detections(detected, args.after)
  before = args.window if args.before is None else args.before
  precision = chosen_precision(args.precision, config)

  report = {"workdir": os.path.abspath(args.workdir), "window": args.window, "k": args.k, "before": before,
            "after": args.after, "precision": precision, "detected": detected, "events": len(events), "spikes": []}
  out_dir = os.path.join(args.workdir, "spikes")
  if events[:args.max_spikes]:
    config = loop.prepare(config)
    run = loop.build(config)
    os.makedirs(out_dir, exist_ok=True)
  for event in events[:args.max_spikes]:
    first, stop = max(event.first - before, 0), min(event.last + args.after, steps[-1]) + 1
    checkpoint, timeline = spikes.analyse(run, args.workdir, first, stop, jax.random.PRNGKey(event.first),
                                          power_iters=args.power_iters, precision=precision)
    index = steps.index(event.first) if event.first in steps else None
    entry = {"step": event.first, "last": event.last, "detections": event.steps, "checkpoint": checkpoint,
             "measured": [first, stop - 1], "loss": losses[index] if index is not None else None,
             "median": float(verdicts.median[index]) if index is not None else None,
             "threshold": float(verdicts.threshold[index]) if index is not None else None}
    entry["png"] = spike_timeline_figure(entry, timeline, (steps, losses), config.optim.name,
                                         os.path.join(out_dir, f"spike_{event.first:06d}.png"))
    entry["timeline"] = timeline
    report["spikes"].append(entry)
  report["not_analysed"] = [e.first for e in events[args.max_spikes:]]

  if jax.process_index() == 0:
    _write_tensorboard(args.workdir, report)
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "report.json"), "w") as f:
      json.dump(_jsonable(report), f, indent=1)
      f.write("\n")
    print(json.dumps(_jsonable(report)) if args.json else summary(report, config))
    sys.stdout.flush()
  return 0


def _jsonable(value):
  """NaN and infinities become null: a report must parse with any JSON reader."""
  if isinstance(value, float):
    return value if math.isfinite(value) else None
  if isinstance(value, dict):
    return {k: _jsonable(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_jsonable(v) for v in value]
  return value


def _write_tensorboard(workdir: str, report: dict) -> None:
  from lensjax.io.tensorboard import SummaryWriter
  if not report["spikes"]:
    return
  writer = SummaryWriter(os.path.join(workdir, "tb"))
  try:
    for entry in report["spikes"]:
      for record in entry["timeline"]:
        writer.scalars(record["step"], {k: v for k, v in record.items() if k.startswith(TB_PREFIXES)})
  finally:
    writer.close()


# --------------------------------------------------------------------------
# Output.


def _fmt(value) -> str:
  return "n/a" if value is None or (isinstance(value, float) and not math.isfinite(value)) else f"{value:.4g}"


def summary(report: dict, config) -> str:
  lines = [f"{len(report['detected'])} spike step(s) in {report['workdir']}/metrics.jsonl "
           f"(window {report['window']}, k {report['k']}), {report['events']} event(s); curvature at precision "
           f"{report['precision']}."]
  for entry in report["spikes"]:
    timeline = {r["step"]: r for r in entry["timeline"]}
    at, start = timeline.get(entry["step"], {}), entry["timeline"][0] if entry["timeline"] else {}
    lines.append(f"\nspike at step {entry['step']}: loss {_fmt(entry['loss'])} (median {_fmt(entry['median'])}, "
                 f"threshold {_fmt(entry['threshold'])}); replayed from checkpoint {entry['checkpoint']}, "
                 f"measured steps {entry['measured'][0]}..{entry['measured'][1]}")
    for name in ("hessian/lambda_max", "hessian/lambda_max_precond", "hessian/stability_threshold",
                 "hessian/update_curvature", "spike/dloss_actual", "spike/dloss_first_order",
                 "spike/dloss_second_order"):
      if name in at:
        lines.append(f"  {name:30s} {_fmt(start.get(name)):>10s} at step {start.get('step')} -> {_fmt(at[name]):>10s}")
    for l in range(family_layers(metric_names(entry["timeline"]), "ffn/dead")):
      key = f"ffn/dead/layer_{l}"
      died = sum(r.get(f"ffn/died/layer_{l}", 0.0) for r in entry["timeline"])
      lines.append(f"  {key:30s} {_fmt(start.get(key)):>10s} -> {_fmt(at.get(key)):>10s} ({died:.0f} units died)")
    lines.append(f"  timeline: {entry['png']}")
  if report["not_analysed"]:
    lines.append(f"\nnot analysed (raise --max-spikes): events at steps {report['not_analysed']}")
  return "\n".join(lines)
