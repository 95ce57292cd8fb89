"""`lensjax saturation --workdir DIR [--step N] [--scale 1000] [--mask causal|merrill_multiplicative] [--homogeneity] [--json]`.

Loads a checkpoint, runs `lensjax.analysis.saturation` on held-out batch 0
(its first `--batch-size` rows), prints per-layer saturation cosines and the
number of keys each head attends to in the saturated network, and logs them
to the run's TensorBoard (scalars under their docs/metrics.md names, and the
histogram over heads of keys / visible keys as `eval/saturated_head/fraction`).

`--mask merrill_multiplicative` computes the same statistics under the mask
of Merrill et al.'s code (hidden logits multiplied by 0 rather than set to
-inf), a reproduction control: compare it with the default `--mask causal` on
the same checkpoint. Only the causal run is logged to TensorBoard.
`--homogeneity` adds cos(h_l(x; cθ), h_l(x; 1000θ)) for c = 1..10, which says
whether the saturation cosine is meaningful for this architecture (see
`lensjax.analysis.saturation`).

With --json, one object: `{"step", "scale", "threshold", "batch_rows", "mask",
"eval/saturation/layer_{l}", "eval/saturated_head/layer_{l}/head_{h}",
"saturated_head_fraction": [[L x H]], "saturated_head_histogram": {"edges", "counts"},
"saturated_head_count_histogram": {"edges", "counts"}}` and with --homogeneity
`"homogeneity": {"scales": [S], "reference": 1000, "cosine": [[S x L]]}`.
"""

from __future__ import annotations

import argparse
import math
import os

import numpy as np

from lensjax.analysis import common
from lensjax.errors import InputError

DEFAULT_ROWS = 8
HISTOGRAM_TAG = "eval/saturated_head/fraction"


def add_parser(commands) -> argparse.ArgumentParser:
  """Adds `saturation` to an argparse subparsers object; its handler is `handler(args, extra)`."""
  parser = commands.add_parser("saturation", help="how close a checkpoint is to its saturated network "
                                                  "(Merrill et al. 2021): cos(h(θ), h(cθ)), argmax vs averaging heads")
  common.add_common_arguments(parser)
  parser.add_argument("--scale", type=float, default=1000.0, help="c in f(x; c·θ) (default 1000)")
  parser.add_argument("--mask", choices=("causal", "merrill_multiplicative"), default="causal",
                      help="the attention mask at c·θ: causal (default) or Merrill et al.'s multiplicative mask, "
                           "a reproduction control")
  parser.add_argument("--homogeneity", action="store_true",
                      help="also cos(h(cθ), h(1000θ)) for c = 1..10: is the statistic valid for this architecture?")
  parser.add_argument("--batch-size", type=int, default=None,
                      help=f"held-out rows to average over (default: {DEFAULT_ROWS} rounded up to the device count)")
  parser.set_defaults(handler=handler)
  return parser


def handler(args, extra: list[str]) -> int:
  if extra:
    raise InputError(f"lensjax saturation takes no {' '.join(extra)}; pass --workdir DIR [--step N] [--scale C] "
                     "[--mask causal|merrill_multiplicative] [--homogeneity] [--batch-size B] [--json].")
  return run(args)


def _rows(requested: int | None, device_count: int) -> int:
  if requested is None:
    return -(-DEFAULT_ROWS // device_count) * device_count
  if requested <= 0 or requested % device_count:
    raise InputError(f"--batch-size {requested} must be a positive multiple of the {device_count} devices; "
                     f"pass e.g. --batch-size {device_count}.")
  return requested


def heldout_rows(loaded, rows: int) -> dict:
  """The first `rows` rows of held-out batch 0, sharded over the run's mesh like a training batch."""
  import jax  # pylint: disable=import-outside-toplevel
  from lensjax import parallel  # pylint: disable=import-outside-toplevel
  local = loaded.run.source.batch(0, rows, split="heldout", process_index=jax.process_index(),
                                  process_count=jax.process_count())
  return parallel.shard_batch({k: local[k] for k in ("inputs", "mask")}, loaded.run.mesh)


def results_of(arrays: dict, scale: float, rows: int, mask: str = "causal") -> dict:
  """The JSON object (without "step") from `saturation_arrays`' host values."""
  from lensjax.analysis import saturation  # pylint: disable=import-outside-toplevel
  fraction_LxH = np.asarray(arrays["key_fraction_LxH"], np.float64)
  results = {"scale": scale, "threshold": saturation.WEIGHT_THRESHOLD, "batch_rows": rows, "mask": mask}
  results.update({name: float(v) for name, v in saturation.metric_names(arrays).items()})
  results["saturated_head_fraction"] = fraction_LxH.tolist()
  results["saturated_head_histogram"] = saturation.head_histogram(fraction_LxH)
  results["saturated_head_count_histogram"] = saturation.count_histogram(arrays["key_count_LxH"])
  return results


def summary_text(results: dict, step: int, arrays: dict) -> str:
  cosine_L = np.asarray(arrays["cosine_L"])
  count_LxH = np.asarray(arrays["key_count_LxH"])
  fraction_LxH = np.asarray(arrays["key_fraction_LxH"])
  mask = "" if results.get("mask", "causal") == "causal" else f", {results['mask']} mask (reproduction control)"
  lines = [f"saturation at step {step}, c = {results['scale']:g}, {results['batch_rows']} held-out rows{mask}",
           "cos(h_l(x; θ), h_l(x; cθ)) per layer (1 = already saturated); per head, the mean number of keys "
           f"with weight > {results['threshold']:g} at cθ [and that / visible keys]"]
  for l, cos in enumerate(cosine_L):
    heads = "  ".join(f"{c:5.2f} [{f:.2f}]" for c, f in zip(count_LxH[l], fraction_LxH[l]))
    lines.append(f"  layer {l}: cos {cos:.4f}" + (f"   heads: {heads}" if heads else ""))
  histogram = results["saturated_head_histogram"]
  if fraction_LxH.size:
    lines.append("heads by keys / visible keys (near 0: argmax heads; near 1/2 and above: averaging heads):")
    edges, counts = histogram["edges"], histogram["counts"]
    for lo, hi, n in zip(edges[:-1], edges[1:], counts):
      if n:
        lines.append(f"  [{lo:.2f}, {hi:.2f}) {'#' * n} {n}")
  if "homogeneity" in results:
    h = results["homogeneity"]
    lines.append(f"homogeneity: cos(h_l(x; cθ), h_l(x; {h['reference']:g}θ)) per layer "
                 "(all near 1: block outputs homogeneous in θ, the saturation cosine is meaningful)")
    for c, row in zip(h["scales"], h["cosine"]):
      lines.append(f"  c = {c:4g}: " + " ".join(f"{v:.3f}" for v in row))
  return "\n".join(lines)


def run(args, extra: list[str] | None = None) -> int:
  import jax  # pylint: disable=import-outside-toplevel  # heavy: only once the arguments parsed
  from lensjax.analysis import saturation  # pylint: disable=import-outside-toplevel
  from lensjax.io.tensorboard import SummaryWriter  # pylint: disable=import-outside-toplevel
  if not (math.isfinite(args.scale) and args.scale > 0):
    raise InputError(f"--scale {args.scale} must be a positive number such as 1000.")
  rows = _rows(args.batch_size, jax.device_count())
  loaded = common.load_checkpoint_run(args.workdir, args.step)
  batch = heldout_rows(loaded, rows)
  compiled = saturation.jit_saturation_arrays(loaded.config.model, args.mask)
  arrays = jax.device_get(compiled(loaded.params, batch, args.scale))
  if not bool(arrays["in_range"]):
    raise InputError(f"at --scale {args.scale:g} the network at c·θ of step {loaded.step} leaves float64's range "
                     f"(block outputs above {saturation.MAX_HIDDEN:g} or non-finite), so it would measure overflow, "
                     "not saturation; pass a smaller --scale, e.g. 100.")
  results = results_of(arrays, args.scale, rows, args.mask)
  if args.homogeneity:
    cosine_SxL = jax.device_get(saturation.jit_homogeneity_cosines(loaded.config.model)(loaded.params, batch))
    results["homogeneity"] = {"scales": list(saturation.HOMOGENEITY_SCALES), "reference": saturation.SCALE,
                              "cosine": np.asarray(cosine_SxL, np.float64).tolist()}
  # The control's numbers are not the metrics of docs/metrics.md: they stay out of TensorBoard.
  scalars = {k: v for k, v in results.items() if k.startswith(("eval/saturation/", "eval/saturated_head/"))
             and args.mask == "causal"}
  common.report(loaded, results, summary_text(results, loaded.step, arrays), args.json, scalars,
                analysis="saturation" if args.mask == "causal" else "saturation_" + args.mask)
  fraction = np.asarray(arrays["key_fraction_LxH"]).reshape(-1)
  if jax.process_index() == 0 and fraction.size and args.mask == "causal":
    writer = SummaryWriter(os.path.join(loaded.workdir, "tb"))
    writer.histogram(loaded.step, HISTOGRAM_TAG, fraction)
    writer.close()
  return 0
