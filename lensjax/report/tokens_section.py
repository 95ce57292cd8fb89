"""The report's held-out text: what `lensjax tokens` wrote (WORKDIR/tokens.json), decoded, with the hardest tokens."""

from __future__ import annotations

import json
import os
from typing import Sequence

from lensjax.analysis.tokens import TOKENS_FILE, hardest
from lensjax.report.runs import RunRecord

SHOWN_CHARACTERS = 600


def read_tokens_file(run: RunRecord) -> dict | None:
  path = os.path.join(run.path, TOKENS_FILE)
  if not os.path.isfile(path):
    return None
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except (OSError, ValueError):
    return None  # a partial file: the page goes on without it


def _quoted(text: str) -> str:
  shown = text if len(text) <= SHOWN_CHARACTERS else text[:SHOWN_CHARACTERS] + " …"
  return "\n".join("> " + line if line else ">" for line in shown.replace("\r", "").split("\n"))


def _cell(text: str) -> str:
  return "`" + text.replace("`", "'").replace("|", "\\|").replace("\n", "\\n") + "`"


def tokens_markdown(runs: Sequence[RunRecord], prefixes: Sequence[str]) -> str:
  """A section per run that has a tokens.json; "" when none has."""
  parts = []
  for run, prefix in zip(runs, prefixes):
    found = read_tokens_file(run)
    if found is None or not found.get("rows"):
      continue
    row = found["rows"][0]
    parts += [f"### {prefix}: held-out text at step {found['step']}", "",
              f"Held-out batch 0, row 0, tokens named by the run's {found['decoded_with']} (`lensjax tokens`); "
              f"mean loss {found['mean_nll']:.4f} and mean model entropy {found['mean_entropy']:.4f} nats per "
              "token over the rows it shows.", "", _quoted(row["first_token"] + row["text"]), "",
              "| row | position | token | loss (nats) | model entropy (nats) |", "|---|---|---|---|---|"]
    parts += [f"| {t['row']} | {t['position']} | {_cell(t['text'])} | {t['nll']:.3f} | {t['entropy']:.3f} |"
              for t in hardest(found)]
    parts.append("")
  return ("## Held-out text, token by token\n\n" + "\n".join(parts)) if parts else ""
