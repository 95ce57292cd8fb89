"""Per-token loss and entropies without materialising the logits.

The output layer of a GPT-2-sized model produces B×T×V logits, the largest
tensor of the step (6.6 GB in bfloat16 at B=64, T=1024, V=50304; twice that
in float32, and again for its gradient). Here the logits are computed one
chunk of sequence positions at a time, in float32 straight from the matmul's
accumulator, reduced to per-token numbers, and recomputed in the backward
pass (`jax.checkpoint`), so at most one chunk of logits exists at any time.
Chunks cut the sequence axis, not the batch axis, so that each chunk keeps the
batch sharding.

Per token (float32 [B, T]):
  nll             −log q(y_t | x≤t)
  entropy         H(q(·|x≤t)) = logsumexp(z) − Σ softmax(z)·z
  target_entropy  H(p(·|x≤t)), when the true conditionals p are given
  kl              KL(p ‖ q) = Σ p (log p − log q), with 0·log 0 = 0
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

F32 = jnp.float32

# Chunks hold at most this many float32 logits (512 MiB).
MAX_CHUNK_LOGITS = 2**27


def chunk_length(batch: int, seq_len: int, vocab: int, max_logits: int = MAX_CHUNK_LOGITS) -> int:
  """The largest divisor of `seq_len` whose chunk of B×chunk×V logits fits the budget."""
  fitting = [c for c in range(1, seq_len + 1) if seq_len % c == 0 and batch * c * vocab <= max_logits]
  return max(fitting, default=1)


def _chunk_statistics(h_BxCxD, head_DxV, y_BxC, p_BxCxV, vocab_size: int, with_entropy: bool):
  z_BxCxV = jnp.einsum("bcd,dv->bcv", h_BxCxD, head_DxV, preferred_element_type=F32)[..., :vocab_size]
  # One exp(z − max) feeds both Σe (the normaliser) and Σe·z (the entropy), so
  # XLA reduces them in a single pass over the chunk's logits.
  max_BxC = jax.lax.stop_gradient(jnp.max(z_BxCxV, axis=-1))
  e_BxCxV = jnp.exp(z_BxCxV - max_BxC[..., None])
  sum_e_BxC = jnp.sum(e_BxCxV, axis=-1)
  logz_BxC = jnp.log(sum_e_BxC) + max_BxC
  target_z_BxC = jnp.take_along_axis(z_BxCxV, y_BxC[..., None], axis=-1)[..., 0]
  out = {"nll": logz_BxC - target_z_BxC}
  if with_entropy:
    out["entropy"] = logz_BxC - jnp.sum(e_BxCxV * z_BxCxV, axis=-1) / sum_e_BxC
  if p_BxCxV is not None:
    log_q_BxCxV = z_BxCxV - logz_BxC[..., None]
    positive = p_BxCxV > 0
    log_p_BxCxV = jnp.log(jnp.where(positive, p_BxCxV, 1.0))
    out["target_entropy"] = -jnp.sum(jnp.where(positive, p_BxCxV * log_p_BxCxV, 0.0), axis=-1)
    out["kl"] = jnp.sum(jnp.where(positive, p_BxCxV * (log_p_BxCxV - log_q_BxCxV), 0.0), axis=-1)
  return out


def token_statistics(h_BxTxD, head_DxV, targets_BxT, vocab_size: int, *, target_probs_BxTxV=None,
                     with_entropy: bool = False, max_chunk_logits: int = MAX_CHUNK_LOGITS) -> dict:
  """Per-token nll (and entropies) of the logits h @ head, computed chunk by chunk."""
  B, T, D = h_BxTxD.shape
  C = chunk_length(B, T, vocab_size, max_chunk_logits)
  n = T // C
  if target_probs_BxTxV is not None:
    target_probs_BxTxV = jax.lax.stop_gradient(target_probs_BxTxV.astype(F32))

  def one_chunk(xs):
    h_BxCxD, y_BxC, p_BxCxV = xs
    return _chunk_statistics(h_BxCxD, head_DxV, y_BxC, p_BxCxV, vocab_size, with_entropy)

  if n == 1:
    return one_chunk((h_BxTxD, targets_BxT, target_probs_BxTxV))
  split = lambda x: None if x is None else jnp.moveaxis(x.reshape((B, n, C) + x.shape[2:]), 1, 0)
  per_chunk = jax.lax.map(jax.checkpoint(one_chunk), (split(h_BxTxD), split(targets_BxT), split(target_probs_BxTxV)))
  return jax.tree.map(lambda x_NxBxC: jnp.moveaxis(x_NxBxC, 0, 1).reshape(B, T), per_chunk)


def masked_token_mean(x_BxT, mask_BxT):
  return jnp.sum(x_BxT * mask_BxT) / jnp.maximum(jnp.sum(mask_BxT), 1.0)
