"""The cost of second-order diagnostics: one Hessian-vector product against one gradient.

Both of the *plain* loss of `lensjax.analysis.hvp` (float32, explicit-softmax
attention, `default_matmul_precision("highest")`) on the config's batch 0,
averaged over the same micro-batches, so that the ratio is that of the
products alone: forward-over-reverse costs about three gradients in FLOPs.
Rows as in `lensjax.bench`: median seconds of synchronised calls after a
warm-up, tokens/s, compile time and XLA's device-memory estimate.

`python -m lensjax.bench_hvp --config configs/gpt2_small.py [--steps 5] [--json] [--config.a.b=V ...]`
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import jax

from lensjax import config as config_lib
from lensjax import parallel, perf
from lensjax.analysis import hvp
from lensjax.bench import _time_calls

# A micro-batch keeps at most this many bytes of float32 logits: the HVP holds
# about five B×T×V tensors (logits, their tangent, softmax, cotangent and its tangent).
MICRO_LOGITS_BYTES = 2 * 2**30
TARGET_RATIO = 3.5


def micro_batches(batch_size: int, seq_len: int, vocab: int, budget: int = MICRO_LOGITS_BYTES) -> int:
  """The fewest micro-batches (a divisor of the batch) whose float32 logits fit `budget` bytes."""
  for n in range(1, batch_size + 1):
    if batch_size % n == 0 and (batch_size // n) * seq_len * vocab * 4 <= budget:
      return n
  return batch_size


def _setup(config: config_lib.Config):
  """Float32 parameters of the plain model (fresh init), batch 0 sharded over the mesh, a random tangent."""
  from lensjax.data.factory import make_source
  from lensjax.model import Transformer
  mesh = parallel.make_mesh(fsdp=config.parallel.fsdp)
  source = make_source(config)
  local = source.batch(0, config.train.batch_size, process_index=jax.process_index(),
                       process_count=jax.process_count())
  batch = hvp.plain_batch(parallel.shard_batch(local, mesh))
  model = Transformer(hvp.plain_model_config(config.model))
  init = jax.jit(lambda key: model.init(key, batch["inputs"][:1])["params"], out_shardings=parallel.replicated(mesh))
  params = init(jax.random.PRNGKey(config.train.seed))
  tangent = jax.jit(hvp.tree_random_normal)(jax.random.PRNGKey(1), params)
  return params, batch, tangent


def bench_hvp(config: config_lib.Config, steps: int = 5, warmup: int = 2, num_micro: int | None = None) -> list[dict]:
  """Rows for a gradient and a Hessian-vector product of the plain loss on one batch; `config` as `loop.prepare` gives it."""
  params, batch, tangent = _setup(config)
  B, T = batch["inputs"].shape
  n = num_micro or micro_batches(B, T, config.model.vocab_size)
  loss_fn = hvp.make_loss_fn(config.model)
  programs = (("gradient", hvp._value_and_grad_jit, (params, batch)),
              ("HVP (jvp of grad)", hvp._hvp_jit, (params, batch, tangent)))
  rows = []
  for name, fn, args in programs:
    start = time.perf_counter()
    compiled = fn.lower(loss_fn, *args, num_micro=n).compile()
    compile_s = time.perf_counter() - start
    median = statistics.median(_time_calls(compiled, lambda args=args: args, steps, warmup))
    rows.append({"name": f"{name}, {n} micro-batch{'es' if n > 1 else ''}", "seconds": median,
                 "tokens_per_s": B * T / median, "compile_s": compile_s, "memory_gib": perf.memory_gib(compiled)})
  rows[1]["vs_gradient"] = rows[1]["seconds"] / rows[0]["seconds"]
  return rows


def format_table(rows: list[dict]) -> str:
  lines = [f"{'':34s} {'ms':>10s} {'tokens/s':>12s} {'compile s':>9s} {'mem GiB':>8s}  notes"]
  for r in rows:
    memory = f"{r['memory_gib']:.2f}" if r.get("memory_gib") is not None else "n/a"
    notes = ""
    if "vs_gradient" in r:
      verdict = "meets" if r["vs_gradient"] <= TARGET_RATIO else "misses"
      notes = f"{r['vs_gradient']:.2f}x the gradient ({verdict} the {TARGET_RATIO}x target)"
    lines.append(f"{r['name']:34s} {1e3 * r['seconds']:10.1f} {r['tokens_per_s']:12,.0f} {r['compile_s']:9.1f} "
                 f"{memory:>8s}  {notes}")
  return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
  from lensjax.errors import InputError
  from lensjax.train import loop
  parser = argparse.ArgumentParser(prog="python -m lensjax.bench_hvp", description=__doc__.splitlines()[0])
  parser.add_argument("--config", required=True, help="a config file such as configs/gpt2_small.py")
  parser.add_argument("--steps", type=int, default=5, help="timed calls per row (after 2 warm-up calls)")
  parser.add_argument("--micro-batches", type=int, default=None, help="default: logits of a micro-batch within 2 GiB")
  parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
  args, extra = parser.parse_known_args(argv)
  try:
    config = config_lib.load_config_file(args.config)
    config = loop.prepare(config_lib.apply_overrides(config, config_lib.parse_override_args(extra)))
    rows = bench_hvp(config, steps=args.steps, num_micro=args.micro_batches)
  except InputError as e:
    print(f"lensjax: error: {e}", file=sys.stderr)
    return 2
  device = f"{jax.devices()[0].device_kind} x{jax.device_count()}"
  if args.json:
    print(json.dumps({"device": device, "jax": jax.__version__, "rows": rows}))
  else:
    print(f"device {device}, jax {jax.__version__}; plain loss: float32, xla attention, precision highest",
          file=sys.stderr)
    print(format_table(rows))
  return 0


if __name__ == "__main__":
  sys.exit(main())
