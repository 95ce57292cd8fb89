"""`lensjax tokens --workdir W [--step N] [--rows 2] [--max-tokens 256] [--json]`: held-out text, token by token."""

from __future__ import annotations

import argparse
import json
import os

from lensjax.analysis import common, tokens


def run(args, extra: list[str]) -> int:
  from lensjax.errors import InputError
  if extra:
    raise InputError(f"lensjax tokens takes no {' '.join(extra)}; pass --workdir W [--step N] [--rows R] "
                     "[--max-tokens K] [--json].")
  if args.rows < 1 or args.max_tokens < 1:
    raise InputError(f"--rows {args.rows} and --max-tokens {args.max_tokens} must both be at least 1.")
  loaded = common.load_checkpoint_run(args.workdir, args.step)
  results = tokens.held_out_tokens(loaded.params, loaded.config, loaded.run.source, args.rows, args.max_tokens)
  path = os.path.join(args.workdir, tokens.TOKENS_FILE)
  with open(path + ".tmp", "w") as f:
    json.dump({"step": loaded.step, **results}, f)
  os.replace(path + ".tmp", path)
  common.report(loaded, results, tokens.summary(results, loaded.step), args.json,
                scalars={"eval/tokens/mean_nll": results["mean_nll"]})
  return 0


def add_parser(commands) -> argparse.ArgumentParser:
  """Registers `lensjax tokens` on the CLI's subparsers."""
  parser = commands.add_parser("tokens", help="held-out text decoded token by token, with each token's loss and "
                                              "the model's entropy; writes WORKDIR/tokens.json for the report")
  common.add_common_arguments(parser)
  parser.add_argument("--rows", type=int, default=2, help="held-out sequences shown (default 2)")
  parser.add_argument("--max-tokens", type=int, default=256, help="tokens per sequence at most (default 256)")
  parser.set_defaults(handler=run)
  return parser
