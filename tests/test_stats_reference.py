"""Every in-step statistic of docs/metrics.md against an independent NumPy reference.

The references are written from the formulas, with explicit Python loops over
b, t, f (and b, h, q, k), in float64, on small hand-built inputs with the edge
cases that break masked reductions: right padding, a sequence of all padding,
the causal mask, a layer whose units are all dead, tied probabilities, zeros
in p. Model-side summaries are checked by capturing the module's own
intermediates (`capture_intermediates=True`) and recomputing from them; token
entropies go through the step's own chunked `token_statistics`; norms and Adam
through real adamw updates of `train_step`, with Adam's moments rebuilt here.
"""

from __future__ import annotations

import functools
import math

from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lensjax.config import Config, ModelConfig, OptimConfig, StatsConfig
from lensjax.io.names import flatten_metrics
from lensjax.model import CAPTURES, EXPLICIT_ONLY, Attention, Block, FeedForward, Transformer
from lensjax.ops.adam import find_adam_state
from lensjax.ops.arrays import masked_mean as masked_token_mean
from lensjax.ops.attention import attention_summaries as raw_attention_summaries, residual_ratio
from lensjax.stats import lens as lens_core
from lensjax.stats import lenses as lens_lib
from lensjax.stats.adam import AdamLens
from lensjax.stats.dead_units import track_dead_units
from lensjax.stats.entropy import TokenEntropyLens
from lensjax.stats.lens import Lens, Renamed, StepView
from lensjax.stats.norms import NormLens
from lensjax.stats.sparsity import activity, unit_active
from lensjax.train.optim import make_optimizer
from lensjax.train.state import create_state
from lensjax.train.loss import MAX_CHUNK_LOGITS, token_statistics
from lensjax.train.step import model_for, train_step

# Row 0 full, row 1 right-padded, row 2 all padding.
MASK_3x5 = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [0, 0, 0, 0, 0]], np.float32)


def close(actual, expected, rtol=1e-5, atol=1e-6):
  np.testing.assert_allclose(np.asarray(actual, np.float64), expected, rtol=rtol, atol=atol)


def view_of(batch, tokens=None, captured=None, params=None, new_params=None, grads=None, updates=None,
            opt_state=None):
  return StepView(batch, tokens or {}, captured or {}, None, params, new_params, grads, updates, opt_state,
                  jnp.zeros((), jnp.int32), True)


def metrics_of(lens: Lens, view) -> dict:
  return lens.update(None, view)[1]


def token_entropy_lens(view):
  return metrics_of(TokenEntropyLens(), view)


def eval_token_entropy_lens(view):
  return metrics_of(Renamed("eval/", TokenEntropyLens()), view)


def attention_summaries(logits, probs, mask):
  """The floor's summaries under the names this file's references use."""
  return {f"attn_{k}": v for k, v in raw_attention_summaries(logits, probs, mask).items()}


def ffn_summaries(a_BxTxF, mask, threshold):
  """The activity lens's per-layer functions on one layer's captured activations."""
  act = activity(a_BxTxF, mask, threshold)
  return {"ffn_active_token": act["token"], "ffn_active_seq": act["seq"], "ffn_active_batch": act["batch"],
          "ffn_unit_active": unit_active(a_BxTxF, mask, threshold)}


def run_module(module, x, mask, params=None, seed=0):
  """`(aux, intermediates)` of one apply with captured intermediates, init and apply jitted together."""

  def init_and_apply(x, mask):
    p = params if params is not None else module.init(jax.random.PRNGKey(seed), x, mask)["params"]
    (_, aux), state = module.apply({"params": p}, x, mask, capture_intermediates=True, mutable=["intermediates"])
    return aux, state["intermediates"]

  return jax.jit(init_and_apply)(jnp.asarray(x), jnp.asarray(mask))


# --- token entropy -----------------------------------------------------------


def ref_token_entropy(z, y, mask, p=None):
  """Means over real tokens of −log q(y), H(q), H(p), KL(p‖q): loops over b, t, v in float64."""
  sums, n = {"nll": 0.0, "model": 0.0, "target": 0.0, "kl": 0.0}, 0
  B, T, V = z.shape
  for b in range(B):
    for t in range(T):
      if mask[b, t] == 0:
        continue
      n += 1
      row = [float(v) for v in z[b, t]]
      top = max(row)
      logz = top + math.log(sum(math.exp(v - top) for v in row))
      logq = [v - logz for v in row]
      sums["nll"] -= logq[y[b, t]]
      sums["model"] -= sum(math.exp(lq) * lq for lq in logq)
      if p is not None:
        for v in range(V):
          pv = float(p[b, t, v])
          if pv > 0:  # 0·log 0 = 0
            sums["target"] -= pv * math.log(pv)
            sums["kl"] += pv * (math.log(pv) - logq[v])
  return {k: s / max(n, 1) for k, s in sums.items()}


def entropy_inputs():
  rng = np.random.default_rng(0)
  B, T, V = MASK_3x5.shape + (6,)
  z = rng.normal(size=(B, T, V)) * 2.0
  z[0, 0] = 0.7  # tied logits: H(q) = log V
  z[0, 1] = [40.0, 0, 0, 0, 0, -40.0]  # nearly one-hot q
  p = rng.dirichlet(np.ones(V), size=(B, T))
  p[0, 0] = 1.0 / V  # tied probabilities
  p[0, 1] = [0, 0, 1.0, 0, 0, 0]  # one-hot p, q small there: a large KL
  p[0, 2, :3] = 0.0  # zeros in p
  p[0, 2] /= p[0, 2].sum()
  # Padding holds large garbage that must not leak through the mask.
  z[1, 3:] = 1e4 * rng.normal(size=(2, V))
  z[2] = 1e4
  p[1, 3:] = 7.0
  p[2] = 0.0
  y = rng.integers(0, V, size=(B, T))
  return z.astype(np.float32), y.astype(np.int32), p.astype(np.float32)


def entropy_metrics(z, y, mask, p=None, max_chunk_logits=MAX_CHUNK_LOGITS):
  """Logits z through the step's own pipeline: token_statistics (h = z, head = identity) -> lens."""
  B, T, V = z.shape
  # Two padded vocabulary columns full of garbage: the statistics must cut them off.
  head_DxVpad = jnp.concatenate([jnp.eye(V), 1e3 * jnp.ones((V, 2))], axis=1)
  batch = {"mask": jnp.asarray(mask)} | ({} if p is None else {"target_probs": jnp.asarray(p)})

  def run(z, y):
    tokens = token_statistics(z, head_DxVpad, y, V, target_probs_BxTxV=batch.get("target_probs"), with_entropy=True,
                              max_chunk_logits=max_chunk_logits)
    return tokens, token_entropy_lens(view_of(batch, tokens=tokens))

  return jax.jit(run)(jnp.asarray(z), jnp.asarray(y))


@pytest.mark.parametrize("max_chunk_logits", [MAX_CHUNK_LOGITS, 3 * 6], ids=["one_chunk", "chunk_per_position"])
def test_token_entropy_matches_reference_with_padding_ties_and_zero_probabilities(max_chunk_logits):
  z, y, p = entropy_inputs()
  tokens, got = entropy_metrics(z, y, MASK_3x5, p, max_chunk_logits)
  want = ref_token_entropy(z, y, MASK_3x5, p)
  assert set(got) == {"entropy/model_token", "entropy/target_token", "entropy/kl_token"}
  close(masked_token_mean(tokens["nll"], jnp.asarray(MASK_3x5)), want["nll"])
  close(got["entropy/model_token"], want["model"])
  close(got["entropy/target_token"], want["target"])
  close(got["entropy/kl_token"], want["kl"], rtol=1e-5)
  assert want["kl"] > 1.0  # the one-hot p on an unlikely token dominates: the case is not vacuous


def test_token_entropy_single_token_cases():
  V = 6
  z = np.zeros((1, 2, V), np.float32)
  z[0, 1] = np.arange(V)
  y = np.zeros((1, 2), np.int32)
  mask = np.array([[1, 0]], np.float32)
  _, got = entropy_metrics(z, y, mask)
  assert set(got) == {"entropy/model_token"}  # no target_probs, no target metrics
  close(got["entropy/model_token"], math.log(V))  # tied logits at the only real token
  # p = q exactly: KL 0, H(p) = H(q).
  z_same = np.broadcast_to(z[0, 1], (1, 2, V)).copy()
  q = np.exp(z[0, 1] - np.log(np.exp(z[0, 1]).sum()))
  p = np.broadcast_to(q, (1, 2, V)).astype(np.float32)
  _, got = entropy_metrics(z_same, y, np.ones((1, 2), np.float32), p)
  close(got["entropy/kl_token"], 0.0, atol=1e-6)
  close(got["entropy/target_token"], got["entropy/model_token"])
  # A batch of padding only reports 0, never NaN.
  _, got = entropy_metrics(z, y, np.zeros((1, 2), np.float32), p)
  assert all(float(v) == 0.0 for v in got.values())


def test_eval_token_entropy_prefixes_names():
  z, y, p = entropy_inputs()
  tokens, train = entropy_metrics(z, y, MASK_3x5, p)
  view = view_of({"mask": jnp.asarray(MASK_3x5), "target_probs": jnp.asarray(p)}, tokens=tokens)
  evals = eval_token_entropy_lens(view)
  assert set(evals) == {"eval/" + k for k in train}
  for name, value in train.items():
    close(evals["eval/" + name], value)


# --- attention summaries -----------------------------------------------------


def ref_causal_softmax(logits):
  """probs[b,h,q,k] over keys k ≤ q, exactly 0 beyond: loops in float64."""
  B, H, T, _ = logits.shape
  probs = np.zeros(logits.shape)
  for b in range(B):
    for h in range(H):
      for q in range(T):
        top = max(logits[b, h, q, k] for k in range(q + 1))
        e = [math.exp(logits[b, h, q, k] - top) for k in range(q + 1)]
        for k in range(q + 1):
          probs[b, h, q, k] = e[k] / sum(e)
  return probs


def ref_attention_summaries(logits, probs, mask):
  """docs/metrics.md: entropy / log(#visible) per head over real queries q ≥ 1; max logit over
  real queries and visible keys; sink = mean mass on key 0 over real queries (and heads)."""
  B, H, T, _ = logits.shape
  entropy_sum, entropy_n = np.zeros(H), np.zeros(H)
  max_logit, sink_sum, sink_n = -math.inf, 0.0, 0
  for b in range(B):
    for h in range(H):
      for q in range(T):
        if mask[b, q] == 0:
          continue
        for k in range(q + 1):
          max_logit = max(max_logit, float(logits[b, h, q, k]))
        sink_sum, sink_n = sink_sum + probs[b, h, q, 0], sink_n + 1
        if q == 0:
          continue
        entropy = -sum(probs[b, h, q, k] * math.log(probs[b, h, q, k]) for k in range(q + 1) if probs[b, h, q, k] > 0)
        entropy_sum[h] += entropy / math.log(q + 1)
        entropy_n[h] += 1
  return {"attn_entropy": entropy_sum / np.maximum(entropy_n, 1), "attn_max_logit": max_logit,
          "attn_sink": sink_sum / max(sink_n, 1)}


def test_attention_summaries_on_hand_built_scores():
  rng = np.random.default_rng(1)
  B, T, H = 3, 5, 3
  logits = rng.normal(size=(B, H, T, T)) * 2.0
  logits[0, 1] = 0.5  # head of tied scores: uniform attention, normalised entropy exactly 1
  logits[1, 2] = np.where(np.eye(T, dtype=bool), 50.0, -50.0)  # attends to itself: entropy ~0
  probs = ref_causal_softmax(logits)
  logits[:, :, np.triu_indices(T, 1)[0], np.triu_indices(T, 1)[1]] = 99.0  # future keys: must be ignored
  logits[1, :, 3:, :] = 98.0  # padded queries: must be ignored
  got = attention_summaries(jnp.asarray(logits, jnp.float32), jnp.asarray(probs, jnp.float32), jnp.asarray(MASK_3x5))
  want = ref_attention_summaries(logits, probs, MASK_3x5)
  close(got["attn_entropy"], want["attn_entropy"])
  close(got["attn_max_logit"], want["attn_max_logit"])
  close(got["attn_sink"], want["attn_sink"])
  assert want["attn_max_logit"] < 60.0


def test_attention_module_summaries_from_its_own_queries_and_keys():
  cfg = ModelConfig(num_layers=1, d_model=8, num_heads=2, vocab_size=5, max_len=8, init_std=0.6)
  x = jax.random.normal(jax.random.PRNGKey(0), (3, 5, 8))
  module = Attention(cfg, capture=EXPLICIT_ONLY)
  captured, inter = run_module(module, x, MASK_3x5, seed=1)
  aux = attention_summaries(captured["attn_logits"], captured["attn_probs"], jnp.asarray(MASK_3x5))
  qkv = np.stack([np.asarray(x, np.float64) for x in inter["qkv"]["__call__"][0]], axis=2)  # (q, k, v): [B, T, 3, H, K]
  B, T, _, H, K = qkv.shape
  logits = np.zeros((B, H, T, T))
  for b in range(B):
    for h in range(H):
      for q in range(T):
        for k in range(T):
          logits[b, h, q, k] = sum(qkv[b, q, 0, h, d] * qkv[b, k, 1, h, d] for d in range(K)) / math.sqrt(K)
  want = ref_attention_summaries(logits, ref_causal_softmax(logits), MASK_3x5)
  close(aux["attn_entropy"], want["attn_entropy"], rtol=1e-4)
  close(aux["attn_max_logit"], want["attn_max_logit"], rtol=1e-4)
  close(aux["attn_sink"], want["attn_sink"], rtol=1e-4)
  assert want["attn_entropy"].min() < 0.99  # far enough from uniform to notice a wrong scale


# --- FFN activity ------------------------------------------------------------


def ref_ffn_activity(a, mask, tau):
  """Token / sequence / batch active fractions and per-unit flags: loops over b, t, f."""
  B, T, F = a.shape
  token_sum, n_tokens, seq_sum, n_seqs = 0.0, 0, 0.0, 0
  unit_active = [False] * F
  for b in range(B):
    in_seq = [False] * F
    for t in range(T):
      if mask[b, t] == 0:
        continue
      token_sum += sum(1.0 for f in range(F) if a[b, t, f] > tau) / F
      n_tokens += 1
      for f in range(F):
        if a[b, t, f] > tau:
          in_seq[f] = unit_active[f] = True
    if any(mask[b, t] for t in range(T)):  # a sequence of padding only is not a sequence
      seq_sum += sum(in_seq) / F
      n_seqs += 1
  return {"ffn_active_token": token_sum / max(n_tokens, 1), "ffn_active_seq": seq_sum / max(n_seqs, 1),
          "ffn_active_batch": sum(unit_active) / F, "ffn_unit_active": np.array(unit_active)}


def check_ffn(aux, want):
  for key in ("ffn_active_token", "ffn_active_seq", "ffn_active_batch"):
    close(aux[key], want[key])
  np.testing.assert_array_equal(np.asarray(aux["ffn_unit_active"]), want["ffn_unit_active"])


def relu_ffn(F):
  cfg = ModelConfig(d_model=F, d_ff=F, activation="relu")
  module = FeedForward(cfg)
  # up = identity, no bias: the activations are exactly relu(x); `down` does not matter.
  params = {"up": {"kernel": jnp.eye(F), "bias": jnp.zeros(F)},
            "down": {"kernel": jnp.ones((F, F)), "bias": jnp.zeros(F)}}
  return module, params


def test_ffn_activity_with_hand_set_weights_and_padding():
  F = 4
  module, params = relu_ffn(F)
  x = -np.ones((3, 5, F), np.float32)
  x[0, 0, 0] = x[0, 3, 0] = x[0, 4, 1] = 1.0  # row 0: unit 0 on two tokens, unit 1 on one
  x[1, 1, 0] = 0.5
  x[1, 3:, 2:] = 5.0  # units 2 and 3 fire only on padding
  x[2] = 5.0  # the all-padding row fires everything
  a = run_module(module, x, MASK_3x5, params)[0]["ffn_hidden"]
  aux = ffn_summaries(a, jnp.asarray(MASK_3x5), 0.0)
  want = ref_ffn_activity(np.maximum(x, 0.0), MASK_3x5, 0.0)
  check_ffn(aux, want)
  # Hand-computed: 4 of 32 (token, unit) pairs over 8 real tokens; sequences {0,1} and {0}.
  close(want["ffn_active_token"], 4 / (8 * F))
  close(want["ffn_active_seq"], (2 / F + 1 / F) / 2)
  close(want["ffn_active_batch"], 2 / F)


def test_ffn_activity_of_a_layer_where_every_unit_is_dead():
  module, params = relu_ffn(4)
  x = -np.abs(np.random.default_rng(2).normal(size=(3, 5, 4))).astype(np.float32)  # relu(x) = 0 everywhere
  a = run_module(module, x, MASK_3x5, params)[0]["ffn_hidden"]
  aux = ffn_summaries(a, jnp.asarray(MASK_3x5), 0.0)
  check_ffn(aux, ref_ffn_activity(np.zeros_like(x), MASK_3x5, 0.0))
  assert float(aux["ffn_active_batch"]) == 0.0 and not np.any(aux["ffn_unit_active"])


def test_swiglu_activity_against_captured_projections_with_threshold():
  cfg = ModelConfig(d_model=6, d_ff=8, activation="swiglu", active_threshold=0.05, init_std=0.5)
  module = FeedForward(cfg)
  x = jax.random.normal(jax.random.PRNGKey(3), (3, 5, 6))
  captured, inter = run_module(module, x, MASK_3x5, seed=4)
  a_captured = captured["ffn_hidden"]
  aux = ffn_summaries(a_captured, jnp.asarray(MASK_3x5), cfg.active_threshold)
  gate = np.asarray(inter["gate"]["__call__"][0], np.float64)
  up = np.asarray(inter["up"]["__call__"][0], np.float64)
  a = gate / (1.0 + np.exp(-gate)) * up
  assert np.min(np.abs(a - 0.05)) > 1e-5  # no activation sits on the threshold
  want = ref_ffn_activity(a, MASK_3x5, 0.05)
  assert 0.0 < want["ffn_active_token"] < want["ffn_active_seq"] <= want["ffn_active_batch"]
  check_ffn(aux, want)


# --- attention bypass --------------------------------------------------------


def ref_bypass(h, attn_out, mask):
  """Mean over real tokens of ‖attn_out[b,t]‖ / ‖h[b,t]‖."""
  total, n = 0.0, 0
  B, T, D = h.shape
  for b in range(B):
    for t in range(T):
      if mask[b, t]:
        total += math.sqrt(sum(attn_out[b, t, d] ** 2 for d in range(D))) / math.sqrt(sum(h[b, t, d] ** 2 for d in range(D)))
        n += 1
  return total / max(n, 1)


@pytest.mark.parametrize("norm", ["pre", "post"])
def test_block_attention_bypass(norm):
  cfg = ModelConfig(num_layers=2, d_model=8, num_heads=2, d_ff=16, norm=norm, init_std=0.3)
  x = np.array(jax.random.normal(jax.random.PRNGKey(5), (3, 5, 8)))
  x[0, 2] *= 10.0  # tokens with very different residual norms
  x[1, 4] = 1e3  # huge padding token
  block = Block(cfg, capture=tuple(CAPTURES))
  captured, inter = run_module(block, x, MASK_3x5, seed=6)
  attn_out = np.asarray(inter["attn"]["__call__"][0][0], np.float64)
  bypass = residual_ratio(captured["attn_out"], captured["block_in"], jnp.asarray(MASK_3x5))
  close(bypass, ref_bypass(x.astype(np.float64), attn_out, MASK_3x5), rtol=1e-5)
  assert set(captured) == set(CAPTURES)  # a block hands out every tensor it is asked for


# --- dead units --------------------------------------------------------------


def ref_dead(active_SxLxF, s, window):
  """Dead at step s: `window` steps have passed and the unit fired on none of s-window+1..s."""
  S, L, F = active_SxLxF.shape
  dead = np.zeros((L, F), bool)
  if s < 0 or s < window - 1:
    return dead
  for l in range(L):
    for f in range(F):
      dead[l, f] = not any(active_SxLxF[u, l, f] for u in range(s - window + 1, s + 1))
  return dead


def test_dead_died_revived_against_history():
  window, S, L, F = 3, 12, 2, 4
  active = np.zeros((S, L, F), bool)
  active[:, 0, 0] = True  # always alive
  active[[0, 6], 0, 2] = True  # dies at 3, revives at 6, dies at 9
  active[4, 0, 3] = True  # dead at 2, revives at 4, dies at 7
  # unit (0, 1) never fires; layer 1 never fires at all
  last_active = jnp.full((L, F), -1, jnp.int32)
  step_fn = jax.jit(functools.partial(track_dead_units, window=window))
  totals = np.zeros(2)
  for s in range(S):
    last_active, metrics = step_fn(last_active, jnp.asarray(active[s]), jnp.asarray(s, jnp.int32))
    now, before = ref_dead(active, s, window), ref_dead(active, s - 1, window)
    died = [sum(now[l, f] and not before[l, f] for f in range(F)) for l in range(L)]
    revived = [sum(before[l, f] and not now[l, f] for f in range(F)) for l in range(L)]
    close(metrics["ffn/dead"], now.mean(axis=1))
    close(metrics["ffn/died"], died)
    close(metrics["ffn/revived"], revived)
    totals += [sum(died), sum(revived)]
  assert float(metrics["ffn/dead"][1]) == 1.0  # the all-dead layer
  assert totals[1] >= 2  # revivals happened


def test_dead_units_without_ffn_reports_nothing():
  # A model without FFN keeps no tracker (Orbax cannot save zero-size arrays): None in, None out.
  last, metrics = track_dead_units(None, None, jnp.asarray(3), 5)
  assert metrics == {} and last is None


# --- norms and Adam after real updates ---------------------------------------


def ref_groups(params, cfg):
  """{"layer_l", "embed", "non_embed", "all"}: float64 arrays of the non-scalar parameters of each group."""
  groups = {f"layer_{l}": [] for l in range(cfg.num_layers)} | {"embed": [], "non_embed": [], "all": []}
  for path, leaf in traverse_util.flatten_dict(params).items():
    leaf = np.asarray(leaf, np.float64)
    if path[0] == "layers":  # scanned: one slice per block, scalar by the slice's shape
      slices = {f"layer_{l}": leaf[l] for l in range(cfg.num_layers)}
    else:
      slices = {path[0]: leaf}
    for name, x in slices.items():
      if x.ndim == 0:
        continue
      groups["all"].append(x.ravel())
      if name.startswith("layer_"):
        groups[name].append(x.ravel())
      if name in ("embed", "pos_embed", "unembed"):
        groups["embed"].append(x.ravel())
      else:  # blocks and the final norm
        groups["non_embed"].append(x.ravel())
  return {k: np.concatenate(v) for k, v in groups.items()}


def cos(a, b):
  return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


class CaptureGrads(Lens):
  name = "capture_grads"

  def update(self, state, view):
    return state, {"_grads": view.grads}


TINY = dict(num_layers=2, d_model=8, num_heads=2, d_ff=16, vocab_size=11, max_len=8, tie_embeddings=False,
            init_std=0.2)
ADAMW = OptimConfig(name="adamw", lr=0.05, schedule="constant", warmup_steps=0, weight_decay=0.1, clip_norm=0.5,
                    b1=0.8, b2=0.9, eps=1e-6)


@pytest.fixture(scope="module")
def adamw_run():
  """Three real adamw updates through train_step with the lenses of `train_lenses`.

  Returns the config and, per step, {params, new_params, grads, opt_state, metrics} as NumPy.
  Compiling the step dominates the test time, so the tests below share this one run.
  """
  config = Config(model=ModelConfig(**TINY), optim=ADAMW, stats=StatsConfig(dead_window=2))
  lenses = lens_lib.train_lenses(config) + (CaptureGrads(),)
  model = model_for(config.model, lenses)
  tx, schedule = make_optimizer(config.optim, total_steps=10)
  state = jax.jit(lambda: create_state(model, tx, seq_len=5, seed=0, lenses=lenses))()
  rng = np.random.default_rng(7)
  batch = {"inputs": jnp.asarray(rng.integers(0, 11, (3, 5)), jnp.int32),
           "targets": jnp.asarray(rng.integers(0, 11, (3, 5)), jnp.int32), "mask": jnp.asarray(MASK_3x5),
           "target_probs": jnp.asarray(rng.dirichlet(np.ones(11), (3, 5)), jnp.float32)}
  step = jax.jit(functools.partial(train_step, model=model, tx=tx, schedule=schedule, lenses=lenses, logging=True))
  history = []
  for _ in range(3):
    params = jax.tree.map(np.asarray, state.params)
    state, metrics = step(state, batch)
    metrics = jax.tree.map(np.asarray, metrics)
    history.append({"params": params, "new_params": jax.tree.map(np.asarray, state.params),
                    "grads": metrics.pop("_grads"), "opt_state": jax.tree.map(np.asarray, state.opt_state),
                    "metrics": metrics})
  return config, history, batch


def check_norms_and_adam(cfg, history):
  """Norm and Adam metrics of each step against NumPy, with Adam's moments rebuilt from the raw gradients."""
  b1, b2, eps, clip = ADAMW.b1, ADAMW.b2, ADAMW.eps, ADAMW.clip_norm
  mu = nu = None
  for t, h in enumerate(history):
    metrics = h["metrics"]
    theta, theta_new = ref_groups(h["params"], cfg), ref_groups(h["new_params"], cfg)["all"]
    delta = theta_new - theta["all"]
    close(metrics["norm/params"], np.linalg.norm(theta["all"]))
    close(metrics["norm/params/embed"], np.linalg.norm(theta["embed"]))
    close(metrics["norm/params/non_embedding"], np.linalg.norm(theta["non_embed"]))
    for l in range(cfg.num_layers):
      close(metrics[f"norm/params/layer_{l}"], np.linalg.norm(theta[f"layer_{l}"]))
    close(metrics["norm/update"], np.linalg.norm(delta), rtol=1e-4)
    close(metrics["norm/cos_step"], cos(theta["all"], theta_new), atol=1e-6)
    close(metrics["norm/alignment"], cos(delta, theta["all"]), rtol=1e-4, atol=1e-5)

    # Adam's moments from scratch: clip by global norm, then the two EMAs.
    g = ref_groups(h["grads"], cfg)
    scale = min(1.0, clip / np.linalg.norm(g["all"]))
    assert scale < 1.0  # clipping is active, so raw and clipped gradients differ
    mu = {k: (b1 * mu[k] if mu else 0.0) + (1 - b1) * scale * v for k, v in g.items()}
    nu = {k: (b2 * nu[k] if nu else 0.0) + (1 - b2) * (scale * v) ** 2 for k, v in g.items()}
    count = t + 1  # opt_state is after this step's update
    for l in range(cfg.num_layers):
      v_hat = nu[f"layer_{l}"] / (1 - b2 ** count)
      close(metrics[f"adam/g2_over_v/layer_{l}"], np.mean(g[f"layer_{l}"] ** 2) / np.mean(v_hat), rtol=1e-4)
    close(metrics["adam/update_grad_cos"], cos(delta, -g["all"]), rtol=1e-4)
    ratio = np.abs((mu["all"] / (1 - b1 ** count)) / (np.sqrt(nu["all"] / (1 - b2 ** count)) + eps))
    on_edge = np.sum(np.abs(ratio - 0.9) < 1e-4)  # float32 may round these either way
    close(metrics["adam/update_saturated"], np.mean(ratio > 0.9), atol=(on_edge + 0.5) / ratio.size)
  assert 0.0 < float(history[-1]["metrics"]["adam/update_saturated"]) < 1.0
  assert int(find_adam_state(history[-1]["opt_state"]).count) == len(history)


def test_norms_and_adam_after_real_adamw_updates(adamw_run):
  config, history, _ = adamw_run
  check_norms_and_adam(config.model, history)


def to_scanned(tree, num_layers):
  """An unrolled parameter tree restacked as nn.scan lays it out: `layers`, leading L axis."""
  rest = {k: v for k, v in tree.items() if not k.startswith("layer_")}
  blocks = [tree[f"layer_{l}"] for l in range(num_layers)]
  return {**rest, "layers": jax.tree.map(lambda *xs: np.stack(xs), *blocks)}


def test_norms_and_adam_on_the_scanned_layout(adamw_run):
  config, history, _ = adamw_run
  cfg = ModelConfig(**TINY, scan_layers=True)
  scanned_shapes = jax.eval_shape(Transformer(cfg).init, jax.random.PRNGKey(0), jnp.zeros((1, 5), jnp.int32))
  restack = lambda tree: to_scanned(tree, cfg.num_layers)
  assert jax.tree.map(np.shape, restack(history[0]["params"])) == jax.tree.map(np.shape, scanned_shapes["params"])
  lenses = [NormLens(cfg), AdamLens(ADAMW, cfg)]
  run_lenses = jax.jit(lambda view: lens_core.run(lenses, {}, view)[1])
  scanned_history = []
  for h in history:
    adam = find_adam_state(h["opt_state"])
    opt_state = (optax.ScaleByAdamState(adam.count, restack(adam.mu), restack(adam.nu)),)
    params, new_params, grads = restack(h["params"]), restack(h["new_params"]), restack(h["grads"])
    updates = jax.tree.map(np.subtract, new_params, params)
    metrics = run_lenses(view_of({}, params=params, new_params=new_params, grads=grads, updates=updates,
                                 opt_state=opt_state))
    for name, value in metrics.items():  # the layout changes nothing
      close(value, h["metrics"][name], rtol=1e-4, atol=1e-6)
    scanned_history.append({**h, "params": params, "new_params": new_params, "grads": grads,
                            "metrics": jax.tree.map(np.asarray, metrics)})
  check_norms_and_adam(cfg, scanned_history)


def test_norms_treat_scanned_and_unrolled_layouts_alike_and_skip_scalars():
  rng = np.random.default_rng(8)
  w = rng.normal(size=(2, 3, 4)).astype(np.float32)
  s = rng.normal(size=(2,)).astype(np.float32)  # one scalar per block
  e = rng.normal(size=(5, 4)).astype(np.float32)
  dw, de = rng.normal(size=w.shape).astype(np.float32), rng.normal(size=e.shape).astype(np.float32)
  scanned = {"layers": {"w": w, "s": s}, "embed": {"embedding": e}, "gain": np.float32(3.0)}
  d_scanned = {"layers": {"w": dw, "s": s}, "embed": {"embedding": de}, "gain": np.float32(1.0)}
  unroll = lambda tree: {**{f"layer_{l}": {"w": tree["layers"]["w"][l], "s": tree["layers"]["s"][l]} for l in range(2)},
                         "embed": tree["embed"], "gain": tree["gain"]}
  results = []
  for scan_layers, params, updates in ((True, scanned, d_scanned), (False, unroll(scanned), unroll(d_scanned))):
    cfg = ModelConfig(num_layers=2, scan_layers=scan_layers)
    view = view_of({}, params=params, updates=updates)
    results.append(jax.jit(functools.partial(metrics_of, NormLens(cfg)))(view))
  for name, value in results[0].items():
    close(results[1][name], value)
  theta, delta = np.concatenate([w.ravel(), e.ravel()]), np.concatenate([dw.ravel(), de.ravel()])
  close(results[0]["norm/params"], np.linalg.norm(theta))  # the scalars s and gain are not counted
  close(results[0]["norm/params/layer_1"], np.linalg.norm(w[1]))
  close(results[0]["norm/update"], np.linalg.norm(delta))
  close(results[0]["norm/cos_step"], cos(theta, theta + delta))
  close(results[0]["norm/alignment"], cos(delta, theta))


@pytest.mark.parametrize("name", ["sgd", "adafactor"])
def test_adam_lens_is_empty_without_adam_moments(name):
  cfg = ModelConfig(num_layers=1)
  params = {"layer_0": {"kernel": jnp.ones((3, 2))}, "embed": {"embedding": jnp.ones((4, 2))}}
  for optim_name, found in ((name, False), ("adamw", True)):
    optim_cfg = OptimConfig(name=optim_name, weight_decay=0.1)
    opt_state = make_optimizer(optim_cfg, 10)[0].init(params)
    assert (find_adam_state(opt_state) is not None) == found
    if not found:
      assert metrics_of(AdamLens(optim_cfg, cfg), view_of({}, params=params, grads=params, updates=params,
                                                          opt_state=opt_state)) == {}


def test_train_lenses_produce_every_metric_name(adamw_run):
  config, history, batch = adamw_run
  metrics = history[0]["metrics"]
  # The step's entropies (chunked, from the hidden states) equal the reference on the model's own logits.
  logits = jax.jit(Transformer(config.model).apply)({"params": history[0]["params"]}, batch["inputs"], batch["mask"])[0]
  want = ref_token_entropy(np.asarray(logits, np.float64), np.asarray(batch["targets"]), MASK_3x5,
                           np.asarray(batch["target_probs"]))
  close(metrics["train/loss"], want["nll"])
  for key, name in (("model", "entropy/model_token"), ("target", "entropy/target_token"), ("kl", "entropy/kl_token")):
    close(metrics[name], want[key])
  flat = flatten_metrics({k: v for k, v in metrics.items() if not k.startswith("units/")})  # [L, F]: histograms
  L, H = config.model.num_layers, config.model.num_heads
  expected = {"entropy/model_token", "entropy/target_token", "entropy/kl_token", "norm/params", "norm/params/embed",
              "norm/params/non_embedding",
              "norm/update", "norm/cos_step", "norm/alignment", "adam/update_grad_cos", "adam/update_saturated"}
  for l in range(L):
    expected |= {f"norm/params/layer_{l}", f"adam/g2_over_v/layer_{l}", f"ffn/active_token/layer_{l}",
                 f"ffn/active_seq/layer_{l}", f"ffn/active_batch/layer_{l}", f"ffn/dead/layer_{l}",
                 f"attn/bypass/layer_{l}", f"attn/max_logit/layer_{l}", f"attn/sink/layer_{l}"}
    expected |= {f"attn/entropy/layer_{l}/head_{h}" for h in range(H)}
  assert expected <= set(flat)
  assert all(np.isfinite(flat[name]) for name in expected)
  assert any(isinstance(lens, Renamed) and isinstance(lens.inner, TokenEntropyLens) and lens.prefix == "eval/"
             for lens in lens_lib.eval_lenses(config))
