"""Per-token statistics of held-out text, decoded back to text: what a model finds hard, token by token.

On the first rows of held-out batch 0 (the batch every evaluation starts
with), each predicted token's loss −log q(x_{t+1} | x≤t) and the entropy of the
model's conditional H(q(·|x≤t)), in nats. Tokens are named by the run's
tokenizer when it trained on a `lensjax prepare` directory, by their byte for
`data.source=bytes`, else by their id. `lensjax tokens` prints them and writes
WORKDIR/tokens.json, which `lensjax report` shows.
"""

from __future__ import annotations

import jax
import numpy as np

from lensjax.data.tokenizer import Detokenizer
from lensjax.model import Transformer, head_matrix
from lensjax.train.loss import token_statistics

TOKENS_FILE = "tokens.json"


def token_namer(config):
  """`ids -> (texts, whole text)` for the run's data."""
  detokenizer = Detokenizer.from_run_config(config)
  if detokenizer is not None:
    return lambda ids: (detokenizer.token_texts(ids), detokenizer.decode(ids))
  if config.data.source == "bytes":
    as_text = lambda ids: bytes(int(i) for i in ids).decode("utf-8", errors="replace")
    return lambda ids: ([as_text([i]) for i in ids], as_text(ids))
  return lambda ids: ([str(int(i)) for i in ids], " ".join(str(int(i)) for i in ids))


def per_token(params, batch: dict, model_cfg) -> dict:
  """Per-token `nll` and `entropy` [B, T] (float32) of a batch, as the logging step computes them."""
  h_BxTxD, _ = Transformer(model_cfg).apply({"params": params}, batch["inputs"], batch["mask"], return_hidden=True)
  return token_statistics(h_BxTxD, head_matrix(params, model_cfg), batch["targets"], model_cfg.vocab_size,
                          with_entropy=True)


def held_out_tokens(params, config, source, rows: int, max_tokens: int) -> dict:
  """The first `rows` held-out sequences: decoded text and, per predicted token, its text, loss and entropy."""
  batch = source.batch(0, max(rows, 1), split="heldout")
  stats = jax.device_get(jax.jit(per_token, static_argnums=2)(params, batch, config.model))
  name = token_namer(config)
  sequences = []
  for row in range(rows):
    real = int(np.sum(batch["mask"][row] > 0))
    count = min(real, max_tokens)
    targets = batch["targets"][row, :count]
    texts, whole = name(targets)
    context, context_text = name(batch["inputs"][row, :1])
    sequences.append({
        "first_token": context_text, "text": whole,
        "tokens": [{"text": text, "id": int(token), "nll": float(nll), "entropy": float(entropy)}
                   for text, token, nll, entropy in zip(texts, targets, stats["nll"][row, :count],
                                                        stats["entropy"][row, :count])]})
  every = [t for s in sequences for t in s["tokens"]]
  return {"rows": sequences, "mean_nll": float(np.mean([t["nll"] for t in every])) if every else float("nan"),
          "mean_entropy": float(np.mean([t["entropy"] for t in every])) if every else float("nan"),
          "decoded_with": ("tokenizer" if Detokenizer.from_run_config(config) is not None
                           else "bytes" if config.data.source == "bytes" else "ids")}


def hardest(results: dict, count: int = 10) -> list[dict]:
  """The `count` tokens with the highest loss, with their row and position."""
  every = [{**token, "row": r, "position": p} for r, row in enumerate(results["rows"])
           for p, token in enumerate(row["tokens"])]
  return sorted(every, key=lambda t: -t["nll"])[:count]


def summary(results: dict, step: int) -> str:
  lines = [f"held-out batch 0 at step {step}: {sum(len(r['tokens']) for r in results['rows'])} predicted tokens, "
           f"mean loss {results['mean_nll']:.4f} nats, mean entropy {results['mean_entropy']:.4f} nats "
           f"(tokens named by {results['decoded_with']})"]
  for i, row in enumerate(results["rows"]):
    lines.append(f"row {i}: {row['first_token']!r} + {row['text']!r}")
  lines.append("highest-loss tokens (row, position, token, loss, entropy):")
  lines += [f"  {t['row']:3d} {t['position']:5d}  {t['text']!r:>16}  {t['nll']:8.4f}  {t['entropy']:8.4f}"
            for t in hardest(results)]
  return "\n".join(lines)
