"""The directory `lensjax prepare` writes, as training reads it: file names and `meta.json`.

    DIR/train.bin       token ids of the training documents, end-of-text between documents
    DIR/val.bin         the same for the validation documents
    DIR/tokenizer.json  the Hugging Face tokenizer that made them
    DIR/meta.json       vocabulary size, id dtype, token counts, inputs, split, command

Reading it needs no `tokenizers`: a GPU machine without it trains on the `.bin` files alone.
"""

from __future__ import annotations

import dataclasses
import json
import os

from lensjax.errors import InputError

FORMAT = "lensjax-prepared/1"
TRAIN_FILE, VAL_FILE, TOKENIZER_FILE, META_FILE = "train.bin", "val.bin", "tokenizer.json", "meta.json"
OUTPUT_FILES = (TRAIN_FILE, VAL_FILE, TOKENIZER_FILE, META_FILE)


def token_dtype_for(vocab_size: int) -> str:
  """The narrowest id dtype that holds every id of the vocabulary."""
  return "uint16" if vocab_size <= 2**16 else "uint32"


def is_prepared_dir(path: str) -> bool:
  return bool(path) and os.path.isdir(path) and os.path.isfile(os.path.join(path, META_FILE))


@dataclasses.dataclass(frozen=True)
class PreparedMeta:
  directory: str
  vocab_size: int
  token_dtype: str
  eot_id: int | None  # the end-of-text id between documents, None when the tokenizer has none
  raw: dict

  def file(self, name: str) -> str:
    return os.path.join(self.directory, name)


def read_meta(directory: str) -> PreparedMeta:
  """The meta.json of a prepared directory, checked; InputError names the directory and the fix."""
  path = os.path.join(directory, META_FILE)
  redo = f"run `lensjax prepare --out {directory} ...` again"
  if not os.path.isfile(path):
    raise InputError(f"data.path {directory!r} is a directory without {META_FILE}; point it at a directory "
                     "written by `lensjax prepare` or at a .bin file.")
  try:
    with open(path, encoding="utf-8") as f:
      raw = json.load(f)
    meta = PreparedMeta(directory, int(raw["vocab_size"]), str(raw["token_dtype"]), raw.get("eot_id"), raw)
  except (ValueError, KeyError, TypeError) as e:
    raise InputError(f"{path} is not a meta.json of `lensjax prepare` ({e!r}); {redo}.") from None
  if raw.get("format") != FORMAT or meta.token_dtype not in ("uint16", "uint32") or meta.vocab_size < 2:
    raise InputError(f"{path} is not a {FORMAT} meta.json; {redo}.")
  return meta


def prepared_vocab_size(directory: str) -> int:
  return read_meta(directory).vocab_size


def vocab_conflict(directory: str, model_vocab_size: int) -> str | None:
  """The sentence refusing an explicit model.vocab_size that differs from the directory's, or None."""
  vocab_size = prepared_vocab_size(directory)
  if model_vocab_size in (0, vocab_size):
    return None
  return (f"model.vocab_size={model_vocab_size} differs from the vocabulary of {vocab_size:,} tokens in "
          f"{os.path.join(directory, META_FILE)}; drop the override or pass --config.model.vocab_size=0 to take it "
          "from the prepared directory.")


def with_prepared_vocab(config):
  """`config` with model.vocab_size and data.token_dtype taken from a prepared data.path (else unchanged).

  Runs before `config.resolve`, so that model.vocab_size=0 means the tokenizer's vocabulary and the run's
  config.json records it.
  """
  d = config.data
  if d.source != "tokens" or not is_prepared_dir(d.path):
    return config
  problem = vocab_conflict(d.path, config.model.vocab_size)
  if problem:
    raise InputError(problem)
  meta = read_meta(d.path)
  return dataclasses.replace(config, model=dataclasses.replace(config.model, vocab_size=meta.vocab_size),
                             data=dataclasses.replace(d, token_dtype=meta.token_dtype))
