"""Each Hessian precision (lensjax/hessian/precision.py) against float32 on a trained checkpoint.

Usage: python3 benchmarks/hessian_precision.py RUN_DIR [--step N] [--batch-size B] [--vectors 3]
         [--tol 1e-4] [--max-iters 1000] [--chunk 20] [--trace-probes 32] [--repeats 10] [--out OUT_JSON]

RUN_DIR is a `lensjax train` run directory. On the training batch that step N
would consume (its first B rows with --batch-size), for float32, tf32 and bf16:

  hv_rel_err     ‖Hv_p − Hv_f32‖ / ‖Hv_f32‖ for `--vectors` Gaussian v (max and mean)
  lambda_max     the top eigenvalue by the warm-started shifted power iteration of
                 `spectrum.extreme_eigenpairs`, run in chunks of `--chunk` iterations until
                 the residual ‖Hv − λv‖ ≤ tol·|λ|, or until it stops falling (the noise floor of
                 the precision), or `--max-iters`, from the same start vector at every
                 precision; its residual, iterations and why it stopped
  trace          Hutchinson's tr(H) ± its standard error (`spectrum.trace`), the same
                 Rademacher probes at every precision
  hvp_ms         median wall time of one HVP (`operators.hvp`) after compilation

and, against float32, the relative change of λ_max and of the trace. Prints a
table and writes the JSON (default RUN_DIR/hessian_precision_{N:06d}.json).
On a CPU tf32 is float32 (no tensor cores): the GPU numbers belong in
benchmarks/RESULTS.md.

CPU dry run on a tiny run:
  python -m lensjax train --config configs/quickstart.py --workdir /tmp/prec_run --config.train.steps=50
  python benchmarks/hessian_precision.py /tmp/prec_run --batch-size 8 --trace-probes 8 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import jax
import numpy as np

from lensjax.analysis import common
from lensjax.errors import InputError
from lensjax.hessian import operators, spectrum
from lensjax.hessian.precision import PRECISION_NAMES
from lensjax.ops.trees import tree_norm, tree_random_normal, tree_sub
from lensjax.train import loop

REFERENCE = "float32"


def converged_top_eigenpair(loss_fn, params, batch, v0, tol: float, max_iters: int, chunk: int,
                            patience: int = 3) -> dict:
  """λ_max by chunks of warm-started iterations until ‖Hv − λv‖ ≤ tol·|λ| ("converged"), or until `patience`
  chunks in a row bring the residual no more than 2% below its best ("stalled": the precision's noise floor,
  about |λ| times the relative error of Hv, which bf16 reaches long before 1e-4), or `max_iters`. The
  iteration count is traced, so every chunk is the same compiled program."""
  vector, done, best, stalls = v0, 0, float("inf"), 0
  while True:
    top = spectrum.top_eigenpair(loss_fn, params, batch, vector, chunk)
    vector, done = top.vector, done + chunk
    eigenvalue, residual = float(top.eigenvalue), float(top.residual)
    stalls = 0 if residual < 0.98 * best else stalls + 1
    best = min(best, residual)
    stop = ("converged" if residual <= tol * abs(eigenvalue) else "stalled" if stalls >= patience
            else "max_iters" if done >= max_iters else None)
    if stop:
      return {"lambda_max": eigenvalue, "residual": residual, "iterations": done, "stopped": stop}


def hvp_seconds(loss_fn, params, batch, v, repeats: int) -> float:
  """Median seconds of one HVP, the first (compiling) call left out."""
  jax.block_until_ready(operators.hvp(loss_fn, params, batch, v))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(operators.hvp(loss_fn, params, batch, v))
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def measure(loaded, batch, args) -> dict:
  params = loaded.params
  key = jax.random.fold_in(jax.random.PRNGKey(loaded.config.train.seed), loaded.step)
  draw = jax.jit(tree_random_normal)
  vectors = [draw(jax.random.fold_in(key, i), params) for i in range(args.vectors)]
  start = draw(jax.random.fold_in(key, 100), params)
  results, reference_images = {}, None
  for name in (REFERENCE,) + tuple(p for p in PRECISION_NAMES if p != REFERENCE):
    print(f"hessian_precision: {name}: products, power iteration, trace", file=sys.stderr, flush=True)
    loss_fn = operators.make_loss_fn(loaded.config.model, name)
    images = [operators.hvp(loss_fn, params, batch, v) for v in vectors]
    if reference_images is None:
      reference_images = images
    errors = [float(tree_norm(tree_sub(hv, ref)) / tree_norm(ref)) for hv, ref in zip(images, reference_images)]
    row = {"hv_rel_err_max": max(errors), "hv_rel_err_mean": float(np.mean(errors))}
    row.update(converged_top_eigenpair(loss_fn, params, batch, start, args.tol, args.max_iters, args.chunk))
    trace, stderr = spectrum.trace(loss_fn, params, batch, jax.random.fold_in(key, 200), args.trace_probes)
    row["trace"], row["trace_stderr"] = float(trace), float(stderr)
    row["hvp_ms"] = 1e3 * hvp_seconds(loss_fn, params, batch, vectors[0], args.repeats)
    results[name] = row
  base = results[REFERENCE]
  for row in results.values():
    row["lambda_max_rel_change"] = (row["lambda_max"] - base["lambda_max"]) / abs(base["lambda_max"])
    row["trace_rel_change"] = (row["trace"] - base["trace"]) / abs(base["trace"])
    row["speedup"] = base["hvp_ms"] / row["hvp_ms"]
  return results


def table(results: dict) -> str:
  lines = [f"{'precision':9s} {'Hv err max':>10s} {'Hv err mean':>11s} {'λ_max':>12s} {'Δλ/λ':>9s} {'residual':>9s} "
           f"{'iters':>5s} {'stopped':>9s} {'trace':>12s} {'± stderr':>9s} {'Δtr/tr':>9s} {'HVP ms':>9s} {'speedup':>7s}"]
  for name, r in results.items():
    lines.append(f"{name:9s} {r['hv_rel_err_max']:10.2e} {r['hv_rel_err_mean']:11.2e} {r['lambda_max']:12.6g} "
                 f"{r['lambda_max_rel_change']:+9.2e} {r['residual']:9.2e} {r['iterations']:5d} {r['stopped']:>9s} "
                 f"{r['trace']:12.6g} {r['trace_stderr']:9.3g} "
                 f"{r['trace_rel_change']:+9.2e} {r['hvp_ms']:9.3f} {r['speedup']:6.2f}x")
  if any(r["stopped"] != "converged" for r in results.values()):
    lines.append("stopped: converged = residual ≤ tol·|λ|; stalled = the residual stopped falling (noise floor); "
                 "max_iters = neither within --max-iters")
  return "\n".join(lines)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("run_dir", metavar="RUN_DIR")
  parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: the newest)")
  parser.add_argument("--batch-size", type=int, default=None, help="rows of the step's batch (default: all)")
  parser.add_argument("--vectors", type=int, default=3, help="random v for the Hv error (default 3)")
  parser.add_argument("--tol", type=float, default=1e-4, help="power iteration: stop at ‖Hv − λv‖ ≤ tol·|λ|")
  parser.add_argument("--max-iters", type=int, default=1000, help="power iteration: at most this many (default 1000)")
  parser.add_argument("--chunk", type=int, default=20, help="power iterations between residual checks (default 20)")
  parser.add_argument("--trace-probes", type=int, default=32, help="Rademacher probes of the trace (default 32)")
  parser.add_argument("--repeats", type=int, default=10, help="timed HVP calls after the first (default 10)")
  parser.add_argument("--out", default=None, help="JSON path (default RUN_DIR/hessian_precision_{step:06d}.json)")
  args = parser.parse_args(argv)
  for name in ("vectors", "max_iters", "chunk", "trace_probes", "repeats", "batch_size"):
    value = getattr(args, name)
    if value is not None and value < (2 if name == "trace_probes" else 1):
      parser.error(f"--{name.replace('_', '-')} is {value}; it must be at least {2 if name == 'trace_probes' else 1}.")
  try:
    loaded = common.load_checkpoint_run(args.run_dir, args.step)
  except InputError as e:
    print(f"hessian_precision: error: {e}", file=sys.stderr)
    return 2
  batch = operators.plain_batch(loop.device_batch(loaded.run, loaded.step, rows=args.batch_size))
  results = measure(loaded, batch, args)
  out = {"run_dir": os.path.abspath(args.run_dir), "step": loaded.step, "batch_size": int(batch["inputs"].shape[0]),
         "seq_len": int(batch["inputs"].shape[1]), "device": f"{jax.devices()[0].device_kind} x{jax.device_count()}",
         "jax": jax.__version__, "vectors": args.vectors, "tol": args.tol, "trace_probes": args.trace_probes,
         "reference": REFERENCE, "results": results}
  path = args.out or os.path.join(args.run_dir, f"hessian_precision_{loaded.step:06d}.json")
  with open(path, "w") as f:
    json.dump(out, f, indent=1)
    f.write("\n")
  print(f"step {loaded.step} of {out['run_dir']}, batch {out['batch_size']}x{out['seq_len']}, {out['device']}, "
        f"jax {out['jax']}; against {REFERENCE}")
  print(table(results))
  print(f"written to {path}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
