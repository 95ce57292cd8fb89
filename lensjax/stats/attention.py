"""Attention lenses: bypass through the residual, entropy per head, max logit, sink.

On the explicit-softmax (`xla`) path the model hands over each layer's scores
and probabilities. The fused cuDNN kernel never forms them, so with
`attention=cudnn` the lens reruns the forward pass on the `xla` path for the
first `sub_batch_rows` rows of the batch for the entropy, max-logit and sink
statistics (the bypass ratio needs no probabilities and covers the whole batch).
"""

from __future__ import annotations

import dataclasses

import jax

from lensjax.config import ModelConfig
from lensjax.model import EXPLICIT_ONLY, Transformer
from lensjax.ops.attention import attention_summaries, residual_ratio
from lensjax.ops.layers import map_layers
from lensjax.stats.lens import Lens

HEAD_HEATMAP = "attn/entropy"  # [L, H], drawn as a layer-by-head heat map
HISTORY = "attn/bypass"


class AttentionLens(Lens):
  """`attn/bypass`, `attn/max_logit`, `attn/sink` [L] and `attn/entropy` [L, H]."""
  name = "attention"

  def __init__(self, cfg: ModelConfig, sub_batch_rows: int | None = None):
    """`sub_batch_rows`: with cuDNN attention, rows for the probability statistics (None: bypass only)."""
    self.explicit = cfg.attention != "cudnn"
    self.needs = frozenset({"block_in", "attn_out"} | (set(EXPLICIT_ONLY) if self.explicit else set()))
    self.rows = sub_batch_rows
    self.explicit_model = Transformer(dataclasses.replace(cfg, attention="xla"), capture=EXPLICIT_ONLY)

  def update(self, state, view):
    mask_BxT = view.batch["mask"]
    captured = view.captured
    metrics = {"attn/bypass": map_layers(lambda y, x: residual_ratio(y, x, mask_BxT), captured["attn_out"],
                                         captured["block_in"])}
    if not self.explicit and self.rows:
      mask_BxT = mask_BxT[:self.rows]
      _, captured = self.explicit_model.apply({"params": jax.lax.stop_gradient(view.params)},
                                              view.batch["inputs"][:self.rows], mask_BxT, return_hidden=True)
    if self.explicit or self.rows:
      summaries = map_layers(lambda z, p: attention_summaries(z, p, mask_BxT), captured["attn_logits"],
                             captured["attn_probs"])
      metrics.update({f"attn/{key}": value for key, value in summaries.items()})
    return state, metrics

  def write(self, step, record, sink, prefix=""):
    if prefix + HEAD_HEATMAP in record:
      sink.heatmap(step, prefix + HEAD_HEATMAP + "/heatmap", record[prefix + HEAD_HEATMAP],
                  units="entropy / log(visible keys)")
    if not prefix and HISTORY in record:
      sink.layer_history_heatmap(step, HISTORY, record[HISTORY], units="‖attn_out‖ / ‖residual‖")
