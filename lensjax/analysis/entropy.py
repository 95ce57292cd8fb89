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
with a KV cache, `lensjax/sampling.py`); H(Q) is reported by the Rao-Blackwellised
estimator Σ_t H(q(·|x<t)) (and the plain −log Q(x) beside it), KL(P‖Q) by
Σ_t KL(p(·|x<t) ‖ q(·|x<t)) on samples of P, each with its standard error.

A finite training set (data.num_sequences = N) has an empirical law of entropy
at most log N: a model that memorises it learns a low-entropy Q for a reason
that has nothing to do with an inductive bias, so it is reported beside H(P).

Each controlled target owns its law (`source.law()`, a `lensjax.data.law.TargetLaw`);
this module and `entropy_terms` hold only the estimators, whatever the target.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lensjax.analysis import entropy_terms as terms
from lensjax.analysis.entropy_terms import MAX_CHUNK_ELEMENTS, chunk_size, model_apply_fn
from lensjax.config import Config, ModelConfig
from lensjax.data.law import TargetLaw
from lensjax.errors import InputError
from lensjax.ops.arrays import F32
from lensjax.ops.distributions import entropy_nats

# `auto` enumerates when V^T is at most this many prefixes, else samples.
MAX_ENUMERATE = 2**20
# Prefix indices are int32 on the device.
HARD_MAX_ENUMERATE = 2**30
DEFAULT_SAMPLES = 8192
MC_BATCH = 4096
# Random stream of the Monte Carlo estimates (folded into the run's seed).
STREAM_ENTROPY = 300

METHODS = ("exact", "mc", "auto")


# --------------------------------------------------------------------------
# The target's law, which the source owns.


def target_law(source) -> TargetLaw | None:
  """The law a controlled target owns (`source.law()`); None for text, whose law is unknown."""
  return source.law() if supports(source) else None


def supports(source) -> bool:
  """Whether the whole-sequence entropy of this data source is defined (a controlled target)."""
  return callable(getattr(source, "law", None))


class SequenceEntropy:
  """Whole-sequence entropies of models of one config against one controlled target.

  Build once, then call `evaluate(params, ...)` for any set of parameters.
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

  def can_enumerate(self, max_enumerate: int = MAX_ENUMERATE) -> bool:
    return self.num_prefixes <= min(max_enumerate, HARD_MAX_ENUMERATE)

  def exact(self, params, *, with_target: bool = True, max_chunk_elements: int = MAX_CHUNK_ELEMENTS) -> dict:
    """Enumerates all V^T prefixes; float64 sums of `enumeration_sums`."""
    if self.num_prefixes > HARD_MAX_ENUMERATE:
      raise InputError(f"exact enumeration of V^T = {self.vocab_size}^{self.seq_len} prefixes is beyond "
                       f"{HARD_MAX_ENUMERATE:,}; use --method mc.")
    total = self.num_prefixes
    chunk = chunk_size(self.cfg, self.vocab_size, self.seq_len, total, max_chunk_elements)
    fn = functools.partial(terms.jitted_prefix_terms, model_fn=self._model_fn,
                           target_fn=self.target.log_probs if with_target else None, chunk=chunk,
                           vocab_size=self.vocab_size, seq_len=self.seq_len, total=total)
    # Dispatch every chunk before fetching any: the device never waits for the host.
    pending = [fn(params, self.target.params, self._log_initial_V, jnp.int32(start))
               for start in range(0, total, chunk)]
    fetched = jax.device_get(pending)
    terms_N = {name: np.concatenate([chunk_terms[name] for chunk_terms in fetched])[:total] for name in fetched[0]}
    return terms.enumeration_sums(terms_N)

  def _batches(self, samples: int) -> tuple[int, int]:
    batch = max(1, min(samples, MC_BATCH))
    return batch, -(-samples // batch)

  def sample_model(self, params, key, samples: int) -> dict:
    """Per-sequence estimator terms from `samples` (rounded up to whole batches) model samples."""
    batch, num_batches = self._batches(samples)
    fn = functools.partial(terms.jitted_model_sample_terms, cfg=self.cfg, seq_len=self.seq_len, batch=batch)
    pending = [fn(params, jax.random.fold_in(key, b), self._log_initial_V) for b in range(num_batches)]
    return _concatenate(jax.device_get(pending))

  def sample_target(self, params, key, samples: int) -> dict:
    batch, num_batches = self._batches(samples)
    fn = functools.partial(terms.jitted_target_sample_terms, model_fn=self._model_fn, target_fn=self.target.log_probs,
                           seq_len=self.seq_len, batch=batch)
    pending = [fn(params, self.target.params, jax.random.fold_in(key, b), self._log_initial_V)
               for b in range(num_batches)]
    return _concatenate(jax.device_get(pending))

  @functools.cached_property
  def train_set_entropy(self) -> float | None:
    """H(X_1..T | X_0) of the finite training set's empirical law; None without one."""
    if self.target.training_set is None:
      return None
    return terms.empirical_entropy_seq(self.target.training_set)

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
      model_h, model_err = terms.mean_and_stderr(m["rb_model"])
      target_h, target_err = terms.mean_and_stderr(p["rb_target"])
      kl, kl_err = terms.mean_and_stderr(p["rb_kl"])
      plain, plain_err = terms.mean_and_stderr(m["neg_log_q"])
      plain_kl, plain_kl_err = terms.mean_and_stderr(p["plain_kl"])
      results.update({"samples": len(m["rb_model"]), "entropy_model_seq_plain": plain,
                      "entropy_model_seq_plain_stderr": plain_err, "kl_seq_plain": plain_kl,
                      "kl_seq_plain_stderr": plain_kl_err})
      # H(P, Q) = H(P) + KL(P‖Q) sample by sample: the two share the samples of P, so its error is its own.
      errors = dict(model=model_err, target=target_err, kl=kl_err, cross=terms.mean_and_stderr(p["rb_cross"])[1])
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
      results["eval/entropy_trainset_seq"] = self.train_set_entropy
      results["train_set_size"] = int(len(t.training_set))
      results["log_train_set_size"] = math.log(len(t.training_set))
    results["seconds"] = time.perf_counter() - start_time
    return results


def _concatenate(batches: list[dict]) -> dict:
  return {name: np.concatenate([np.asarray(b[name], np.float64) for b in batches]) for name in batches[0]}


# --------------------------------------------------------------------------
# Entry points: the CLI, the sweep and the training loop.

# The training loop asks every `logging.entropy_every` steps: the law and its device arrays are built once
# per (frozen model config, source); the cache holds the source, so its identity is never reused.
@functools.lru_cache(maxsize=4)
def _evaluator(model_cfg: ModelConfig, source) -> SequenceEntropy:
  return SequenceEntropy(model_cfg, source)


def evaluator_for(config: Config, source) -> SequenceEntropy:
  """The evaluator of this run's model against `source`, built once."""
  return _evaluator(config.model, source)


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
  # Thousands of Monte Carlo samples per law: the normal quantile 1.96 gives the 95% interval.
  verdict = ("no clear difference: 0 lies in the 95% interval, ± 1.96 standard errors" if abs(gap) < 1.96 * gap_err else
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
