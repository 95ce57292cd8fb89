"""`lensjax entropy --workdir W [--step N] [--method exact|mc|auto] [--samples N] [--json]`.

Whole-sequence entropy of what a trained model learned against its target
(see `lensjax.analysis.entropy` for the definitions). The Monte Carlo key is a
pure function of (train.seed, step), so a second call prints the same numbers.
"""

from __future__ import annotations

import argparse

from lensjax.analysis import common, entropy


def run(args, extra: list[str]) -> int:
  from lensjax.errors import InputError
  if extra:
    raise InputError(f"lensjax entropy takes no {' '.join(extra)}; pass --workdir W [--step N] "
                     "[--method exact|mc|auto] [--samples N] [--json].")
  if args.samples < 2:
    raise InputError(f"--samples {args.samples} is too few for a standard error; pass at least 2.")
  if args.max_enumerate < 1:
    raise InputError(f"--max-enumerate {args.max_enumerate} must be positive.")
  loaded = common.load_checkpoint_run(args.workdir, args.step)
  evaluator = entropy.SequenceEntropy(loaded.config.model, loaded.run.source)
  results = evaluator.evaluate(loaded.params, entropy.analysis_key(loaded.config, loaded.step), method=args.method,
                               samples=args.samples, max_enumerate=args.max_enumerate)
  common.report(loaded, results, entropy.summary(results, loaded.step), args.json,
                scalars=entropy.metrics_only(results), analysis="entropy")
  return 0


def add_parser(commands) -> argparse.ArgumentParser:
  """Registers `lensjax entropy` on the CLI's subparsers."""
  parser = commands.add_parser("entropy", help="whole-sequence entropy H(Q) of the model against H(P) of the target, "
                                               "and KL(P || Q), exact or Monte Carlo")
  common.add_common_arguments(parser)
  parser.add_argument("--method", choices=entropy.METHODS, default="auto",
                      help="exact: enumerate all V^T prefixes; mc: ancestral sampling; auto (default): exact when "
                           "V^T <= --max-enumerate")
  parser.add_argument("--samples", type=int, default=entropy.DEFAULT_SAMPLES,
                      help=f"Monte Carlo samples per law (default {entropy.DEFAULT_SAMPLES})")
  parser.add_argument("--max-enumerate", type=int, default=entropy.MAX_ENUMERATE,
                      help=f"auto enumerates up to this many prefixes (default {entropy.MAX_ENUMERATE:,})")
  parser.set_defaults(handler=run)
  return parser
