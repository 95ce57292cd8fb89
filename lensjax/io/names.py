"""Metric names: expanding per-layer arrays to the flat names of docs/metrics.md."""

from __future__ import annotations

import numpy as np


def flatten_metrics(metrics: dict) -> dict[str, float]:
  """`{"ffn/dead": [L]}` -> `{"ffn/dead/layer_0": ..., ...}`; [L, H] adds `/head_{h}`."""
  flat = {}
  for name, value in metrics.items():
    array = np.asarray(value, dtype=np.float64)
    if array.ndim == 0:
      flat[name] = float(array)
    elif array.ndim == 1:
      flat.update({f"{name}/layer_{l}": float(v) for l, v in enumerate(array)})
    elif array.ndim == 2:
      for l, row in enumerate(array):
        flat.update({f"{name}/layer_{l}/head_{h}": float(v) for h, v in enumerate(row)})
    else:
      raise ValueError(f"metric {name} has shape {array.shape}; metrics are scalars, [L] or [L, H].")
  return flat
