"""The saturation analysis against an independent float64 NumPy forward pass: on a case that float32
rounding turns into ties, for every norm placement and both attention masks; the homogeneity check; the
multiplicative-mask control on hand-built logits."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import make_tiny_config
from lensjax import config as config_lib
from lensjax.analysis import saturation
from lensjax.config import ModelConfig
from lensjax.errors import InputError
from lensjax.model import Transformer, masked_logits

T, B = 12, 2
ONE_LAYER = ModelConfig(num_layers=1, d_model=16, num_heads=2, d_ff=32, vocab_size=8, max_len=T)


def numpy_params(cfg: ModelConfig, seed: int = 0) -> dict:
  """The model's parameters with random biases and LayerNorm affine terms, so that every term is exercised."""
  params = Transformer(cfg).init(jax.random.PRNGKey(seed), jnp.zeros((1, T), jnp.int32))["params"]
  rng = np.random.default_rng(seed)

  def perturb(path, leaf):
    name = getattr(path[-1], "key", "")
    leaf = np.asarray(leaf, np.float32)
    if name == "bias":
      return (0.02 * rng.standard_normal(leaf.shape)).astype(np.float32)
    if name == "scale":
      return (1.0 + 0.1 * rng.standard_normal(leaf.shape)).astype(np.float32)
    return leaf
  return jax.tree_util.tree_map_with_path(perturb, params)


def layer_norm(x, p, dtype):
  mean = x.mean(-1, keepdims=True)
  var = ((x - mean) ** 2).mean(-1, keepdims=True)
  out = (x - mean) / np.sqrt(var + dtype(1e-6)) * p["scale"].astype(dtype)
  return out + p["bias"].astype(dtype) if "bias" in p else out


def reference(params, tokens_BxT, cfg: ModelConfig, scale: float, mask: str, dtype=np.float64):
  """Block outputs [L, B, T, D] and attention probabilities [L, B, H, T, T] of c·θ, in `dtype` throughout."""
  p = jax.tree.map(lambda a: np.asarray(a, np.float32).astype(dtype) * dtype(scale), params)
  H, D = cfg.num_heads, cfg.d_model
  K = D // H
  x = p["embed"]["embedding"][tokens_BxT] + p["pos_embed"]["embedding"][:T][None]
  causal = np.tril(np.ones((T, T), bool))
  hidden, probs_all = [], []
  for l in range(cfg.num_layers):
    lp = p[f"layer_{l}"]

    def attention(h):
      qkv = np.einsum("btd,dchk->btchk", h, lp["attn"]["qkv"]["kernel"]) + lp["attn"]["qkv"]["bias"]
      q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
      s = np.einsum("bqhk,bshk->bhqs", q / np.sqrt(dtype(K)), k)
      s = s * causal if mask == "merrill_multiplicative" else np.where(causal, s, -np.inf)
      w = np.exp(s - s.max(-1, keepdims=True))
      w = w / w.sum(-1, keepdims=True)
      probs_all.append(w)
      out = np.einsum("bhqs,bshk->bqhk", w, v)
      return np.einsum("bqhk,hkd->bqd", out, lp["attn"]["out"]["kernel"]) + lp["attn"]["out"]["bias"]

    def ffn(h):
      a = np.maximum(h @ lp["ffn"]["up"]["kernel"] + lp["ffn"]["up"]["bias"], 0)
      return a @ lp["ffn"]["down"]["kernel"] + lp["ffn"]["down"]["bias"]

    for kind, f in (("attn", attention), ("ffn", ffn)):
      if cfg.norm == "pre":
        x = x + f(layer_norm(x, lp[f"{kind}_norm"], dtype))
      elif cfg.norm == "branch":
        x = x + layer_norm(f(x), lp[f"{kind}_branch_norm"], dtype)
      else:
        x = layer_norm(x + f(x), lp[f"{kind}_post_norm"], dtype)
    hidden.append(x)
  return np.stack(hidden), np.stack(probs_all)


def reference_statistics(params, tokens_BxT, cfg, mask, dtype=np.float64):
  h, _ = reference(params, tokens_BxT, cfg, 1.0, mask, dtype)
  hc, probs = reference(params, tokens_BxT, cfg, saturation.SCALE, mask, dtype)
  cos = (h * hc).sum(-1) / (np.linalg.norm(h, axis=-1) * np.linalg.norm(hc, axis=-1))
  count_LxH = (probs > saturation.WEIGHT_THRESHOLD).sum(-1).mean(axis=(1, 3))
  return cos.mean(axis=(1, 2)), count_LxH


def tie_case(cfg: ModelConfig):
  """One repeated token and position embeddings ~2e-8 of the token's: the keys of a row differ by less than a
  float32 ulp of their sum, so float32 merges them into exact ties; in float64 the positions still decide."""
  params = numpy_params(cfg)
  params = dict(params, pos_embed={"embedding": params["pos_embed"]["embedding"] * 1e-6})
  params = dict(params, embed={"embedding": params["embed"]["embedding"] * 50.0})
  tokens = np.full((B, T), 3, np.int32)
  tokens[1] = np.arange(T) % cfg.vocab_size  # a row without the construction, as a plain check
  return params, tokens


@pytest.mark.parametrize("norm", ["pre", "post", "branch"])
@pytest.mark.parametrize("mask", ["causal", "merrill_multiplicative"])
def test_float64_statistics_match_the_numpy_reference_where_float32_ties(norm, mask):
  cfg = dataclasses.replace(ONE_LAYER, norm=norm)
  params, tokens = tie_case(cfg)
  batch = {"inputs": jnp.asarray(tokens), "mask": jnp.ones((B, T), jnp.float32)}
  got = jax.device_get(saturation.jit_saturation_arrays(cfg, mask)(params, batch, saturation.SCALE))
  want_cos, want_count = reference_statistics(params, tokens, cfg, mask)
  assert bool(got["in_range"])
  np.testing.assert_allclose(got["key_count_LxH"], want_count, rtol=1e-6)
  np.testing.assert_allclose(got["cosine_L"], want_cos, rtol=1e-5, atol=1e-6)
  if mask == "causal":
    # The construction does what it says: the same arithmetic in float32 counts tied keys.
    _, count32 = reference_statistics(params, tokens, cfg, mask, np.float32)
    assert np.all(count32 > want_count) and count32.max() > want_count.max() + 1, (count32, want_count)


def test_multiplicative_mask_attends_to_the_future_when_visible_scores_are_negative():
  logits = np.full((1, 1, 4, 4), -3.0)
  logits[0, 0, 1, :2] = [2.0, 5.0]  # query 1 has a positive visible score: the future (0) loses
  got = np.asarray(jax.nn.softmax(masked_logits(jnp.asarray(logits) * 1000.0, "merrill_multiplicative"), axis=-1))
  np.testing.assert_allclose(got[0, 0, 0], [0, 1 / 3, 1 / 3, 1 / 3], atol=1e-12)  # 3 future keys at 0 > -3000
  np.testing.assert_allclose(got[0, 0, 1], [0, 1, 0, 0], atol=1e-12)
  np.testing.assert_allclose(got[0, 0, 2], [0, 0, 0, 1], atol=1e-12)
  np.testing.assert_allclose(got[0, 0, 3], [0.25] * 4, atol=1e-12)  # all visible: a plain tie
  causal = np.asarray(jax.nn.softmax(masked_logits(jnp.asarray(logits) * 1000.0), axis=-1))
  np.testing.assert_allclose(causal[0, 0, 0], [1, 0, 0, 0])
  np.testing.assert_allclose(causal[0, 0, 2], [1 / 3, 1 / 3, 1 / 3, 0], atol=1e-12)
  count, fraction = saturation.head_key_counts(jnp.asarray(got)[None], jnp.ones((1, 4)),
                                               attention_mask="merrill_multiplicative")
  np.testing.assert_allclose(count, [[(3 + 1 + 1 + 4) / 4]])
  np.testing.assert_allclose(fraction, [[(1 / 4 + 1 / 4 + 4 / 4) / 3]])  # over all 4 keys, queries 1..3


@pytest.mark.parametrize("norm,homogeneous", [("branch", True), ("post", False), ("pre", False)])
def test_homogeneity_tells_the_homogeneous_placement_apart(norm, homogeneous):
  """Without attention (nothing to saturate) and biases, x + LN(f(x)) is homogeneous of degree 1 in θ;
  LN(x + f(x)) and x + f(LN(x)) mix terms of degree 1 and 3. (A large init keeps LayerNorm's ε, which
  breaks homogeneity where f(x) is tiny, out of the way.)"""
  cfg = dataclasses.replace(ONE_LAYER, num_layers=2, block="ffn_only", use_bias=False, norm=norm, init_std=0.3)
  params = Transformer(cfg).init(jax.random.PRNGKey(1), jnp.zeros((1, T), jnp.int32))["params"]
  tokens = np.arange(B * T).reshape(B, T) % cfg.vocab_size
  batch = {"inputs": jnp.asarray(tokens, jnp.int32), "mask": jnp.ones((B, T), jnp.float32)}
  cos_SxL = np.asarray(saturation.jit_homogeneity_cosines(cfg)(params, batch))
  assert cos_SxL.shape == (len(saturation.HOMOGENEITY_SCALES), 2)
  if homogeneous:
    np.testing.assert_allclose(cos_SxL, 1.0, atol=1e-9)
  else:
    assert cos_SxL.min() < 0.99 and np.all(np.diff(cos_SxL, axis=0) > -1e-9), cos_SxL  # rises towards c = 1000


def test_branch_norm_model_and_the_mask_switch_in_the_config():
  cfg = dataclasses.replace(ONE_LAYER, norm="branch")
  params = Transformer(cfg).init(jax.random.PRNGKey(0), jnp.zeros((1, T), jnp.int32))["params"]
  assert {"attn_branch_norm", "ffn_branch_norm"} <= set(params["layer_0"]) and "final_norm" in params
  config = make_tiny_config(**{"model.attention_mask": "merrill_multiplicative"})
  config_lib.validate(config, 8)
  assert config_lib.resolve(config.updated({"model.attention": "auto", "model.dtype": "bfloat16"}),
                            "gpu").model.attention == "xla"
  with pytest.raises(InputError, match="merrill_multiplicative"):
    config_lib.validate(config.updated({"model.attention": "cudnn", "model.dtype": "bfloat16"}), 8, platform="gpu")
