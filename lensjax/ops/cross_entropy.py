"""Next-token cross-entropy from hidden states and the output matrix, one chunk of positions at a time, in a form
that every order of automatic differentiation handles.

The training loss (`lensjax.train.loss`) gets its gradient from a `custom_vjp`, which forward-over-reverse
differentiation (a Hessian-vector product) cannot trace through. Here each chunk is plain JAX under
`jax.checkpoint` inside a `lax.scan`: the reverse pass recomputes a chunk's logits instead of keeping them, and so
does the tangent pass of an HVP, so no pass holds more than one chunk of float32 logits (the whole B×T×V of them
is 13 GB at GPT-2 small's B64 × T1024).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from lensjax.ops.arrays import F32

# Chunks hold at most this many float32 logits (512 MiB).
MAX_CHUNK_LOGITS = 2**27


def chunk_length(batch: int, seq_len: int, vocab: int, max_logits: int = MAX_CHUNK_LOGITS) -> int:
  """The largest divisor of `seq_len` whose chunk of B×chunk×V logits fits the budget."""
  fitting = [c for c in range(1, seq_len + 1) if seq_len % c == 0 and batch * c * vocab <= max_logits]
  return max(fitting, default=1)


def chunked_cross_entropy(h_BxTxD, head_DxV, targets_BxT, mask_BxT, vocab_size: int,
                          max_chunk_logits: int = MAX_CHUNK_LOGITS) -> jax.Array:
  """Mean over real tokens (mask 1) of −log softmax(h·head)[target], float32 logits from the matmul's accumulator;
  the columns of `head_DxV` past `vocab_size` (vocabulary padding) are not part of the softmax."""
  head_DxV = head_DxV[:, :vocab_size]
  B, T, _ = h_BxTxD.shape
  C = chunk_length(B, T, vocab_size, max_chunk_logits)
  split = lambda x: jnp.moveaxis(x.reshape((B, T // C, C) + x.shape[2:]), 1, 0)
  mask_BxT = mask_BxT.astype(F32)

  @jax.checkpoint
  def chunk_nll_sum(h_BxCxD, y_BxC, m_BxC):
    z_BxCxV = jnp.einsum("bcd,dv->bcv", h_BxCxD, head_DxV, preferred_element_type=F32)
    target_z_BxC = jnp.take_along_axis(z_BxCxV, y_BxC[..., None], axis=-1)[..., 0]
    return jnp.sum((jax.nn.logsumexp(z_BxCxV, axis=-1) - target_z_BxC) * m_BxC)

  def add_chunk(total, chunk):
    return total + chunk_nll_sum(*chunk), None

  total, _ = jax.lax.scan(add_chunk, jnp.zeros((), F32), (split(h_BxTxD), split(targets_BxT), split(mask_BxT)))
  return total / jnp.maximum(jnp.sum(mask_BxT), 1.0)
