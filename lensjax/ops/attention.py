"""Summaries of explicit causal attention scores: entropy per head, largest logit, sink mass.

Key padding is on the right, so under the causal mask query t sees exactly
keys 0..t; padded queries are left out through the mask.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from lensjax.ops.arrays import F32, masked_mean


def attention_summaries(logits_BxHxTxT, probs_BxHxTxT, mask_BxT) -> dict:
  """`entropy` [H] (normalised by log #visible keys, over real queries q ≥ 1), `max_logit`, `sink` (mass on key 0)."""
  T = logits_BxHxTxT.shape[-1]
  causal_TxT = jnp.tril(jnp.ones((T, T), bool))
  plogp = jnp.where(probs_BxHxTxT > 0, probs_BxHxTxT * jnp.log(jnp.maximum(probs_BxHxTxT, 1e-30)), 0.0)
  entropy_BxHxT = -jnp.sum(plogp, axis=-1)
  visible_T = jnp.arange(1, T + 1, dtype=F32)
  # Query 0 sees one key: its entropy is 0 by construction and log(1) = 0.
  normalised_BxHxT = entropy_BxHxT / jnp.log(jnp.maximum(visible_T, 2.0))
  query_mask_BxT = mask_BxT * (jnp.arange(T) > 0)
  query_weight_BxHxT = jnp.broadcast_to(query_mask_BxT[:, None, :], entropy_BxHxT.shape)
  entropy_H = jnp.sum(normalised_BxHxT * query_weight_BxHxT, axis=(0, 2)) / jnp.maximum(
      jnp.sum(query_weight_BxHxT, axis=(0, 2)), 1.0)
  real_query_BxHxTx1 = (mask_BxT[:, None, :, None] > 0)
  visible = causal_TxT[None, None] & real_query_BxHxTx1
  max_logit = jnp.max(jnp.where(visible, logits_BxHxTxT, -jnp.inf))
  sink = masked_mean(probs_BxHxTxT[..., 0], jnp.broadcast_to(mask_BxT[:, None, :], probs_BxHxTxT.shape[:-1]))
  return {"entropy": entropy_H, "max_logit": max_logit, "sink": sink}


def residual_ratio(y_BxTxD, x_BxTxD, mask_BxT) -> jax.Array:
  """Mean over real tokens of ‖y‖/‖x‖: how much a sublayer adds to the residual stream it reads."""
  ratio_BxT = (jnp.linalg.norm(y_BxTxD.astype(F32), axis=-1)
               / jnp.maximum(jnp.linalg.norm(x_BxTxD.astype(F32), axis=-1), 1e-30))
  return masked_mean(ratio_BxT, mask_BxT)
