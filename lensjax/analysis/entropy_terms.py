"""The terms of the whole-sequence entropy estimators: pure functions of (parameters, tokens), and their sums.

Exact: each of the V^T prefixes x_0..x_{T-1} contributes its weight and the
log-probability of its x_1..x_{T-1}, plus the closed-form entropy (and KL) of
its last conditional (see `lensjax.analysis.entropy` for the sums). Monte
Carlo: each ancestral sample contributes its −log Q and the Rao-Blackwellised
Σ_t H(q(·|x<t)), Σ_t KL(p(·|x<t) ‖ q(·|x<t)). The device computes the terms in
float32; the host sums them in float64.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from lensjax import sampling
from lensjax.config import ModelConfig
from lensjax.ops.distributions import entropy_nats, entropy_of_log_probs, kl_of_log_probs

# Float32 activations per chunk of prefixes (about 512 MiB for the largest tensor).
MAX_CHUNK_ELEMENTS = 2**27

# log_probs(params, tokens_BxT) -> float32 [B, T, V]: log p(x_{t+1} = v | tokens[:, :t+1]); hashable, so the
# jitted terms below take it as a static argument and compile once per (model config, target law, sizes).
ApplyFn = Callable[[Any, jax.Array], jax.Array]


def model_apply_fn(cfg: ModelConfig) -> ApplyFn:
  """The model's log q as a function of (params, tokens)."""
  return sampling.TransformerLogProbs(cfg)


# --------------------------------------------------------------------------
# Exact: enumeration of the V^T prefixes.


def prefix_tokens(start, chunk: int, vocab_size: int, seq_len: int) -> jax.Array:
  """int32 [C, T]: prefixes number start..start+C-1 in base V, x_0 the most significant digit."""
  n_C = start + jnp.arange(chunk, dtype=jnp.int32)
  powers_T = jnp.asarray([vocab_size**(seq_len - 1 - t) for t in range(seq_len)], jnp.int32)
  return (n_C[:, None] // powers_T[None, :]) % vocab_size


def prefix_log_prob(log_probs_CxTxV, tokens_CxT):
  """log of the law of x_1..x_{T-1} given x_0 (the conditionals of positions 0..T-2)."""
  chosen_CxTm1 = jnp.take_along_axis(log_probs_CxTxV[:, :-1], tokens_CxT[:, 1:, None], axis=-1)[..., 0]
  return jnp.sum(chosen_CxTm1, axis=-1)


def prefix_terms(model_params, target_params, log_initial_V, start, *, model_fn: ApplyFn,
                 target_fn: ApplyFn | None, chunk: int, vocab_size: int, seq_len: int, total: int) -> dict:
  """Per-prefix float32 [C] terms of the enumeration sums; prefixes past `total` get weight 0."""
  tokens_CxT = prefix_tokens(start, chunk, vocab_size, seq_len)
  valid_C = start + jnp.arange(chunk) < total
  log_p0_C = log_initial_V[tokens_CxT[:, 0]]
  log_q_CxTxV = model_fn(model_params, tokens_CxT)
  log_q_prefix_C = prefix_log_prob(log_q_CxTxV, tokens_CxT)
  out = {"log_wq": jnp.where(valid_C, log_p0_C + log_q_prefix_C, -jnp.inf), "log_q_prefix": log_q_prefix_C,
         "hq_last": entropy_of_log_probs(log_q_CxTxV[:, -1])}
  if target_fn is not None:
    log_p_CxTxV = target_fn(target_params, tokens_CxT)
    log_p_prefix_C = prefix_log_prob(log_p_CxTxV, tokens_CxT)
    out.update({"log_wp": jnp.where(valid_C, log_p0_C + log_p_prefix_C, -jnp.inf), "log_p_prefix": log_p_prefix_C,
                "hp_last": entropy_of_log_probs(log_p_CxTxV[:, -1]),
                "kl_last": kl_of_log_probs(log_p_CxTxV[:, -1], log_q_CxTxV[:, -1])})
  return out


def weighted_sum(log_w_N: np.ndarray, term_N: np.ndarray) -> float:
  """Σ exp(log w)·term in float64, with zero-weight terms (possibly ±inf) left out."""
  w_N = np.exp(np.asarray(log_w_N, np.float64))
  with np.errstate(invalid="ignore"):
    return float(np.sum(np.where(w_N > 0, w_N * np.asarray(term_N, np.float64), 0.0)))


def enumeration_sums(terms: dict) -> dict:
  """The exact entropies from the per-prefix terms (host, float64)."""
  f64 = lambda name: np.asarray(terms[name], np.float64)
  sums = {"model_mass": weighted_sum(terms["log_wq"], np.ones_like(terms["log_wq"])),
          "entropy_model": weighted_sum(terms["log_wq"], -f64("log_q_prefix") + f64("hq_last"))}
  if "log_wp" in terms:
    with np.errstate(invalid="ignore"):
      kl_terms = f64("log_p_prefix") - f64("log_q_prefix") + f64("kl_last")
    sums.update({"target_mass": weighted_sum(terms["log_wp"], np.ones_like(terms["log_wp"])),
                 "entropy_target": weighted_sum(terms["log_wp"], -f64("log_p_prefix") + f64("hp_last")),
                 "kl": weighted_sum(terms["log_wp"], kl_terms)})
  return sums


def chunk_size(cfg: ModelConfig, vocab_size: int, seq_len: int, total: int,
               max_elements: int = MAX_CHUNK_ELEMENTS) -> int:
  """Prefixes per forward pass: a power of two whose largest activations fit `max_elements`."""
  per_sequence = seq_len * (vocab_size + 4 * cfg.d_model + 2 * cfg.d_ff + 2 * cfg.num_heads * seq_len)
  fitting = max(1, max_elements // per_sequence)
  chunk = 1 << (fitting.bit_length() - 1)
  return max(1, min(chunk, 1 << (total - 1).bit_length()))


# --------------------------------------------------------------------------
# Monte Carlo.


def mean_and_stderr(x_N: np.ndarray) -> tuple[float, float]:
  x_N = np.asarray(x_N, np.float64)
  stderr = float(np.std(x_N, ddof=1) / math.sqrt(len(x_N))) if len(x_N) > 1 else float("nan")
  return float(np.mean(x_N)), stderr


def model_sample_terms(model_params, key, log_initial_V, *, cfg: ModelConfig, seq_len: int, batch: int) -> dict:
  """Per-sequence [B] terms of the model's entropy estimators, from cached ancestral samples."""
  first_B = sampling.draw_first(key, log_initial_V, batch)
  _, chosen_BxT, entropy_BxT = sampling.sample_with_cache(model_params, key, first_B, cfg=cfg, seq_len=seq_len)
  return {"neg_log_q": -jnp.sum(chosen_BxT, axis=-1), "rb_model": jnp.sum(entropy_BxT, axis=-1)}


def target_sample_terms(model_params, target_params, key, log_initial_V, *, model_fn: ApplyFn, target_fn: ApplyFn,
                        seq_len: int, batch: int) -> dict:
  """Per-sequence [B] terms of H(P), KL(P‖Q) and H(P, Q) on ancestral samples of the target."""
  first_B = sampling.draw_first(key, log_initial_V, batch)
  tokens_BxTp1, chosen_p_BxT, entropy_p_BxT = sampling.sample_without_cache(
      functools.partial(target_fn, target_params), key, first_B, seq_len)
  inputs_BxT = tokens_BxTp1[:, :seq_len]
  log_p_BxTxV = target_fn(target_params, inputs_BxT)
  log_q_BxTxV = model_fn(model_params, inputs_BxT)
  chosen_q_BxT = jnp.take_along_axis(log_q_BxTxV, tokens_BxTp1[:, 1:, None], axis=-1)[..., 0]
  cross_BxT = -jnp.sum(jnp.where(log_p_BxTxV > -jnp.inf, jnp.exp(log_p_BxTxV) * log_q_BxTxV, 0.0), axis=-1)
  return {"rb_target": jnp.sum(entropy_p_BxT, axis=-1),
          "rb_kl": jnp.sum(kl_of_log_probs(log_p_BxTxV, log_q_BxTxV), axis=-1),
          "plain_kl": jnp.sum(chosen_p_BxT - chosen_q_BxT, axis=-1), "rb_cross": jnp.sum(cross_BxT, axis=-1)}


# --------------------------------------------------------------------------
# A finite training set's own law.


def empirical_entropy_seq(sequences_NxTp1: np.ndarray) -> float:
  """H(X_1..T | X_0) of the empirical law of N sequences: H(whole) − H(first token), each ≤ log N."""
  def plug_in(rows: np.ndarray) -> float:
    _, counts = np.unique(rows, axis=0, return_counts=True)
    return float(entropy_nats(counts / counts.sum()))
  sequences_NxTp1 = np.asarray(sequences_NxTp1)
  return plug_in(sequences_NxTp1) - plug_in(sequences_NxTp1[:, :1])


# Jitted once, with the laws, shapes and sizes static: every evaluator of the same
# (model config, target law, sizes) shares one compilation.
jitted_prefix_terms = jax.jit(prefix_terms, static_argnames=("model_fn", "target_fn", "chunk", "vocab_size",
                                                             "seq_len", "total"))
jitted_model_sample_terms = jax.jit(model_sample_terms, static_argnames=("cfg", "seq_len", "batch"))
jitted_target_sample_terms = jax.jit(target_sample_terms, static_argnames=("model_fn", "target_fn", "seq_len",
                                                                           "batch"))
