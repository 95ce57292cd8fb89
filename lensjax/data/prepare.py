"""`lensjax prepare`: text files to a directory of token ids that `data.source=tokens` trains on.

Everything is checked and computed in memory before the first byte is written: bad input (a missing path,
a binary or empty file, a vocabulary the corpus cannot fill, an output directory holding another corpus)
leaves the disk as it was. The outputs are a pure function of the inputs' bytes and the flags.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import sys
import tempfile
import time

from lensjax.data import corpus, prepared
from lensjax.data import tokenizer as tokenizer_lib
from lensjax.errors import InputError

DEFAULT_VOCAB_SIZE = 8192
DEFAULT_VAL_FRACTION = 0.05


def _log(message: str) -> None:
  print(f"prepare: {message}", file=sys.stderr, flush=True)


def _megabytes(num_bytes: int) -> str:
  return f"{num_bytes / 1e6:.1f} MB"


def command_line(args) -> str:
  """The canonical command that reproduces these outputs (recorded in meta.json)."""
  parts = ["lensjax", "prepare", "--input", *args.input, "--out", args.out]
  if args.tokenizer:
    parts += ["--tokenizer", args.tokenizer]
  else:
    parts += ["--vocab-size", str(args.vocab_size or DEFAULT_VOCAB_SIZE)]
  if args.val_input:
    parts += ["--val-input", *args.val_input]
  else:
    parts += ["--val-fraction", repr(args.val_fraction or DEFAULT_VAL_FRACTION), "--seed", str(args.seed)]
  return shlex.join(parts)


def _settings(args) -> dict:
  return {"vocab_size": None if args.tokenizer else (args.vocab_size or DEFAULT_VOCAB_SIZE),
          "tokenizer": args.tokenizer or None, "seed": args.seed,
          "val_fraction": None if args.val_input else (args.val_fraction or DEFAULT_VAL_FRACTION)}


def _identity(inputs: list[dict], settings) -> dict:
  """What makes two corpora the same: every input's path, size and digest, and the flags."""
  files = sorted(({key: r.get(key) for key in ("path", "bytes", "sha256")} for r in inputs), key=lambda r: r["path"])
  return {"inputs": files, "settings": settings}


def _check_output_dir(out: str, identity: dict, force: bool) -> None:
  """Refuses a directory holding anything but this very corpus, unless --force."""
  if os.path.exists(out) and not os.path.isdir(out):
    raise InputError(f"--out {out} is a file; pass a directory for the prepared corpus.")
  if not os.path.isdir(out) or not os.listdir(out) or force:
    return
  meta_path = os.path.join(out, prepared.META_FILE)
  if not os.path.isfile(meta_path):
    raise InputError(f"--out {out} already holds files that are not a prepared corpus; pass an empty or new "
                     "directory, or --force to write into it.")
  try:
    with open(meta_path, encoding="utf-8") as f:
      old = json.load(f)
    same = _identity(old["inputs"], old["settings"]) == identity
  except (ValueError, KeyError, TypeError, AttributeError):
    same = False
  if not same:
    raise InputError(f"--out {out} already holds a different prepared corpus (other inputs or flags, see its "
                     f"{prepared.META_FILE}); pass a new directory, or --force to replace it.")


def _inputs_record(split: corpus.Split) -> list[dict]:
  sides = [(d, "train") for d in split.train] + [(d, "val") for d in split.val]
  return [{"path": d.name, "bytes": d.num_bytes, "sha256": d.sha256, "split": side}
          for d, side in sorted(sides, key=lambda pair: pair[0].name)]


def _write_outputs(out: str, files: dict[str, bytes]) -> None:
  """Writes every file beside `out` first, then moves them in, so a failure leaves no half corpus."""
  parent = os.path.dirname(os.path.abspath(out))
  try:
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".prepare-", dir=parent)
  except OSError as e:
    raise InputError(f"cannot write under {parent} ({e.strerror}); pass a writable --out.") from None
  try:
    for name, data in files.items():
      with open(os.path.join(staging, name), "wb") as f:
        f.write(data)
    os.makedirs(out, exist_ok=True)
    for name in files:
      os.replace(os.path.join(staging, name), os.path.join(out, name))
  finally:
    shutil.rmtree(staging, ignore_errors=True)


def prepare(args) -> dict:
  """Builds the directory `args.out`; returns its meta.json content."""
  started = time.perf_counter()
  documents = corpus.read_documents(args.input, "--input")
  given_val = corpus.read_documents(args.val_input, "--val-input") if args.val_input else []
  if args.tokenizer and args.vocab_size:
    raise InputError("--vocab-size and --tokenizer both set the vocabulary; pass only one of them.")
  settings = _settings(args)
  total_bytes = sum(d.num_bytes for d in documents + given_val)
  _log(f"read {len(documents) + len(given_val)} documents ({_megabytes(total_bytes)}) in "
       f"{time.perf_counter() - started:.1f} s")
  records = [{"path": d.name, "bytes": d.num_bytes, "sha256": d.sha256} for d in documents + given_val]
  _check_output_dir(args.out, _identity(records, settings), args.force)

  split = (corpus.split_with_given_validation(documents, given_val) if given_val
           else corpus.split_by_document(documents, settings["val_fraction"], args.seed))
  if split.duplicates:
    first = split.duplicates[0]
    _log(f"{len(split.duplicates)} groups of near-duplicates, each kept on one side (listed in meta.json), "
         f"e.g. {' and '.join(first)}")
  _log(f"split: {len(split.train)} training and {len(split.val)} validation documents "
       f"({_megabytes(sum(d.num_bytes for d in split.val))} of validation)")

  tick = time.perf_counter()
  if args.tokenizer:
    tokenizer = tokenizer_lib.load_tokenizer(args.tokenizer)
  else:
    _log(f"training a byte-level BPE of {settings['vocab_size']:,} tokens on the training documents")
    tokenizer = tokenizer_lib.train_bpe([d.text for d in split.train], settings["vocab_size"])
  vocab_size = tokenizer.get_vocab_size()
  dtype = prepared.token_dtype_for(vocab_size)
  _log(f"tokenizer ready ({vocab_size:,} tokens) in {time.perf_counter() - tick:.1f} s; encoding")

  tick = time.perf_counter()
  progress = lambda done, total: _log(f"encoded {done / max(total, 1):.0%} of {_megabytes(total)}")
  train_ids = tokenizer_lib.encode_documents(tokenizer, [d.text for d in split.train], dtype, progress)
  val_ids = tokenizer_lib.encode_documents(tokenizer, [d.text for d in split.val], dtype)
  _log(f"encoded {len(train_ids):,} training and {len(val_ids):,} validation tokens in "
       f"{time.perf_counter() - tick:.1f} s")

  tokenizer_json = tokenizer.to_str(pretty=True).encode("utf-8")
  meta = {
      "format": prepared.FORMAT,
      "vocab_size": vocab_size,
      "token_dtype": dtype,
      "eot_id": tokenizer_lib.eot_id(tokenizer),
      "tokens": {"train": int(len(train_ids)), "val": int(len(val_ids))},
      "documents": {"train": len(split.train), "val": len(split.val)},
      "split": {"method": split.method, "val_fraction": settings["val_fraction"], "seed": args.seed,
                "val_documents": [d.name for d in split.val], "duplicate_groups": split.duplicates,
                "duplicate_rule": f"Jaccard >= {corpus.DUPLICATE_JACCARD} of folded word "
                                  f"{corpus.SHINGLE_WORDS}-shingles"},
      "tokenizer": {"source": args.tokenizer or "byte-level BPE trained on the training documents",
                    "sha256": hashlib.sha256(tokenizer_json).hexdigest()},
      "inputs": _inputs_record(split),
      "settings": settings,
      "command": command_line(args),
  }
  _write_outputs(args.out, {
      prepared.TRAIN_FILE: train_ids.tobytes(),
      prepared.VAL_FILE: val_ids.tobytes(),
      prepared.TOKENIZER_FILE: tokenizer_json,
      prepared.META_FILE: (json.dumps(meta, indent=1) + "\n").encode("utf-8"),
  })
  _log(f"wrote {args.out} in {time.perf_counter() - started:.1f} s")
  return meta


def _run(args, extra: list[str]) -> int:
  if extra:
    raise InputError(f"lensjax prepare takes no {' '.join(extra)}; see lensjax prepare --help.")
  meta = prepare(args)
  print(f"{args.out}: {meta['tokens']['train']:,} training and {meta['tokens']['val']:,} validation tokens, "
        f"vocabulary {meta['vocab_size']:,} ({meta['token_dtype']}); train with "
        f"--config.data.source=tokens --config.data.path={args.out}")
  return 0


def add_parser(commands) -> None:
  parser = commands.add_parser("prepare", help="tokenise text files into train.bin/val.bin with a BPE tokenizer "
                               "trained on them (data.source=tokens, data.path=DIR)")
  parser.add_argument("--input", nargs="+", required=True, metavar="PATH",
                      help="text files or directories of them (UTF-8); each file is one document")
  parser.add_argument("--out", required=True, metavar="DIR", help="the directory that receives the corpus")
  parser.add_argument("--vocab-size", type=int, default=None, metavar="N",
                      help=f"vocabulary of the trained byte-level BPE (default {DEFAULT_VOCAB_SIZE})")
  parser.add_argument("--tokenizer", default=None, metavar="FILE",
                      help="use this tokenizer.json instead of training one")
  held_out = parser.add_mutually_exclusive_group()
  held_out.add_argument("--val-fraction", type=float, default=None, metavar="F",
                        help=f"share of the bytes held out, as whole documents (default {DEFAULT_VAL_FRACTION})")
  held_out.add_argument("--val-input", nargs="+", default=None, metavar="PATH",
                        help="validation documents given explicitly instead")
  parser.add_argument("--seed", type=int, default=0, help="seed of the choice of validation documents")
  parser.add_argument("--force", action="store_true", help="replace a different corpus already in --out")
  parser.set_defaults(handler=_run)
