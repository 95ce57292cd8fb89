"""A decoder-only Transformer in Flax linen that reports on itself.

`Transformer.apply(params, tokens_BxT, mask_BxT)` returns `(logits_BxTxV, aux)`,
logits in the compute dtype.
`aux` holds small per-layer summaries stacked over layers (leading axis L),
never activation tensors: with `collect_stats=False` only the per-unit "active
on some real token" flags that dead-neuron tracking needs on every step; with
`collect_stats=True` also the summaries of METRICS.md (active fractions,
attention bypass, attention entropy per head, max logit, sink mass).
Parameters are float32; `ModelConfig.dtype` is the compute dtype.

`Transformer(cfg, decode=True)` is the same network for incremental decoding:
each call takes the next S tokens [B, S] and attends over the keys and values
of earlier calls, kept in the "cache" collection (per attention layer: keys and
values [B, L, H, K] and the next write position; `init_cache` builds it for a
length L). The training path never touches the cache.
"""

from __future__ import annotations

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from lensjax.config import ModelConfig

F32 = jnp.float32


def padded_vocab_size(cfg: ModelConfig) -> int:
  return -(-cfg.vocab_size // cfg.vocab_multiple) * cfg.vocab_multiple


def has_attention(cfg: ModelConfig) -> bool:
  return cfg.block in ("attention+ffn", "attention_only")


def has_ffn(cfg: ModelConfig) -> bool:
  return cfg.block in ("attention+ffn", "ffn_only")


def masked_mean(x, mask):
  """Mean of `x` over the entries where `mask` is 1 (0 when there are none)."""
  x, mask = x.astype(F32), mask.astype(F32)
  return jnp.sum(x * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def rotary(x_BxTxHxK: jax.Array, positions_T: jax.Array | None = None) -> jax.Array:
  """Rotary position embedding (rotate-half form) on the head dimension.

  `positions_T` (default 0..T-1) are the absolute positions, for decoding.
  """
  _, T, _, K = x_BxTxHxK.shape
  inv_freq = 1.0 / (10000.0 ** (jnp.arange(0, K, 2, dtype=F32) / K))
  positions_T = jnp.arange(T, dtype=F32) if positions_T is None else positions_T.astype(F32)
  angle_TxK2 = positions_T[:, None] * inv_freq[None, :]
  cos, sin = jnp.cos(angle_TxK2)[None, :, None, :], jnp.sin(angle_TxK2)[None, :, None, :]
  x1, x2 = jnp.split(x_BxTxHxK.astype(F32), 2, axis=-1)
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x_BxTxHxK.dtype)


def attention_summaries(logits_BxHxTxT, probs_BxHxTxT, mask_BxT):
  """Per-layer attention statistics of METRICS.md from explicit scores.

  Key padding is on the right, so under the causal mask query t sees exactly
  keys 0..t; padded queries are excluded through `mask_BxT`.
  """
  T = logits_BxHxTxT.shape[-1]
  causal_TxT = jnp.tril(jnp.ones((T, T), bool))
  plogp = jnp.where(probs_BxHxTxT > 0, probs_BxHxTxT * jnp.log(jnp.maximum(probs_BxHxTxT, 1e-30)), 0.0)
  entropy_BxHxT = -jnp.sum(plogp, axis=-1)
  visible_T = jnp.arange(1, T + 1, dtype=F32)
  # Query 0 sees one key: its entropy is 0 by construction and log(1) = 0.
  normalised_BxHxT = entropy_BxHxT / jnp.log(jnp.maximum(visible_T, 2.0))
  query_mask_BxT = mask_BxT * (jnp.arange(T) > 0)
  query_weight_BxHxT = jnp.broadcast_to(query_mask_BxT[:, None, :], entropy_BxHxT.shape)
  entropy_H = jnp.sum(normalised_BxHxT * query_weight_BxHxT, axis=(0, 2)) / jnp.maximum(
      jnp.sum(query_weight_BxHxT, axis=(0, 2)), 1.0)
  real_query_BxHxTx1 = (mask_BxT[:, None, :, None] > 0)
  visible = causal_TxT[None, None] & real_query_BxHxTx1
  max_logit = jnp.max(jnp.where(visible, logits_BxHxTxT, -jnp.inf))
  sink = masked_mean(probs_BxHxTxT[..., 0], jnp.broadcast_to(mask_BxT[:, None, :], probs_BxHxTxT.shape[:-1]))
  return {"attn_entropy": entropy_H, "attn_max_logit": max_logit, "attn_sink": sink}


class Attention(nn.Module):
  cfg: ModelConfig
  collect_stats: bool = False
  residual_scale: float = 1.0
  decode: bool = False

  @nn.compact
  def __call__(self, x_BxTxD, mask_BxT):
    cfg = self.cfg
    dtype = jnp.dtype(cfg.dtype)
    H, K = cfg.num_heads, cfg.d_model // cfg.num_heads
    init = nn.initializers.normal(cfg.init_std)
    qkv = nn.DenseGeneral((3, H, K), use_bias=cfg.use_bias, dtype=dtype, param_dtype=F32,
                          kernel_init=init, name="qkv")(x_BxTxD)
    q_BxTxHxK, k_BxTxHxK, v_BxTxHxK = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    if cfg.positions == "rotary" and not self.decode:
      q_BxTxHxK, k_BxTxHxK = rotary(q_BxTxHxK), rotary(k_BxTxHxK)
    aux = {}
    if self.decode:
      out_BxTxHxK = self.cached_attention(q_BxTxHxK, k_BxTxHxK, v_BxTxHxK)
    elif cfg.attention == "cudnn":
      out_BxTxHxK = jax.nn.dot_product_attention(q_BxTxHxK, k_BxTxHxK, v_BxTxHxK, is_causal=True,
                                                 implementation="cudnn")
    else:
      T = x_BxTxD.shape[1]
      # 1/√K scales q, not the logits: a scaled copy of the logits may be recomputed in both
      # softmax fusions, and when they round differently exp(x − max) overflows for |x| ≳ 1e9
      # (NaN attention in the saturation analysis at c = 1000). The dot's output is the same everywhere.
      logits_BxHxTxT = jnp.einsum("bqhk,bshk->bhqs", q_BxTxHxK / math.sqrt(K), k_BxTxHxK,
                                  preferred_element_type=F32)
      causal_TxT = jnp.tril(jnp.ones((T, T), bool))
      masked = jnp.where(causal_TxT, logits_BxHxTxT, jnp.finfo(F32).min)
      probs_BxHxTxT = jax.nn.softmax(masked, axis=-1)
      self.sow("intermediates", "attn_probs", probs_BxHxTxT)
      out_BxTxHxK = jnp.einsum("bhqs,bshk->bqhk", probs_BxHxTxT.astype(dtype), v_BxTxHxK)
      if self.collect_stats:
        aux = attention_summaries(logits_BxHxTxT, probs_BxHxTxT, mask_BxT)
    out_init = nn.initializers.normal(cfg.init_std * self.residual_scale)
    y_BxTxD = nn.DenseGeneral(cfg.d_model, axis=(-2, -1), use_bias=cfg.use_bias, dtype=dtype,
                              param_dtype=F32, kernel_init=out_init, name="out")(out_BxTxHxK)
    return y_BxTxD, aux

  def cached_attention(self, q_BxSxHxK, k_BxSxHxK, v_BxSxHxK):
    """S new positions attend over the cache and themselves, then join the cache.

    The cache's length L is that of the tokens the cache was created with
    (`init_cache`); the new positions are index..index+S-1. Same arithmetic as
    the explicit path (float32 scores, `finfo.min` on hidden keys), so decoding
    reproduces the full forward pass up to summation order.
    """
    cfg = self.cfg
    B, S, H, K = k_BxSxHxK.shape
    cached_k = self.variable("cache", "key", jnp.zeros, k_BxSxHxK.shape, k_BxSxHxK.dtype)
    cached_v = self.variable("cache", "value", jnp.zeros, v_BxSxHxK.shape, v_BxSxHxK.dtype)
    index = self.variable("cache", "index", lambda: jnp.zeros((), jnp.int32))
    L = cached_k.value.shape[1]
    positions_S = index.value + jnp.arange(S)
    if cfg.positions == "rotary":
      q_BxSxHxK, k_BxSxHxK = rotary(q_BxSxHxK, positions_S), rotary(k_BxSxHxK, positions_S)
    start = (0, index.value, 0, 0)
    keys_BxLxHxK = jax.lax.dynamic_update_slice(cached_k.value, k_BxSxHxK.astype(cached_k.value.dtype), start)
    values_BxLxHxK = jax.lax.dynamic_update_slice(cached_v.value, v_BxSxHxK.astype(cached_v.value.dtype), start)
    cached_k.value, cached_v.value, index.value = keys_BxLxHxK, values_BxLxHxK, index.value + S
    # 1/√K scales q, as in the explicit path.
    logits_BxHxSxL = jnp.einsum("bqhk,bshk->bhqs", q_BxSxHxK / math.sqrt(K), keys_BxLxHxK,
                                preferred_element_type=F32)
    visible_SxL = jnp.arange(L)[None, :] <= positions_S[:, None]
    probs_BxHxSxL = jax.nn.softmax(jnp.where(visible_SxL, logits_BxHxSxL, jnp.finfo(F32).min), axis=-1)
    return jnp.einsum("bhqs,bshk->bqhk", probs_BxHxSxL.astype(jnp.dtype(cfg.dtype)), values_BxLxHxK)


class FeedForward(nn.Module):
  cfg: ModelConfig
  collect_stats: bool = False
  residual_scale: float = 1.0

  @nn.compact
  def __call__(self, x_BxTxD, mask_BxT):
    cfg = self.cfg
    dtype = jnp.dtype(cfg.dtype)
    dense = functools.partial(nn.Dense, use_bias=cfg.use_bias, dtype=dtype, param_dtype=F32,
                              kernel_init=nn.initializers.normal(cfg.init_std))
    if cfg.activation == "swiglu":
      a_BxTxF = nn.silu(dense(cfg.d_ff, name="gate")(x_BxTxD)) * dense(cfg.d_ff, name="up")(x_BxTxD)
    else:
      act = {"relu": nn.relu, "gelu": nn.gelu}[cfg.activation]
      a_BxTxF = act(dense(cfg.d_ff, name="up")(x_BxTxD))
    active_BxTxF = (a_BxTxF > cfg.active_threshold) & (mask_BxT[:, :, None] > 0)
    active_in_seq_BxF = jnp.any(active_BxTxF, axis=1)
    aux = {"ffn_unit_active": jnp.any(active_in_seq_BxF, axis=0)}
    if self.collect_stats:
      token_fraction_BxT = jnp.mean(active_BxTxF.astype(F32), axis=-1)
      real_seq_B = jnp.any(mask_BxT > 0, axis=1)
      aux["ffn_active_token"] = masked_mean(token_fraction_BxT, mask_BxT)
      aux["ffn_active_seq"] = masked_mean(jnp.mean(active_in_seq_BxF.astype(F32), axis=-1), real_seq_B)
      aux["ffn_active_batch"] = jnp.mean(aux["ffn_unit_active"].astype(F32))
      # Per-unit firing frequency over the batch's real tokens: [F], for histograms.
      fired_F = jnp.sum(active_BxTxF.astype(F32), axis=(0, 1))
      aux["ffn_unit_frequency"] = fired_F / jnp.maximum(jnp.sum(mask_BxT), 1.0)
    out = nn.Dense(cfg.d_model, use_bias=cfg.use_bias, dtype=dtype, param_dtype=F32,
                   kernel_init=nn.initializers.normal(cfg.init_std * self.residual_scale),
                   name="down")(a_BxTxF)
    return out, aux


class Block(nn.Module):
  """One residual block; returns `(x, aux)` so that it can be scanned over layers."""
  cfg: ModelConfig
  collect_stats: bool = False
  deterministic: bool = True
  decode: bool = False

  @nn.compact
  def __call__(self, x_BxTxD, mask_BxT):
    cfg = self.cfg
    norm = functools.partial(nn.LayerNorm, dtype=jnp.dtype(cfg.dtype), param_dtype=F32, use_bias=cfg.use_bias)
    drop = nn.Dropout(cfg.dropout, deterministic=self.deterministic)
    residual_scale = 1.0 / math.sqrt(2 * cfg.num_layers)
    sublayers = []
    if has_attention(cfg):
      sublayers.append(("attn", Attention(cfg, self.collect_stats, residual_scale, self.decode, name="attn")))
    if has_ffn(cfg):
      sublayers.append(("ffn", FeedForward(cfg, self.collect_stats, residual_scale, name="ffn")))
    aux = {}
    for kind, sublayer in sublayers:
      pre = cfg.norm == "pre"
      y_BxTxD, sub_aux = sublayer(norm(name=f"{kind}_norm")(x_BxTxD) if pre else x_BxTxD, mask_BxT)
      y_BxTxD = drop(y_BxTxD)
      aux.update(sub_aux)
      if kind == "attn" and self.collect_stats:
        ratio_BxT = (jnp.linalg.norm(y_BxTxD.astype(F32), axis=-1)
                     / jnp.maximum(jnp.linalg.norm(x_BxTxD.astype(F32), axis=-1), 1e-30))
        aux["attn_bypass"] = masked_mean(ratio_BxT, mask_BxT)
      x_BxTxD = x_BxTxD + y_BxTxD
      if not pre:
        x_BxTxD = norm(name=f"{kind}_post_norm")(x_BxTxD)
    return x_BxTxD, aux


def stack_trees(trees):
  return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


class Transformer(nn.Module):
  cfg: ModelConfig
  collect_stats: bool = False
  decode: bool = False  # incremental decoding over a "cache" collection (see the module docstring)

  @nn.compact
  def __call__(self, tokens_BxT, mask_BxT=None, *, deterministic: bool = True, return_hidden: bool = False):
    """`(logits_BxTxV, aux)`, or with `return_hidden` the final hidden states
    `(h_BxTxD, aux)` for a loss that applies `head_matrix` itself, in chunks."""
    cfg = self.cfg
    dtype = jnp.dtype(cfg.dtype)
    B, T = tokens_BxT.shape
    if mask_BxT is None:
      mask_BxT = jnp.ones((B, T), F32)
    mask_BxT = mask_BxT.astype(F32)
    embed = nn.Embed(padded_vocab_size(cfg), cfg.d_model, dtype=dtype, param_dtype=F32,
                     embedding_init=nn.initializers.normal(cfg.init_std), name="embed")
    x_BxTxD = embed(tokens_BxT)
    if cfg.positions == "learned":
      pos = nn.Embed(cfg.max_len, cfg.d_model, dtype=dtype, param_dtype=F32,
                     embedding_init=nn.initializers.normal(cfg.init_std), name="pos_embed")
      if self.decode:  # the tokens continue the cached ones: positions index..index+T-1
        index = self.variable("cache", "index", lambda: jnp.zeros((), jnp.int32))
        positions_T, index.value = index.value + jnp.arange(T), index.value + T
        x_BxTxD = x_BxTxD + pos(positions_T)[None]
      else:
        x_BxTxD = x_BxTxD + pos(jnp.arange(T))[None]
    x_BxTxD = nn.Dropout(cfg.dropout, deterministic=deterministic)(x_BxTxD).astype(dtype)

    block = Block
    if cfg.remat and not self.decode:
      block = nn.remat(block, prevent_cse=not cfg.scan_layers)
    if cfg.scan_layers:
      # Decoding stacks each layer's cache over layers, as the parameters are.
      variable_axes = {"params": 0, "cache": 0} if self.decode else {"params": 0}
      scanned = nn.scan(block, variable_axes=variable_axes, split_rngs={"params": True, "dropout": True},
                        in_axes=nn.broadcast, length=cfg.num_layers)
      x_BxTxD, aux = scanned(cfg, self.collect_stats, deterministic, self.decode, name="layers")(x_BxTxD, mask_BxT)
    else:
      per_layer = []
      for layer in range(cfg.num_layers):
        x_BxTxD, layer_aux = block(cfg, self.collect_stats, deterministic, self.decode,
                                   name=f"layer_{layer}")(x_BxTxD, mask_BxT)
        per_layer.append(layer_aux)
      aux = stack_trees(per_layer)

    if cfg.norm == "pre":
      x_BxTxD = nn.LayerNorm(dtype=dtype, param_dtype=F32, use_bias=cfg.use_bias, name="final_norm")(x_BxTxD)
    if return_hidden and not self.is_initializing():
      return x_BxTxD, aux
    if cfg.tie_embeddings:
      logits_BxTxV = embed.attend(x_BxTxD)
    else:
      logits_BxTxV = nn.Dense(padded_vocab_size(cfg), use_bias=False, dtype=dtype, param_dtype=F32,
                              kernel_init=nn.initializers.normal(cfg.init_std), name="unembed")(x_BxTxD)
    # Logits stay in the compute dtype: a float32 copy of B×T×V is the largest
    # tensor of a GPT-2-sized step; consumers upcast inside their fused reductions.
    return logits_BxTxV[..., :cfg.vocab_size], aux


def init_cache(cfg: ModelConfig, batch: int, length: int):
  """An empty decoding cache for `batch` sequences of up to `length` tokens (zeros, index 0)."""
  model = Transformer(cfg, decode=True)
  tokens_BxL = jnp.zeros((batch, length), jnp.int32)
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), tokens_BxL))["cache"]
  return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


def head_matrix(params, cfg: ModelConfig):
  """The output projection [D, V_padded] in the compute dtype (tied: the embedding)."""
  if cfg.tie_embeddings:
    return params["embed"]["embedding"].T.astype(cfg.dtype)
  return params["unembed"]["kernel"].astype(cfg.dtype)


def layer_params(params, cfg: ModelConfig) -> list:
  """The parameter subtree of each block, for scanned and unrolled layouts alike."""
  if cfg.scan_layers:
    return [jax.tree.map(lambda p, i=i: p[i], params["layers"]) for i in range(cfg.num_layers)]
  return [params[f"layer_{i}"] for i in range(cfg.num_layers)]


def count_params(params) -> int:
  return sum(int(p.size) for p in jax.tree.leaves(params))
