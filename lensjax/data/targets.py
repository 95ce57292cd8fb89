"""Controlled targets: distributions whose true conditionals are known.

Because every next-token conditional is known exactly, a model trained on
these can be scored against the truth (KL, excess entropy) rather than only
against samples, and the entropy of the data is a dial (`alpha`).
"""

from __future__ import annotations

import dataclasses
import math
import numbers

import jax.numpy as jnp
import numpy as np

from lensjax.data import base
from lensjax.data.law import TargetLaw, log64
from lensjax.data.markov_chain import (conditional_rows, cumulative_rows, context_index, dirichlet_transition,
                                       sample_markov, start_conditionals, stationary_context_distribution,
                                       uniform_start_tables)
from lensjax.config import stationary_start_problem
from lensjax.errors import InputError
from lensjax.ops.arrays import F32
from lensjax.ops.distributions import entropy_nats

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
               seed: int, num_sequences: int | None = None, initial: str = "uniform", order_seed: int | None = None):
    _check_markov_args(vocab_size, order, alpha, seq_len, num_sequences, initial)
    self.vocab_size = int(vocab_size)
    self.order = int(order)
    self.alpha = float(alpha)
    self.seq_len = int(seq_len)
    self.seed = int(seed)
    # The chain and the finite training set follow `seed`; which rows each step draws follows `order_seed`.
    self.order_seed = self.seed if order_seed is None else int(order_seed)
    self.num_sequences = None if num_sequences is None else int(num_sequences)
    self.num_contexts = self.vocab_size**self.order
    self.transition = dirichlet_transition(
        self.num_contexts, self.vocab_size, self.alpha,
        base.make_rng(self.seed, STREAM_CHAIN))
    self.initial = initial
    # The law of the first context (the first k tokens), and of token j given
    # tokens < j under it: [V^j, V] for j < k.
    self._start_cumulatives = None
    if initial == "stationary":
      self.context_distribution = stationary_context_distribution(self.transition)
      self.start_conditionals = start_conditionals(self.context_distribution, self.vocab_size, self.order)
      self._start_cumulatives = [cumulative_rows(table) for table in self.start_conditionals]
    else:
      self.context_distribution = np.full(self.num_contexts, 1.0 / self.num_contexts)
      self.start_conditionals = uniform_start_tables(self.vocab_size, self.order)
    # The law of x_0: with order 0 it is drawn from the (single) row like every token.
    self.initial_distribution = (self.transition[0] if self.order == 0 else self.start_conditionals[0][0]).copy()
    self._cumulative_CxV = cumulative_rows(self.transition)
    self._transition_f32 = self.transition.astype(np.float32)
    self._start_f32 = ([table.astype(np.float32) for table in self.start_conditionals[1:]] if initial == "stationary"
                       else uniform_start_tables(self.vocab_size, self.order, np.float32)[1:])
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
    if inputs_BxT.shape[1] == 0:
      return np.empty(inputs_BxT.shape + (self.vocab_size,), np.float32)
    return conditional_rows(inputs_BxT.astype(np.int64), self._start_f32, self._transition_f32, order=self.order,
                            vocab_size=self.vocab_size, concatenate=np.concatenate)

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
    num_start = min(max(self.order - 1, 0), length)
    for t in range(num_start):  # E over the first t+1 tokens of H(token t+1 | them)
      prefix_P = self.context_distribution.reshape(self.vocab_size**(t + 1), -1).sum(axis=1)
      entropies_T[t] = prefix_P @ entropy_nats(self.start_conditionals[t + 1])
    # Context that follows each (context, next symbol) pair.
    next_context_CxV = (np.arange(self.num_contexts)[:, None] * self.vocab_size
                        + np.arange(self.vocab_size)) % self.num_contexts
    context_probs_C = self.context_distribution
    for t in range(num_start, length):
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

  def sequence_entropy(self, seq_len: int | None = None) -> float:
    """H(X_1..X_T | X_0), exactly: Σ_t E[H(p(·|x≤t))] by DP over the context law."""
    return float(np.sum(self.expected_target_entropies(seq_len)))

  def joint_entropy(self, num_tokens: int) -> float:
    """H(X_0..X_{n-1}) of the first n tokens: H(p_0) + H(X_1..X_{n-1} | X_0)."""
    first = float(entropy_nats(self.initial_distribution))
    return first + (self.sequence_entropy(num_tokens - 1) if num_tokens > 1 else 0.0)

  def law(self) -> TargetLaw:
    """The chain as a sequence law: the log of its tables on the device, and its entropy by DP."""
    params = {"log_start": [jnp.asarray(log64(table), F32) for table in self.start_conditionals[1:]],
              "log_transition": jnp.asarray(log64(self.transition), F32)}
    training_set = self.training_set() if self.num_sequences is not None else None
    return TargetLaw("markov", self.vocab_size, self.seq_len, log64(self.initial_distribution), params,
                     MarkovLogProbs(self.order, self.vocab_size), self.sequence_entropy(), training_set)

  def sample(self, uniforms_BxTp1: np.ndarray) -> np.ndarray:
    """int32 [B, T+1] sequences from given uniform draws in [0, 1)."""
    return sample_markov(self._cumulative_CxV, self.order, uniforms_BxTp1, self._start_cumulatives)

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
      rng = base.make_rng(self.order_seed, STREAM_EPOCH_ORDER, epoch)
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
      tokens_BxTp1 = self._finite_set_rows(step, batch_size, rows)
    else:
      tokens_BxTp1 = self._drawn_rows(base.make_rng(self.order_seed, stream_id, step), batch_size, rows)
    return self._with_conditionals(tokens_BxTp1)

  def probe(self, batch_size: int, *, split: str = "train",
            process_index: int = 0,
            process_count: int = 1) -> dict[str, np.ndarray]:
    """This process's rows of the split's fixed probe; see `base.Source`.

    From a finite training set: the sequences at evenly spaced indices of the set (which follows `seed`, the
    target's seed); otherwise fresh draws of this chain from the probe's own stream.
    """
    rows = base.process_rows(batch_size, process_index, process_count)
    if split == "train" and self.num_sequences is not None:
      indices_B = base.evenly_spaced(batch_size, self.num_sequences)[rows]
      return self._with_conditionals(self.training_set()[indices_B])
    return self._with_conditionals(self._drawn_rows(base.probe_rng(split), batch_size, rows))

  def _drawn_rows(self, rng: np.random.Generator, batch_size: int, rows: slice) -> np.ndarray:
    # Draw the whole global batch (cheap) so every process count sees the
    # same rows, then simulate only this process's share.
    uniforms_BxTp1 = rng.random((batch_size, self.seq_len + 1))
    return self.sample(uniforms_BxTp1[rows])

  def _with_conditionals(self, tokens_BxTp1: np.ndarray) -> dict[str, np.ndarray]:
    batch = base.next_token_batch(tokens_BxTp1)
    batch["target_probs"] = self.token_conditionals(batch["inputs"])
    return batch


@dataclasses.dataclass(frozen=True)
class MarkovLogProbs:
  """The law's conditionals in jit: `(params of MarkovTarget.law, tokens_BxT) -> log p [B, T, V]`."""
  order: int
  vocab_size: int

  def __call__(self, params, tokens_BxT):
    return conditional_rows(tokens_BxT, params["log_start"], params["log_transition"], order=self.order,
                            vocab_size=self.vocab_size, concatenate=jnp.concatenate)


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
  # Named by its config keys: a config is how a run asks for this chain (validated before anything compiles).
  problem = stationary_start_problem(initial, vocab_size, order)
  if problem:
    raise InputError(problem)
