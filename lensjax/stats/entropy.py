"""Per-token entropy of the model's next-token distribution, and of the target's.

Ren & Liu 2025 compare H(q) of the learned conditionals with H(p) of the true
ones. Only controlled targets know p; they put it in the batch as
`target_probs`, so the target metrics appear exactly when it is there.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.scipy.special import xlogy

from lensjax.model import masked_mean

F32 = jnp.float32


def token_entropy_lens(view) -> dict:
  """`entropy/model_token`, and with `target_probs` `entropy/target_token`, `entropy/kl_token`."""
  mask_BxT = view.batch["mask"]
  z_BxTxV = view.logits.astype(F32)
  logz_BxT = jax.nn.logsumexp(z_BxTxV, axis=-1)
  q_BxTxV = jnp.exp(z_BxTxV - logz_BxT[..., None])  # the one [B,T,V] temporary besides the logits
  # H(q) = logsumexp(z) − Σ q·z: no log q tensor, and exact for tied logits.
  h_model_BxT = logz_BxT - jnp.sum(q_BxTxV * z_BxTxV, axis=-1)
  metrics = {"entropy/model_token": masked_mean(h_model_BxT, mask_BxT)}
  if "target_probs" in view.batch:
    p_BxTxV = view.batch["target_probs"].astype(F32)
    # xlogy gives 0·log 0 = 0, so zero-probability tokens drop out of H(p) and KL.
    plogp_BxT = jnp.sum(xlogy(p_BxTxV, p_BxTxV), axis=-1)
    # Σ p·log q with log q = z − logsumexp(z) finite everywhere: the KL is finite.
    plogq_BxT = jnp.sum(p_BxTxV * (z_BxTxV - logz_BxT[..., None]), axis=-1)
    metrics["entropy/target_token"] = masked_mean(-plogp_BxT, mask_BxT)
    metrics["entropy/kl_token"] = masked_mean(plogp_BxT - plogq_BxT, mask_BxT)
  return metrics


def eval_token_entropy_lens(view) -> dict:
  return {"eval/" + name: value for name, value in token_entropy_lens(view).items()}
