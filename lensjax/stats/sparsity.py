"""FFN dynamic sparsity: token / sequence / batch activity of each layer's units.

A unit is active on a token when its activation exceeds `model.active_threshold`;
only real tokens count (padding is masked out), and a sequence of padding only
is not a sequence.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from lensjax.ops.arrays import F32, masked_mean
from lensjax.ops.layers import map_layers
from lensjax.stats.lens import Lens

_HISTORY = "ffn/active_batch"


def active_BxTxF(a_BxTxF, mask_BxT, threshold: float) -> jax.Array:
  return (a_BxTxF > threshold) & (mask_BxT[:, :, None] > 0)


def firing_frequency(active_BxTxF, mask_BxT) -> jax.Array:
  """float32 [F]: the fraction of the batch's real tokens on which each unit fires (0 without real tokens)."""
  return jnp.sum(active_BxTxF.astype(F32), axis=(0, 1)) / jnp.maximum(jnp.sum(mask_BxT), 1.0)


def unit_active(a_BxTxF, mask_BxT, threshold: float) -> jax.Array:
  """bool [F]: whether each unit fired on at least one real token of the batch."""
  return jnp.any(jnp.any(active_BxTxF(a_BxTxF, mask_BxT, threshold), axis=1), axis=0)


def activity(a_BxTxF, mask_BxT, threshold: float) -> dict:
  """One layer's active fractions (token, sequence, batch) and per-unit firing frequency [F]."""
  active = active_BxTxF(a_BxTxF, mask_BxT, threshold)
  active_in_seq_BxF = jnp.any(active, axis=1)
  unit_active_F = jnp.any(active_in_seq_BxF, axis=0)
  real_seq_B = jnp.any(mask_BxT > 0, axis=1)
  return {"token": masked_mean(jnp.mean(active.astype(F32), axis=-1), mask_BxT),
          "seq": masked_mean(jnp.mean(active_in_seq_BxF.astype(F32), axis=-1), real_seq_B),
          "batch": jnp.mean(unit_active_F.astype(F32)),
          "frequency": firing_frequency(active, mask_BxT)}


class ActivityLens(Lens):
  """`ffn/active_token`, `ffn/active_seq`, `ffn/active_batch` [L]; with `with_units` also `units/frequency` [L, F]."""
  name = "ffn_activity"
  needs = frozenset({"ffn_hidden"})

  def __init__(self, threshold: float, with_units: bool = True):
    self.threshold, self.with_units = threshold, with_units

  def update(self, state, view):
    mask_BxT = view.batch["mask"]
    per_layer = map_layers(lambda a: activity(a, mask_BxT, self.threshold), view.captured["ffn_hidden"])
    metrics = {f"ffn/active_{kind}": per_layer[kind] for kind in ("token", "seq", "batch")}
    if self.with_units:
      metrics["units/frequency"] = per_layer["frequency"]
    return state, metrics

  def write(self, step, record, sink, prefix=""):
    for layer, row in enumerate(record.get(prefix + "units/frequency", ())):
      sink.histogram(step, f"{prefix}ffn/unit_frequency/layer_{layer}", row)
    if not prefix and _HISTORY in record:
      sink.layer_history_heatmap(step, _HISTORY, record[_HISTORY], units="fraction of units active in the batch")


def jaccard(a_LxF: jax.Array, b_LxF: jax.Array) -> jax.Array:
  """Per-layer |A ∩ B| / |A ∪ B| of two sets of units; 1 when both are empty."""
  intersection = jnp.sum(a_LxF & b_LxF, axis=-1).astype(F32)
  union = jnp.sum(a_LxF | b_LxF, axis=-1).astype(F32)
  return jnp.where(union > 0, intersection / jnp.maximum(union, 1.0), 1.0)


def heldout_overlap(params, train_batch, heldout_batch, *, model) -> dict:
  """`ffn/active_overlap_heldout` [L]: Jaccard overlap of the units active on a training and a held-out batch.

  `model` must capture `ffn_hidden`.
  """
  threshold = model.cfg.active_threshold

  def units_LxF(batch):
    _, captured = model.apply({"params": params}, batch["inputs"], batch["mask"], return_hidden=True)
    return map_layers(lambda a: unit_active(a, batch["mask"], threshold), captured["ffn_hidden"])

  return {"ffn/active_overlap_heldout": jaccard(units_LxF(train_batch), units_LxF(heldout_batch))}
