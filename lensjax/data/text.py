"""Text sources: random windows of a byte file, a pre-tokenised id file or a prepared directory.

Files are memory-mapped, never loaded, so corpora larger than host memory
work and each process reads only the windows of its own rows. In one file the
last `heldout_fraction` is the held-out region, so held-out windows never
overlap training windows (except for the T tokens at the seam); a directory of
`lensjax prepare` holds its validation documents in a file of their own.
"""

from __future__ import annotations

import functools
import math
import numbers
import os

import numpy as np

from lensjax.data import base
from lensjax.data import prepared
from lensjax.errors import InputError

# nanoGPT's `.bin` files are little-endian ids written with `ndarray.tofile`.
TOKEN_DTYPES = {"uint16": np.dtype("<u2"), "uint32": np.dtype("<u4")}

# Files up to this many tokens are scanned for out-of-vocabulary ids when
# opened (a fraction of a second); longer ones are checked window by window.
FULL_SCAN_MAX_TOKENS = 2**26
_SCAN_CHUNK_TOKENS = 2**22

DEFAULT_CORPUS_NAME = "the built-in corpus (CPython's pydoc_data.topics)"


@functools.cache
def default_corpus_bytes() -> bytes:
  """English text shipped with CPython (its help topics), ~0.5 MB, UTF-8.

  Needs no download, so smoke tests and examples run offline; its exact
  content follows the Python version.
  """
  try:
    from pydoc_data import topics  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise InputError(
        "The built-in corpus needs CPython's pydoc_data module, which this "
        "Python lacks; point the data source at a text file instead.") from e
  return "\n\n".join(topics.topics.values()).encode("utf-8")


def open_token_file(path: str, dtype: np.dtype) -> np.ndarray:
  """Read-only memmap of a file of `dtype` ids, after checking its size."""
  if not os.path.exists(path):
    raise InputError(f"Data file {path!r} does not exist; check the path.")
  if not os.path.isfile(path):
    raise InputError(f"Data path {path!r} is not a regular file; point it "
                     "at a file.")
  size = os.path.getsize(path)
  if size == 0:
    raise InputError(f"Data file {path!r} is empty; point it at a file with "
                     "data.")
  if size % dtype.itemsize:
    raise InputError(
        f"Data file {path!r} has {size:,} bytes, not a multiple of the "
        f"{dtype.itemsize}-byte ids of dtype {dtype.name}; check the dtype or "
        "whether the file is truncated.")
  return np.memmap(path, dtype=dtype, mode="r")


def first_out_of_vocab(tokens_N: np.ndarray, vocab_size: int,
                       offset: int = 0) -> tuple[int, int] | None:
  """(position, id) of the first id >= vocab_size, scanning in chunks."""
  for start in range(0, len(tokens_N), _SCAN_CHUNK_TOKENS):
    chunk = np.asarray(tokens_N[start:start + _SCAN_CHUNK_TOKENS])
    if chunk.max() >= vocab_size:
      where = int(np.argmax(chunk >= vocab_size))
      return offset + start + where, int(chunk[where])
  return None


def minimum_tokens(seq_len: int, heldout_fraction: float) -> int:
  """Fewest tokens that leave a window of seq_len+1 in each split."""
  window = seq_len + 1
  num_tokens = max(2 * window, math.ceil(window / (1 - heldout_fraction)) - 2)
  while num_tokens - heldout_size(num_tokens, seq_len,
                                  heldout_fraction) < window:
    num_tokens += 1
  return num_tokens


def heldout_size(num_tokens: int, seq_len: int,
                 heldout_fraction: float) -> int:
  """Tokens at the end of the file reserved for the held-out split."""
  return max(int(num_tokens * heldout_fraction), seq_len + 1)


def _require_windows(name: str, tokens_N: np.ndarray, seq_len: int,
                     what: str) -> None:
  if len(tokens_N) < seq_len + 2:
    raise InputError(
        f"Data file {name!r} holds {len(tokens_N):,} {what} tokens but "
        f"seq_len={seq_len} needs at least {seq_len + 2:,}; prepare more "
        f"{what} text or use a smaller seq_len.")


class _TokenWindows:
  """Random windows of T+1 tokens from a 1-D id array; see `base.Source`."""

  knows_conditionals = False

  def __init__(self, tokens_N: np.ndarray, *, name: str, vocab_size: int,
               seq_len: int, seed: int, heldout_fraction: float,
               scan_vocab: bool = True, heldout_tokens_M: np.ndarray | None = None,
               heldout_name: str = ""):
    if not isinstance(seq_len, numbers.Integral) or seq_len < 1:
      raise InputError(f"seq_len={seq_len!r} must be a positive integer.")
    if not (isinstance(heldout_fraction, numbers.Real)
            and 0 < heldout_fraction < 1):
      raise InputError(f"heldout_fraction={heldout_fraction!r} must lie "
                       "strictly between 0 and 1.")
    num_tokens = len(tokens_N)
    needed = minimum_tokens(int(seq_len), float(heldout_fraction))
    if heldout_tokens_M is not None:
      _require_windows(name, tokens_N, seq_len, "training")
      _require_windows(heldout_name, heldout_tokens_M, seq_len, "validation")
    elif num_tokens < needed:
      raise InputError(
          f"Data file {name!r} holds {num_tokens:,} tokens but seq_len="
          f"{seq_len} with heldout_fraction={heldout_fraction} needs at least "
          f"{needed:,}; use a longer file or a smaller seq_len.")
    self.name = name
    self.file_names = {"train": name, "heldout": heldout_name or name}
    self.tokens = tokens_N
    self.vocab_size = int(vocab_size)
    self.seq_len = int(seq_len)
    self.seed = int(seed)
    self.heldout_fraction = float(heldout_fraction)
    if heldout_tokens_M is None:
      train_stop = num_tokens - heldout_size(num_tokens, self.seq_len,
                                             self.heldout_fraction)
      self.regions = {"train": (0, train_stop),
                      "heldout": (train_stop, num_tokens)}
      self._arrays = {"train": tokens_N, "heldout": tokens_N}
    else:
      self.regions = {"train": (0, num_tokens),
                      "heldout": (0, len(heldout_tokens_M))}
      self._arrays = {"train": tokens_N, "heldout": heldout_tokens_M}
    # Big files would take too long to scan up front; their windows are
    # checked as they are read instead.
    self._checks_each_window = scan_vocab and num_tokens > FULL_SCAN_MAX_TOKENS
    if scan_vocab and not self._checks_each_window:
      for split in ("train", "heldout") if heldout_tokens_M is not None else ("train",):
        self._raise_if_out_of_vocab(first_out_of_vocab(self._arrays[split], vocab_size), split)

  def window_starts(self, step: int, batch_size: int, split: str) -> np.ndarray:
    """int64 [batch_size]: offsets of the global batch's windows in the split's file."""
    stream_id = base.split_stream_id(split)
    start, stop = self.regions[split]
    num_starts = stop - start - self.seq_len
    rng = base.make_rng(self.seed, stream_id, step)
    return start + rng.integers(0, num_starts, size=batch_size, dtype=np.int64)

  def probe_starts(self, batch_size: int, split: str) -> np.ndarray:
    """int64 [batch_size]: the fixed probe's windows, spread evenly over the split's region."""
    base.split_stream_id(split)
    start, stop = self.regions[split]
    return start + base.evenly_spaced(batch_size, stop - start - self.seq_len)

  def batch(self, step: int, batch_size: int, *, split: str = "train",
            process_index: int = 0,
            process_count: int = 1) -> dict[str, np.ndarray]:
    """This process's rows of the step's global batch; see `base.Source`."""
    base.split_stream_id(split)
    step = base.check_step(step)
    rows = base.process_rows(batch_size, process_index, process_count)
    return self._windows(self.window_starts(step, batch_size, split)[rows], split)

  def probe(self, batch_size: int, *, split: str = "train",
            process_index: int = 0,
            process_count: int = 1) -> dict[str, np.ndarray]:
    """This process's rows of the split's fixed probe; see `base.Source`."""
    rows = base.process_rows(batch_size, process_index, process_count)
    return self._windows(self.probe_starts(batch_size, split)[rows], split)

  def _windows(self, starts_B: np.ndarray, split: str) -> dict[str, np.ndarray]:
    tokens_BxTp1 = np.asarray(
        self._arrays[split][starts_B[:, None] + np.arange(self.seq_len + 1)])
    if self._checks_each_window and tokens_BxTp1.max() >= self.vocab_size:
      row, col = np.argwhere(tokens_BxTp1 >= self.vocab_size)[0]
      self._raise_if_out_of_vocab(
          (int(starts_B[row]) + int(col), int(tokens_BxTp1[row, col])), split)
    return base.next_token_batch(tokens_BxTp1)

  def _raise_if_out_of_vocab(self, found: tuple[int, int] | None,
                             split: str = "train") -> None:
    if found is not None:
      position, token_id = found
      name = self.file_names[split]
      raise InputError(
          f"Data file {name!r} holds token id {token_id} at position "
          f"{position:,}, outside vocab_size={self.vocab_size}; set vocab_size "
          "to at least the tokenizer's vocabulary or check the dtype.")


class ByteText(_TokenWindows):
  """The raw bytes of a file as tokens (V = 256): no tokenizer needed."""

  def __init__(self, path: str, seq_len: int, seed: int,
               heldout_fraction: float = 0.05):
    super().__init__(open_token_file(path, np.dtype(np.uint8)), name=path,
                     vocab_size=256, seq_len=seq_len, seed=seed,
                     heldout_fraction=heldout_fraction, scan_vocab=False)
    self.path = path

  @classmethod
  def from_default_corpus(cls, seq_len: int, seed: int,
                          heldout_fraction: float = 0.05) -> "ByteText":
    """Bytes of `default_corpus_bytes()`, for runs that need no data file."""
    source = cls.__new__(cls)
    tokens_N = np.frombuffer(default_corpus_bytes(), np.uint8)
    _TokenWindows.__init__(source, tokens_N, name=DEFAULT_CORPUS_NAME,
                           vocab_size=256, seq_len=seq_len, seed=seed,
                           heldout_fraction=heldout_fraction, scan_vocab=False)
    source.path = None
    return source


class TokenFile(_TokenWindows):
  """A pre-tokenised file of little-endian uint16/uint32 ids (nanoGPT .bin)."""

  def __init__(self, path: str, seq_len: int, seed: int, vocab_size: int,
               dtype: str = "uint16", heldout_fraction: float = 0.05):
    if dtype not in TOKEN_DTYPES:
      raise InputError(f"dtype={dtype!r} for data file {path!r} is not "
                       f"supported; use one of {sorted(TOKEN_DTYPES)}.")
    if (not isinstance(vocab_size, numbers.Integral)
        or not 2 <= vocab_size <= np.iinfo(np.int32).max):
      raise InputError(f"vocab_size={vocab_size!r} for data file {path!r} "
                       "must be an integer between 2 and 2**31 - 1.")
    super().__init__(open_token_file(path, TOKEN_DTYPES[dtype]), name=path,
                     vocab_size=vocab_size, seq_len=seq_len, seed=seed,
                     heldout_fraction=heldout_fraction)
    self.path = path
    self.dtype = dtype


class PreparedTokens(_TokenWindows):
  """A directory of `lensjax prepare`: windows of train.bin, held-out windows of val.bin.

  The vocabulary and the id dtype are those of its meta.json; a run's
  model.vocab_size must equal the vocabulary (see `prepared.vocab_conflict`).
  """

  def __init__(self, directory: str, seq_len: int, seed: int,
               vocab_size: int):
    meta = prepared.read_meta(directory)
    problem = prepared.vocab_conflict(directory, vocab_size)
    if problem:
      raise InputError(problem)
    dtype = TOKEN_DTYPES[meta.token_dtype]
    train_path = meta.file(prepared.TRAIN_FILE)
    val_path = meta.file(prepared.VAL_FILE)
    super().__init__(open_token_file(train_path, dtype), name=train_path,
                     vocab_size=meta.vocab_size, seq_len=seq_len, seed=seed,
                     heldout_fraction=0.5,  # unused: val.bin is the held-out split
                     heldout_tokens_M=open_token_file(val_path, dtype),
                     heldout_name=val_path)
    self.path = directory
    self.dtype = meta.token_dtype
    self.meta = meta
