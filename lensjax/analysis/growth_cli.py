"""`lensjax growth --workdir DIR [--json] [--figure PATH]`: which law the run's parameter norms follow.

Fits √t, linear, t^¼ and exponential laws and the free power law a·t^p + b
(lensjax.analysis.growth) to `norm/params`, each block's `norm/params/layer_{l}`
and `norm/params/embed` of DIR/metrics.jsonl; prints r² per law, the best law
by BIC and the growth exponent p (or, with --json, the whole report: one
object keyed by metric name); `--figure` also draws the fits to a PNG.
"""

from __future__ import annotations

import argparse
import json
import os

from lensjax.errors import InputError


def add_parser(commands) -> argparse.ArgumentParser:
  """Adds `growth` to an argparse subparsers object; its handler is `handler(args, extra)`."""
  parser = commands.add_parser("growth", help="norm growth laws of a run (Merrill et al. 2021): √t, linear, t^¼, "
                                              "exponential fits and the growth exponent p of a·t^p + b")
  parser.add_argument("--workdir", required=True, help="a run directory written by lensjax train")
  parser.add_argument("--json", action="store_true", help="print one JSON object instead of a summary")
  parser.add_argument("--figure", default=None, metavar="PATH", help="also draw the fits to this PNG")
  parser.set_defaults(handler=handler)
  return parser


def handler(args, extra: list[str]) -> int:
  from lensjax.analysis import growth  # pylint: disable=import-outside-toplevel
  from lensjax.io.metrics_log import read_metrics  # pylint: disable=import-outside-toplevel
  if extra:
    raise InputError(f"lensjax growth takes no {' '.join(extra)}; pass --workdir DIR [--json] [--figure PATH].")
  path = os.path.join(args.workdir, "metrics.jsonl")
  if not os.path.isfile(path):
    raise InputError(f"{args.workdir!r} holds no metrics.jsonl; pass the --workdir of a lensjax train run.")
  records = read_metrics(path)
  report = growth.growth_report(records)
  if not report:
    raise InputError(f"{path} logs no norm/params; the norm lens runs on logging steps of lensjax train.")
  if args.figure:
    from lensjax.report.figures_growth import growth_figure  # pylint: disable=import-outside-toplevel
    growth_figure(records, args.figure, report=report)
  print(json.dumps(report) if args.json else growth.summary_text(report))
  return 0
