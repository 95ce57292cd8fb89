"""How FFN activity spreads over tokens and over units: quantiles, where the sparsity lens gives means.

A mean fraction of active units hides whether every token uses a few units or
a few tokens use many, and a batch-level count hides whether the units that
fire do so on every token or once. Per layer, this lens reports quantiles of

- the fraction of the layer's units active on each real token, and
- each unit's firing frequency: the fraction of the batch's real tokens on which it fires,

with `active` as in `lensjax.stats.sparsity` and numpy.quantile's default
(linear) quantiles. Without a real token in the batch both are NaN.
"""

from __future__ import annotations

import jax.numpy as jnp

from lensjax.ops.arrays import F32, masked_quantiles
from lensjax.ops.layers import map_layers
from lensjax.stats.lens import Lens
from lensjax.stats.sparsity import active_BxTxF, firing_frequency

QUANTILES = (0.1, 0.5, 0.9, 0.99)
SUFFIXES = ("p10", "p50", "p90", "p99")


def activity_distribution(a_BxTxF, mask_BxT, threshold: float) -> dict:
  """One layer's quantiles [Q] (`QUANTILES`): of the active fraction per real token, and of the units' firing
  frequencies."""
  active = active_BxTxF(a_BxTxF, mask_BxT, threshold)
  real_BxT = mask_BxT > 0
  active_fraction_BxT = jnp.mean(active.astype(F32), axis=-1)
  frequency_F = firing_frequency(active, mask_BxT)
  # A frequency is a share of the real tokens: with none, no unit has one.
  return {"token": masked_quantiles(active_fraction_BxT, real_BxT, QUANTILES),
          "unit": masked_quantiles(frequency_F, jnp.any(real_BxT), QUANTILES)}


class ActivityDistributionLens(Lens):
  """`ffn/active_token_{p10,p50,p90,p99}` and `ffn/unit_frequency_{p10,p50,p90,p99}` [L]."""
  name = "ffn_activity_distribution"
  needs = frozenset({"ffn_hidden"})

  def __init__(self, threshold: float):
    self.threshold = threshold

  def update(self, state, view):
    mask_BxT = view.batch["mask"]
    per_layer = map_layers(lambda a: activity_distribution(a, mask_BxT, self.threshold), view.captured["ffn_hidden"])
    metrics = {}
    for kind, name in (("token", "ffn/active_token"), ("unit", "ffn/unit_frequency")):
      quantiles_LxQ = per_layer[kind]
      metrics.update({f"{name}_{suffix}": quantiles_LxQ[:, q] for q, suffix in enumerate(SUFFIXES)})
    return state, metrics
