"""`lensjax <command>`: the command-line entry point.

Exit codes (README, "Exit codes and faults"): 0 success, or a stop on SIGTERM;
1 a checkpoint could not be written (a full disk); 2 bad input (config,
arguments, data, run directory, checkpoint), with the reason on stderr; 3
training halted (a non-finite step under nan_policy=halt, or more than
train.max_skipped skipped in a row under skip); anything else is a bug or a crash.
"""

from __future__ import annotations

import argparse
import contextlib
import sys

from lensjax import compile_cache
from lensjax.errors import CheckpointWriteError, InputError, TrainingHalted
from lensjax.signals import SigtermFlag


def _train(args, extra: list[str]) -> int:
  from lensjax import config as config_lib
  from lensjax import parallel
  from lensjax import runner
  config = config_lib.load_config_file(args.config)
  parallel.initialize_distributed()
  config = config_lib.apply_overrides(config, config_lib.parse_override_args(extra))
  runner.train(config, args.workdir)
  return 0


def _load_config(args, extra: list[str]):
  from lensjax import config as config_lib
  config = config_lib.load_config_file(args.config)
  return config_lib.apply_overrides(config, config_lib.parse_override_args(extra))


def _bench(args, extra: list[str]) -> int:
  from lensjax import bench
  return bench.main(_load_config(args, extra), args.json, args.steps, args.only, args.row_budget, args.precision)


def _report(args, extra: list[str]) -> int:
  from lensjax.report import build
  if extra:
    raise InputError(f"lensjax report takes no {' '.join(extra)}; pass RUN_DIR [RUN_DIR ...] --out OUT_DIR [--last N] "
                     "[--format png|pdf|svg].")
  index = build.build_report(args.run_dirs, args.out, args.last, args.format)
  print(f"report written to {index}")
  return 0


def parser() -> argparse.ArgumentParser:
  top = argparse.ArgumentParser(prog="lensjax", description=__doc__.splitlines()[0])
  commands = top.add_subparsers(dest="command", required=True)
  from lensjax.config.reference import key_reference_text  # the dataclasses only: no JAX
  from lensjax.hessian.precision import add_precision_argument  # the names only: no JAX
  train = commands.add_parser("train", help="train a model (resumes if WORKDIR holds checkpoints)",
                              formatter_class=argparse.RawDescriptionHelpFormatter, epilog=key_reference_text())
  train.add_argument("--config", required=True, help="a config file such as configs/quickstart.py")
  train.add_argument("--workdir", required=True, help="the run directory")
  train.set_defaults(handler=_train)
  report = commands.add_parser("report", help="figures and an index.md summary page from one or more run directories")
  report.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="a run directory (the --workdir of `train`)")
  report.add_argument("--out", required=True, help="the folder that receives index.md and the PNG figures")
  report.add_argument("--last", type=int, default=5, metavar="N",
                      help="average per-layer statistics over the last N logged steps (default 5)")
  report.add_argument("--format", choices=("png", "pdf", "svg"), default="png",
                      help="figure files: png (default, shown on index.md), or pdf / svg (vector, for papers; "
                           "index.md links PDFs and shows SVGs)")
  report.set_defaults(handler=_report)
  bench = commands.add_parser("bench", help="compile and time the train steps, gradient and HVP, exact-entropy "
                              "enumeration and sampler of a config on this device",
                              epilog="Override any config value with --config.SECTION.KEY=VALUE.")
  bench.add_argument("--config", required=True, help="a config file such as configs/gpt2_small.py")
  bench.add_argument("--steps", type=int, default=20, help="timed calls per row (after 3 warm-up calls)")
  bench.add_argument("--only", default=None, metavar="GROUPS",
                     help="a comma list of row groups: train, hvp, entropy, sampler (default: all)")
  bench.add_argument("--row-budget", type=float, default=None, metavar="SECONDS",  # None: bench.ROW_BUDGET_S
                     help="seconds of calls per row after its compile (default 60): where the first call shows that "
                          "--steps calls would take longer, the row times fewer (at least 3, or 1 if even 3 would "
                          "not fit) and its notes say how many")
  bench.add_argument("--json", action="store_true", help="print one JSON object instead of a table (at the end; the "
                     "table prints each row as soon as it is timed)")
  add_precision_argument(bench)  # the hvp rows
  bench.set_defaults(handler=_bench)
  # Corpus preparation, the sweep runner and the analyses register their own subcommands; they never import this
  # module.
  from lensjax import sweep
  from lensjax.analysis import (deaths_cli, entropy_cli, growth_cli, hessian_cli, saturation_cli, spikes_cli,
                                tokens_cli)
  from lensjax.data import prepare
  for module in (prepare, sweep, entropy_cli, hessian_cli, spikes_cli, saturation_cli, growth_cli, tokens_cli,
                 deaths_cli):
    module.add_parser(commands)
  return top


def main(argv: list[str] | None = None) -> int:
  argv = sys.argv[1:] if argv is None else list(argv)
  # A preempted job often gets SIGTERM while it is still starting (importing JAX, reading data, compiling): from
  # here on, for `train`, SIGTERM is a request to stop that the train loop honours, not the end of the process.
  early_sigterm = SigtermFlag() if argv[:1] == ["train"] else contextlib.nullcontext()
  with early_sigterm:
    return _run(argv)


def _run(argv: list[str]) -> int:
  args, extra = parser().parse_known_args(argv)
  # Before any command compiles: a rerun, a resume or the next analysis then reads its programs from disk.
  compile_cache.enable_compilation_cache()
  try:
    return args.handler(args, extra)
  except InputError as e:
    print(f"lensjax: error: {e}", file=sys.stderr)
    return 2
  except TrainingHalted as e:
    print(f"lensjax: halted: {e}", file=sys.stderr)
    return 3
  except CheckpointWriteError as e:
    print(f"lensjax: error: {e}", file=sys.stderr)
    return 1


if __name__ == "__main__":
  sys.exit(main())
