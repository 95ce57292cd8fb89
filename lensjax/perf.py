"""FLOP accounting and device peaks for tokens/s, TFLOP/s and MFU."""

from __future__ import annotations

import jax

from lensjax.config import ModelConfig

# Dense bf16 peak in TFLOP/s per device (no sparsity), matched against
# `device_kind` by substring, most specific first.
PEAK_BF16_TFLOPS = (
    ("H200", 989.0),
    ("H100", 989.0),
    ("A100", 312.0),
    ("TPU v5p", 459.0),
    ("TPU v5 lite", 197.0),
    ("TPU v5e", 197.0),
    ("TPU v4", 275.0),
)

FLOP_FORMULA = "FLOPs/token = 6*N + 12*L*T*D (N = parameters excluding position embeddings)"


def device_peak_tflops(device=None) -> float | None:
  device = device or jax.devices()[0]
  kind = getattr(device, "device_kind", "")
  for name, peak in PEAK_BF16_TFLOPS:
    if name.lower() in kind.lower():
      return peak
  return None


def matmul_params(params) -> int:
  """N: every parameter except the learned position table."""
  total = 0
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    names = [getattr(k, "key", str(k)) for k in path]
    if "pos_embed" not in names:
      total += int(leaf.size)
  return total


def flops_per_token(params, cfg: ModelConfig, seq_len: int) -> float:
  return 6.0 * matmul_params(params) + 12.0 * cfg.num_layers * seq_len * cfg.d_model


def describe(params, cfg: ModelConfig, seq_len: int) -> str:
  peak = device_peak_tflops()
  kind = jax.devices()[0].device_kind
  peak_text = f"{peak:.0f} TFLOP/s dense bf16" if peak else "n/a"
  return (f"{FLOP_FORMULA}; N={matmul_params(params):,}, L={cfg.num_layers}, T={seq_len}, "
          f"D={cfg.d_model}: {flops_per_token(params, cfg, seq_len):.3e} FLOPs/token; "
          f"device {kind} x{jax.device_count()}, peak {peak_text}")


def perf_metrics(step_time_s: float, tokens_per_step: int, flops_token: float) -> dict[str, float]:
  tokens_per_s = tokens_per_step / step_time_s
  tflops_per_device = flops_token * tokens_per_s / jax.device_count() / 1e12
  metrics = {"perf/step_time_s": step_time_s, "perf/tokens_per_s": tokens_per_s,
             "perf/tflops_per_device": tflops_per_device}
  peak = device_peak_tflops()
  if peak:
    metrics["perf/mfu"] = tflops_per_device / peak
  return metrics


def memory_gib(compiled) -> float | None:
  """XLA's own account of a compiled program's device memory (arguments, outputs, temporaries)."""
  try:
    m = compiled.memory_analysis()
    total = m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes
  except Exception:  # some backends have no memory analysis
    return None
  return total / 2**30


def memory_summary(compiled) -> str:
  gib = memory_gib(compiled)
  return "" if gib is None else f"; device memory {gib:.2f} GiB"
