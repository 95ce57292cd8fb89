"""The KV-cache decoding path and the ancestral samplers of `lensjax.sampling`."""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lensjax import sampling
from lensjax.config import ModelConfig
from lensjax.model import Transformer, init_cache

T, V = 7, 5

# The default (learned positions, pre-norm, ReLU, unrolled) is covered by the sampler test below, whose
# cached and uncached samplers agree only if decoding reproduces the full forward pass.
VARIANTS = {"rotary-post-swiglu-scanned": dict(positions="rotary", norm="post", activation="swiglu", scan_layers=True)}


def model_and_params(**changes):
  # A large init_std gives peaked, position-dependent conditionals, so that a wrong cache shows.
  cfg = dataclasses.replace(ModelConfig(num_layers=2, d_model=16, num_heads=2, d_ff=32, vocab_size=V, max_len=8,
                                        init_std=0.5), **changes)
  # Jitted: an eager init compiles each of its many small ops on its own (seconds on a busy CPU).
  params = jax.jit(Transformer(cfg).init)(jax.random.PRNGKey(1), jnp.zeros((1, T), jnp.int32))["params"]
  return cfg, params


@pytest.mark.parametrize("changes", VARIANTS.values(), ids=VARIANTS.keys())
def test_decoding_after_a_prefill_reproduces_the_full_forward_pass(changes):
  cfg, params = model_and_params(**changes)
  decoder = Transformer(cfg, decode=True)

  @jax.jit
  def both(params, tokens_BxT):
    full_BxTxV, _ = Transformer(cfg).apply({"params": params}, tokens_BxT)
    # A prefill of 3 tokens, then one at a time: each call continues the same cache.
    (logits_Bx3xV, _), mutated = decoder.apply({"params": params, "cache": init_cache(cfg, 4, T)},
                                               tokens_BxT[:, :3], mutable=["cache"])
    steps = [logits_Bx3xV]
    for t in range(3, T):
      (logits_Bx1xV, _), mutated = decoder.apply({"params": params, "cache": mutated["cache"]},
                                                 tokens_BxT[:, t:t + 1], mutable=["cache"])
      steps.append(logits_Bx1xV)
    return full_BxTxV, jnp.concatenate(steps, axis=1)

  full, decoded = both(params, jax.random.randint(jax.random.PRNGKey(0), (4, T), 0, V))
  np.testing.assert_allclose(decoded, full, atol=2e-5)


def test_cached_sampler_draws_the_same_sequences_as_the_uncached_one_and_follows_q():
  cfg, params = model_and_params()
  n, key = 2048, jax.random.PRNGKey(7)
  first_B = sampling.draw_first(key, jnp.log(jnp.full((V,), 1.0 / V)), n)
  cached = jax.jit(lambda p, k, f: sampling.sample_with_cache(p, k, f, cfg=cfg, seq_len=T))
  uncached = jax.jit(lambda p, k, f: sampling.sample_without_cache(functools.partial(sampling.TransformerLogProbs(cfg), p), k, f, T))
  tokens, chosen, entropies = cached(params, key, first_B)
  ref_tokens, ref_chosen, ref_entropies = uncached(params, key, first_B)
  tokens = np.asarray(tokens)
  assert tokens.shape == (n, T + 1)
  np.testing.assert_array_equal(tokens, np.asarray(ref_tokens))
  np.testing.assert_allclose(chosen, ref_chosen, atol=1e-5)  # log q of the drawn tokens
  np.testing.assert_allclose(entropies, ref_entropies, atol=1e-5)  # entropies of the conditionals
  # A different key draws different sequences.
  assert not np.array_equal(np.asarray(cached(params, jax.random.PRNGKey(8), first_B)[0]), tokens)
  # x_1 given x_0 = v is drawn from q(·|v): frequencies within 5 standard errors (plus a little slack).
  logits_VxV, _ = jax.jit(Transformer(cfg).apply)({"params": params}, jnp.arange(V)[:, None])
  q_VxV = np.asarray(jax.nn.softmax(logits_VxV[:, 0]), np.float64)
  for v in range(V):
    rows = tokens[tokens[:, 0] == v]
    freq_V = np.bincount(rows[:, 1], minlength=V) / len(rows)
    assert np.all(np.abs(freq_V - q_VxV[v]) < 5 * np.sqrt(q_VxV[v] * (1 - q_VxV[v]) / len(rows)) + 1e-3), v
  # The recorded log q and entropy are those of the conditional at x_0.
  np.testing.assert_allclose(np.asarray(entropies)[:, 0], -(q_VxV * np.log(q_VxV)).sum(-1)[tokens[:, 0]], atol=1e-5)
  np.testing.assert_allclose(np.asarray(chosen)[:, 0], np.log(q_VxV[tokens[:, 0], tokens[:, 1]]), atol=1e-5)
