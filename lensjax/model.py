"""A decoder-only Transformer in Flax linen; it computes no statistics.

`Transformer(cfg, capture=names).apply(params, tokens_BxT, mask_BxT)` returns
`(logits_BxTxV, captured)`: logits in the compute dtype, and the raw per-layer
tensors named in `capture` (see CAPTURES), which is how lenses see inside
the network. A name maps to a tuple of L arrays (unrolled layers) or to one
array with a leading L axis (`scan_layers`); `lensjax.ops.layers.map_layers`
reads both. With the default `capture=()` nothing extra leaves the model.
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
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.linen.dtypes import promote_dtype

from lensjax.config import ModelConfig
from lensjax.ops.arrays import F32
from lensjax.ops.cross_entropy import MAX_CHUNK_LOGITS, chunk_length

# What a lens may ask the model for, per layer.
CAPTURES = {
    "block_in": "x_BxTxD: the residual stream entering the block",
    "block_out": "x_BxTxD: the residual stream leaving the block",
    "attn_out": "y_BxTxD: what the attention sublayer adds to the residual stream (after dropout)",
    "attn_logits": "float32 [B, H, T, T]: scaled attention scores before the causal mask (explicit path only)",
    "attn_probs": "[B, H, T, T]: attention probabilities (explicit path only)",
    "ffn_hidden": "a_BxTxF: the FFN's activations after the nonlinearity",
    "ffn_pre": "z_BxTxF: the FFN's pre-activations, a = act(z) (ReLU/GELU; a SwiGLU unit has two, so none is given)",
}
EXPLICIT_ONLY = ("attn_logits", "attn_probs")  # the fused cuDNN kernel never forms them


def padded_vocab_size(cfg: ModelConfig) -> int:
  return -(-cfg.vocab_size // cfg.vocab_multiple) * cfg.vocab_multiple


def has_attention(cfg: ModelConfig) -> bool:
  return cfg.block in ("attention+ffn", "attention_only")


def has_ffn(cfg: ModelConfig) -> bool:
  return cfg.block in ("attention+ffn", "ffn_only")


def rotary(x_BxTxHxK: jax.Array, positions_T: jax.Array | None = None) -> jax.Array:
  """Rotary position embedding (rotate-half form) on the head dimension.

  `positions_T` (default 0..T-1) are the absolute positions, for decoding.
  """
  _, T, _, K = x_BxTxHxK.shape
  f = jnp.promote_types(x_BxTxHxK.dtype, F32)  # float32, or float64 in the saturation analysis
  inv_freq = 1.0 / (10000.0 ** (jnp.arange(0, K, 2, dtype=f) / K))
  positions_T = jnp.arange(T, dtype=f) if positions_T is None else positions_T.astype(f)
  angle_TxK2 = positions_T[:, None] * inv_freq[None, :]
  cos, sin = jnp.cos(angle_TxK2)[None, :, None, :], jnp.sin(angle_TxK2)[None, :, None, :]
  x1, x2 = jnp.split(x_BxTxHxK.astype(f), 2, axis=-1)
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x_BxTxHxK.dtype)


def score_dtype(dtype) -> jnp.dtype:
  """Attention scores are float32, or float64 when the network computes in float64 (the saturation analysis)."""
  return jnp.dtype(jnp.float64) if jnp.dtype(dtype) == jnp.float64 else jnp.dtype(F32)


def masked_logits(logits_BxHxQxT, attention_mask: str = "causal", first_query: int | jax.Array = 0):
  """The scores the softmax reads, for queries first_query.. of a sequence (all of them by default). "causal": a
  hidden key gets the lowest finite value, so its weight is exactly 0 (the same probabilities as -inf while the
  row maximum is finite). "merrill_multiplicative": `mask * scores`, as Merrill et al.'s code computes it, so a
  hidden key scores 0: a reproduction control under which a query whose visible scores are all negative attends
  to the future."""
  Q, T = logits_BxHxQxT.shape[-2:]
  causal_QxT = (first_query + jnp.arange(Q))[:, None] >= jnp.arange(T)[None, :]
  if attention_mask == "merrill_multiplicative":
    return logits_BxHxQxT * causal_QxT.astype(logits_BxHxQxT.dtype)
  return jnp.where(causal_QxT, logits_BxHxQxT, jnp.finfo(logits_BxHxQxT.dtype).min)


def blockwise_attention(q_BxTxHxK, k_BxTxHxK, v_BxTxHxK, attention_mask: str, dtype,
                        max_scores: int = MAX_CHUNK_LOGITS):
  """The explicit-softmax attention one block of queries at a time, each block's scores rematerialised
  (`jax.checkpoint` in a `lax.map`): the same outputs as the whole T×T path, while no pass of a gradient or a
  Hessian-vector product holds more than one block of B×H×C×T float32 scores (`model.attention=blockwise`, what
  the Hessian's plain model runs)."""
  B, T, H, K = q_BxTxHxK.shape
  C = chunk_length(B * H, T, T, max_scores)
  q_NxBxCxHxK = jnp.moveaxis((q_BxTxHxK / math.sqrt(K)).reshape(B, T // C, C, H, K), 1, 0)

  @jax.checkpoint
  def one_block(q_BxCxHxK, first_query):
    logits_BxHxCxT = jnp.einsum("bqhk,bshk->bhqs", q_BxCxHxK, k_BxTxHxK, preferred_element_type=score_dtype(dtype))
    probs_BxHxCxT = jax.nn.softmax(masked_logits(logits_BxHxCxT, attention_mask, first_query), axis=-1)
    return jnp.einsum("bhqs,bshk->bqhk", probs_BxHxCxT.astype(dtype), v_BxTxHxK)

  out_NxBxCxHxK = jax.lax.map(lambda block: one_block(*block), (q_NxBxCxHxK, jnp.arange(T // C) * C))
  return jnp.moveaxis(out_NxBxCxHxK, 0, 1).reshape(B, T, H, K)


class QKVProjection(nn.Module):
  """`(q, k, v)`, each B×T×H×K, from one parameter in `nn.DenseGeneral((3, H, K))`'s layout (kernel D×3×H×K, bias
  3×H×K, the same initialisation) as three matmuls. Slicing the kernel copies D×H×K weights, where slicing one
  fused B×T×3×H×K output copies activations (for cuDNN's attention, which wants each of q, k, v contiguous) and
  its backward pass pads and adds the three gradients back together."""
  num_heads: int
  head_dim: int
  use_bias: bool
  dtype: Any
  kernel_init: Callable

  @nn.compact
  def __call__(self, x_BxTxD):
    D, H, K = x_BxTxD.shape[-1], self.num_heads, self.head_dim
    # DenseGeneral draws its kernel as a D × 3HK matrix and reshapes it: the same draw gives the same parameters.
    flat_init = lambda rng, shape, dtype=F32: jnp.reshape(self.kernel_init(rng, (D, 3 * H * K), dtype), shape)
    kernel_Dx3xHxK = self.param("kernel", flat_init, (D, 3, H, K), F32)
    bias_3xHxK = self.param("bias", nn.initializers.zeros_init(), (3, H, K), F32) if self.use_bias else None
    x_BxTxD, kernel_Dx3xHxK, bias_3xHxK = promote_dtype(x_BxTxD, kernel_Dx3xHxK, bias_3xHxK, dtype=self.dtype)
    outputs = []
    for i in range(3):
      y_BxTxHxK = jnp.einsum("btd,dhk->bthk", x_BxTxD, kernel_Dx3xHxK[:, i])
      outputs.append(y_BxTxHxK if bias_3xHxK is None else y_BxTxHxK + bias_3xHxK[i])
    return tuple(outputs)


class Attention(nn.Module):
  """Returns `(y_BxTxD, captured)`; `captured` holds the requested EXPLICIT_ONLY tensors."""
  cfg: ModelConfig
  capture: tuple[str, ...] = ()
  residual_scale: float = 1.0
  decode: bool = False

  @nn.compact
  def __call__(self, x_BxTxD, mask_BxT):
    cfg = self.cfg
    dtype = jnp.dtype(cfg.dtype)
    H, K = cfg.num_heads, cfg.d_model // cfg.num_heads
    init = nn.initializers.normal(cfg.init_std)
    q_BxTxHxK, k_BxTxHxK, v_BxTxHxK = QKVProjection(H, K, cfg.use_bias, dtype, init, name="qkv")(x_BxTxD)
    if cfg.positions == "rotary" and not self.decode:
      q_BxTxHxK, k_BxTxHxK = rotary(q_BxTxHxK), rotary(k_BxTxHxK)
    captured = {}
    if self.decode:
      out_BxTxHxK = self.cached_attention(q_BxTxHxK, k_BxTxHxK, v_BxTxHxK)
    elif cfg.attention == "cudnn":
      out_BxTxHxK = jax.nn.dot_product_attention(q_BxTxHxK, k_BxTxHxK, v_BxTxHxK, is_causal=True,
                                                 implementation="cudnn")
    elif cfg.attention == "blockwise":
      out_BxTxHxK = blockwise_attention(q_BxTxHxK, k_BxTxHxK, v_BxTxHxK, cfg.attention_mask, dtype)
    else:
      T = x_BxTxD.shape[1]
      # 1/√K scales q, not the logits: a scaled copy of the logits may be recomputed in both
      # softmax fusions, and when they round differently exp(x − max) overflows for |x| ≳ 1e9
      # (NaN attention in the saturation analysis at c = 1000). The dot's output is the same everywhere.
      logits_BxHxTxT = jnp.einsum("bqhk,bshk->bhqs", q_BxTxHxK / math.sqrt(K), k_BxTxHxK,
                                  preferred_element_type=score_dtype(dtype))
      masked = masked_logits(logits_BxHxTxT, cfg.attention_mask)
      probs_BxHxTxT = jax.nn.softmax(masked, axis=-1)
      out_BxTxHxK = jnp.einsum("bhqs,bshk->bqhk", probs_BxHxTxT.astype(dtype), v_BxTxHxK)
      explicit = {"attn_logits": logits_BxHxTxT, "attn_probs": probs_BxHxTxT}
      captured = {name: explicit[name] for name in EXPLICIT_ONLY if name in self.capture}
    out_init = nn.initializers.normal(cfg.init_std * self.residual_scale)
    y_BxTxD = nn.DenseGeneral(cfg.d_model, axis=(-2, -1), use_bias=cfg.use_bias, dtype=dtype,
                              param_dtype=F32, kernel_init=out_init, name="out")(out_BxTxHxK)
    return y_BxTxD, captured

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
  """Returns `(out_BxTxD, tensors)`: the output and the CAPTURES of the sublayer (`ffn_hidden`, `ffn_pre`)."""
  cfg: ModelConfig
  residual_scale: float = 1.0

  @nn.compact
  def __call__(self, x_BxTxD, mask_BxT):
    cfg = self.cfg
    dtype = jnp.dtype(cfg.dtype)
    dense = functools.partial(nn.Dense, use_bias=cfg.use_bias, dtype=dtype, param_dtype=F32,
                              kernel_init=nn.initializers.normal(cfg.init_std))
    if cfg.activation == "swiglu":
      a_BxTxF = nn.silu(dense(cfg.d_ff, name="gate")(x_BxTxD)) * dense(cfg.d_ff, name="up")(x_BxTxD)
      tensors = {"ffn_hidden": a_BxTxF}
    else:
      act = {"relu": nn.relu, "gelu": nn.gelu}[cfg.activation]
      z_BxTxF = dense(cfg.d_ff, name="up")(x_BxTxD)
      a_BxTxF = act(z_BxTxF)
      tensors = {"ffn_hidden": a_BxTxF, "ffn_pre": z_BxTxF}
    out = nn.Dense(cfg.d_model, use_bias=cfg.use_bias, dtype=dtype, param_dtype=F32,
                   kernel_init=nn.initializers.normal(cfg.init_std * self.residual_scale),
                   name="down")(a_BxTxF)
    return out, tensors


class Block(nn.Module):
  """One residual block; returns `(x, captured)` so that it can be scanned over layers."""
  cfg: ModelConfig
  capture: tuple[str, ...] = ()
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
      sublayers.append(("attn", Attention(cfg, self.capture, residual_scale, self.decode, name="attn")))
    if has_ffn(cfg):
      sublayers.append(("ffn", FeedForward(cfg, residual_scale, name="ffn")))
    tensors = {"block_in": x_BxTxD}
    for kind, sublayer in sublayers:
      y_BxTxD, inner = sublayer(norm(name=f"{kind}_norm")(x_BxTxD) if cfg.norm == "pre" else x_BxTxD, mask_BxT)
      if cfg.norm == "branch":
        y_BxTxD = norm(name=f"{kind}_branch_norm")(y_BxTxD)
      y_BxTxD = drop(y_BxTxD)
      tensors.update(inner)
      if kind == "attn":
        tensors["attn_out"] = y_BxTxD
      x_BxTxD = x_BxTxD + y_BxTxD
      if cfg.norm == "post":
        x_BxTxD = norm(name=f"{kind}_post_norm")(x_BxTxD)
    tensors["block_out"] = x_BxTxD
    return x_BxTxD, {name: tensors[name] for name in self.capture if name in tensors}


class Transformer(nn.Module):
  cfg: ModelConfig
  capture: tuple[str, ...] = ()  # names of CAPTURES returned per layer
  decode: bool = False  # incremental decoding over a "cache" collection (see the module docstring)

  @nn.compact
  def __call__(self, tokens_BxT, mask_BxT=None, *, deterministic: bool = True, return_hidden: bool = False):
    """`(logits_BxTxV, captured)`, or with `return_hidden` the final hidden states
    `(h_BxTxD, captured)` for a loss that applies `head_matrix` itself, in chunks."""
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
      x_BxTxD, captured = scanned(cfg, self.capture, deterministic, self.decode, name="layers")(x_BxTxD, mask_BxT)
    else:
      per_layer = []
      for layer in range(cfg.num_layers):
        x_BxTxD, layer_captured = block(cfg, self.capture, deterministic, self.decode,
                                        name=f"layer_{layer}")(x_BxTxD, mask_BxT)
        per_layer.append(layer_captured)
      # A tuple per name, not a stacked copy: the tensors are large and lenses reduce them layer by layer.
      captured = {name: tuple(layer[name] for layer in per_layer) for name in per_layer[0]} if per_layer else {}

    if cfg.norm in ("pre", "branch"):  # the residual stream itself was never normalised
      x_BxTxD = nn.LayerNorm(dtype=dtype, param_dtype=F32, use_bias=cfg.use_bias, name="final_norm")(x_BxTxD)
    if return_hidden and not self.is_initializing():
      return x_BxTxD, captured
    if cfg.tie_embeddings:
      logits_BxTxV = embed.attend(x_BxTxD)
    else:
      logits_BxTxV = nn.Dense(padded_vocab_size(cfg), use_bias=False, dtype=dtype, param_dtype=F32,
                              kernel_init=nn.initializers.normal(cfg.init_std), name="unembed")(x_BxTxD)
    # Logits stay in the compute dtype: a float32 copy of B×T×V is the largest
    # tensor of a GPT-2-sized step; consumers upcast inside their fused reductions.
    return logits_BxTxV[..., :cfg.vocab_size], captured


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


def count_params(params) -> int:
  return sum(int(p.size) for p in jax.tree.leaves(params))
