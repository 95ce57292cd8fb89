"""Controlled targets: distributions whose true conditionals are known.

Because every next-token conditional is known exactly, a model trained on
these can be scored against the truth (KL, excess entropy) rather than only
against samples, and the entropy of the data is a dial (`alpha`).
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from lensjax.data import base
from lensjax.errors import InputError

# A transition table beyond this many entries (512 MiB in float64, twice that
# with its cumulative copy) would dominate host memory for no scientific gain.
MAX_TRANSITION_ENTRIES = 2**26

# Stream ids of the Markov target (base reserves those below 100).
STREAM_CHAIN = 100
STREAM_TRAINING_SET = 101
STREAM_EPOCH_ORDER = 102

# Rows per random draw when building a finite training set: bounds the memory
# of the uniforms, and fixes the set whatever N's relation to this chunking.
_TRAINING_SET_CHUNK = 4096

# How the first `order` tokens of a sequence are drawn: uniformly, or from the
# chain's stationary distribution over contexts (then every window of the
# sequence has the same law, and n >= k tokens have the entropy
# H(X_1..X_k) + (n - k) h, h the entropy rate: H(X_1) + (n - 1) h for k = 1).
INITIALS = ("uniform", "stationary")

# The stationary distribution is solved for densely over the V^k contexts.
MAX_STATIONARY_CONTEXTS = 4096


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
                  uniforms_BxT1: np.ndarray,
                  start_cumulatives: list[np.ndarray] | None = None) -> np.ndarray:
  """Sequences of an order-k chain whose first k tokens are uniform.

  With `start_cumulatives` (inverse-CDF tables of [V^j, V] for j = 0..k-1:
  token j given the j before it) the first k tokens are drawn from those
  instead, e.g. from the stationary distribution.
  A pure function of the uniform draws (one per token), so a batch depends
  only on how those were drawn. Vectorised over rows, looping over time.
  """
  num_contexts, vocab_size = cumulative_CxV.shape
  num_rows, length = uniforms_BxT1.shape
  num_initial = min(order, length)
  tokens_BxT1 = np.empty((num_rows, length), np.int32)
  if start_cumulatives is None:
    # Uniform initial tokens by inverse CDF too, so one draw per token suffices.
    tokens_BxT1[:, :num_initial] = np.minimum(
        (uniforms_BxT1[:, :num_initial] * vocab_size).astype(np.int64),
        vocab_size - 1)
  else:
    for j in range(num_initial):
      cdf_BxV = start_cumulatives[j][context_index(tokens_BxT1[:, :j], vocab_size)]
      tokens_BxT1[:, j] = (cdf_BxV <= uniforms_BxT1[:, j, None]).sum(axis=-1)
  context_B = context_index(tokens_BxT1[:, :num_initial], vocab_size)
  for t in range(num_initial, length):
    cdf_BxV = cumulative_CxV[context_B]
    # Symbols whose cdf is <= u are passed over; zero-probability symbols
    # share their predecessor's cdf and so can never be chosen.
    next_B = (cdf_BxV <= uniforms_BxT1[:, t, None]).sum(axis=-1)
    tokens_BxT1[:, t] = next_B
    context_B = (context_B * vocab_size + next_B) % num_contexts
  return tokens_BxT1


def stationary_context_distribution(transition_CxV: np.ndarray) -> np.ndarray:
  """float64 [C]: the stationary law of the chain's context (its last k tokens).

  Context c moves to (c*V + v) mod C with probability P[c, v]; solves
  pi M = pi with sum(pi) = 1 densely (C <= MAX_STATIONARY_CONTEXTS). Rows
  drawn from a Dirichlet are positive almost surely, so pi is unique.
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


def entropy_nats(probs_NxV: np.ndarray) -> np.ndarray:
  """Shannon entropy of each row, with 0 log 0 = 0."""
  probs_NxV = np.asarray(probs_NxV, np.float64)
  logs = np.log(np.where(probs_NxV > 0, probs_NxV, 1.0))
  return -(probs_NxV * logs).sum(axis=-1)


class MarkovTarget:
  """An order-k Markov chain over V symbols with Dirichlet(alpha) rows.

  The chain (one row per each of the V^k contexts) depends on `seed` alone.
  A sequence has T+1 tokens: the first k uniform (`initial="uniform"`) or
  drawn from the chain's stationary law (`initial="stationary"`), then
  x_t ~ P[x_{t-k..t-1}]. Small alpha gives peaked rows, i.e. low entropy.

  With `num_sequences=N`, "train" cycles by epochs through N sequences drawn
  once (epoch e is a permutation seeded by (seed, e)); "heldout" is always
  fresh draws from the chain.
  """

  knows_conditionals = True

  def __init__(self, vocab_size: int, order: int, alpha: float, seq_len: int,
               seed: int, num_sequences: int | None = None, initial: str = "uniform"):
    _check_markov_args(vocab_size, order, alpha, seq_len, num_sequences, initial)
    self.vocab_size = int(vocab_size)
    self.order = int(order)
    self.alpha = float(alpha)
    self.seq_len = int(seq_len)
    self.seed = int(seed)
    self.num_sequences = None if num_sequences is None else int(num_sequences)
    self.num_contexts = self.vocab_size**self.order
    self.transition = dirichlet_transition(
        self.num_contexts, self.vocab_size, self.alpha,
        base.make_rng(self.seed, STREAM_CHAIN))
    self.initial = initial
    # The law of the first context (the first k tokens) and, for a stationary
    # start, of token j given tokens < j under it ([V^j, V] for j < k; a
    # uniform start needs no tables: every such conditional is 1/V).
    self.start_conditionals: list[np.ndarray] | None = None
    self._start_cumulatives = None
    if initial == "stationary":
      self.context_distribution = stationary_context_distribution(self.transition)
      self.start_conditionals = start_conditionals(self.context_distribution, self.vocab_size, self.order)
      self._start_cumulatives = [cumulative_rows(table) for table in self.start_conditionals]
    else:
      self.context_distribution = np.full(self.num_contexts, 1.0 / self.num_contexts)
    # The law of x_0: with order 0 it is drawn from the (single) row like every token.
    if self.order == 0:
      self.initial_distribution = self.transition[0].copy()
    elif initial == "stationary":
      self.initial_distribution = self.start_conditionals[0][0]
    else:
      self.initial_distribution = np.full(self.vocab_size, 1.0 / self.vocab_size)
    self._cumulative_CxV = cumulative_rows(self.transition)
    self._transition_f32 = self.transition.astype(np.float32)
    self._training_set: np.ndarray | None = None
    self._epoch_orders: dict[int, np.ndarray] = {}

  def context_index(self, tokens_BxK: np.ndarray) -> np.ndarray:
    """Transition row of each context of `order` tokens, oldest first."""
    tokens_BxK = np.asarray(tokens_BxK)
    if tokens_BxK.shape[-1] != self.order:
      raise ValueError(f"Contexts need {self.order} tokens in the last axis, "
                       f"got shape {tokens_BxK.shape}.")
    return context_index(tokens_BxK, self.vocab_size)

  def token_conditionals(self, inputs_BxT: np.ndarray) -> np.ndarray:
    """float32 [B, T, V]: true p(x_{t+1} = v | inputs[:, :t+1]) for any inputs.

    Assumes inputs[:, 0] is the first token of a sequence, so the first k-1
    positions (whose context is still being drawn) follow the start: uniform,
    or the stationary law's conditionals.
    """
    inputs_BxT = np.asarray(inputs_BxT)
    if inputs_BxT.ndim != 2:
      raise ValueError(f"inputs must be [B, T], got shape {inputs_BxT.shape}.")
    if inputs_BxT.size and (inputs_BxT.min() < 0
                            or inputs_BxT.max() >= self.vocab_size):
      raise ValueError(f"inputs hold ids outside [0, {self.vocab_size}).")
    num_rows, length = inputs_BxT.shape
    probs_BxTxV = np.empty((num_rows, length, self.vocab_size), np.float32)
    if self.order == 0:
      probs_BxTxV[:] = self._transition_f32[0]
      return probs_BxTxV
    num_uniform = min(self.order - 1, length)
    if self.initial == "uniform":
      probs_BxTxV[:, :num_uniform] = np.float32(1.0 / self.vocab_size)
    else:
      for t in range(num_uniform):
        table_PxV = self.start_conditionals[t + 1].astype(np.float32)
        probs_BxTxV[:, t] = table_PxV[context_index(inputs_BxT[:, :t + 1], self.vocab_size)]
    if length > num_uniform:
      windows_BxWxK = np.lib.stride_tricks.sliding_window_view(
          inputs_BxT, self.order, axis=1)
      probs_BxTxV[:, num_uniform:] = self._transition_f32[
          context_index(windows_BxWxK, self.vocab_size)]
    return probs_BxTxV

  def row_entropies(self) -> np.ndarray:
    """float64 [V^k]: entropy in nats of each context's transition row."""
    return entropy_nats(self.transition)

  def expected_target_entropies(self, seq_len: int | None = None,
                                tolerance: float = 1e-12) -> np.ndarray:
    """float64 [T]: E[H(target_probs[:, t])] in nats, exactly.

    The context distribution is propagated from its start (uniform or
    stationary); once it stops moving (the chain has mixed) the remaining
    positions repeat the last value. Costs O(V^k * V) per position until then.
    """
    length = self.seq_len if seq_len is None else int(seq_len)
    entropies_T = np.empty(length)
    row_entropies_C = self.row_entropies()
    num_uniform = min(max(self.order - 1, 0), length)
    entropies_T[:num_uniform] = math.log(self.vocab_size)
    if self.initial != "uniform":
      for t in range(num_uniform):  # E over the first t+1 tokens of H(token t+1 | them)
        prefix_P = self.context_distribution.reshape(self.vocab_size**(t + 1), -1).sum(axis=1)
        entropies_T[t] = prefix_P @ entropy_nats(self.start_conditionals[t + 1])
    # Context that follows each (context, next symbol) pair.
    next_context_CxV = (np.arange(self.num_contexts)[:, None] * self.vocab_size
                        + np.arange(self.vocab_size)) % self.num_contexts
    context_probs_C = self.context_distribution
    for t in range(num_uniform, length):
      entropies_T[t] = context_probs_C @ row_entropies_C
      moved_C = np.bincount(
          next_context_CxV.ravel(),
          weights=(context_probs_C[:, None] * self.transition).ravel(),
          minlength=self.num_contexts)
      if np.abs(moved_C - context_probs_C).sum() < tolerance:
        entropies_T[t + 1:] = entropies_T[t]
        break
      context_probs_C = moved_C
    return entropies_T

  def sample(self, uniforms_BxT1: np.ndarray) -> np.ndarray:
    """int32 [B, T+1] sequences from given uniform draws in [0, 1)."""
    return sample_markov(self._cumulative_CxV, self.order, uniforms_BxT1, self._start_cumulatives)

  def training_set(self) -> np.ndarray:
    """int32 [N, T+1]: the finite training set, drawn once from the seed."""
    if self.num_sequences is None:
      raise ValueError("training_set() needs num_sequences; this target "
                       "draws fresh training sequences every step.")
    if self._training_set is None:
      chunks = []
      for chunk, start in enumerate(range(0, self.num_sequences,
                                          _TRAINING_SET_CHUNK)):
        rows = min(_TRAINING_SET_CHUNK, self.num_sequences - start)
        rng = base.make_rng(self.seed, STREAM_TRAINING_SET, chunk)
        chunks.append(self.sample(rng.random((rows, self.seq_len + 1))))
      self._training_set = np.concatenate(chunks)
      self._training_set.setflags(write=False)
    return self._training_set

  def epoch_order(self, epoch: int) -> np.ndarray:
    """int64 [N]: the order in which epoch `epoch` visits the training set."""
    if epoch not in self._epoch_orders:
      # A batch spans at most a few epochs, so a tiny cache suffices.
      if len(self._epoch_orders) >= 4:
        self._epoch_orders.pop(next(iter(self._epoch_orders)))
      rng = base.make_rng(self.seed, STREAM_EPOCH_ORDER, epoch)
      self._epoch_orders[epoch] = rng.permutation(self.num_sequences)
    return self._epoch_orders[epoch]

  def _finite_set_rows(self, step: int, batch_size: int,
                       rows: slice) -> np.ndarray:
    """Rows of the finite training set at global positions step*B + rows."""
    positions_B = step * batch_size + np.arange(rows.start, rows.stop)
    epochs_B, offsets_B = np.divmod(positions_B, self.num_sequences)
    indices_B = np.empty_like(positions_B)
    for epoch in np.unique(epochs_B):
      in_epoch = epochs_B == epoch
      indices_B[in_epoch] = self.epoch_order(int(epoch))[offsets_B[in_epoch]]
    return self.training_set()[indices_B]

  def batch(self, step: int, batch_size: int, *, split: str = "train",
            process_index: int = 0,
            process_count: int = 1) -> dict[str, np.ndarray]:
    """This process's rows of the step's global batch; see `base.Source`."""
    stream_id = base.split_stream_id(split)
    step = base.check_step(step)
    rows = base.process_rows(batch_size, process_index, process_count)
    if split == "train" and self.num_sequences is not None:
      tokens_BxT1 = self._finite_set_rows(step, batch_size, rows)
    else:
      # Draw the whole global batch (cheap) so every process count sees the
      # same rows, then simulate only this process's share.
      rng = base.make_rng(self.seed, stream_id, step)
      uniforms_BxT1 = rng.random((batch_size, self.seq_len + 1))
      tokens_BxT1 = self.sample(uniforms_BxT1[rows])
    batch = base.next_token_batch(tokens_BxT1)
    batch["target_probs"] = self.token_conditionals(batch["inputs"])
    return batch


def _is_int(value) -> bool:
  return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _check_markov_args(vocab_size: int, order: int, alpha: float,
                       seq_len: int, num_sequences: int | None,
                       initial: str = "uniform") -> None:
  if not _is_int(vocab_size) or vocab_size < 2:
    raise InputError(f"Markov vocab_size={vocab_size!r} must be an integer "
                     "of at least 2.")
  if not _is_int(order) or order < 0:
    raise InputError(f"Markov order={order!r} must be a non-negative integer.")
  if not (isinstance(alpha, numbers.Real) and not isinstance(alpha, bool)
          and math.isfinite(alpha) and alpha > 0):
    raise InputError(f"Markov alpha={alpha!r} must be a positive finite "
                     "number (small alpha = low entropy).")
  if not _is_int(seq_len) or seq_len < 1:
    raise InputError(f"seq_len={seq_len!r} must be a positive integer.")
  if num_sequences is not None and (not _is_int(num_sequences)
                                    or num_sequences < 1):
    raise InputError(f"num_sequences={num_sequences!r} must be a positive "
                     "integer, or None for fresh sequences every step.")
  entries = int(vocab_size)**int(order) * int(vocab_size)
  if entries > MAX_TRANSITION_ENTRIES:
    raise InputError(
        f"A Markov chain with vocab_size={vocab_size} and order={order} needs "
        f"a transition table of {entries:,} entries, more than the "
        f"{MAX_TRANSITION_ENTRIES:,} allowed; reduce vocab_size or order.")
  if initial not in INITIALS:
    raise InputError(f"Markov initial={initial!r} must be one of {', '.join(INITIALS)}.")
  if initial == "stationary" and int(vocab_size)**int(order) > MAX_STATIONARY_CONTEXTS:
    raise InputError(
        f"A stationary start solves for a law over vocab_size**order = "
        f"{int(vocab_size)**int(order):,} contexts, more than the "
        f"{MAX_STATIONARY_CONTEXTS:,} allowed; use initial=uniform or reduce vocab_size or order.")
