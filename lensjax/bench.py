"""`lensjax bench`: compile and time the compiled pieces of a config on this device.

Each row: median seconds per call over `steps` calls after `warmup` calls, each
call timed with the device synchronised; tokens/s; TFLOP/s per device and MFU
from FLOPs/token = 6·N + 12·L·T·D (the training step's count, N the
parameters without the position table); compile time; XLA's device-memory
estimate for the compiled program.
"""

from __future__ import annotations

import json
import statistics
import sys
import time

import jax

from lensjax import config as config_lib
from lensjax import perf
from lensjax.train import loop


def _time_calls(fn, args_fn, steps: int, warmup: int) -> list[float]:
  times = []
  for i in range(warmup + steps):
    args = args_fn()
    jax.block_until_ready(args)
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    if i >= warmup:
      times.append(time.perf_counter() - start)
  return times


def bench_train_steps(config: config_lib.Config, steps: int = 20, warmup: int = 3) -> list[dict]:
  """Times the plain and the logging train step on one fixed batch."""
  run = loop.build(config)
  batch = loop._batch(run, 0)
  state_holder = [run.state]
  tokens = config.train.batch_size * config.data.seq_len
  flops_token = perf.flops_per_token(run.state.params, config.model, config.data.seq_len)
  rows = []
  for name, fn in (("train step (plain)", run.plain_step), ("train step (logging)", run.logging_step)):
    start = time.perf_counter()
    compiled = fn.lower(state_holder[0], batch).compile()
    compile_s = time.perf_counter() - start

    def call(state, batch, compiled=compiled):
      state_holder[0], metrics = compiled(state, batch)
      return metrics

    times = _time_calls(call, lambda: (state_holder[0], batch), steps, warmup)
    median = statistics.median(times)
    row = {"name": name, "seconds": median, "tokens_per_s": tokens / median, "compile_s": compile_s,
           "memory_gib": perf.memory_gib(compiled)}
    row.update({k.split("/")[1]: v for k, v in perf.perf_metrics(median, tokens, flops_token).items()
                if k in ("perf/tflops_per_device", "perf/mfu")})
    rows.append(row)
  plain, logging = rows[0]["seconds"], rows[1]["seconds"]
  rows[1]["vs_plain"] = logging / plain
  rows[1]["amortised_at_log_every_100"] = (99 * plain + logging) / (100 * plain)
  return rows


def format_table(rows: list[dict]) -> str:
  header = f"{'':24s} {'ms':>9s} {'tokens/s':>12s} {'TFLOP/s':>8s} {'MFU':>6s} {'compile s':>9s} {'mem GiB':>8s}  notes"
  lines = [header]
  for r in rows:
    mfu = f"{100 * r['mfu']:.1f}%" if "mfu" in r else "n/a"
    notes = ""
    if "vs_plain" in r:
      notes = f"{r['vs_plain']:.3f}x plain; {r['amortised_at_log_every_100']:.4f}x at log_every=100"
    memory = f"{r['memory_gib']:.2f}" if r.get("memory_gib") is not None else "n/a"
    lines.append(f"{r['name']:24s} {1e3 * r['seconds']:9.2f} {r['tokens_per_s']:12,.0f} "
                 f"{r.get('tflops_per_device', 0):8.1f} {mfu:>6s} {r['compile_s']:9.1f} {memory:>8s}  {notes}")
  return "\n".join(lines)


def main(config: config_lib.Config, as_json: bool, steps: int) -> int:
  config = loop.prepare(config)
  rows = bench_train_steps(config, steps=steps)
  device = f"{jax.devices()[0].device_kind} x{jax.device_count()}"
  if as_json:
    print(json.dumps({"device": device, "jax": jax.__version__, "formula": perf.FLOP_FORMULA, "rows": rows}))
  else:
    print(f"device {device}, jax {jax.__version__}; {perf.FLOP_FORMULA}", file=sys.stderr)
    print(format_table(rows))
  return 0
