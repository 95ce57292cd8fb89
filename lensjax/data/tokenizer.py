"""Byte-level BPE with Hugging Face `tokenizers`: training, encoding, and decoding a run's tokens.

`tokenizers` is imported inside these functions only: training on a prepared directory reads its `.bin`
files and never needs it, so a machine without it (or without a network) trains all the same.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import numpy as np

from lensjax.data import prepared
from lensjax.errors import InputError

EOT = "<|endoftext|>"
MIN_VOCAB = 257  # the 256 bytes of the byte-level alphabet and the end-of-text token


def _tokenizers():
  try:
    import tokenizers  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise InputError("lensjax prepare needs the `tokenizers` package; install it with pip install tokenizers "
                     "(or pip install -e .).") from None
  return tokenizers


def train_bpe(texts: Sequence[str], vocab_size: int):
  """A byte-level BPE of `vocab_size` ids (end-of-text is id 0) trained on `texts`; InputError when the
  texts hold too few distinct pairs to reach it."""
  if vocab_size < MIN_VOCAB:
    raise InputError(f"--vocab-size {vocab_size} is below {MIN_VOCAB}, the 256 bytes plus end-of-text of a "
                     f"byte-level BPE; pass at least {MIN_VOCAB}.")
  tk = _tokenizers()
  tokenizer = tk.Tokenizer(tk.models.BPE())
  tokenizer.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False)
  tokenizer.decoder = tk.decoders.ByteLevel()
  trainer = tk.trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, show_progress=False,
                                   special_tokens=[EOT], initial_alphabet=tk.pre_tokenizers.ByteLevel.alphabet())
  tokenizer.train_from_iterator(texts, trainer=trainer, length=len(texts))
  reached = tokenizer.get_vocab_size()
  if reached < vocab_size:
    raise InputError(f"--vocab-size {vocab_size:,} is too large for this corpus: its text supports only "
                     f"{reached:,} tokens (pairs seen at least twice); pass --vocab-size {reached} or less, or add text.")
  return tokenizer


def load_tokenizer(path: str):
  if not os.path.isfile(path):
    raise InputError(f"--tokenizer {path} does not exist; pass a tokenizer.json file.")
  try:
    return _tokenizers().Tokenizer.from_file(path)
  except Exception as e:  # the Rust side raises its own exception type for any malformed file
    raise InputError(f"--tokenizer {path} is not a tokenizer.json of Hugging Face tokenizers ({e}); pass one "
                     "written by tokenizers or by lensjax prepare.") from None


def eot_id(tokenizer) -> int | None:
  return tokenizer.token_to_id(EOT)


def encode_documents(tokenizer, texts: Sequence[str], dtype: str,
                     progress: Callable[[int, int], None] = lambda done, total: None) -> np.ndarray:
  """The ids of the documents, each followed by end-of-text when the tokenizer has it, as one array."""
  separator = eot_id(tokenizer)
  tail = [] if separator is None else [separator]
  parts, total_bytes, done_bytes = [], sum(len(t) for t in texts), 0
  batch = []
  for index, text in enumerate(texts):
    batch.append(text)
    if sum(len(t) for t in batch) >= 4_000_000 or index == len(texts) - 1:
      # encode_batch spreads the documents of a batch over the cores
      for encoding in tokenizer.encode_batch(batch, add_special_tokens=False):
        parts.append(np.asarray(encoding.ids + tail, dtype=np.dtype(dtype).newbyteorder("<")))
      done_bytes += sum(len(t) for t in batch)
      progress(done_bytes, total_bytes)
      batch = []
  if not parts:
    return np.zeros(0, np.dtype(dtype).newbyteorder("<"))
  return np.concatenate(parts)


class Detokenizer:
  """Turns a run's token ids back into text with the tokenizer of its prepared directory."""

  def __init__(self, tokenizer):
    self.tokenizer = tokenizer

  @classmethod
  def from_dir(cls, directory: str) -> "Detokenizer | None":
    """The tokenizer of a prepared directory, or None when it has none or `tokenizers` is not installed."""
    path = os.path.join(directory, prepared.TOKENIZER_FILE)
    if not prepared.is_prepared_dir(directory) or not os.path.isfile(path):
      return None
    try:
      import tokenizers  # pylint: disable=import-outside-toplevel
    except ImportError:
      return None
    return cls(tokenizers.Tokenizer.from_file(path))

  @classmethod
  def from_run_config(cls, config) -> "Detokenizer | None":
    """None unless the run trained on a prepared directory (data.source=tokens, data.path=DIR)."""
    if config.data.source != "tokens":
      return None
    return cls.from_dir(config.data.path)

  def decode(self, ids: Sequence[int]) -> str:
    return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=False)

  def token_texts(self, ids: Sequence[int]) -> list[str]:
    """Each id's own text; a byte that ends inside a multi-byte character shows as U+FFFD."""
    return [self.tokenizer.decode([int(i)], skip_special_tokens=False) for i in ids]
