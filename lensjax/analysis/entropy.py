"""Entropy of whole sequences: the distribution the model learned against the target.

Ren & Liu 2025 ask whether a Transformer trained on a target P of known
entropy learns a Q with H(Q) < H(P). This module measures H(Q), H(P), the
cross-entropy H(P, Q) and KL(P ‖ Q) over whole sequences, exactly where it can
and by Monte Carlo where it cannot.

The sequence law (the same convention for model and target). A data sequence
is x_0..x_T (T = data.seq_len). The model never predicts x_0: it reads
x_0..x_{T-1} and predicts x_1..x_T. So both laws share the target's law of the
first token, p_0 (uniform for a teacher and for a Markov chain's default
start; the stationary marginal with data.markov_initial=stationary; the row
itself for an order-0 chain), and differ in the T conditionals:

    P(x) = p_0(x_0) · Π_{t=1..T} p(x_t | x_<t)     Q(x) = p_0(x_0) · Π_{t=1..T} q(x_t | x_<t)

Every entropy reported is of the T predicted tokens given x_0,

    H(Q) := H_Q(X_1..X_T | X_0) = E_{x_0~p_0}[ −Σ_{x_1..T} Q(x_1..T | x_0) log Q(x_1..T | x_0) ],

in nats (add H(p_0), log V for a uniform start, for the entropy of all T+1
tokens). KL(P ‖ Q) is the same with or without x_0, since p_0 cancels.

Exact, by enumeration (V^T small). With x_<T = x_0..x_{T-1} a prefix, the
chain rule gives H(X_1..T | X_0) = E[−log Q(x_1..T-1 | x_0)] + E[H(q(·|x_<T))]:
enumerate the V^T prefixes, one forward pass of each gives all T conditionals,
and the last position contributes its entropy in closed form. So

    H(Q)     = Σ_prefix p_0(x_0) Q(x_1..T-1|x_0) · [−log Q(x_1..T-1|x_0) + H(q(·|x_<T))]
    KL(P‖Q)  = Σ_prefix p_0(x_0) P(x_1..T-1|x_0) · [log P − log Q of the prefix + KL(p(·|x_<T) ‖ q(·|x_<T))]

with prefixes in jitted chunks and the sums taken in float64 on the host.
A Markov target's H(P) is exact for any T by dynamic programming over its
context distribution (H = Σ_t E[H(p(·|x≤t))]); a teacher's by enumeration.

Monte Carlo (V^T too large): ancestral samples at temperature 1 (the model's
with a KV cache, `sampling.py`); H(Q) is reported by the Rao-Blackwellised
estimator Σ_t H(q(·|x<t)) (and the plain −log Q(x) beside it), KL(P‖Q) by
Σ_t KL(p(·|x<t) ‖ q(·|x<t)) on samples of P, each with its standard error.

A finite training set (data.num_sequences = N) has an empirical law of entropy
at most log N: a model that memorises it learns a low-entropy Q for a reason
that has nothing to do with an inductive bias, so it is reported beside H(P).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from lensjax.analysis import sampling
from lensjax.config import Config, ModelConfig
from lensjax.data.targets import MarkovTarget, entropy_nats
from lensjax.data.teacher import TeacherTarget
from lensjax.errors import InputError

F32 = jnp.float32

# `auto` enumerates when V^T is at most this many prefixes, else samples.
MAX_ENUMERATE = 2**20
# Prefix indices are int32 on the device.
HARD_MAX_ENUMERATE = 2**30
# Float32 activations per chunk of prefixes (about 512 MiB for the largest tensor).
MAX_CHUNK_ELEMENTS = 2**27
DEFAULT_SAMPLES = 8192
MC_BATCH = 4096
# Random stream of the Monte Carlo estimates (folded into the run's seed).
STREAM_ENTROPY = 300

METHODS = ("exact", "mc", "auto")


# --------------------------------------------------------------------------
# Conditional log-probabilities as pure functions of (parameters, tokens).

# log_probs(params, tokens_BxT) -> float32 [B, T, V]: log p(x_{t+1} = v | tokens[:, :t+1]).
ApplyFn = Callable[[Any, jax.Array], jax.Array]


def model_apply_fn(cfg: ModelConfig) -> ApplyFn:
  """The model's log q as a function of (params, tokens)."""
  return lambda params, tokens_BxT: sampling.model_log_probs_fn(params, cfg)(tokens_BxT)


def markov_log_probs(params, tokens_BxT, *, order: int, vocab_size: int, uniform_start: bool):
  """log p(x_{t+1} | x≤t) of a Markov target from its log tables (see `markov_law`)."""
  B, T = tokens_BxT.shape
  num_start = min(max(order - 1, 0), T)
  parts = []
  for t in range(num_start):  # the context is still being drawn: the start's conditionals
    if uniform_start:
      parts.append(jnp.full((B, 1, vocab_size), -math.log(vocab_size), F32))
    else:
      context_B = jnp.zeros((B,), jnp.int32)
      for j in range(t + 1):
        context_B = context_B * vocab_size + tokens_BxT[:, j]
      parts.append(params["log_start"][t][context_B][:, None])
  if T > num_start:
    # Position t >= k-1 reads the window x_{t-k+1..t}, oldest token most significant.
    W = T - num_start
    context_BxW = jnp.zeros((B, W), jnp.int32)
    for j in range(order):
      context_BxW = context_BxW * vocab_size + tokens_BxT[:, j:j + W]
    parts.append(params["log_transition"][context_BxW])
  return jnp.concatenate(parts, axis=1)


def _log64(probs) -> np.ndarray:
  with np.errstate(divide="ignore"):
    return np.log(np.asarray(probs, np.float64))


@dataclasses.dataclass(eq=False)
class TargetLaw:
  """A controlled target as a sequence law: p_0, its conditionals, and what is known exactly."""
  kind: str  # markov | teacher
  vocab_size: int
  seq_len: int
  log_initial_V: np.ndarray  # float64 log p_0
  params: Any  # the arrays `log_probs` reads
  log_probs: ApplyFn
  exact_entropy: float | None  # H(X_1..T | X_0) when known in closed form (Markov DP)
  training_set: np.ndarray | None  # int32 [N, T+1], a finite training set


def markov_entropy_seq(target: MarkovTarget, seq_len: int | None = None) -> float:
  """H(X_1..X_T | X_0) of a Markov target, exactly: Σ_t E[H(p(·|x≤t))] by DP over its context law."""
  return float(np.sum(target.expected_target_entropies(seq_len)))


def markov_joint_entropy(target: MarkovTarget, num_tokens: int) -> float:
  """H(X_0..X_{n-1}) of the first n tokens: H(p_0) + H(X_1..X_{n-1} | X_0)."""
  first = float(entropy_nats(target.initial_distribution))
  return first + (markov_entropy_seq(target, num_tokens - 1) if num_tokens > 1 else 0.0)


def markov_law(target: MarkovTarget) -> TargetLaw:
  uniform = target.initial == "uniform"
  params = {"log_transition": jnp.asarray(_log64(target.transition), F32)}
  if not uniform:
    params["log_start"] = [jnp.asarray(_log64(table), F32) for table in target.start_conditionals[1:]]
  log_probs = functools.partial(markov_log_probs, order=target.order, vocab_size=target.vocab_size,
                                uniform_start=uniform)
  training_set = target.training_set() if target.num_sequences is not None else None
  return TargetLaw("markov", target.vocab_size, target.seq_len, _log64(target.initial_distribution), params,
                   log_probs, markov_entropy_seq(target), training_set)


def teacher_law(target: TeacherTarget) -> TargetLaw:
  model, temperature = target.model, target.temperature

  def log_probs(params, tokens_BxT):
    logits_BxTxV, _ = model.apply({"params": params}, tokens_BxT)
    return jax.nn.log_softmax(logits_BxTxV.astype(F32) / temperature, axis=-1)

  uniform_V = np.full(target.vocab_size, -math.log(target.vocab_size))
  return TargetLaw("teacher", target.vocab_size, target.seq_len, uniform_V, target.params, log_probs, None, None)


def target_law(source) -> TargetLaw | None:
  """The law of a controlled target; None for text, whose law is unknown."""
  if isinstance(source, MarkovTarget):
    return markov_law(source)
  if isinstance(source, TeacherTarget):
    return teacher_law(source)
  return None


# --------------------------------------------------------------------------
# Exact: enumeration of the V^T prefixes.


def prefix_tokens(start, chunk: int, vocab_size: int, seq_len: int) -> jax.Array:
  """int32 [C, T]: prefixes number start..start+C-1 in base V, x_0 the most significant digit."""
  n_C = start + jnp.arange(chunk, dtype=jnp.int32)
  powers_T = jnp.asarray([vocab_size**(seq_len - 1 - t) for t in range(seq_len)], jnp.int32)
  return (n_C[:, None] // powers_T[None, :]) % vocab_size


def kl_of_log_probs(log_p_xV, log_q_xV):
  """KL(p ‖ q) over the last axis, with 0 log 0 = 0."""
  p = jnp.exp(log_p_xV)
  return jnp.sum(jnp.where(p > 0, p * (log_p_xV - log_q_xV), 0.0), axis=-1)


def prefix_log_prob(log_probs_CxTxV, tokens_CxT):
  """log of the law of x_1..x_{T-1} given x_0 (the conditionals of positions 0..T-2)."""
  chosen_CxT1 = jnp.take_along_axis(log_probs_CxTxV[:, :-1], tokens_CxT[:, 1:, None], axis=-1)[..., 0]
  return jnp.sum(chosen_CxT1, axis=-1)


def prefix_terms(model_params, target_params, log_initial_V, start, *, model_fn: ApplyFn,
                 target_fn: ApplyFn | None, chunk: int, vocab_size: int, seq_len: int, total: int) -> dict:
  """Per-prefix float32 [C] terms of the enumeration sums; prefixes past `total` get weight 0."""
  tokens_CxT = prefix_tokens(start, chunk, vocab_size, seq_len)
  valid_C = start + jnp.arange(chunk) < total
  log_p0_C = log_initial_V[tokens_CxT[:, 0]]
  log_q_CxTxV = model_fn(model_params, tokens_CxT)
  log_q_prefix_C = prefix_log_prob(log_q_CxTxV, tokens_CxT)
  out = {"log_wq": jnp.where(valid_C, log_p0_C + log_q_prefix_C, -jnp.inf), "log_q_prefix": log_q_prefix_C,
         "hq_last": sampling.entropy_of_log_probs(log_q_CxTxV[:, -1])}
  if target_fn is not None:
    log_p_CxTxV = target_fn(target_params, tokens_CxT)
    log_p_prefix_C = prefix_log_prob(log_p_CxTxV, tokens_CxT)
    out.update({"log_wp": jnp.where(valid_C, log_p0_C + log_p_prefix_C, -jnp.inf), "log_p_prefix": log_p_prefix_C,
                "hp_last": sampling.entropy_of_log_probs(log_p_CxTxV[:, -1]),
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
  tokens_BxT1, chosen_p_BxT, entropy_p_BxT = sampling.sample_without_cache(
      functools.partial(target_fn, target_params), key, first_B, seq_len)
  inputs_BxT = tokens_BxT1[:, :seq_len]
  log_p_BxTxV = target_fn(target_params, inputs_BxT)
  log_q_BxTxV = model_fn(model_params, inputs_BxT)
  chosen_q_BxT = jnp.take_along_axis(log_q_BxTxV, tokens_BxT1[:, 1:, None], axis=-1)[..., 0]
  cross_BxT = -jnp.sum(jnp.where(log_p_BxTxV > -jnp.inf, jnp.exp(log_p_BxTxV) * log_q_BxTxV, 0.0), axis=-1)
  return {"rb_target": jnp.sum(entropy_p_BxT, axis=-1),
          "rb_kl": jnp.sum(kl_of_log_probs(log_p_BxTxV, log_q_BxTxV), axis=-1),
          "plain_kl": jnp.sum(chosen_p_BxT - chosen_q_BxT, axis=-1), "rb_cross": jnp.sum(cross_BxT, axis=-1)}


# --------------------------------------------------------------------------
# The evaluator: one model family against one target, compiled once.


def empirical_entropy_seq(sequences_NxT1: np.ndarray) -> float:
  """H(X_1..T | X_0) of the empirical law of N sequences: H(whole) − H(first token), each ≤ log N."""
  def plug_in(rows: np.ndarray) -> float:
    _, counts = np.unique(rows, axis=0, return_counts=True)
    return float(entropy_nats(counts / counts.sum()))
  sequences_NxT1 = np.asarray(sequences_NxT1)
  return plug_in(sequences_NxT1) - plug_in(sequences_NxT1[:, :1])


class SequenceEntropy:
  """Whole-sequence entropies of models of one config against one controlled target.

  Build once (the jitted functions compile on first use and are reused for
  every set of parameters), then call `evaluate(params, ...)`.
  """

  def __init__(self, model_cfg: ModelConfig, source):
    self.target = target_law(source)
    if self.target is None:
      raise InputError(f"whole-sequence entropy needs a controlled target whose law is known; this run's data is "
                       f"{type(source).__name__}. Train with --config.data.source=markov or teacher.")
    self.source = source
    # Explicit attention: a fused kernel may not take these short sequences, and it is the same function.
    self.cfg = dataclasses.replace(model_cfg, attention="xla")
    self.vocab_size, self.seq_len = self.target.vocab_size, self.target.seq_len
    self.num_prefixes = self.vocab_size**self.seq_len
    self._log_initial_V = jnp.asarray(self.target.log_initial_V, F32)
    self._model_fn = model_apply_fn(self.cfg)
    self._jitted: dict = {}
    self._train_set_entropy = None

  def _jit(self, name: str, fn, **static):
    """`fn` jitted with `static` bound, once per distinct binding (this evaluator's config is fixed)."""
    key = (name,) + tuple((k, v if _is_hashable(v) else id(v)) for k, v in sorted(static.items()))
    if key not in self._jitted:
      self._jitted[key] = jax.jit(functools.partial(fn, **static))
    return self._jitted[key]

  def can_enumerate(self, max_enumerate: int = MAX_ENUMERATE) -> bool:
    return self.num_prefixes <= min(max_enumerate, HARD_MAX_ENUMERATE)

  def exact(self, params, *, with_target: bool = True, max_chunk_elements: int = MAX_CHUNK_ELEMENTS) -> dict:
    """Enumerates all V^T prefixes; float64 sums of `enumeration_sums`."""
    if self.num_prefixes > HARD_MAX_ENUMERATE:
      raise InputError(f"exact enumeration of V^T = {self.vocab_size}^{self.seq_len} prefixes is beyond "
                       f"{HARD_MAX_ENUMERATE:,}; use --method mc.")
    total = self.num_prefixes
    chunk = chunk_size(self.cfg, self.vocab_size, self.seq_len, total, max_chunk_elements)
    fn = self._jit("prefix_terms", prefix_terms, model_fn=self._model_fn,
                   target_fn=self.target.log_probs if with_target else None, chunk=chunk,
                   vocab_size=self.vocab_size, seq_len=self.seq_len, total=total)
    # Dispatch every chunk before fetching any: the device never waits for the host.
    pending = [fn(params, self.target.params, self._log_initial_V, jnp.int32(start))
               for start in range(0, total, chunk)]
    fetched = jax.device_get(pending)
    terms = {name: np.concatenate([chunk_terms[name] for chunk_terms in fetched])[:total] for name in fetched[0]}
    return enumeration_sums(terms)

  def _batches(self, samples: int) -> tuple[int, int]:
    batch = max(1, min(samples, MC_BATCH))
    return batch, -(-samples // batch)

  def sample_model(self, params, key, samples: int) -> dict:
    """Per-sequence estimator terms from `samples` (rounded up to whole batches) model samples."""
    batch, num_batches = self._batches(samples)
    fn = self._jit("model_sample_terms", model_sample_terms, cfg=self.cfg, seq_len=self.seq_len, batch=batch)
    pending = [fn(params, jax.random.fold_in(key, b), self._log_initial_V) for b in range(num_batches)]
    return _concatenate(jax.device_get(pending))

  def sample_target(self, params, key, samples: int) -> dict:
    batch, num_batches = self._batches(samples)
    fn = self._jit("target_sample_terms", target_sample_terms, model_fn=self._model_fn,
                   target_fn=self.target.log_probs, seq_len=self.seq_len, batch=batch)
    pending = [fn(params, self.target.params, jax.random.fold_in(key, b), self._log_initial_V)
               for b in range(num_batches)]
    return _concatenate(jax.device_get(pending))

  def train_set_entropy(self) -> float | None:
    if self.target.training_set is not None and self._train_set_entropy is None:
      self._train_set_entropy = empirical_entropy_seq(self.target.training_set)
    return self._train_set_entropy

  def evaluate(self, params, key=None, *, method: str = "auto", samples: int = DEFAULT_SAMPLES,
               max_enumerate: int = MAX_ENUMERATE) -> dict:
    """All results: the `eval/...` metrics (each with `_stderr`, 0 when exact) and descriptive fields."""
    if method not in METHODS:
      raise InputError(f"--method {method!r} is not one of {', '.join(METHODS)}.")
    if method == "auto":
      method = "exact" if self.can_enumerate(max_enumerate) else "mc"
    start_time = time.perf_counter()
    t = self.target
    results: dict[str, Any] = {"method": method, "seq_len": self.seq_len, "vocab_size": self.vocab_size,
                               "target": t.kind, "first_token_entropy": float(entropy_nats(np.exp(t.log_initial_V)))}
    if method == "exact":
      sums = self.exact(params)
      model_h, target_h, kl = sums["entropy_model"], sums["entropy_target"], sums["kl"]
      results.update({"num_prefixes": self.num_prefixes, "model_mass": sums["model_mass"],
                      "target_entropy_by_enumeration": target_h})
      errors = dict(model=0.0, target=0.0, kl=0.0, cross=0.0)
    else:
      if key is None:
        raise ValueError("Monte Carlo estimates need a key.")
      model_key, target_key = jax.random.split(key)
      m = self.sample_model(params, model_key, samples)
      p = self.sample_target(params, target_key, samples)
      model_h, model_err = mean_and_stderr(m["rb_model"])
      target_h, target_err = mean_and_stderr(p["rb_target"])
      kl, kl_err = mean_and_stderr(p["rb_kl"])
      plain, plain_err = mean_and_stderr(m["neg_log_q"])
      plain_kl, plain_kl_err = mean_and_stderr(p["plain_kl"])
      results.update({"samples": len(m["rb_model"]), "entropy_model_seq_plain": plain,
                      "entropy_model_seq_plain_stderr": plain_err, "kl_seq_plain": plain_kl,
                      "kl_seq_plain_stderr": plain_kl_err})
      # H(P, Q) = H(P) + KL(P‖Q) sample by sample: the two share the samples of P, so its error is its own.
      errors = dict(model=model_err, target=target_err, kl=kl_err, cross=mean_and_stderr(p["rb_cross"])[1])
    if t.exact_entropy is not None:  # the DP is exact whatever the method: only the KL part of H(P, Q) is estimated
      target_h, errors["target"], errors["cross"] = t.exact_entropy, 0.0, errors["kl"]
    results.update({
        "eval/entropy_model_seq": model_h, "eval/entropy_model_seq_stderr": errors["model"],
        "eval/entropy_target_seq": target_h, "eval/entropy_target_seq_stderr": errors["target"],
        "eval/kl_seq": kl, "eval/kl_seq_stderr": errors["kl"],
        "eval/cross_entropy_seq": target_h + kl, "eval/cross_entropy_seq_stderr": errors["cross"],
        # The model's and the target's samples are independent.
        "entropy_gap_seq": model_h - target_h,
        "entropy_gap_seq_stderr": math.hypot(errors["model"], errors["target"]),
    })
    if t.training_set is not None:
      results["eval/entropy_trainset_seq"] = self.train_set_entropy()
      results["train_set_size"] = int(len(t.training_set))
      results["log_train_set_size"] = math.log(len(t.training_set))
    results["seconds"] = time.perf_counter() - start_time
    return results


def _is_hashable(value) -> bool:
  try:
    hash(value)
  except TypeError:
    return False
  return True


def _concatenate(batches: list[dict]) -> dict:
  return {name: np.concatenate([np.asarray(b[name], np.float64) for b in batches]) for name in batches[0]}


# --------------------------------------------------------------------------
# Entry points: the CLI, the sweep and the training loop.

# Evaluators by (model config, source): the training loop calls every
# `logging.entropy_every` steps and must not recompile each time.
_EVALUATORS: dict[tuple, SequenceEntropy] = {}
_MAX_EVALUATORS = 4


def evaluator_for(config: Config, source) -> SequenceEntropy:
  key = (json.dumps(dataclasses.asdict(config.model), sort_keys=True), id(source))
  found = _EVALUATORS.get(key)
  if found is None or found.source is not source:
    if len(_EVALUATORS) >= _MAX_EVALUATORS:
      _EVALUATORS.pop(next(iter(_EVALUATORS)))
    found = _EVALUATORS[key] = SequenceEntropy(config.model, source)
  return found


def supports(source) -> bool:
  """Whether the whole-sequence entropy of this data source is defined (a controlled target)."""
  return isinstance(source, (MarkovTarget, TeacherTarget))


def analysis_key(config: Config, step: int) -> jax.Array:
  """The Monte Carlo key of an analysis at `step`: a pure function of (train.seed, step)."""
  return jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(config.train.seed), STREAM_ENTROPY), step)


def metrics_only(results: dict) -> dict:
  """The numeric `eval/...` entries of a result (the names logged to TensorBoard and metrics.jsonl)."""
  return {k: float(v) for k, v in results.items() if k.startswith("eval/") and isinstance(v, (int, float))}


def periodic_entropy_metrics(params, config: Config, source, key) -> dict:
  """`eval/entropy_model_seq`, `eval/entropy_target_seq`, `eval/kl_seq` (+ `_stderr`, cross-entropy) as floats.

  For the training loop, every `logging.entropy_every` steps: exact when V^T
  is at most MAX_ENUMERATE, else Monte Carlo with DEFAULT_SAMPLES samples from
  `key`. Empty for data whose law is unknown (text). Blocks on the host for
  the float64 sums, so keep the interval long.
  """
  if not supports(source):
    return {}
  return metrics_only(evaluator_for(config, source).evaluate(params, key))


def summary(results: dict, step: int) -> str:
  """A human-readable account of `SequenceEntropy.evaluate`'s results."""
  T = results["seq_len"]
  exact = results["method"] == "exact"

  def line(label: str, name: str) -> str:
    value, err = results[name], results.get(name + "_stderr", 0.0)
    spread = "" if not err else f" ± {err:.4f}"
    return f"  {label:<26} {value:10.4f}{spread} nats  ({value / T:.4f} per token)"

  how = (f"exact, by enumeration of V^T = {results['vocab_size']}^{T} = {results['num_prefixes']:,} prefixes"
         if exact else f"Monte Carlo, {results['samples']:,} samples per law (± one standard error)")
  gap, gap_err = results["entropy_gap_seq"], results["entropy_gap_seq_stderr"]
  verdict = ("no clear difference: within two standard errors" if abs(gap) < 2 * gap_err else
             f"the model's law has {'lower' if gap < 0 else 'higher'} entropy than the target's")
  lines = [f"whole-sequence entropy at step {step}: the {T} predicted tokens x_1..x_{T} given x_0 "
           f"(x_0 from the target's first-token law, entropy {results['first_token_entropy']:.4f})",
           f"  {how}",
           line("target H(P)", "eval/entropy_target_seq"), line("model  H(Q)", "eval/entropy_model_seq"),
           f"  {'H(Q) - H(P)':<26} {gap:+10.4f}{f' ± {gap_err:.4f}' if gap_err else ''} nats  ({verdict})",
           line("cross-entropy H(P, Q)", "eval/cross_entropy_seq"), line("KL(P || Q)", "eval/kl_seq")]
  if "eval/entropy_trainset_seq" in results:
    lines.append(f"  {'training set (N = ' + format(results['train_set_size'], ',') + ')':<26} "
                 f"{results['eval/entropy_trainset_seq']:10.4f} nats  (empirical law; its whole-sequence entropy is "
                 f"at most log N = {results['log_train_set_size']:.4f}, so a model that memorises the set learns "
                 "low entropy for that reason alone)")
  return "\n".join(lines)
