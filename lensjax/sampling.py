"""Ancestral sampling of a causal law, with and without a KV cache.

A sequence is x_0..x_T: x_0 is given (drawn by the caller from the first-token
law), then x_{t+1} ~ q(·|x_0..x_t) for t = 0..T-1. Both samplers return, per
sequence, the tokens and, per sampled position, log q(x_{t+1}|x_≤t) and the
entropy H(q(·|x_≤t)) of the conditional it was drawn from: the two ingredients
of the plain (−log Q(x)) and the Rao-Blackwellised (Σ_t H(q(·|x_≤t)))
estimators of the sequence entropy.

Token t+1 is drawn with `jax.random.categorical(fold_in(key, t + 1), log q)`
in both samplers, so from the same key they draw the same sequences (the
cached and the full forward pass agree up to float summation order).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp

from lensjax.config import ModelConfig
from lensjax.model import Transformer, init_cache
from lensjax.ops.arrays import F32
from lensjax.ops.distributions import entropy_of_log_probs

# log_probs_fn(tokens_BxT) -> float32 [B, T, V]: log p(x_{t+1} = v | tokens[:, :t+1]).
LogProbsFn = Callable[[jax.Array], jax.Array]


@dataclasses.dataclass(frozen=True)
class TransformerLogProbs:
  """log softmax(logits / temperature) of a Transformer at every position, in float32.

  A value (hashable by its config), so that it can be a static argument of
  `jax.jit`: every caller with the same config shares one compilation.
  Called as `(params, tokens_BxT) -> [B, T, V]`.
  """
  cfg: ModelConfig
  temperature: float = 1.0

  def __call__(self, params, tokens_BxT: jax.Array) -> jax.Array:
    logits_BxTxV, _ = Transformer(self.cfg).apply({"params": params}, tokens_BxT)
    return jax.nn.log_softmax(logits_BxTxV.astype(F32) / self.temperature, axis=-1)


def draw(key: jax.Array, t, log_probs_BxV: jax.Array) -> jax.Array:
  """Token x_t for each row: the same key schedule for every sampler."""
  return jax.random.categorical(jax.random.fold_in(key, t), log_probs_BxV, axis=-1).astype(jnp.int32)


def draw_first(key: jax.Array, log_initial_V: jax.Array, batch: int) -> jax.Array:
  """x_0 for `batch` rows from the first-token law (step 0 of the key schedule)."""
  return draw(key, 0, jnp.broadcast_to(log_initial_V.astype(F32), (batch, log_initial_V.shape[-1])))


def _record(log_p_BxV, next_B):
  """(log p(next), H(p)) for one step."""
  chosen_B = jnp.take_along_axis(log_p_BxV, next_B[:, None], axis=-1)[:, 0]
  return chosen_B, entropy_of_log_probs(log_p_BxV)


def sample_without_cache(log_probs_fn: LogProbsFn, key: jax.Array, first_B: jax.Array, seq_len: int):
  """Reference sampler: the whole [B, T] buffer goes through `log_probs_fn` at every step.

  Returns (tokens int32 [B, T+1], log p(x_{t+1}) float32 [B, T], H(p(·|x≤t)) float32 [B, T]).
  Costs T full forward passes; used for the targets and to check the cached sampler.
  """
  B = first_B.shape[0]
  tokens_BxTp1 = jnp.zeros((B, seq_len + 1), jnp.int32).at[:, 0].set(first_B.astype(jnp.int32))

  def step(tokens_BxTp1, t):
    log_p_BxTxV = log_probs_fn(tokens_BxTp1[:, :seq_len])
    log_p_BxV = jax.lax.dynamic_index_in_dim(log_p_BxTxV, t, axis=1, keepdims=False).astype(F32)
    next_B = draw(key, t + 1, log_p_BxV)
    tokens_BxTp1 = jax.lax.dynamic_update_index_in_dim(tokens_BxTp1, next_B, t + 1, axis=1)
    return tokens_BxTp1, _record(log_p_BxV, next_B)

  tokens_BxTp1, (chosen_TxB, entropy_TxB) = jax.lax.scan(step, tokens_BxTp1, jnp.arange(seq_len))
  return tokens_BxTp1, chosen_TxB.T, entropy_TxB.T


def sample_with_cache(params, key: jax.Array, first_B: jax.Array, *, cfg: ModelConfig, seq_len: int):
  """The model's sampler: one token per step through `Transformer(decode=True)` inside `lax.scan`.

  Same returns as `sample_without_cache`; each step costs one position of
  compute instead of a whole forward pass.
  """
  B = first_B.shape[0]
  model = Transformer(cfg, decode=True)

  def step(carry, t):
    cache, token_B = carry
    (logits_Bx1xV, _), mutated = model.apply({"params": params, "cache": cache}, token_B[:, None],
                                             mutable=["cache"])
    log_q_BxV = jax.nn.log_softmax(logits_Bx1xV[:, 0].astype(F32), axis=-1)
    next_B = draw(key, t + 1, log_q_BxV)
    return (mutated["cache"], next_B), (next_B,) + _record(log_q_BxV, next_B)

  carry = (init_cache(cfg, B, seq_len), first_B.astype(jnp.int32))
  _, (next_TxB, chosen_TxB, entropy_TxB) = jax.lax.scan(step, carry, jnp.arange(seq_len))
  tokens_BxTp1 = jnp.concatenate([first_B[:, None].astype(jnp.int32), next_TxB.T], axis=1)
  return tokens_BxTp1, chosen_TxB.T, entropy_TxB.T
