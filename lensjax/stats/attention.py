"""Attention lenses: bypass through the residual, entropy per head, max logit, sink.

The summaries are computed inside the attention layer on the explicit-softmax
(`xla`) path, where the B×H×T×T probabilities already exist; here they only get
their names. The fused cuDNN kernel never exposes its probabilities, so with
`attention=cudnn` the logging step recomputes the forward pass with the `xla`
path on the first `stats.attention_sub_batch` rows of the batch for the
entropy, max-logit and sink statistics (the bypass ratio needs no
probabilities and still covers the whole batch).
"""

from __future__ import annotations

import dataclasses

import jax

from lensjax.config import ModelConfig
from lensjax.model import Transformer

_NAMES = {"attn_bypass": "attn/bypass", "attn_entropy": "attn/entropy", "attn_max_logit": "attn/max_logit",
          "attn_sink": "attn/sink"}


def attention_lens(view) -> dict:
  return {name: view.aux[key] for key, name in _NAMES.items() if key in view.aux}


def eval_attention_lens(view) -> dict:
  return {"eval/" + name: value for name, value in attention_lens(view).items()}


def sub_batch_attention_lens_for(cfg: ModelConfig, rows: int):
  """For cuDNN attention: probability-based statistics from an `xla` forward on `rows` rows."""
  explicit = Transformer(dataclasses.replace(cfg, attention="xla"), collect_stats=True)

  def lens(view) -> dict:
    inputs, mask = view.batch["inputs"][:rows], view.batch["mask"][:rows]
    _, aux = explicit.apply({"params": jax.lax.stop_gradient(view.params)}, inputs, mask, return_hidden=True)
    return {name: aux[key] for key, name in _NAMES.items() if key in aux and key != "attn_bypass"}

  return lens
