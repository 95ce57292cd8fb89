"""How many TensorBoard cards a run makes: per-layer and per-head families as summaries, not one card each.

One scalar per layer (and per head) gives 76 tags for 2 layers x 4 heads and about 528 at GPT-2 small's
12 x 12. By default a family [L] or [L, H] becomes five scalars, `NAME/mean`, `NAME/min`, `NAME/max` (over
layers, and heads), `NAME/first_layer` and `NAME/last_layer` (a layer's mean over heads), beside its heat
map; `logging.tb_per_layer_scalars=true` writes the per-layer (per-head) scalars of docs/metrics.md as well.
metrics.jsonl always keeps every per-layer value. A custom-scalar layout draws each family in one chart:
its layers overlaid when they are written, else its five summaries.
"""

from __future__ import annotations

import re
from typing import Iterable

import numpy as np
from tensorboard.compat.proto import summary_pb2
from tensorboard.plugins.custom_scalar import layout_pb2
from tensorboard.plugins.custom_scalar import metadata as custom_scalar_metadata

from lensjax.io.tensorboard import string_tensor_proto

SUMMARIES = ("mean", "min", "max", "first_layer", "last_layer")


def family_summaries(name: str, array) -> dict[str, float]:
  """The five summary scalars of a family's [L] or [L, H] values (NaN entries ignored; NaN if all are)."""
  values = np.asarray(array, np.float64)
  per_layer = values if values.ndim == 1 else _nanmean(values, axis=1)
  finite = values[np.isfinite(values)]
  return {f"{name}/mean": float(finite.mean()) if finite.size else float("nan"),
          f"{name}/min": float(finite.min()) if finite.size else float("nan"),
          f"{name}/max": float(finite.max()) if finite.size else float("nan"),
          f"{name}/first_layer": float(per_layer[0]), f"{name}/last_layer": float(per_layer[-1])}


def _nanmean(values: np.ndarray, axis: int) -> np.ndarray:
  finite = np.isfinite(values)
  counts = finite.sum(axis=axis)
  sums = np.where(finite, values, 0.0).sum(axis=axis)
  return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def tensorboard_scalars(raw: dict, flat: dict[str, float], per_layer: bool) -> dict[str, float]:
  """The scalars to write for one record: `flat` (every metric, flattened) without the per-layer entries of
  `raw`'s families unless `per_layer`, plus each family's summaries."""
  families = {name: value for name, value in raw.items() if np.ndim(value) in (1, 2)}
  if per_layer:
    scalars = dict(flat)
  else:
    per_layer_names = re.compile("^(" + "|".join(re.escape(name) for name in families) + ")/layer_\\d+") \
        if families else None
    scalars = {tag: value for tag, value in flat.items()
               if per_layer_names is None or not per_layer_names.match(tag)}
  for name, value in families.items():
    scalars.update(family_summaries(name, value))
  return scalars


def families_of(raw: dict) -> set[str]:
  return {name for name, value in raw.items() if np.ndim(value) in (1, 2)}


def layout(families: Iterable[str], per_layer: bool) -> layout_pb2.Layout:
  """One custom-scalar category per top-level group (`ffn`, `attn`, `eval`, ...), one chart per family."""
  categories: dict[str, list] = {}
  for name in sorted(families):
    pattern = (f"^{re.escape(name)}/layer_\\d+(/head_\\d+)?$" if per_layer
               else f"^{re.escape(name)}/({'|'.join(SUMMARIES)})$")
    chart = layout_pb2.Chart(title=name, multiline=layout_pb2.MultilineChartContent(tag=[pattern]))
    categories.setdefault(name.split("/")[0], []).append(chart)
  return layout_pb2.Layout(category=[
      layout_pb2.Category(title=f"{group} by layer", chart=charts, closed=True)
      for group, charts in categories.items()])


def layout_summary(families: Iterable[str], per_layer: bool) -> summary_pb2.Summary:
  """The layout as the custom_scalars plugin reads it (what its `pb` makes, without TensorFlow)."""
  tensor = string_tensor_proto("")
  tensor.string_val[:] = [layout(families, per_layer).SerializeToString()]
  return summary_pb2.Summary(value=[summary_pb2.Summary.Value(
      tag=custom_scalar_metadata.CONFIG_SUMMARY_TAG, tensor=tensor,
      metadata=custom_scalar_metadata.create_summary_metadata())])
