"""Step time of an ensemble (train.members = N) against one member: does vmapping members fill the device?

    python benchmarks/ensemble_speed.py [--steps 20] [--quick] [--only small,medium] [--json OUT.json]
        [--set KEY=VALUE ...]

Two settings, each timed with members = 1 and members = N through `lensjax bench`'s
train rows (median over `--steps` synchronised calls after warm-up, and the pipelined rate of
`--steps` calls queued back to back, which is what the training loop sees; the compiled program's
peak memory from XLA):

  small    ~1.0M parameters (4 layers, d 144, d_ff 576), batch 64 x T 8, order-2 Markov target, N = 16
  medium   ~19M parameters (6 layers, d 512, d_ff 2048), batch 32 x T 256, bytes of the built-in corpus, N = 8

The targets: the small ensemble's step at most 2x one member's, the medium at most 5x.
`--quick` shrinks both to CPU size, to check the script itself; `--set model.dtype=bfloat16` (any dotted
config key, repeatable) changes both settings.
"""

from __future__ import annotations

import argparse
import json
import sys

import jax

from lensjax import bench
from lensjax import config as config_lib
from lensjax.config import Config
from lensjax.model import count_params
from lensjax.train import loop
from lensjax.train.ensemble import member_of

SETTINGS = {
    "small": (16, 2.0, {
        "model.num_layers": 4, "model.d_model": 144, "model.num_heads": 4, "model.d_ff": 576, "model.max_len": 16,
        "data.source": "markov", "data.vocab_size": 4, "data.markov_order": 2, "data.markov_alpha": 0.5,
        "data.seq_len": 8, "train.batch_size": 64}),
    "medium": (8, 5.0, {
        "model.num_layers": 6, "model.d_model": 512, "model.num_heads": 8, "model.d_ff": 2048, "model.max_len": 256,
        "data.source": "bytes", "data.seq_len": 256, "train.batch_size": 32}),
}
QUICK = {"model.num_layers": 2, "model.d_model": 32, "model.num_heads": 4, "model.d_ff": 64, "model.max_len": 16,
         "data.seq_len": 16, "train.batch_size": 8}
COMMON = {"train.steps": 1000, "logging.progress": "none", "optim.lr": 1e-3}


def measure(name: str, members: int, values: dict, steps: int, overrides: dict) -> dict:
  config = Config().updated({**COMMON, **values, "train.members": members})
  config = loop.prepare(config_lib.apply_overrides(config, overrides))
  run = loop.build(config)
  params = member_of(run.state.params, 0) if run.ensemble else run.state.params
  plain, logging = bench.bench_train_steps(run, steps)
  return {"setting": name, "members": members, "params_per_member": count_params(params),
          "plain_ms": 1e3 * plain["seconds"], "plain_pipelined_ms": 1e3 * plain["pipelined_seconds"],
          "logging_ms": 1e3 * logging["seconds"],
          "tokens_per_s": plain["tokens_per_s"], "memory_gib": plain["memory_gib"], "compile_s": plain["compile_s"]}


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=20)
  parser.add_argument("--quick", action="store_true", help="CPU-sized models, to check the script")
  parser.add_argument("--json", help="also write the rows to this file")
  parser.add_argument("--only", default=",".join(SETTINGS), help="comma list of settings")
  parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                      help="a dotted config override for every setting (text, as --config.KEY=VALUE)")
  args = parser.parse_args(argv)
  overrides = dict(item.split("=", 1) for item in args.set)
  rows, verdicts = [], []
  for name in args.only.split(","):
    members, target, values = SETTINGS[name]
    values = {**values, **(QUICK if args.quick else {})}
    one = measure(name, 1, values, args.steps, overrides)
    many = measure(name, members, values, args.steps, overrides)
    ratio = many["plain_pipelined_ms"] / one["plain_pipelined_ms"]
    synchronised = many["plain_ms"] / one["plain_ms"]
    rows += [one, many]
    verdicts.append(f"{name}: {members} members take {ratio:.2f}x one member's plain step as the loop runs it "
                    f"(pipelined; target at most {target:g}x): {'met' if ratio <= target else 'not met'}; "
                    f"{synchronised:.2f}x with every step waited for")
    print(f"{name} done", file=sys.stderr, flush=True)
  print(f"device {jax.devices()[0].device_kind} x{jax.device_count()}, jax {jax.__version__}"
        + (f"; overrides {overrides}" if overrides else ""))
  print(f"{'setting':8s} {'members':>7s} {'params':>11s} {'plain ms':>9s} {'pipelined':>9s} {'logging ms':>10s} "
        f"{'tokens/s':>12s} {'mem GiB':>8s} {'compile s':>9s}")
  for r in rows:
    print(f"{r['setting']:8s} {r['members']:7d} {r['params_per_member']:11,d} {r['plain_ms']:9.2f} "
          f"{r['plain_pipelined_ms']:9.2f} "
          f"{r['logging_ms']:10.2f} {r['tokens_per_s']:12,.0f} {r['memory_gib'] or float('nan'):8.3f} "
          f"{r['compile_s']:9.1f}")
  print("\n".join(verdicts))
  if args.json:
    with open(args.json, "w") as f:
      json.dump({"device": jax.devices()[0].device_kind, "jax": jax.__version__, "overrides": overrides, "rows": rows,
                 "verdicts": verdicts}, f, indent=2)
  return 0


if __name__ == "__main__":
  sys.exit(main())
