"""The exact law of a controlled target, as each such source hands it to the analyses.

A source that knows its law (`source.law()`) describes the whole sequence
x_0..x_T: the law p_0 of the first token, and a traceable function of the
conditionals p(x_{t+1} | x≤t) for every position of a batch. Analyses (the
whole-sequence entropy) enumerate or sample through it without knowing which
target it is, so a new target touches only its own file.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import numpy as np

# log_probs(params, tokens_BxT) -> float32 [B, T, V]: log p(x_{t+1} = v | tokens[:, :t+1]).
# Hashable (a frozen dataclass or a module-level function), so it can be a static jit argument.
LawLogProbs = Callable[[Any, jax.Array], jax.Array]


@dataclasses.dataclass(frozen=True, eq=False)
class TargetLaw:
  """A controlled target as a sequence law: p_0, its conditionals, and what is known exactly."""
  kind: str  # the target's name in results: markov | teacher
  vocab_size: int
  seq_len: int
  log_initial_V: np.ndarray  # float64 log p_0
  params: Any  # the arrays `log_probs` reads
  log_probs: LawLogProbs
  exact_entropy: float | None  # H(X_1..T | X_0) when known in closed form
  training_set: np.ndarray | None  # int32 [N, T+1], a finite training set


def log64(probs) -> np.ndarray:
  """log of probabilities in float64, log 0 = −inf without a warning."""
  with np.errstate(divide="ignore"):
    return np.log(np.asarray(probs, np.float64))
