"""The precision of every Hessian computation: its names, what each means, and the `--precision` flag.

  float32  float32 parameters and compute, matmuls at precision highest (no tensor cores)
  tf32     float32 parameters and compute, matmuls at the default precision: TF32 on
           NVIDIA tensor cores, plain float32 on CPU (the default)
  bf16     float32 master parameters, the model's forward and backward pass in bfloat16
           (`ModelConfig.dtype`); the attention scores, softmax, logsumexp and
           cross-entropy stay float32, and so do Hv and every reduction on it

Hv is float32 whatever the choice: the parameters are float32, so the
cotangents reaching them are cast back to float32. The power iteration,
Lanczos and Hutchinson reduce in float32 (`ops.trees`), outside the loss.

Free of JAX, so that the config (`stats.hessian_precision`) and the argument
parsers read the names without importing it; `operators.make_loss_fn` turns a
name into a loss.
"""

from __future__ import annotations

import argparse
from typing import NamedTuple

from lensjax.errors import InputError


class HessianPrecision(NamedTuple):
  matmul_precision: str  # the argument of jax.default_matmul_precision for the loss and its derivatives
  compute_dtype: str  # ModelConfig.dtype of the plain model
  meaning: str


PRECISIONS = {
    "float32": HessianPrecision("highest", "float32", "float32 compute, matmuls at precision highest"),
    "tf32": HessianPrecision("default", "float32", "float32 compute, matmuls at the default precision "
                                                   "(TF32 on NVIDIA tensor cores, float32 on CPU)"),
    "bf16": HessianPrecision("default", "bfloat16", "bfloat16 compute, float32 master parameters, float32 "
                                                    "softmax and cross-entropy"),
}
PRECISION_NAMES = tuple(PRECISIONS)
DEFAULT_PRECISION = "tf32"


def hessian_precision(name: str, where: str = "--precision") -> HessianPrecision:
  """The meaning of a precision name; an InputError naming `where` the bad value came from."""
  if name not in PRECISIONS:
    raise InputError(f"{where} is {name!r}; choose one of {', '.join(PRECISION_NAMES)}.")
  return PRECISIONS[name]


def add_precision_argument(parser: argparse.ArgumentParser) -> None:
  """`--precision NAME`, checked by `chosen_precision` (one sentence and exit 2, as a bad config key)."""
  parser.add_argument("--precision", default=None, metavar="{" + ",".join(PRECISION_NAMES) + "}",
                      help="precision of the Hessian-vector products: " +
                      "; ".join(f"{name}: {p.meaning}" for name, p in PRECISIONS.items()) +
                      " (default: the config's stats.hessian_precision, tf32 unless set)")


def check_precision_flag(flag: str | None) -> None:
  """Refuses a bad --precision before anything heavy is imported."""
  if flag is not None:
    hessian_precision(flag)


def chosen_precision(flag: str | None, config) -> str:
  """The --precision flag if given, else the config's `stats.hessian_precision`."""
  name = config.stats.hessian_precision if flag is None else flag
  hessian_precision(name, "--precision" if flag is not None else "config key stats.hessian_precision")
  return name
