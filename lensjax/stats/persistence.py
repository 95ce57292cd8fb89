"""Whether the units a layer uses persist from training data to held-out data, measured against chance.

The Jaccard overlap of two batches' active-unit sets is close to 1 whenever
nearly every unit fires in each batch, whatever the units' roles. So each
overlap comes with its null: the exact expected Jaccard of two independent,
uniformly random subsets of the layer's F units with the same sizes, and the
lift (observed − null) / (1 − null), 0 at chance and 1 for identical sets.
When the null is 1 (both sets empty, or both all F units) the sets could not
have been otherwise and the lift is NaN.

Computed from the two fixed probes (`stats.probe_tokens`: one of the training
split, one held out, of equal size) at the probe cadence, per layer [L]:

  persist/batch_jaccard, _null, persist/batch_lift   units active on ≥ 1 token of each probe
  persist/seq_jaccard, _null, persist/seq_lift       training sequence i against held-out sequence i, means
                                                     over the pairs in which both sequences hold a real token
  persist/frequency_corr                             Pearson correlation over units of the two probes' per-unit
                                                     firing frequencies; NaN when either is constant
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from lensjax.ops.arrays import F32, masked_mean
from lensjax.ops.layers import map_layers
from lensjax.stats.sparsity import active_BxTxF, firing_frequency, jaccard

PERSIST_NAMES = tuple(f"persist/{name}" for name in ("batch_jaccard", "batch_jaccard_null", "batch_lift", "seq_jaccard",
                                                     "seq_jaccard_null", "seq_lift", "frequency_corr"))


def expected_random_jaccard(a, b, num_units: int) -> jax.Array:
  """E[|X ∩ Y| / |X ∪ Y|] for independent uniformly random subsets X, Y of sizes `a`, `b` (arrays that
  broadcast) of `num_units` units, exactly; 1 when a = b = 0, as `jaccard` has it.

  The intersection I is hypergeometric, P(I = i) = C(a, i)·C(F − a, b − i) / C(F, b) on
  max(0, a + b − F) ≤ i ≤ min(a, b), and the union is a + b − I.
  """
  a, b = jnp.asarray(a, F32)[..., None], jnp.asarray(b, F32)[..., None]
  units = float(num_units)
  i_K = jnp.arange(num_units + 1, dtype=F32)
  possible = (i_K >= jnp.maximum(a + b - units, 0.0)) & (i_K <= jnp.minimum(a, b))
  log_factorial = lambda n: jax.lax.lgamma(jnp.maximum(n, 0.0) + 1.0)
  # Only the factors that change with i: the softmax supplies the normalisation, so no term of size
  # log C(F, b) costs float32 its precision.
  log_weight = -(log_factorial(i_K) + log_factorial(a - i_K) + log_factorial(b - i_K)
                 + log_factorial(units - a - b + i_K))
  probability = jax.nn.softmax(jnp.where(possible, log_weight, -jnp.inf), axis=-1)
  union = a + b - i_K
  ratio = jnp.where(union > 0, i_K / jnp.maximum(union, 1.0), 1.0)
  return jnp.sum(jnp.where(possible, probability * ratio, 0.0), axis=-1)


def lift(observed, null) -> jax.Array:
  """(observed − null) / (1 − null): 0 at chance, 1 for identical sets; NaN where the null is 1."""
  return jnp.where(null < 1.0, (observed - null) / jnp.maximum(1.0 - null, 1e-30), jnp.nan)


def pearson(x_N, y_N) -> jax.Array:
  """The correlation of two vectors; NaN when either is constant (its variance is exactly zero)."""
  dx_N, dy_N = x_N - jnp.mean(x_N), y_N - jnp.mean(y_N)
  # Centring a constant vector in float32 can leave rounding noise, so constancy is judged on the values.
  constant = (jnp.max(x_N) == jnp.min(x_N)) | (jnp.max(y_N) == jnp.min(y_N))
  r = jnp.sum(dx_N * dy_N) / jnp.sqrt(jnp.maximum(jnp.sum(dx_N**2) * jnp.sum(dy_N**2), 1e-30))
  return jnp.where(constant, jnp.nan, r)


def persistence(a_train_BxTxF, mask_train_BxT, a_heldout_BxTxF, mask_heldout_BxT, threshold: float) -> dict:
  """One layer's scalars (`PERSIST_NAMES` without `persist/`) from the training and the held-out probe, whose
  rows pair up one to one."""
  if a_train_BxTxF.shape != a_heldout_BxTxF.shape:
    raise ValueError(f"the probes pair their sequences one to one, but their activations have shapes "
                     f"{a_train_BxTxF.shape} and {a_heldout_BxTxF.shape}.")
  units = a_train_BxTxF.shape[-1]
  train_active, heldout_active = (active_BxTxF(a_train_BxTxF, mask_train_BxT, threshold),
                                  active_BxTxF(a_heldout_BxTxF, mask_heldout_BxT, threshold))
  train_seq_BxF, heldout_seq_BxF = jnp.any(train_active, axis=1), jnp.any(heldout_active, axis=1)
  train_units_F, heldout_units_F = jnp.any(train_seq_BxF, axis=0), jnp.any(heldout_seq_BxF, axis=0)
  size = lambda units_xF: jnp.sum(units_xF.astype(F32), axis=-1)

  batch_jaccard = jaccard(train_units_F, heldout_units_F)
  batch_null = expected_random_jaccard(size(train_units_F), size(heldout_units_F), units)

  # A sequence of padding only is not a sequence (as in the sparsity lens): its pair does not count.
  pairs_B = jnp.any(mask_train_BxT > 0, axis=1) & jnp.any(mask_heldout_BxT > 0, axis=1)
  over_pairs = lambda x_B: jnp.where(jnp.any(pairs_B), masked_mean(x_B, pairs_B), jnp.nan)
  seq_jaccard = over_pairs(jaccard(train_seq_BxF, heldout_seq_BxF))
  seq_null = over_pairs(expected_random_jaccard(size(train_seq_BxF), size(heldout_seq_BxF), units))

  return {"batch_jaccard": batch_jaccard, "batch_jaccard_null": batch_null,
          "batch_lift": lift(batch_jaccard, batch_null),
          "seq_jaccard": seq_jaccard, "seq_jaccard_null": seq_null, "seq_lift": lift(seq_jaccard, seq_null),
          "frequency_corr": pearson(firing_frequency(train_active, mask_train_BxT),
                                    firing_frequency(heldout_active, mask_heldout_BxT))}


def probe_persistence(train_probe, train_captured, heldout_probe, heldout_captured, *, threshold: float) -> dict:
  """`persist/...` [L] from the two probes and the FFN activations (`ffn_hidden`) the model captured on each."""
  per_layer = map_layers(lambda a_train, a_heldout: persistence(a_train, train_probe["mask"], a_heldout,
                                                                heldout_probe["mask"], threshold),
                         train_captured["ffn_hidden"], heldout_captured["ffn_hidden"])
  return {f"persist/{name}": value for name, value in per_layer.items()}
