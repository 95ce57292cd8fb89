"""The Transformer: causality, scanned = unrolled, variants, vocabulary padding, aux, dropout."""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lensjax.config import Config, ModelConfig
from lensjax.model import CAPTURES, Transformer, masked_logits, padded_vocab_size
from lensjax.ops.layers import layer_trees as layer_params
from lensjax.ops.trees import stack_trees
from lensjax.stats import lenses as lens_lib
from lensjax.stats.lens import StepView, init_states, run as run_lenses
from lensjax.train.step import model_for

ALL = tuple(CAPTURES)

B, T, V = 2, 6, 8


def tiny_model_config(**changes) -> ModelConfig:
  cfg = ModelConfig(num_layers=2, d_model=16, num_heads=2, d_ff=32, vocab_size=V, max_len=8)
  return dataclasses.replace(cfg, **changes)


def tokens_BxT(seed: int = 0) -> jnp.ndarray:
  return jax.random.randint(jax.random.PRNGKey(seed), (B, T), 0, V)


def init(cfg: ModelConfig, tokens=None, **kwargs):
  model = Transformer(cfg, **kwargs)
  tokens = tokens_BxT() if tokens is None else tokens
  return model, model.init(jax.random.PRNGKey(1), tokens)["params"]


# ------------------------------------------------------------------ causality


def position_jacobian(cfg: ModelConfig) -> np.ndarray:
  """d(w · logits[0, t]) / d(token embedding [b, s]) for all t, b, s: [T, B, T, D].

  A perturbation `delta` is added to the token embeddings (intercepting the
  `embed` module's lookup), and the Jacobian is taken with respect to it.
  """
  model, params = init(cfg)
  tokens = tokens_BxT()
  w_V = jax.random.normal(jax.random.PRNGKey(2), (V,))

  def projected_logits_T(delta_BxTxD):
    def add_delta(next_fun, args, kwargs, context):
      out = next_fun(*args, **kwargs)
      if context.module.name == "embed" and context.method_name == "__call__":
        out = out + delta_BxTxD
      return out

    with nn.intercept_methods(add_delta):
      logits_BxTxV, _ = model.apply({"params": params}, tokens)
    return logits_BxTxV[0] @ w_V

  delta = jnp.zeros((B, T, cfg.d_model))
  return np.asarray(jax.jit(jax.jacrev(projected_logits_T))(delta))


# A pairwise cover of activation x positions x norm (every pair of values
# appears), plus the block variants.
CAUSAL_VARIANTS = [
    dict(activation="relu", positions="learned", norm="pre"),
    dict(activation="relu", positions="rotary", norm="post"),
    dict(activation="gelu", positions="learned", norm="post"),
    dict(activation="gelu", positions="rotary", norm="pre"),
    dict(activation="swiglu", positions="learned", norm="pre"),
    dict(activation="swiglu", positions="rotary", norm="post"),
    dict(block="attention_only", positions="rotary"),
]


@pytest.mark.parametrize("changes", CAUSAL_VARIANTS, ids=lambda c: "-".join(c.values()))
def test_logits_at_t_have_zero_gradient_from_later_positions_and_other_rows(changes):
  cfg = tiny_model_config(attention="xla", **changes)
  J_TxBxTxD = position_jacobian(cfg)
  magnitude_TxBxT = np.abs(J_TxBxTxD).max(axis=-1)
  for t in range(T):
    # Exactly zero, not small: the causal mask must cut the path entirely.
    assert np.all(magnitude_TxBxT[t, 0, t + 1:] == 0.0), f"position {t} sees later positions"
    # And the test is not vacuous: every earlier position does reach t.
    assert np.all(magnitude_TxBxT[t, 0, :t + 1] > 0.0), f"position {t} ignores earlier positions"
  assert np.all(magnitude_TxBxT[:, 1:] == 0.0), "row 0 depends on another sequence of the batch"


def test_ffn_only_positions_see_only_themselves():
  J_TxBxTxD = position_jacobian(tiny_model_config(block="ffn_only", positions="learned"))
  magnitude_TxT = np.abs(J_TxBxTxD[:, 0]).max(axis=-1)
  np.testing.assert_array_equal(magnitude_TxT == 0, ~np.eye(T, dtype=bool))


# ------------------------------------------------------------------ layouts


@pytest.mark.parametrize("remat", [False, True])
def test_scanned_layers_match_unrolled_layers_with_stacked_params(remat):
  cfg = tiny_model_config(num_layers=3)
  model, params = init(cfg, capture=ALL)
  scanned_cfg = dataclasses.replace(cfg, scan_layers=True, remat=remat)
  scanned = Transformer(scanned_cfg, capture=ALL)
  scanned_params = {k: v for k, v in params.items() if not k.startswith("layer_")}
  scanned_params["layers"] = stack_trees(layer_params(params, cfg))
  # The stacked tree must be exactly what the scanned model itself creates.
  expected = jax.eval_shape(lambda: scanned.init(jax.random.PRNGKey(1), tokens_BxT())["params"])
  assert jax.tree.structure(expected) == jax.tree.structure(scanned_params)
  assert jax.tree.map(lambda x: x.shape, expected) == jax.tree.map(lambda x: x.shape, scanned_params)

  logits, aux = model.apply({"params": params}, tokens_BxT())
  scanned_logits, scanned_aux = scanned.apply({"params": scanned_params}, tokens_BxT())
  np.testing.assert_allclose(scanned_logits, logits, rtol=1e-5, atol=1e-6)
  assert aux.keys() == scanned_aux.keys() == set(ALL)
  for key in aux:  # unrolled: a tuple of L tensors; scanned: one stacked tensor
    assert len(aux[key]) == cfg.num_layers and scanned_aux[key].shape[0] == cfg.num_layers
    np.testing.assert_allclose(scanned_aux[key], np.stack(aux[key]), rtol=1e-5, atol=1e-6, err_msg=key)
  # layer_params reads both layouts alike.
  for unrolled, stacked in zip(layer_params(params, cfg), layer_params(scanned_params, scanned_cfg)):
    jax.tree.map(np.testing.assert_array_equal, unrolled, stacked)


@pytest.mark.parametrize("block,present,absent", [
    ("attention_only", {"attn", "attn_norm"}, {"ffn", "ffn_norm"}),
    ("ffn_only", {"ffn", "ffn_norm"}, {"attn", "attn_norm"}),
])
def test_block_variants_build_run_and_hold_only_their_sublayers(block, present, absent):
  cfg = tiny_model_config(block=block)
  model, params = init(cfg, capture=ALL)
  logits, aux = model.apply({"params": params}, tokens_BxT())
  assert logits.shape == (B, T, V)
  assert np.all(np.isfinite(logits))
  assert present <= set(params["layer_0"]) and not absent & set(params["layer_0"])
  has_attn_stats = any(k.startswith("attn_") for k in aux)
  has_ffn_stats = any(k.startswith("ffn_") for k in aux)
  # The statistics follow: the lenses of this model report only on the sublayers it has.
  names = set(logged_statistics(cfg, params)[0])
  assert (any(n.startswith("attn/") for n in names), any(n.startswith("ffn/") for n in names)) == (
      block == "attention_only", block == "ffn_only")
  assert (has_attn_stats, has_ffn_stats) == (block == "attention_only", block == "ffn_only")


@pytest.mark.parametrize("tie_embeddings", [True, False])
def test_padded_vocabulary_returns_exactly_vocab_size_logits(tie_embeddings):
  cfg = tiny_model_config(vocab_size=10, vocab_multiple=8, tie_embeddings=tie_embeddings)
  assert padded_vocab_size(cfg) == 16
  model, params = init(cfg)
  assert params["embed"]["embedding"].shape == (16, cfg.d_model)
  if not tie_embeddings:
    assert params["unembed"]["kernel"].shape == (cfg.d_model, 16)
  tokens = jnp.array([[0, 9, 3, 9, 1, 2]] * B)
  logits, _ = model.apply({"params": params}, tokens)
  assert logits.shape == (B, T, 10)


def logged_statistics(cfg: ModelConfig, params, every_step_only: bool = False) -> dict:
  """The model-side statistics of the train lenses on one batch (the parameter and optimiser lenses left out)."""
  lenses = [lens for lens in lens_lib.train_lenses(Config(model=cfg))
            if lens.name in ("dead_units", "ffn_activity", "attention") and (lens.every_step or not every_step_only)]
  model = model_for(cfg, lenses)
  tokens, mask = tokens_BxT(), jnp.ones((B, T), jnp.float32)
  _, captured = model.apply({"params": params}, tokens, mask, return_hidden=True)
  view = StepView({"inputs": tokens, "mask": mask}, {}, captured, None, params, params, None, None, None,
                  jnp.zeros((), jnp.int32), not every_step_only)
  states = init_states(lenses, params)
  return run_lenses(lenses, states, view)[1], model


def test_aux_shapes_are_per_layer_per_head_per_unit():
  # Distinct L, H, F so that a swapped axis cannot pass. (The scanned layout
  # is held to the same shapes by the scanned = unrolled test above.)
  L, H, F = 3, 2, 24
  cfg = tiny_model_config(num_layers=L, num_heads=H, d_ff=F)
  model, params = init(cfg)
  metrics, _ = logged_statistics(cfg, params)
  shapes = {k: v.shape for k, v in metrics.items()}
  required = {
      "attn/bypass": (L,), "attn/max_logit": (L,), "attn/sink": (L,), "attn/entropy": (L, H),
      "ffn/active_token": (L,), "ffn/active_seq": (L,), "ffn/active_batch": (L,), "units/frequency": (L, F),
      "ffn/dead": (L,), "units/died": (L, F),
  }
  assert {k: shapes.get(k) for k in required} == required
  # Summaries only, never activation tensors: whatever else is added has one of these shapes.
  assert set(shapes.values()) <= {(L,), (L, H), (L, F)}, shapes
  # The every-step variant carries only what dead-unit tracking needs: the model captures the FFN activations alone.
  plain_metrics, plain_model = logged_statistics(cfg, params, every_step_only=True)
  assert plain_model.capture == ("ffn_hidden",), "the every-step captures grew"
  assert {k: v.shape for k, v in plain_metrics.items()} == {"ffn/dead": (L,), "ffn/died": (L,), "ffn/revived": (L,)}
  # The plain model hands out nothing at all.
  _, nothing = Transformer(cfg).apply({"params": params}, tokens_BxT())
  assert nothing == {}


def test_dropout_changes_outputs_only_when_not_deterministic():
  cfg = tiny_model_config(dropout=0.3)
  model, params = init(cfg)
  no_dropout = Transformer(dataclasses.replace(cfg, dropout=0.0))
  tokens = tokens_BxT()

  def logits(deterministic, seed, m=model):
    out, _ = m.apply({"params": params}, tokens, deterministic=deterministic,
                     rngs={"dropout": jax.random.PRNGKey(seed)})
    return np.asarray(out)

  reference = logits(True, 0, no_dropout)
  np.testing.assert_array_equal(logits(True, 0), reference)
  np.testing.assert_array_equal(logits(True, 1), reference)
  dropped = logits(False, 0)
  assert not np.allclose(dropped, reference)
  np.testing.assert_array_equal(logits(False, 0), dropped)  # a function of the key
  assert not np.allclose(logits(False, 1), dropped)


@pytest.mark.parametrize("use_bias", [True, False])
def test_the_qkv_projection_is_dense_general_of_three_heads_groups(use_bias):
  """Same parameters (layout, initial values) and the same q, k, v and gradients as nn.DenseGeneral((3, H, K)),
  whose fused output the attention used to slice; checkpoints of either read into the other."""
  import flax.linen as nn
  from lensjax.model import QKVProjection
  init = nn.initializers.normal(0.02)
  x_BxTxD = jax.random.normal(jax.random.PRNGKey(1), (2, 5, 16))
  fused = nn.DenseGeneral((3, 4, 4), use_bias=use_bias, dtype=jnp.float32, param_dtype=jnp.float32, kernel_init=init)
  split = QKVProjection(4, 4, use_bias, jnp.float32, init)
  params = fused.init(jax.random.PRNGKey(0), x_BxTxD)
  assert jax.tree.all(jax.tree.map(np.array_equal, params, split.init(jax.random.PRNGKey(0), x_BxTxD)))
  params = jax.tree.map(lambda p: p + jax.random.normal(jax.random.PRNGKey(2), p.shape), params)  # a nonzero bias
  weights = jax.random.normal(jax.random.PRNGKey(3), (3, 2, 5, 4, 4))
  fused_loss = lambda params: jnp.sum(jnp.moveaxis(fused.apply(params, x_BxTxD), 2, 0) * weights)
  split_loss = lambda params: jnp.sum(jnp.stack(split.apply(params, x_BxTxD)) * weights)
  np.testing.assert_allclose(split_loss(params), fused_loss(params), rtol=1e-6)
  for got, want in zip(jax.tree.leaves(jax.grad(split_loss)(params)), jax.tree.leaves(jax.grad(fused_loss)(params))):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("attention_mask", ["causal", "merrill_multiplicative"])
def test_blockwise_attention_is_the_explicit_path_with_its_gradient_and_hessian(attention_mask):
  """Blocks of 2 of 6 queries, rematerialised: the outputs, the gradient and an HVP of the whole T×T path."""
  from lensjax.model import blockwise_attention
  keys = jax.random.split(jax.random.PRNGKey(5), 4)
  q, k, v = (jax.random.normal(key, (2, 6, 3, 4)) for key in keys[:3])
  tangent = jax.random.normal(keys[3], q.shape)

  def whole(q):
    logits = jnp.einsum("bqhk,bshk->bhqs", q / 2.0, k)
    probs = jax.nn.softmax(masked_logits(logits, attention_mask), axis=-1)
    return jnp.einsum("bhqs,bshk->bqhk", probs, v)

  blocks = lambda q: blockwise_attention(q, k, v, attention_mask, jnp.float32, max_scores=2 * 3 * 2 * 6)
  loss = lambda attend: lambda q: jnp.sum(jnp.sin(attend(q)))
  with jax.default_matmul_precision("highest"):
    np.testing.assert_allclose(blocks(q), whole(q), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(jax.grad(loss(blocks))(q), jax.grad(loss(whole))(q), rtol=1e-5, atol=1e-6)
    hvp = lambda attend: jax.jvp(jax.grad(loss(attend)), (q,), (tangent,))[1]
    np.testing.assert_allclose(hvp(blocks), hvp(whole), rtol=1e-4, atol=1e-5)
