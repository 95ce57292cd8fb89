"""Attention lenses: bypass through the residual, entropy per head, max logit, sink.

The summaries are computed inside the attention layer (explicit-softmax path),
where the B×H×T×T probabilities already exist; here they only get their names.
"""

from __future__ import annotations

_NAMES = {"attn_bypass": "attn/bypass", "attn_entropy": "attn/entropy", "attn_max_logit": "attn/max_logit",
          "attn_sink": "attn/sink"}


def attention_lens(view) -> dict:
  return {name: view.aux[key] for key, name in _NAMES.items() if key in view.aux}


def eval_attention_lens(view) -> dict:
  return {"eval/" + name: value for name, value in attention_lens(view).items()}
