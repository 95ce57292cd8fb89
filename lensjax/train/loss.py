"""Per-token loss and entropies without materialising the logits.

The output layer of a GPT-2-sized model produces B×T×V logits, the largest
tensor of the step (6.6 GB in bfloat16 at B=64, T=1024, V=50304; twice that
in float32, and again for its gradient). Here the logits are computed one
chunk of sequence positions at a time, in float32 straight from the matmul's
accumulator, and reduced to per-token numbers, so at most one chunk of logits
exists at any time. For training, `fused_loss` also turns each chunk's softmax
into the gradients of the hidden states and of the output matrix in the same
pass, so the backward pass neither keeps nor recomputes logits.
Chunks cut the sequence axis, not the batch axis, so that each chunk keeps the
batch sharding. Their size is a budget of logits per chunk (`model.loss_chunk_logits`): fewer, larger
chunks make fewer passes over the output matrix at the cost of memory. The matmul may write a chunk's
logits in bfloat16 (`model.loss_logits_dtype`), which halves the memory traffic of the passes that read them;
the maximum, the exponentials, their sums and every statistic are computed in float32 from those values.

Per token (float32 [B, T]):
  nll             −log q(y_t | x≤t)
  entropy         H(q(·|x≤t)) = logsumexp(z) − Σ softmax(z)·z
  target_entropy  H(p(·|x≤t)), when the true conditionals p are given
  kl              KL(p ‖ q) = Σ p (log p − log q), with 0·log 0 = 0
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from lensjax.ops.arrays import F32
from lensjax.ops.cross_entropy import MAX_CHUNK_LOGITS, chunk_length
from lensjax.ops.distributions import entropy_of_probs, kl_of_probs


def _chunk_statistics(h_BxCxD, head_DxV, y_BxC, p_BxCxV, vocab_size: int, with_entropy: bool,
                      logits_dtype: str = "float32"):
  """Per-token statistics of one chunk, and its softmax (zero on padded vocabulary columns)."""
  # The matmul accumulates in float32 and writes its result in `logits_dtype`; what follows reads it as float32.
  z_BxCxV = jnp.einsum("bcd,dv->bcv", h_BxCxD, head_DxV, preferred_element_type=jnp.dtype(logits_dtype)).astype(F32)
  if z_BxCxV.shape[-1] > vocab_size:  # padded columns: a finite floor so that 0·z stays 0
    z_BxCxV = jnp.where(jnp.arange(z_BxCxV.shape[-1]) < vocab_size, z_BxCxV, -1e30)
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
    log_q_BxCxV = z_BxCxV[..., :vocab_size] - logz_BxC[..., None]
    out["target_entropy"] = entropy_of_probs(p_BxCxV)
    out["kl"] = kl_of_probs(p_BxCxV, log_q_BxCxV)
  return out, e_BxCxV / sum_e_BxC[..., None]


def _chunks(B: int, T: int, vocab: int, max_chunk_logits: int):
  """(split, merge): [B, T, ...] <-> [n, B, C, ...] along the sequence axis."""
  C = chunk_length(B, T, vocab, max_chunk_logits)
  n = T // C
  split = lambda x: None if x is None else jnp.moveaxis(x.reshape((B, n, C) + x.shape[2:]), 1, 0)
  merge = lambda x: jnp.moveaxis(x, 0, 1).reshape((B, T) + x.shape[3:])
  return split, merge


def token_statistics(h_BxTxD, head_DxV, targets_BxT, vocab_size: int, *, target_probs_BxTxV=None,
                     with_entropy: bool = False, max_chunk_logits: int = MAX_CHUNK_LOGITS,
                     logits_dtype: str = "float32") -> dict:
  """Per-token nll (and entropies) of the logits h @ head, computed chunk by chunk (no gradient path)."""
  B, T, _ = h_BxTxD.shape
  split, merge = _chunks(B, T, head_DxV.shape[-1], max_chunk_logits)
  if target_probs_BxTxV is not None:
    target_probs_BxTxV = target_probs_BxTxV.astype(F32)

  def one_chunk(xs):
    h_BxCxD, y_BxC, p_BxCxV = xs
    return _chunk_statistics(h_BxCxD, head_DxV, y_BxC, p_BxCxV, vocab_size, with_entropy, logits_dtype)[0]

  per_chunk = jax.lax.map(one_chunk, (split(h_BxTxD), split(targets_BxT), split(target_probs_BxTxV)))
  return jax.tree.map(merge, per_chunk)


def fused_loss(h_BxTxD, head_DxV, targets_BxT, weights_BxT, vocab_size: int, *, target_probs_BxTxV=None,
               with_entropy: bool = False, max_chunk_logits: int = MAX_CHUNK_LOGITS, logits_dtype: str = "float32"):
  """`(Σ weights·nll, per-token statistics)` with the gradient computed in the forward pass.

  Each chunk's softmax gives dL/dz = weights·(softmax − onehot) at once, and
  two matmuls turn it into the chunk's dL/dh and its share of dL/dhead, so the
  backward pass only scales the stored gradients: no logits are kept or
  recomputed. Per-token statistics carry no gradient.
  """
  return _fused(vocab_size, with_entropy, max_chunk_logits, logits_dtype, h_BxTxD, head_DxV, targets_BxT,
                weights_BxT, target_probs_BxTxV)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2, 3))
def _fused(vocab_size, with_entropy, max_chunk_logits, logits_dtype, h_BxTxD, head_DxV, targets_BxT, weights_BxT,
           probs_BxTxV):
  return _fused_forward(vocab_size, with_entropy, max_chunk_logits, logits_dtype, h_BxTxD, head_DxV, targets_BxT,
                        weights_BxT, probs_BxTxV)[0]


def _fused_forward(vocab_size, with_entropy, max_chunk_logits, logits_dtype, h_BxTxD, head_DxV, targets_BxT,
                   weights_BxT, probs_BxTxV):
  B, T, D = h_BxTxD.shape
  V_padded = head_DxV.shape[-1]
  split, merge = _chunks(B, T, V_padded, max_chunk_logits)
  if probs_BxTxV is not None:
    probs_BxTxV = probs_BxTxV.astype(F32)

  def one_chunk(grad_head_DxV, xs):
    h_BxCxD, y_BxC, w_BxC, p_BxCxV = xs
    out, q_BxCxV = _chunk_statistics(h_BxCxD, head_DxV, y_BxC, p_BxCxV, vocab_size, with_entropy, logits_dtype)
    dz_BxCxV = ((q_BxCxV - jax.nn.one_hot(y_BxC, V_padded, dtype=F32)) * w_BxC[..., None]).astype(h_BxCxD.dtype)
    dh_BxCxD = jnp.einsum("bcv,dv->bcd", dz_BxCxV, head_DxV, preferred_element_type=F32).astype(h_BxCxD.dtype)
    grad_head_DxV = grad_head_DxV + jnp.einsum("bcd,bcv->dv", h_BxCxD, dz_BxCxV, preferred_element_type=F32)
    return grad_head_DxV, (out, dh_BxCxD)

  weights_BxT = weights_BxT.astype(F32)
  grad_head_DxV, (per_chunk, dh_NxBxCxD) = jax.lax.scan(
      one_chunk, jnp.zeros((D, V_padded), F32),
      (split(h_BxTxD), split(targets_BxT), split(weights_BxT), split(probs_BxTxV)))
  stats = jax.tree.map(merge, per_chunk)
  loss = jnp.sum(stats["nll"] * weights_BxT)
  return (loss, stats), (merge(dh_NxBxCxD), grad_head_DxV.astype(head_DxV.dtype))


def _fused_backward(vocab_size, with_entropy, max_chunk_logits, logits_dtype, residuals, cotangents):
  dh_BxTxD, grad_head_DxV = residuals
  g = cotangents[0]  # the statistics are outputs without a gradient
  return (g * dh_BxTxD).astype(dh_BxTxD.dtype), (g * grad_head_DxV).astype(grad_head_DxV.dtype), None, None, None


_fused.defvjp(_fused_forward, _fused_backward)
