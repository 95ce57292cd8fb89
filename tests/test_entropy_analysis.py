"""Whole-sequence entropy (`lensjax.analysis.entropy`): closed forms, brute force, Monte Carlo, the CLI."""

from __future__ import annotations

import itertools
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import make_tiny_config
from lensjax.analysis import entropy, entropy_terms
from lensjax.config import ModelConfig
from lensjax.data.targets import MarkovTarget
from lensjax.data.teacher import TeacherTarget
from lensjax.errors import InputError
from lensjax.model import Transformer
from lensjax.ops.distributions import entropy_nats


def init_params(cfg: ModelConfig, seq_len: int, seed: int = 0):
  # Jitted: an eager init compiles each of its many small ops on its own (seconds on a busy CPU).
  return jax.jit(Transformer(cfg).init)(jax.random.PRNGKey(seed), jnp.zeros((1, seq_len), jnp.int32))["params"]


# ------------------------------------------------------------------ targets, exactly


@pytest.mark.parametrize("order", [1, 2])
def test_stationary_markov_entropy_is_the_closed_form(order):
  """n >= k tokens of a stationary order-k chain: H(X_1..X_k) + (n - k)·h, h = Σ_c π_c H(P_c)."""
  target = MarkovTarget(5, order, alpha=0.3, seq_len=9, seed=3, initial="stationary")
  pi_C = target.context_distribution
  # π is stationary for the chain over contexts.
  next_CxV = (np.arange(target.num_contexts)[:, None] * 5 + np.arange(5)) % target.num_contexts
  moved_C = np.bincount(next_CxV.ravel(), weights=(pi_C[:, None] * target.transition).ravel(),
                        minlength=target.num_contexts)
  np.testing.assert_allclose(moved_C, pi_C, atol=1e-14)
  rate = float(pi_C @ entropy_nats(target.transition))
  first_k = float(entropy_nats(pi_C))  # H(X_1..X_k): the law of the first context is π
  for n in (order, order + 1, 10):
    assert target.joint_entropy(n) == pytest.approx(first_k + (n - order) * rate, abs=1e-9)
  if order == 1:  # the reported quantity: the T predicted tokens given x_0
    assert target.sequence_entropy() == pytest.approx(9 * rate, abs=1e-9)


def test_uniform_start_entropy_matches_its_first_positions():
  """Uniform start, order 2: x_1 is uniform, then rows averaged under the propagated context law."""
  target = MarkovTarget(3, 2, alpha=0.5, seq_len=6, seed=1)
  rows_C = entropy_nats(target.transition)
  context_C = np.full(9, 1 / 9)
  expected = math.log(3)
  for _ in range(5):
    expected += context_C @ rows_C
    context_C = np.bincount(((np.arange(9)[:, None] * 3 + np.arange(3)) % 9).ravel(),
                            weights=(context_C[:, None] * target.transition).ravel(), minlength=9)
  assert target.sequence_entropy() == pytest.approx(expected, abs=1e-9)


# ------------------------------------------------------------------ models, by enumeration


def test_a_uniform_model_has_entropy_T_log_V_and_the_target_matches_its_dp():
  cfg = ModelConfig(num_layers=1, d_model=16, num_heads=2, d_ff=32, vocab_size=4, max_len=8, tie_embeddings=False)
  params = init_params(cfg, 6)
  params = {**params, "unembed": {"kernel": jnp.zeros_like(params["unembed"]["kernel"])}}  # all logits 0
  evaluator = entropy.SequenceEntropy(cfg, MarkovTarget(4, 1, alpha=0.4, seq_len=6, seed=0))
  results = evaluator.evaluate(params, method="exact")
  assert results["method"] == "exact" and results["num_prefixes"] == 4**6
  assert results["eval/entropy_model_seq"] == pytest.approx(6 * math.log(4), rel=1e-6)
  assert results["model_mass"] == pytest.approx(1.0, abs=1e-5)
  assert results["eval/entropy_model_seq_stderr"] == results["eval/kl_seq_stderr"] == 0.0
  # The target by enumeration (float32 terms) agrees with its float64 DP.
  assert results["target_entropy_by_enumeration"] == pytest.approx(results["eval/entropy_target_seq"], abs=1e-5)
  # KL(P ‖ uniform) = T log V − H(P).
  assert results["eval/kl_seq"] == pytest.approx(6 * math.log(4) - results["eval/entropy_target_seq"], abs=1e-5)
  assert results["eval/cross_entropy_seq"] == pytest.approx(6 * math.log(4), abs=1e-5)


def brute_force(source: MarkovTarget, cfg: ModelConfig, params, seq_len: int) -> dict:
  """Every one of the V^(T+1) whole sequences, in float64 NumPy: H(Q), H(P), KL, H(P,Q) given x_0."""
  V = source.vocab_size
  prefixes_NxT = np.array(list(itertools.product(range(V), repeat=seq_len)))  # x_0..x_{T-1}, x_0 most significant
  logits, _ = jax.jit(Transformer(cfg).apply)({"params": params}, jnp.asarray(prefixes_NxT, jnp.int32))
  logits = np.asarray(logits, np.float64)
  log_q_NxTxV = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  log_p_NxTxV = np.log(source.token_conditionals(prefixes_NxT).astype(np.float64))
  sequences = np.array(list(itertools.product(range(V), repeat=seq_len + 1)))
  prefix_index = sequences[:, :seq_len] @ (V ** np.arange(seq_len - 1, -1, -1))
  t = np.arange(seq_len)
  log_p0 = np.log(source.initial_distribution)[sequences[:, 0]]
  log_q = log_p0 + log_q_NxTxV[prefix_index[:, None], t, sequences[:, 1:]].sum(-1)
  log_p = log_p0 + log_p_NxTxV[prefix_index[:, None], t, sequences[:, 1:]].sum(-1)
  first = float(entropy_nats(source.initial_distribution))  # H(X_0), removed to condition on x_0
  q, p = np.exp(log_q), np.exp(log_p)
  return {"model": -(q * log_q).sum() - first, "target": -(p * log_p).sum() - first,
          "kl": (p * (log_p - log_q)).sum(), "cross": -(p * log_q).sum() - first, "mass": q.sum()}


@pytest.fixture(scope="module")
def small_case():
  """An order-2 chain with a stationary start (start tables, non-uniform x_0) and a random peaked model."""
  source = MarkovTarget(3, 2, alpha=0.5, seq_len=5, seed=4, initial="stationary")
  cfg = ModelConfig(num_layers=1, d_model=16, num_heads=2, d_ff=32, vocab_size=3, max_len=8, init_std=0.4)
  params = init_params(cfg, 5, seed=2)
  evaluator = entropy.SequenceEntropy(cfg, source)
  return source, cfg, params, evaluator, evaluator.evaluate(params, method="exact")


def test_exact_enumeration_matches_numpy_brute_force(small_case):
  source, cfg, params, _, exact = small_case
  truth = brute_force(source, cfg, params, 5)
  assert truth["mass"] == pytest.approx(1.0, abs=1e-9)
  assert exact["eval/entropy_model_seq"] == pytest.approx(truth["model"], abs=1e-5)
  assert exact["eval/entropy_target_seq"] == pytest.approx(truth["target"], abs=1e-5)
  assert exact["eval/kl_seq"] == pytest.approx(truth["kl"], abs=1e-5)
  assert exact["eval/cross_entropy_seq"] == pytest.approx(truth["cross"], abs=1e-5)
  assert exact["entropy_gap_seq"] == pytest.approx(truth["model"] - truth["target"], abs=1e-5)
  assert truth["kl"] > 0.5  # a random model is far from the target: the test has teeth


def test_chunked_enumeration_equals_one_chunk(small_case):
  _, _, params, evaluator, exact = small_case
  chunked = evaluator.exact(params, max_chunk_elements=1)  # one prefix per call... rounded to a power of two
  for name, key in (("entropy_model", "eval/entropy_model_seq"), ("kl", "eval/kl_seq")):
    assert chunked[name] == pytest.approx(exact[key], abs=1e-6)


def test_monte_carlo_lands_within_4_standard_errors_of_exact(small_case):
  _, _, params, evaluator, exact = small_case
  mc = evaluator.evaluate(params, jax.random.PRNGKey(5), method="mc", samples=2048)
  assert mc["method"] == "mc" and mc["samples"] == 2048
  for name, exact_name in (("eval/entropy_model_seq", "eval/entropy_model_seq"),
                           ("entropy_model_seq_plain", "eval/entropy_model_seq"),
                           ("eval/kl_seq", "eval/kl_seq"), ("kl_seq_plain", "eval/kl_seq")):
    err = mc[name + "_stderr"]
    assert 0 < err < 0.2, name
    assert abs(mc[name] - exact[exact_name]) < 4 * err, (name, mc[name], exact[exact_name], err)
  # The Markov target's entropy stays exact (its DP) whatever the method.
  assert mc["eval/entropy_target_seq"] == exact["eval/entropy_target_seq"]
  assert mc["eval/entropy_target_seq_stderr"] == 0.0
  assert mc["eval/cross_entropy_seq_stderr"] == mc["eval/kl_seq_stderr"]
  # Rao-Blackwellisation pays: a smaller standard error than −log Q(x).
  assert mc["eval/entropy_model_seq_stderr"] < mc["entropy_model_seq_plain_stderr"]
  # Same key, same numbers.
  again = evaluator.evaluate(params, jax.random.PRNGKey(5), method="mc", samples=2048)
  assert again["eval/entropy_model_seq"] == mc["eval/entropy_model_seq"]
  # The human summary gives each estimate with its standard error.
  text = entropy.summary(mc, step=7)
  assert "step 7" in text and "Monte Carlo, 2,048 samples" in text
  assert f"{mc['eval/kl_seq']:.4f} ± {mc['eval/kl_seq_stderr']:.4f}" in text
  assert "exact, by enumeration of V^T = 3^5 = 243 prefixes" in entropy.summary(exact, step=7)


def test_kl_of_the_target_against_itself_is_zero():
  """A model with the teacher's own config and weights is the teacher: KL(P‖P) = 0, H(Q) = H(P)."""
  teacher = TeacherTarget(4, 5, seed=0, num_layers=1, d_model=16, num_heads=2, temperature=1.0)
  evaluator = entropy.SequenceEntropy(teacher.model.cfg, teacher)
  results = evaluator.evaluate(teacher.params, method="exact")
  assert results["target"] == "teacher"
  assert abs(results["eval/kl_seq"]) < 1e-9
  assert results["eval/entropy_model_seq"] == pytest.approx(results["eval/entropy_target_seq"], abs=1e-9)
  assert 0.5 < results["eval/entropy_target_seq"] < 5 * math.log(4)
  # By sampling (the teacher's law is sampled without a cache): the same, within the errors.
  mc = evaluator.evaluate(teacher.params, jax.random.PRNGKey(0), method="mc", samples=512)
  assert abs(mc["eval/kl_seq"]) < 1e-6 and mc["eval/kl_seq_stderr"] < 1e-6
  for name in ("eval/entropy_model_seq", "eval/entropy_target_seq"):
    assert abs(mc[name] - results["eval/entropy_target_seq"]) < 4 * mc[name + "_stderr"], name
  assert mc["eval/cross_entropy_seq_stderr"] == pytest.approx(mc["eval/entropy_target_seq_stderr"], rel=1e-3)


def test_training_set_entropy_is_at_most_log_N():
  source = MarkovTarget(4, 1, alpha=1.0, seq_len=6, seed=0, num_sequences=50)
  train_set = source.training_set()
  conditional = entropy_terms.empirical_entropy_seq(train_set)
  _, counts = np.unique(train_set, axis=0, return_counts=True)
  joint = float(entropy_nats(counts / 50))
  assert joint <= math.log(50) + 1e-12
  _, first_counts = np.unique(train_set[:, 0], return_counts=True)
  assert conditional == pytest.approx(joint - float(entropy_nats(first_counts / 50)), abs=1e-12)
  # Far below the target's own entropy: the confound the report warns about.
  assert conditional < source.sequence_entropy() - 1.0


def test_text_data_has_no_sequence_entropy():
  from lensjax.data.text import ByteText
  source = ByteText.from_default_corpus(16, 0, 0.05)
  assert not entropy.supports(source)
  assert entropy.periodic_entropy_metrics(None, make_tiny_config(), source, jax.random.PRNGKey(0)) == {}
  with pytest.raises(InputError, match="data.source=markov or teacher"):
    entropy.SequenceEntropy(make_tiny_config().model, source)


# ------------------------------------------------------------------ the loop hook and the CLI


STEPS = 2


def tiny_entropy_config():
  """The tiny test config, one layer (compiles faster), V^T = 4^6 prefixes, the sequence entropy logged at the end."""
  return make_tiny_config(**{"data.vocab_size": 4, "data.seq_len": 6, "model.max_len": 8, "model.num_layers": 1,
                             "train.steps": STEPS, "logging.entropy_every": STEPS})


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
  """A finished tiny run; test_sweep imports this fixture, so one training serves both files."""
  from lensjax import runner
  from lensjax.train import loop
  workdir = str(tmp_path_factory.mktemp("entropy_run"))
  config = tiny_entropy_config()
  state = runner.train(config, workdir)
  return workdir, loop.prepare(config), state


def test_periodic_metrics_are_the_documented_floats(trained_run):
  from lensjax.data.factory import make_source
  _, config, state = trained_run
  source = make_source(config)
  metrics = entropy.periodic_entropy_metrics(state.params, config, source, jax.random.PRNGKey(0))
  for name in ("eval/entropy_model_seq", "eval/entropy_target_seq", "eval/kl_seq"):
    assert isinstance(metrics[name], float) and math.isfinite(metrics[name])
    assert metrics[name + "_stderr"] == 0.0  # V^T = 4096: exact
  assert metrics["eval/kl_seq"] > 0
  assert all(name.startswith("eval/") for name in metrics)
  # The evaluator is built (and compiled) once per run, not at each call.
  assert entropy.evaluator_for(config, source) is entropy.evaluator_for(config, source)


def test_cli_prints_json_and_a_summary_and_logs_to_tensorboard(trained_run, capsys):
  from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
  from lensjax import cli
  from lensjax.data.factory import make_source
  from lensjax.io.metrics_log import read_metrics
  workdir, config, state = trained_run
  assert cli.main(["entropy", "--workdir", workdir, "--json"]) == 0
  results = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert results["step"] == STEPS and results["method"] == "exact" and results["num_prefixes"] == 4**6
  # The CLI on the checkpoint equals the loop hook on the final state, and what the loop logged after the last step.
  logged_by_loop = [r for r in read_metrics(os.path.join(workdir, "metrics.jsonl")) if "eval/kl_seq" in r]
  assert [r["step"] for r in logged_by_loop] == [STEPS - 1]
  for name, value in entropy.periodic_entropy_metrics(state.params, config, make_source(config), None).items():
    assert results[name] == pytest.approx(value, abs=1e-9), name
    assert logged_by_loop[0][name] == pytest.approx(value, abs=1e-9), name
  events = EventAccumulator(os.path.join(workdir, "tb"), size_guidance={"scalars": 0})
  events.Reload()
  logged = events.Scalars("eval/entropy_model_seq")
  # The loop's record after step STEPS-1 (θ_STEPS), then the CLI's at the checkpoint step STEPS.
  assert [e.step for e in logged] == [STEPS - 1, STEPS]
  assert logged[1].value == pytest.approx(results["eval/entropy_model_seq"], rel=1e-6)
  # Bad input: exit 2 with the reason.
  assert cli.main(["entropy", "--workdir", workdir, "--samples", "1"]) == 2
  assert "--samples" in capsys.readouterr().err
  assert cli.main(["entropy", "--workdir", os.path.join(workdir, "missing")]) == 2
  assert "config.json" in capsys.readouterr().err
