"""Metric series out of logged records: `{"step": int, "<metric name>": float, ...}` as metrics.jsonl holds them.

The one reading of a record list that the analyses, the report and its
figures share: which names were logged, and the (steps, values) of one name.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np


def is_number(value) -> bool:
  """An int or float, not a bool (JSON true/false are no metric values)."""
  return isinstance(value, (int, float)) and not isinstance(value, bool)


def metric_names(records: Iterable[Mapping]) -> set[str]:
  """Every numeric metric name that appears in at least one record."""
  return {name for record in records for name, value in record.items() if name != "step" and is_number(value)}


def series(records: Iterable[Mapping], name: str) -> tuple[np.ndarray, np.ndarray]:
  """(steps int64 [S], values float64 [S]) of metric `name`, sorted by step; a step logged twice keeps its later value.

  Records without a "step" or without a number under `name` (an eval-only line, a
  metric logged every few steps) are skipped; NaN and infinities are kept.
  """
  by_step = {}
  for record in records:
    value = record.get(name)
    if is_number(value) and "step" in record:
      by_step[int(record["step"])] = float(value)
  steps = np.array(sorted(by_step), np.int64)
  return steps, np.array([by_step[s] for s in steps], np.float64)


def family_layers(names: Iterable[str], family: str) -> int:
  """How many layers `family/layer_{l}` covers among `names` (1 + the largest l seen), 0 when absent."""
  prefix = family + "/layer_"
  layers = [int(name[len(prefix):]) for name in names if name.startswith(prefix) and name[len(prefix):].isdigit()]
  return max(layers) + 1 if layers else 0
