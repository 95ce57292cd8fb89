"""The math of an order-k Markov chain over V symbols, on its tables alone.

Contexts (the last k tokens) index the rows of a [V^k, V] transition table,
oldest token the most significant base-V digit. Sampling and the stationary
law run in NumPy on the host; `conditional_rows` gathers a sequence's
conditionals from the tables in NumPy or in jax.numpy alike, so the data
pipeline and the traced analyses read one definition of the law.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np


def dirichlet_transition(num_contexts: int, vocab_size: int, alpha: float,
                         rng: np.random.Generator) -> np.ndarray:
  """[C, V] float64 rows drawn from Dirichlet(alpha * 1), each summing to 1."""
  rows_CxV = rng.dirichlet(np.full(vocab_size, alpha), size=num_contexts)
  # Renormalise so rows sum to 1 to the last bit the sampler relies on.
  return rows_CxV / rows_CxV.sum(axis=-1, keepdims=True)


def cumulative_rows(probs_CxV: np.ndarray) -> np.ndarray:
  """Inverse-CDF table, ending exactly at 1 so no draw u < 1 runs off it."""
  cumulative_CxV = np.minimum(np.cumsum(probs_CxV, axis=-1), 1.0)
  cumulative_CxV[:, -1] = 1.0
  return cumulative_CxV


def context_index(tokens_BxK: np.ndarray, vocab_size: int) -> np.ndarray:
  """Row of the transition table for contexts given oldest token first.

  The most recent token is the least significant base-V digit, so sliding the
  context by one token is `(index * V + new_token) % V**k`.
  """
  tokens_BxK = np.asarray(tokens_BxK, dtype=np.int64)
  order = tokens_BxK.shape[-1]
  if order == 0:
    return np.zeros(tokens_BxK.shape[:-1], np.int64)
  weights_K = vocab_size ** np.arange(order - 1, -1, -1, dtype=np.int64)
  return tokens_BxK @ weights_K


def sample_markov(cumulative_CxV: np.ndarray, order: int,
                  uniforms_BxTp1: np.ndarray,
                  start_cumulatives: list[np.ndarray] | None = None) -> np.ndarray:
  """Sequences of an order-k chain whose first k tokens are uniform.

  With `start_cumulatives` (inverse-CDF tables of [V^j, V] for j = 0..k-1:
  token j given the j before it) the first k tokens are drawn from those
  instead, e.g. from the stationary distribution.
  A pure function of the uniform draws (one per token), so a batch depends
  only on how those were drawn. Vectorised over rows, looping over time.
  """
  num_contexts, vocab_size = cumulative_CxV.shape
  num_rows, length = uniforms_BxTp1.shape
  num_initial = min(order, length)
  tokens_BxTp1 = np.empty((num_rows, length), np.int32)
  if start_cumulatives is None:
    # Uniform initial tokens by inverse CDF too, so one draw per token suffices.
    tokens_BxTp1[:, :num_initial] = np.minimum(
        (uniforms_BxTp1[:, :num_initial] * vocab_size).astype(np.int64),
        vocab_size - 1)
  else:
    for j in range(num_initial):
      cdf_BxV = start_cumulatives[j][context_index(tokens_BxTp1[:, :j], vocab_size)]
      tokens_BxTp1[:, j] = (cdf_BxV <= uniforms_BxTp1[:, j, None]).sum(axis=-1)
  context_B = context_index(tokens_BxTp1[:, :num_initial], vocab_size)
  for t in range(num_initial, length):
    cdf_BxV = cumulative_CxV[context_B]
    # Symbols whose cdf is <= u are passed over; zero-probability symbols
    # share their predecessor's cdf and so can never be chosen.
    next_B = (cdf_BxV <= uniforms_BxTp1[:, t, None]).sum(axis=-1)
    tokens_BxTp1[:, t] = next_B
    context_B = (context_B * vocab_size + next_B) % num_contexts
  return tokens_BxTp1


def stationary_context_distribution(transition_CxV: np.ndarray) -> np.ndarray:
  """float64 [C]: the stationary law of the chain's context (its last k tokens).

  Context c moves to (c*V + v) mod C with probability P[c, v]; solves
  pi M = pi with sum(pi) = 1 densely, so C is bounded (the stationary start's
  limit in `targets`). Rows drawn from a Dirichlet are positive almost surely,
  so pi is unique.
  """
  num_contexts, vocab_size = transition_CxV.shape
  next_CxV = (np.arange(num_contexts)[:, None] * vocab_size + np.arange(vocab_size)) % num_contexts
  moves_CxC = np.zeros((num_contexts, num_contexts))
  np.add.at(moves_CxC, (np.repeat(np.arange(num_contexts), vocab_size), next_CxV.ravel()), transition_CxV.ravel())
  # (M^T - I) pi = 0 has rank C-1; one of its equations is replaced by sum(pi) = 1.
  system_CxC = moves_CxC.T - np.eye(num_contexts)
  system_CxC[-1] = 1.0
  rhs_C = np.zeros(num_contexts)
  rhs_C[-1] = 1.0
  try:
    pi_C = np.linalg.solve(system_CxC, rhs_C)
  except np.linalg.LinAlgError:  # a reducible chain: any one of its stationary laws
    pi_C = np.linalg.lstsq(system_CxC, rhs_C, rcond=None)[0]
  pi_C = np.maximum(pi_C, 0.0)
  return pi_C / pi_C.sum()


def start_conditionals(context_probs_C: np.ndarray, vocab_size: int, order: int) -> list[np.ndarray]:
  """[V^j, V] float64 for j = 0..k-1: p(token j | tokens 0..j-1) under a law of the first k tokens.

  Marginals of the first j tokens come from summing the newest digits of the
  context index (oldest token = most significant digit). A prefix of
  probability 0 gets a uniform row (it is never drawn).
  """
  tables = []
  for j in range(order):
    joint_PxV = context_probs_C.reshape(vocab_size**(j + 1), -1).sum(axis=1).reshape(vocab_size**j, vocab_size)
    prefix_P = joint_PxV.sum(axis=1, keepdims=True)
    uniform = np.full_like(joint_PxV, 1.0 / vocab_size)
    tables.append(np.where(prefix_P > 0, joint_PxV / np.where(prefix_P > 0, prefix_P, 1.0), uniform))
  return tables


def conditional_rows(tokens_BxT, start_tables: Sequence, transition_CxV, *, order: int, vocab_size: int,
                     concatenate: Callable):
  """[B, T, V]: the table row of each position's conditional p(x_{t+1} | x≤t).

  Position t < k−1 is still drawing the start: row x_0..x_t of
  `start_tables[t]` ([V^(t+1), V]). Position t ≥ k−1 reads the transition
  row of its window x_{t−k+1..t}. Only operators and indexing, so NumPy
  tables on the host and traced ones in jit (with `concatenate` from the
  matching module) give the same rows.
  """
  length = tokens_BxT.shape[1]
  num_start = min(max(order - 1, 0), length)
  parts = []
  context_B = 0
  for t in range(num_start):
    context_B = context_B * vocab_size + tokens_BxT[:, t]
    parts.append(start_tables[t][context_B][:, None])
  if length > num_start:
    width = length - num_start
    context_BxW = tokens_BxT[:, :width] * 0  # an order-0 chain has the one context 0
    for j in range(order):
      context_BxW = context_BxW * vocab_size + tokens_BxT[:, j:j + width]
    parts.append(transition_CxV[context_BxW])
  return concatenate(parts, axis=1)


def uniform_start_tables(vocab_size: int, order: int, dtype=np.float64) -> list[np.ndarray]:
  """The tables of `start_conditionals` for uniform first tokens: every row 1/V (read-only broadcast views)."""
  row_V = np.full(vocab_size, 1.0 / vocab_size).astype(dtype)
  return [np.broadcast_to(row_V, (vocab_size**j, vocab_size)) for j in range(order)]
