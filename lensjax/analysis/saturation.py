"""Saturation (Merrill et al. 2021): how close θ is to its saturated network.

The saturated network of θ is the limit of f(x; cθ) as c → ∞. Scaling every
parameter by c scales the attention logits by about c⁴ (query and key each
carry c from their kernel and c from the LayerNorm scale before them), so
softmax attention becomes hard: uniform over the keys that tie for the largest
logit. A head whose attention then sits on one key is an *argmax head*; one
that spreads over a large share of what it sees is an *averaging head*.

Two statistics, both of docs/metrics.md, on a batch, with c = `scale`:

- `eval/saturation/layer_{l}`: mean over real tokens of cos(h_l(x; θ), h_l(x; cθ)),
  h_l the output of block l (the residual stream after it). Near 1 when θ is
  already (nearly) saturated, i.e. as ‖θ‖ grows along a fixed direction.
- `eval/saturated_head/layer_{l}/head_{h}`: in the network at cθ, the mean over
  real queries of the number of keys with attention weight > 1e-5.

`key_fraction` (not a metric name of its own) is the same count divided by
the number of keys the query sees, averaged over real queries t ≥ 1 (query 0
sees one key, so it says nothing): argmax heads sit near 1/visible, averaging
heads near 1/2 or above. `head_histogram` bins it over all L × H heads.

Everything runs in float64 (`jax.enable_x64` around the compiled call, so
nothing else in the process changes) on the explicit-softmax attention path
with dropout off. At c = 1000 the logits of a 38M-parameter model reach
~1e11–1e12, where one float32 ulp is ~1e4: float32 rounding merges keys whose
logits differ by thousands into exact ties and the count of attended keys
comes out above 1 for an argmax head. In float64 the ulp at 1e12 is ~1e-4,
far below the ln(1e5) ≈ 11.5 that separates a weight of 1e-5 from the
maximum, so the count is that of the exact network. The causal mask is
applied to the logits computed from the scaled parameters, as `Attention`
does (`model.masked_logits`); `model.attention_mask = "merrill_multiplicative"`
gives the reproduction control instead (hidden logits 0, not the lowest float).
`saturation_arrays` reports whether the network at c·θ stayed in range
(`in_range`).

`homogeneity_cosines` is the check of which architectures the statistic is
valid for: cos(h_l(x; c·θ), h_l(x; 1000·θ)) for small c. In a network whose
block outputs are positively homogeneous in θ the direction of h_l changes
with c only through the attention patterns hardening. Of the three norm
placements only `x + LN(f(x))` (`model.norm = "branch"`, Merrill et al.'s
"pre_norm") is, and only without biases (`model.use_bias = False`), with ReLU
and learned positions: both terms of the sum scale as c. In pre-LN
`x + f(LN(x))` the embedding's share of the residual stream scales as c and a
sublayer's as c³; in post-LN `LN(x + f(x))` the LayerNorm divides out the
common scale but not the mix of c·x and c³·f(x), so in both the cosine moves
with c for a reason that has nothing to do with saturation. LayerNorm's ε also
breaks homogeneity where a branch's output is tiny (at initialisation).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from lensjax.config import ModelConfig
from lensjax.model import Transformer, has_attention
from lensjax.ops.arrays import F32, masked_mean
from lensjax.ops.layers import unrolled

SCALE = 1000.0  # c of docs/metrics.md
WEIGHT_THRESHOLD = 1e-5  # a key "counts" for a query when its attention weight exceeds this
HISTOGRAM_BINS = 20  # over [0, 1] of key_fraction
# Largest block output at c·θ trusted in float64: its square, summed over D, must stay
# far below finfo(float64).max ≈ 1.8e308 inside the next LayerNorm.
MAX_HIDDEN = 1e150
F64 = jnp.float64
HOMOGENEITY_SCALES = tuple(float(c) for c in range(1, 11))  # c of cos(h(cθ), h(1000θ))


def analysis_config(cfg: ModelConfig, attention_mask: str | None = None) -> ModelConfig:
  """The model the statistics are defined on: float64, explicit softmax, no dropout, unrolled layers;
  `attention_mask` replaces the run's (None keeps it)."""
  # Unrolled, so that each layer's tensors come back as one array of a tuple; remat changes nothing in a
  # forward pass.
  return dataclasses.replace(cfg, attention="xla", dtype="float64", dropout=0.0, scan_layers=False, remat=False,
                             attention_mask=attention_mask or cfg.attention_mask)


def scale_params(params, scale):
  """c·θ: every leaf, LayerNorm scales and biases and embeddings included, in float64 (call under x64)."""
  return jax.tree.map(lambda p: p.astype(F64) * scale, params)


def hidden_and_probs(params, tokens_BxT, mask_BxT, cfg: ModelConfig):
  """Block outputs h [L, B, T, D] and attention probabilities [L, B, H, T, T] (None without attention).

  `cfg` must be an `analysis_config`, `params` unrolled; call under `jax.enable_x64(True)`.
  """
  capture = ("block_out", "attn_probs") if has_attention(cfg) else ("block_out",)
  _, captured = Transformer(cfg, capture=capture).apply({"params": params}, tokens_BxT, mask_BxT,
                                                        return_hidden=True)
  h_LxBxTxD = jnp.stack(captured["block_out"]).astype(F64)
  probs_LxBxHxTxT = jnp.stack(captured["attn_probs"]).astype(F64) if has_attention(cfg) else None
  return h_LxBxTxD, probs_LxBxHxTxT


def token_cosine(a_NxD, b_NxD):
  """cos(a, b) along the last axis; 0 where either vector is 0."""
  # Each vector is divided by its largest entry first: at c = 1000 hidden states reach
  # ~c³ and their squared norms would overflow float32 in deeper or wider models.
  a_NxD = a_NxD / jnp.maximum(jnp.max(jnp.abs(a_NxD), axis=-1, keepdims=True), 1e-30)
  b_NxD = b_NxD / jnp.maximum(jnp.max(jnp.abs(b_NxD), axis=-1, keepdims=True), 1e-30)
  norms_N = jnp.linalg.norm(a_NxD, axis=-1) * jnp.linalg.norm(b_NxD, axis=-1)
  return jnp.sum(a_NxD * b_NxD, axis=-1) / jnp.maximum(norms_N, 1e-30)


def head_key_counts(probs_LxBxHxTxT, mask_BxT, threshold: float = WEIGHT_THRESHOLD,
                    attention_mask: str = "causal"):
  """Per head [L, H]: mean over real queries of #keys above `threshold`, and of that count / the keys the
  mask lets the query attend to (0..t under the causal mask; all T under the multiplicative control).

  Padding is on the right, so real query t sees exactly the real keys 0..t.
  """
  T = probs_LxBxHxTxT.shape[-1]
  count_LxBxHxT = jnp.sum(probs_LxBxHxTxT > threshold, axis=-1).astype(F32)
  query_BxT = mask_BxT.astype(F32)
  weight_1xBx1xT = query_BxT[None, :, None, :]
  count_LxH = jnp.sum(count_LxBxHxT * weight_1xBx1xT, axis=(1, 3)) / jnp.maximum(jnp.sum(query_BxT), 1.0)
  # Query 0 sees one key and always scores 1: left out of the fraction, as in attention entropy.
  later_BxT = query_BxT * (jnp.arange(T) > 0)
  visible_T = (jnp.full((T,), T, F32) if attention_mask == "merrill_multiplicative"
               else jnp.arange(1, T + 1, dtype=F32))
  fraction_LxH = jnp.sum(count_LxBxHxT / visible_T * later_BxT[None, :, None, :], axis=(1, 3)) / jnp.maximum(
      jnp.sum(later_BxT), 1.0)
  return count_LxH, fraction_LxH


def saturation_arrays(params, batch: dict, cfg: ModelConfig, scale=SCALE, attention_mask: str | None = None) -> dict:
  """The statistics as arrays: `cosine_L`, `key_count_LxH`, `key_fraction_LxH` (float32), and `in_range`.

  `in_range` (bool scalar) is False when the network at c·θ left float64's
  range (non-finite values, or block outputs above MAX_HIDDEN): then the
  statistics describe overflow, not saturation; use a smaller c.

  Pure; trace it under `jax.enable_x64(True)` (`jit_saturation_arrays` does). `params` in the layout of `cfg`
  (scanned or unrolled); `batch` needs "inputs" [B, T] and "mask" [B, T]. `attention_mask` replaces the run's.
  """
  model_cfg = analysis_config(cfg, attention_mask)
  params = unrolled(params, cfg)
  tokens_BxT, mask_BxT = batch["inputs"], batch["mask"].astype(F32)
  with jax.default_matmul_precision("highest"):
    h_LxBxTxD, _ = hidden_and_probs(scale_params(params, 1.0), tokens_BxT, mask_BxT, model_cfg)
    hc_LxBxTxD, probs_LxBxHxTxT = hidden_and_probs(scale_params(params, scale), tokens_BxT, mask_BxT, model_cfg)
  L, B, T, D = h_LxBxTxD.shape
  cos_LxBT = token_cosine(h_LxBxTxD.reshape(L, B * T, D), hc_LxBxTxD.reshape(L, B * T, D))
  cosine_L = jax.vmap(lambda cos_BT: masked_mean(cos_BT.astype(F32), mask_BxT.reshape(-1)))(cos_LxBT)
  H = model_cfg.num_heads if probs_LxBxHxTxT is not None else 0
  count_LxH, fraction_LxH = jnp.zeros((L, H), F32), jnp.zeros((L, H), F32)
  # LayerNorm squares its input: past MAX_HIDDEN the variance could overflow to inf and the
  # normalised output silently collapse to the bias, with nothing non-finite to show for it.
  in_range = jnp.all(jnp.isfinite(hc_LxBxTxD)) & (jnp.max(jnp.abs(hc_LxBxTxD)) < MAX_HIDDEN)
  if probs_LxBxHxTxT is not None:
    count_LxH, fraction_LxH = head_key_counts(probs_LxBxHxTxT, mask_BxT, attention_mask=model_cfg.attention_mask)
    in_range = in_range & jnp.all(jnp.isfinite(probs_LxBxHxTxT))
  return {"cosine_L": cosine_L, "key_count_LxH": count_LxH, "key_fraction_LxH": fraction_LxH, "in_range": in_range}


def homogeneity_cosines(params, batch: dict, cfg: ModelConfig, scales=HOMOGENEITY_SCALES,
                        reference: float = SCALE):
  """[S, L] mean over real tokens of cos(h_l(x; c·θ), h_l(x; reference·θ)) for each c of `scales`.

  Pure; trace under `jax.enable_x64(True)` (`jit_homogeneity_cosines` does). 1 for every c means the block
  outputs' direction does not depend on the scale of θ (and the attention is already saturated).
  """
  model_cfg = analysis_config(cfg)
  params = unrolled(params, cfg)
  tokens_BxT, mask_BxT = batch["inputs"], batch["mask"].astype(F32)
  with jax.default_matmul_precision("highest"):
    ref_LxBxTxD, _ = hidden_and_probs(scale_params(params, reference), tokens_BxT, mask_BxT, model_cfg)
    L, B, T, D = ref_LxBxTxD.shape

    def at(scale):
      h_LxBxTxD, _ = hidden_and_probs(scale_params(params, scale), tokens_BxT, mask_BxT, model_cfg)
      cos_LxBT = token_cosine(h_LxBxTxD.reshape(L, B * T, D), ref_LxBxTxD.reshape(L, B * T, D))
      return jax.vmap(lambda cos_BT: masked_mean(cos_BT.astype(F32), mask_BxT.reshape(-1)))(cos_LxBT)

    return jnp.stack([at(c) for c in scales])


def metric_names(arrays: dict) -> dict:
  """The docs/metrics.md names of `saturation_arrays`' statistics (values stay arrays)."""
  metrics = {f"eval/saturation/layer_{l}": c for l, c in enumerate(arrays["cosine_L"])}
  count_LxH = arrays["key_count_LxH"]
  for l in range(count_LxH.shape[0]):
    metrics.update({f"eval/saturated_head/layer_{l}/head_{h}": count_LxH[l, h] for h in range(count_LxH.shape[1])})
  return metrics


def saturation_metrics(params, batch: dict, cfg: ModelConfig, scale=SCALE) -> dict:
  """`{"eval/saturation/layer_{l}": ..., "eval/saturated_head/layer_{l}/head_{h}": ...}` (scalars).

  Pure; jit it with `cfg` fixed, e.g. `make_saturation_fn`. Also accepts a full
  Config for `cfg`.
  """
  cfg = getattr(cfg, "model", cfg)
  return metric_names(saturation_arrays(params, batch, cfg, scale))


def make_saturation_fn(cfg: ModelConfig, scale: float = SCALE, rows: int | None = None):
  """`(params, batch) -> saturation_metrics` on the first `rows` rows of `batch` (all when None), compiled
  once per model config (`jit_saturation_arrays`), so that an ensemble's members share one compilation.

  The attention probabilities of every layer are live at once ([L, B, H, T, T]
  float64), so a few rows are the affordable choice for large models.
  """
  cfg = getattr(cfg, "model", cfg)
  compiled = jit_saturation_arrays(cfg)

  def fn(params, batch):
    if rows is not None:
      batch = {k: batch[k][:rows] for k in ("inputs", "mask")}
    return metric_names(compiled(params, {k: batch[k] for k in ("inputs", "mask")}, scale))

  return fn


def count_histogram(count_LxH) -> dict:
  """Histogram over all heads of the mean number of attended keys, in bins of width 1 from 1:
  {"edges": [1, 2, ..., ceil(max) + 1], "counts"}: an argmax head falls in [1, 2)."""
  values = np.asarray(count_LxH, np.float64).reshape(-1)
  values = values[np.isfinite(values)]
  top = int(np.ceil(values.max())) + 1 if values.size else 2
  counts, edges = np.histogram(values, bins=np.arange(1, max(top, 2) + 1, dtype=np.float64))
  return {"edges": [float(e) for e in edges], "counts": [int(c) for c in counts]}


def head_histogram(fraction_LxH, bins: int = HISTOGRAM_BINS) -> dict:
  """Histogram over all heads of `key_fraction` on [0, 1]: {"edges": [bins + 1], "counts": [bins]}."""
  values = np.asarray(fraction_LxH, np.float64).reshape(-1)
  counts, edges = np.histogram(np.clip(values[np.isfinite(values)], 0.0, 1.0), bins=bins, range=(0.0, 1.0))
  return {"edges": [float(e) for e in edges], "counts": [int(c) for c in counts]}


def _under_x64(fn):
  """`fn` compiled and called with float64 enabled; outside it the process keeps its own dtypes."""
  compiled = jax.jit(fn)

  def call(*args):
    with jax.enable_x64(True):
      return compiled(*args)
  return call


@functools.lru_cache(maxsize=32)
def jit_saturation_arrays(cfg: ModelConfig, attention_mask: str | None = None):
  """`(params, batch, scale) -> saturation_arrays`, one compilation per model config and mask; `scale` is
  traced, so any c reuses it."""
  return _under_x64(lambda params, batch, scale: saturation_arrays(params, batch, cfg, scale, attention_mask))


@functools.lru_cache(maxsize=32)
def jit_homogeneity_cosines(cfg: ModelConfig, scales: tuple[float, ...] = HOMOGENEITY_SCALES):
  """`(params, batch) -> homogeneity_cosines` [S, L], one compilation per model config and scales."""
  return _under_x64(lambda params, batch: homogeneity_cosines(params, batch, cfg, scales))
