"""The contract every data source meets, and the helpers the sources share.

A source is a pure function of (seed, step, split): the global batch of a
step is the same whatever the number of processes, and each process gets its
own contiguous block of rows. That makes runs reproducible, resumable at any
step without data-loader state, and comparable across machine sizes.

Randomness always comes from `np.random.default_rng([seed, stream_id, ...])`
(a SeedSequence over an entropy list), never from global state; each purpose
has its own stream id so that streams never overlap.

The fixed probes (`stats.probe_tokens`) are the exception to "a function of
the seed": each split's probe is chosen by `PROBE_SEED` and its own stream, or
by evenly spaced positions, so that it is the same sequences whatever
`train.seed` and `data.order_seed` are (every member of an ensemble, every
model size); a source whose content follows `data.seed` (a controlled
target) fills the same draws from its own law.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from lensjax.errors import InputError

SPLITS = ("train", "heldout")

# Stream ids. Distinct purposes must never share one, else e.g. the held-out
# sample would replay the training sample. Sources may add their own from 100.
STREAM_TRAIN = 0
STREAM_HELDOUT = 1
STREAM_PROBE = 2

# The seed of the probes' stream, the same for every run.
PROBE_SEED = 0


@runtime_checkable
class Source(Protocol):
  """A deterministic, process-sharded supply of next-token batches.

  `batch` returns this process's rows `[p*b, (p+1)*b)`, `b = batch_size //
  process_count`, of the global batch of `batch_size` rows for `step`:

    inputs        int32   [b, T]
    targets       int32   [b, T]     targets[:, t] follows inputs[:, :t+1]
    mask          float32 [b, T]     1 = real token; padding is on the right
    target_probs  float32 [b, T, V]  only if `knows_conditionals`: the true
                                     p(targets[:, t] = v | inputs[:, :t+1])
  """

  vocab_size: int
  seq_len: int
  knows_conditionals: bool

  def batch(self, step: int, batch_size: int, *, split: str = "train",
            process_index: int = 0,
            process_count: int = 1) -> dict[str, np.ndarray]:
    ...

  def probe(self, batch_size: int, *, split: str = "train",
            process_index: int = 0,
            process_count: int = 1) -> dict[str, np.ndarray]:
    """This process's rows of the split's fixed probe of `batch_size`
    sequences, laid out as `batch`'s; independent of the order seed."""
    ...


def split_stream_id(split: str) -> int:
  """The random stream of a split; unknown names are a programming error."""
  if split == "train":
    return STREAM_TRAIN
  if split == "heldout":
    return STREAM_HELDOUT
  raise ValueError(f"Unknown split {split!r}; expected one of {SPLITS}.")


def make_rng(seed: int, stream_id: int, *keys: int) -> np.random.Generator:
  """A generator that depends only on (seed, stream_id, *keys)."""
  return np.random.default_rng([int(seed), int(stream_id), *map(int, keys)])


def probe_rng(split: str) -> np.random.Generator:
  """The generator of a split's fixed probe: it depends on the split alone."""
  return make_rng(PROBE_SEED, STREAM_PROBE, split_stream_id(split))


def evenly_spaced(count: int, num_positions: int) -> np.ndarray:
  """int64 [count]: `count` positions of range(num_positions) spread evenly from 0 (repeating positions
  only when count > num_positions)."""
  return np.arange(count, dtype=np.int64) * int(num_positions) // int(count)


def process_rows(batch_size: int, process_index: int,
                 process_count: int) -> slice:
  """The rows of the global batch that belong to `process_index`."""
  if process_count < 1 or not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index} is not in "
                     f"[0, process_count={process_count}).")
  if batch_size < 1 or batch_size % process_count:
    raise InputError(
        f"batch_size={batch_size} must be a positive multiple of the "
        f"process count {process_count}; change batch_size so it divides "
        "evenly.")
  rows_per_process = batch_size // process_count
  start = process_index * rows_per_process
  return slice(start, start + rows_per_process)


def check_step(step: int) -> int:
  """Steps seed the streams, so they must be non-negative integers."""
  if int(step) != step or step < 0:
    raise ValueError(f"step must be a non-negative integer, got {step!r}.")
  return int(step)


def next_token_batch(tokens_BxTp1: np.ndarray) -> dict[str, np.ndarray]:
  """Splits sequences of T+1 tokens into inputs/targets shifted by one."""
  tokens_BxTp1 = np.asarray(tokens_BxTp1)
  inputs_BxT = np.ascontiguousarray(tokens_BxTp1[:, :-1], dtype=np.int32)
  targets_BxT = np.ascontiguousarray(tokens_BxTp1[:, 1:], dtype=np.int32)
  return {
      "inputs": inputs_BxT,
      "targets": targets_BxT,
      "mask": np.ones(inputs_BxT.shape, np.float32),
  }
