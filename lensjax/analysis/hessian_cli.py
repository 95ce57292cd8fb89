"""`lensjax hessian --workdir DIR [--step N] [--json]`: the curvature of a checkpoint.

Loads checkpoint N and, on the training batch that step N would consume (the
batch the next update sees), measures with Hessian-vector products of the
plain loss: the top eigenvalue λ_max(H) with its residual ‖Hv − λv‖ and the
largest-magnitude one λ_|max|(H) (negative at a saddle; power iterations of
`spectrum.extreme_pairs`), the same two of Adam's preconditioned Hessian
P^{-1/2} H P^{-1/2}, its top compared with the stability threshold at that
step's learning rate, Hutchinson's trace with its standard error, the top-k
eigenvalues by Lanczos with a stochastic-Lanczos-quadrature spectral density
(W/hessian/spectrum_{N}.png) and its own trace ± standard error over its
probes, and λ_max of each layer's own block of H. Scalars go to the run's
TensorBoard under `hessian/*`; the whole result to W/analyses/hessian_{N}.json
(`lensjax report` draws it). Progress goes to stderr. `--precision` (float32,
tf32, bf16; default the run's `stats.hessian_precision`) sets the matmul
precision and compute dtype of every product (lensjax/hessian/precision.py);
the results record it as "precision".

With --json, one object: `{"step", "precision", "hessian/lambda_max", "lambda_max_residual",
"hessian/lambda_maxabs", "lambda_maxabs_residual", "hessian/lambda_max_precond",
"hessian/lambda_maxabs_precond", "hessian/stability_threshold", "hessian/trace",
"hessian/trace_stderr", "top_eigenvalues", "slq_trace", "slq_trace_stderr",
"density": {"nodes", "weights"}, "hessian/lambda_max/layer_{l}", "png"}`.
"""

from __future__ import annotations

import argparse
import math
import os

from lensjax.analysis import common
from lensjax.errors import InputError
from lensjax.hessian.precision import add_precision_argument, check_precision_flag, chosen_precision


def add_parser(commands) -> argparse.ArgumentParser:
  parser = commands.add_parser("hessian", help="curvature of a checkpoint: λ_max (plain and Adam-preconditioned), "
                                               "trace, top-k eigenvalues and spectral density, per-layer λ_max")
  common.add_common_arguments(parser)
  parser.add_argument("--power-iters", type=int, default=100, help="power iterations (default 100)")
  parser.add_argument("--trace-probes", type=int, default=32, help="Rademacher probes of the trace (default 32)")
  parser.add_argument("--lanczos-steps", type=int, default=40, help="Lanczos steps per probe (default 40; 0: skip)")
  parser.add_argument("--slq-probes", type=int, default=2, help="Lanczos probes of the density (default 2)")
  parser.add_argument("--top-k", type=int, default=5, help="top eigenvalues reported (default 5)")
  parser.add_argument("--micro-batches", type=int, default=1,
                      help="split the batch into this many micro-batches, averaged in lax.scan (less memory)")
  parser.add_argument("--no-layers", action="store_true", help="skip the per-layer λ_max")
  add_precision_argument(parser)
  parser.set_defaults(handler=handler)
  return parser


def _check_arguments(args, extra: list[str]) -> None:
  if extra:
    raise InputError(f"lensjax hessian takes no {' '.join(extra)}; see lensjax hessian --help.")
  for name, low in (("power_iters", 1), ("trace_probes", 0), ("lanczos_steps", 0), ("slq_probes", 1), ("top_k", 1),
                    ("micro_batches", 1)):
    if getattr(args, name) < low:
      raise InputError(f"--{name.replace('_', '-')} is {getattr(args, name)}; it must be at least {low}.")
  check_precision_flag(args.precision)


def handler(args, extra: list[str]) -> int:
  _check_arguments(args, extra)
  import jax  # pylint: disable=import-outside-toplevel  # heavy: only once the arguments are good
  # pylint: disable=import-outside-toplevel
  from lensjax.hessian.metrics import RESIDUAL_NAMES, hessian_core, initial_vectors, optim_spec
  from lensjax.io.progress import Stages
  from lensjax.hessian.operators import make_loss_fn, plain_batch
  from lensjax.hessian.spectrum import slq, top_eigenpair
  from lensjax.ops.layers import layer_mask
  from lensjax.report.figures_hessian import spectral_density_figure
  from lensjax.train import loop

  stages = Stages("lensjax hessian")
  stages.stage("restoring the checkpoint")
  loaded = common.load_checkpoint_run(args.workdir, args.step)
  config, params, step = loaded.config, loaded.params, loaded.step
  if config.train.batch_size % args.micro_batches:
    raise InputError(f"--micro-batches {args.micro_batches} does not divide train.batch_size "
                     f"{config.train.batch_size}; pick a divisor.")
  batch = plain_batch(loop.device_batch(loaded.run, step))
  precision = chosen_precision(args.precision, config)
  loss_fn = make_loss_fn(config.model, precision)
  key = jax.random.fold_in(jax.random.PRNGKey(config.train.seed), step)
  micro = args.micro_batches
  stages.stage(f"compiling and running {args.power_iters} power iterations and {args.trace_probes} trace probes "
               f"at step {step}")
  metrics, _, residuals = hessian_core(
      loss_fn, params, batch, loaded.state.opt_state, loaded.run.schedule(step), key, initial_vectors(params, key),
      optim=optim_spec(config.optim), power_iters=args.power_iters, trace_probes=args.trace_probes, num_micro=micro)
  metrics, residuals = jax.device_get((metrics, residuals))
  results = {"precision": precision}
  results.update({name: float(value) for name, value in metrics.items()})
  results.update({RESIDUAL_NAMES[name]: float(value) for name, value in residuals.items()})
  if args.lanczos_steps:
    stages.stage(f"{args.slq_probes} Lanczos probes of {args.lanczos_steps} steps (the first compiles)")
    spectrum = slq(loss_fn, params, batch, jax.random.fold_in(key, 7), num_steps=args.lanczos_steps,
                   num_probes=args.slq_probes, top_k=args.top_k, num_micro=micro)
    results["top_eigenvalues"] = [float(x) for x in spectrum.top_eigenvalues]
    results["slq_trace"] = spectrum.trace
    results["slq_trace_stderr"] = spectrum.trace_stderr
    results["density"] = {"nodes": spectrum.nodes.tolist(), "weights": spectrum.weights.tolist()}
  if not args.no_layers:
    for layer in range(config.model.num_layers):
      stages.item(layer, config.model.num_layers, "λ_max of the block of layer")
      start = initial_vectors(params, jax.random.fold_in(key, layer))["hessian"]
      top = top_eigenpair(loss_fn, params, batch, start, args.power_iters, mask=layer_mask(params, config.model, layer),
                          num_micro=micro)
      results[f"hessian/lambda_max/layer_{layer}"] = float(top.eigenvalue)
  if args.lanczos_steps and jax.process_index() == 0:
    results["png"] = spectral_density_figure(
        spectrum.nodes, spectrum.weights, os.path.join(loaded.workdir, "hessian", f"spectrum_{step:06d}.png"),
        f"Hessian spectral density at step {step} ({args.slq_probes} SLQ probes × {args.lanczos_steps} Lanczos steps)")
  stages.done()
  scalars = {k: v for k, v in results.items() if k.startswith("hessian/") and math.isfinite(v)}
  common.report(loaded, results, summary_text(results, step), args.json, scalars, analysis="hessian")
  return 0


def summary_text(results: dict, step: int) -> str:
  get = lambda name: results.get(name, float("nan"))
  lines = [f"Hessian of the training loss at step {step} (on the batch of step {step}, precision "
           f"{results.get('precision', 'n/a')})",
           f"  λ_max(H)                 {get('hessian/lambda_max'):12.5g}   residual ‖Hv − λv‖ "
           f"{get('lambda_max_residual'):.3g}",
           f"  largest |λ| of H         {get('hessian/lambda_maxabs'):12.5g}   (sign kept; negative: a saddle "
           "direction dominates)"]
  if "hessian/lambda_max_precond" in results:
    lines.append(f"  λ_max(P^-½ H P^-½)       {get('hessian/lambda_max_precond'):12.5g}   against the threshold "
                 f"{get('hessian/stability_threshold'):.5g}")
    lines.append(f"  largest |λ|(P^-½ H P^-½) {get('hessian/lambda_maxabs_precond'):12.5g}")
  else:
    lines.append(f"  stability threshold 2/η  {get('hessian/stability_threshold'):12.5g}")
  if "hessian/trace" in results:
    lines.append(f"  tr(H) (Hutchinson)       {get('hessian/trace'):12.5g} ± {get('hessian/trace_stderr'):.3g}")
  if "top_eigenvalues" in results:
    lines.append("  top eigenvalues (Lanczos) " + ", ".join(f"{x:.5g}" for x in results["top_eigenvalues"]))
    # The same estimator as Hutchinson's on the few Lanczos probes (see spectrum.Spectrum), hence its wider error.
    lines.append(f"  tr(H) (SLQ)              {results['slq_trace']:12.5g} ± {results['slq_trace_stderr']:.3g}"
                 "   (Hutchinson's estimator on the Lanczos probes: ± is n/a for one probe)")
  layers = sorted((k for k in results if k.startswith("hessian/lambda_max/layer_")),
                  key=lambda k: int(k.rsplit("_", 1)[1]))
  for name in layers:
    lines.append(f"  λ_max, block of {name.rsplit('/', 1)[1]:9s} {results[name]:12.5g}")
  if "png" in results:
    lines.append(f"  spectral density: {results['png']}")
  return "\n".join(lines)
