"""A corpus as whole documents: reading text files, finding near-duplicates, splitting by document.

A document is one input file. The split never cuts a document, and near-duplicate documents (one work in
two editions, a file given twice) are grouped and always land on the same side, so validation text never
leaks into training. Near-duplicates are found on a spelling-folded word sequence: lower case, letters
only, u/v and i/j merged, and each word reduced to its first letter and its consonants with doubled letters
collapsed ("vnfold" and "unfold" become "unfld", "selfe" and "self" "slf"). Two documents are
near-duplicates when the Jaccard similarity of their sets of folded word 3-shingles is at least
`DUPLICATE_JACCARD`, estimated from bottom-k sketches of 64-bit shingle hashes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import zlib

import numpy as np

from lensjax.errors import InputError

# Two editions of one play share ~30-60% of their folded shingles, two different works under 5%.
DUPLICATE_JACCARD = 0.15
SKETCH_SIZE = 1024
SHINGLE_WORDS = 3
_WORD = re.compile(r"[a-z]+")
_FOLD = str.maketrans({"v": "u", "j": "i"})
_VOWELS = re.compile(r"(?<!^)[aeiouy]")
_DOUBLES = re.compile(r"(.)\1+")


@dataclasses.dataclass(frozen=True)
class Document:
  name: str  # the path as found: the input path, or the input directory joined with the relative path
  text: str
  num_bytes: int
  sha256: str


def _files_under(path: str) -> list[str]:
  """Every non-hidden file under a directory, in sorted order of relative path (stable across machines)."""
  found = []
  for root, dirs, files in os.walk(path):
    dirs[:] = sorted(d for d in dirs if not d.startswith("."))
    found += [os.path.join(root, f) for f in sorted(files) if not f.startswith(".")]
  return sorted(found, key=lambda f: os.path.relpath(f, path))


def input_files(paths: list[str], flag: str = "--input") -> list[str]:
  """The files that `paths` name (directories expanded), each once; InputError for a missing path."""
  files = []
  for path in paths:
    if not os.path.exists(path):
      raise InputError(f"{flag} {path} does not exist; pass an existing text file or directory.")
    files += _files_under(path) if os.path.isdir(path) else [path]
    if os.path.isdir(path) and not _files_under(path):
      raise InputError(f"{flag} {path} is a directory without files; pass a directory of text files.")
  unique = list(dict.fromkeys(files))
  return unique


def read_document(path: str) -> Document:
  """One UTF-8 text file (CRLF read as LF); InputError for a binary or empty file."""
  with open(path, "rb") as f:
    data = f.read()
  digest = hashlib.sha256(data).hexdigest()
  if b"\x00" in data:
    raise InputError(f"{path} is a binary file (it holds NUL bytes); pass text files only.")
  try:
    text = data.decode("utf-8")
  except UnicodeDecodeError as e:
    raise InputError(f"{path} is not UTF-8 text (byte {e.start:,} does not decode); pass UTF-8 text files or "
                     "convert it (iconv -t utf-8).") from None
  text = text.replace("\r\n", "\n").lstrip("\ufeff")
  if not text.strip():
    raise InputError(f"{path} holds no text; remove it from the inputs.")
  return Document(path, text, len(data), digest)


def read_documents(paths: list[str], flag: str = "--input") -> list[Document]:
  return [read_document(f) for f in input_files(paths, flag)]


# --------------------------------------------------------------------------
# Near-duplicates.


def folded_words(text: str) -> list[str]:
  """The spelling-folded words of a text (see the module docstring)."""
  words = _WORD.findall(text.lower().translate(_FOLD))
  return [_DOUBLES.sub(r"\1", _VOWELS.sub("", w)) for w in words]


def _mix64(x: np.ndarray) -> np.ndarray:
  """splitmix64's finaliser: a deterministic 64-bit hash of uint64s."""
  with np.errstate(over="ignore"):
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def shingle_sketch(text: str, size: int = SKETCH_SIZE) -> np.ndarray:
  """uint64 [<= size]: the smallest hashes of the text's folded word shingles, sorted."""
  words = folded_words(text)
  cache: dict[str, int] = {}
  ids = np.array([cache.setdefault(w, zlib.crc32(w.encode())) for w in words], np.uint64)
  if len(ids) < SHINGLE_WORDS:
    ids = np.concatenate([ids, np.zeros(SHINGLE_WORDS - len(ids), np.uint64)])
  hashes = np.zeros(len(ids) - SHINGLE_WORDS + 1, np.uint64)
  for offset in range(SHINGLE_WORDS):
    hashes = _mix64(hashes ^ ids[offset:len(ids) - SHINGLE_WORDS + 1 + offset])
  return np.unique(hashes)[:size]


def sketch_jaccard(a: np.ndarray, b: np.ndarray, size: int = SKETCH_SIZE) -> float:
  """Bottom-k estimate of the Jaccard similarity of two shingle sets from their sketches."""
  union = np.union1d(a, b)[:size]
  both = np.isin(union, a, assume_unique=True) & np.isin(union, b, assume_unique=True)
  return float(both.sum() / max(len(union), 1))


def duplicate_groups(documents: list[Document], threshold: float = DUPLICATE_JACCARD) -> list[list[int]]:
  """Indices of the documents grouped by near-duplication (transitively), each group sorted, in order."""
  sketches = [shingle_sketch(d.text) for d in documents]
  parent = list(range(len(documents)))

  def root(i: int) -> int:
    while parent[i] != i:
      parent[i] = parent[parent[i]]
      i = parent[i]
    return i

  for i in range(len(documents)):
    for j in range(i + 1, len(documents)):
      if root(i) != root(j) and sketch_jaccard(sketches[i], sketches[j]) >= threshold:
        parent[max(root(i), root(j))] = min(root(i), root(j))
  groups: dict[int, list[int]] = {}
  for i in range(len(documents)):
    groups.setdefault(root(i), []).append(i)
  return sorted(groups.values())


# --------------------------------------------------------------------------
# The split.


@dataclasses.dataclass(frozen=True)
class Split:
  train: list[Document]
  val: list[Document]
  duplicates: list[list[str]]  # names of the near-duplicate groups of two or more documents
  method: str


def split_by_document(documents: list[Document], val_fraction: float, seed: int) -> Split:
  """Whole groups of near-duplicates, in an order drawn from `seed`, go to validation until it holds
  `val_fraction` of the corpus's bytes; the rest, in input order, is the training set."""
  if not 0 < val_fraction < 1:
    raise InputError(f"--val-fraction {val_fraction} must lie strictly between 0 and 1; pass e.g. 0.05.")
  groups = duplicate_groups(documents)
  if len(groups) < 2:
    raise InputError(f"the {len(documents)} input document(s) form one group of near-duplicates, which cannot be "
                     "split into training and validation without leaking; pass more documents or --val-input.")
  total = sum(d.num_bytes for d in documents)
  order = np.random.default_rng([int(seed), 16]).permutation(len(groups))
  val_indices: set[int] = set()
  for g in order:
    if sum(documents[i].num_bytes for i in val_indices) >= val_fraction * total:
      break
    if len(val_indices) + len(groups[g]) >= len(documents):
      continue  # training keeps at least one group
    val_indices |= set(groups[g])
  train = [d for i, d in enumerate(documents) if i not in val_indices]
  val = [d for i, d in enumerate(documents) if i in val_indices]
  duplicates = [[documents[i].name for i in g] for g in groups if len(g) > 1]
  return Split(train, val, duplicates, f"whole documents, near-duplicates together, seed {seed}")


def split_with_given_validation(train: list[Document], val: list[Document]) -> Split:
  """Validation documents given by the user; a near-duplicate across the two sides is refused."""
  groups = duplicate_groups(train + val)
  for group in groups:
    sides = {i < len(train) for i in group}
    if len(sides) == 2:
      names = [(train + val)[i].name for i in group]
      raise InputError(f"{' and '.join(names)} are near-duplicates on both sides of the split; remove one copy or "
                       "put them on the same side.")
  duplicates = [[(train + val)[i].name for i in g] for g in groups if len(g) > 1]
  return Split(train, val, duplicates, "validation given with --val-input")
