"""Spike detection (online = offline), exact replay from checkpoints, and `lensjax spikes` end to end."""

from __future__ import annotations

import json
import os

import jax
import numpy as np
import pytest

from conftest import make_tiny_config
from lensjax import cli, runner
from lensjax.analysis import spikes
from lensjax.io.checkpoints import Checkpoints, abstract_like
from lensjax.io.metrics_log import read_metrics
from lensjax.train import loop


def planted_series(n: int = 200, seed: int = 0):
  """A decaying noisy loss with spikes planted at known steps (and one NaN)."""
  rng = np.random.default_rng(seed)
  steps = np.arange(n)
  losses = 2.0 + 0.5 * np.exp(-steps / 50) + 0.01 * rng.normal(size=n)
  planted = [40, 75, 76, 130]
  losses[planted] += [0.5, 1.0, 0.8, 0.3]
  losses[5] += 5.0  # before the window is full: never a spike
  losses[150] = np.nan  # non-finite: always a spike, and kept out of the window
  return steps, losses, sorted(planted + [150])


def test_online_and_offline_detectors_find_exactly_the_planted_spikes():
  steps, losses, planted = planted_series()
  update = jax.jit(spikes.update)
  window, online = spikes.spike_window(20, 6.0), []
  for step, loss in zip(steps, losses):
    window, detected = update(window, np.float32(loss))
    if detected:
      online.append(int(step))
  offline = spikes.detect_spikes(steps, losses, window=20, k=6.0)
  assert online == planted
  assert offline == planted
  assert int(window.count) == len(steps) - 1  # the NaN never entered the window
  events = spikes.group_detections(offline, gap=5)
  assert [(e.first, e.last) for e in events] == [(40, 40), (75, 76), (130, 130), (150, 150)]


def spiking_config(**overrides):
  """A tiny run that spikes (at step 11: 1.81, 2.28, 1.72): Adam at a high constant rate without clipping.

  One layer, because compiling the steps and the Hessian programs is most of this file's time. Checkpoints every
  4 steps, all kept.
  """
  config = make_tiny_config(**{"train.steps": 16, "model.num_layers": 1, "optim.name": "adam", "optim.lr": 0.05,
                               "optim.schedule": "constant",
                               "optim.warmup_steps": 1, "optim.clip_norm": 0.0, "optim.weight_decay": 0.0,
                               "optim.b2": 0.999, "optim.eps": 1e-12, "logging.log_every": 1,
                               "checkpoint.save_every": 4, "checkpoint.keep": 2, "checkpoint.keep_every": 4,
                               "stats.spike_window": 4, "stats.spike_k": 6.0})
  return config.updated(overrides)


def train(tmp_path_factory, name, **overrides):
  workdir = str(tmp_path_factory.mktemp(name))
  config = spiking_config(**overrides)
  runner.train(config, workdir)
  return workdir, loop.prepare(config)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """Logged at every step: the spike detector sees every loss. hessian/* every 8 steps."""
  return train(tmp_path_factory, "spiking", **{"stats.hessian_every": 8, "stats.hessian_power_iters": 10,
                                              "stats.hessian_trace_probes": 4})


@pytest.fixture(scope="module")
def interleaved(tmp_path_factory):
  """Logged every 3 steps, so that plain and logging steps interleave (same programs: the compile cache hits)."""
  return train(tmp_path_factory, "interleaved", **{"logging.log_every": 3})


def restore(workdir, run, step):
  checkpoints = Checkpoints(os.path.join(workdir, "checkpoints"), keep=10**6, async_save=False)
  try:
    assert step in checkpoints.steps()
    return checkpoints.restore(step, abstract_like(run.state))
  finally:
    checkpoints.close()


def assert_states_equal(a, b):
  for field in ("step", "params", "opt_state", "rng", "lens_state", "skipped_steps"):
    for x, y in zip(jax.tree.leaves(jax.device_get(getattr(a, field))), jax.tree.leaves(jax.device_get(getattr(b, field)))):
      assert np.array_equal(np.asarray(x), np.asarray(y)), f"state.{field} differs"


def test_replay_reaches_the_saved_checkpoints_bit_for_bit(interleaved):
  workdir, config = interleaved
  run = loop.build(config)
  start, state = spikes.restore_at_or_before(run, workdir, 5)
  assert start == 4
  seen = []
  hook = lambda step, before, after, metrics, batch: seen.append((step, int(before.step), float(metrics["train/loss"])))
  state = spikes.replay(run, state, start, 8, on_step=hook, hook_from=5)
  assert_states_equal(state, restore(workdir, run, 8))
  assert [(s, b) for s, b, _ in seen] == [(5, 5), (6, 6), (7, 7)]
  # From the initial state (no checkpoint at or before step 3) with no hook at all.
  start, state = spikes.restore_at_or_before(run, workdir, 3)
  assert start == 0
  assert_states_equal(spikes.replay(run, state, 0, 4), restore(workdir, run, 4))


def test_the_replayed_metrics_are_the_logged_ones(interleaved):
  workdir, config = interleaved
  logged = {r["step"]: r for r in read_metrics(os.path.join(workdir, "metrics.jsonl"))}
  run = loop.build(config)
  start, state = spikes.restore_at_or_before(run, workdir, 6)
  assert start == 4
  seen = {}
  spikes.replay(run, state, start, 10, on_step=lambda s, b, a, m, _: seen.update({s: m}), hook_from=6)
  assert sorted(seen) == [6, 7, 8, 9]  # every step, logged (6, 9) or not (7, 8)
  for step in (6, 9):
    for name in ("train/loss", "train/grad_norm", "adam/update_saturated"):
      assert float(seen[step][name]) == logged[step][name], (step, name)
    assert np.asarray(seen[step]["ffn/dead"]).tolist() == [logged[step]["ffn/dead/layer_0"]]


def test_the_spikes_command_end_to_end(trained, capsys):
  workdir, _ = trained
  steps, losses = spikes.loss_series(read_metrics(os.path.join(workdir, "metrics.jsonl")))
  detected = spikes.detect_spikes(steps, losses, window=4, k=6.0)
  assert detected, f"the tiny run no longer spikes (losses {np.round(losses, 3).tolist()}); retune spiking_config"
  argv = ["--workdir", workdir, "--window", "4", "--k", "6", "--after", "1", "--before", "2", "--max-spikes", "1",
          "--power-iters", "3", "--json"]
  assert cli.main(["spikes", *argv]) == 0
  report = json.loads(capsys.readouterr().out)
  assert report["detected"] == detected
  (entry,) = report["spikes"]
  assert entry["step"] == detected[0] and os.path.isfile(entry["png"])
  assert entry["png"].startswith(os.path.join(workdir, "spikes"))
  measured = [r["step"] for r in entry["timeline"]]
  assert measured == list(range(entry["measured"][0], entry["measured"][1] + 1))
  record = entry["timeline"][-1]
  for name in ("hessian/lambda_max", "hessian/lambda_max_precond", "hessian/stability_threshold",
               "hessian/update_curvature", "spike/dloss_first_order", "spike/dloss_second_order",
               "spike/dloss_actual", "adam/g2_over_v/layer_0", "ffn/dead/layer_0", "ffn/died/layer_0",
               "ffn/revived/layer_0"):
    assert name in record, name
  assert record["hessian/stability_threshold"] == pytest.approx(38 / 0.05, rel=1e-5)
  # The replayed loss of each measured step is the logged one.
  assert all(r["train/loss"] == dict(zip(steps, losses))[r["step"]] for r in entry["timeline"])
  assert os.path.isfile(os.path.join(workdir, "spikes", "report.json"))
  assert any(name.startswith("events.out.tfevents") for name in os.listdir(os.path.join(workdir, "tb")))
  # Bad input: exit code 2 and the reason, nothing analysed.
  assert cli.main(["spikes", "--workdir", os.path.join(workdir, "missing")]) == 2
  assert cli.main(["spikes", "--workdir", workdir, "--window", "1"]) == 2
  assert "--window" in capsys.readouterr().err


def test_the_train_step_detects_spikes_online_as_the_offline_rule_does(trained):
  workdir, config = trained
  records = read_metrics(os.path.join(workdir, "metrics.jsonl"))
  steps, losses = spikes.loss_series(records)
  assert steps == list(range(config.train.steps))
  expected = spikes.judge_series(losses, config.stats.spike_window, config.stats.spike_k).detected
  assert expected.any()
  assert [r["spike/detected"] for r in records] == expected.astype(float).tolist()
  assert [r["spike/count"] for r in records] == np.cumsum(expected).tolist()
  last = [max([s for s, d in zip(steps[:i + 1], expected) if d], default=-1) for i in range(len(steps))]
  assert [r["spike/last_step"] for r in records] == last


def test_hessian_metrics_every_n_steps_during_training(trained):
  workdir, config = trained
  records = {r["step"]: r for r in read_metrics(os.path.join(workdir, "metrics.jsonl"))}
  measured = sorted(s for s, r in records.items() if "hessian/lambda_max" in r)
  assert measured == [7, 15]
  for step in measured:
    r = records[step]
    assert np.isfinite([r["hessian/lambda_max"], r["hessian/lambda_max_precond"], r["hessian/trace"]]).all()
    assert r["hessian/trace_stderr"] > 0
    # Adam's threshold (2 + 2β₁)/((1 − β₁)η) at the constant rate.
    assert r["hessian/stability_threshold"] == pytest.approx((2 + 2 * 0.9) / (0.1 * 0.05), rel=1e-5)


def test_the_hessian_command(trained, capsys):
  workdir, config = trained
  # 4 trace probes, as the fixture's hessian/* every 8 steps: the compiled trace is reused. 200 power iterations:
  # the top eigenvalue is found by iterating on H − σI (σ the most negative one), whose top two eigenvalues can lie
  # within a few percent of each other, and 60 iterations were too few for the trained fixture's Hessian once its
  # q, k, v projections were computed as three matmuls (rounding-level changes in the 16 training steps).
  argv = ["hessian", "--workdir", workdir, "--step", "12", "--power-iters", "200", "--trace-probes", "4",
          "--lanczos-steps", "24", "--slq-probes", "2", "--top-k", "3", "--json"]
  assert cli.main(argv) == 0
  captured = capsys.readouterr()
  results = json.loads(captured.out)
  assert results["step"] == 12 and results["precision"] == "tf32"  # the run's stats.hessian_precision, by default
  # Off a terminal, stderr holds one line per stage and per layer, each naming the command and the time so far.
  progress = [line for line in captured.err.splitlines() if line.startswith("lensjax hessian: ")]
  assert [line.split(": ", 1)[1].split(" ")[0] for line in progress[:3]] == ["restoring", "compiling", "2"]
  layers = [line for line in progress if "λ_max of the block of layer" in line]
  assert len(layers) == config.model.num_layers and "1/" in layers[0] and "compiling" in layers[0]
  assert all(line.endswith("]") and "[0:" in line for line in progress)
  top, magnitude = results["hessian/lambda_max"], results["hessian/lambda_maxabs"]
  # Two independent algorithms agree on both ends of the spectrum: the power iterations find the top eigenvalue and
  # the one of largest magnitude (near a spike it can be negative), Lanczos the Ritz values at both ends.
  nodes = np.asarray(results["density"]["nodes"])
  assert nodes.max() == pytest.approx(top, rel=0.05) and top >= magnitude
  assert nodes[np.argmax(np.abs(nodes))] == pytest.approx(magnitude, rel=0.05)
  assert results["lambda_max_residual"] < 0.1 * abs(top)
  assert len(results["top_eigenvalues"]) == 3 and results["top_eigenvalues"] == sorted(results["top_eigenvalues"])[::-1]
  assert sum(results["density"]["weights"]) == pytest.approx(1.0, abs=1e-6)
  # Hutchinson and SLQ estimate the same trace; allow the SLQ's own probe noise too.
  assert abs(results["slq_trace"] - results["hessian/trace"]) < 6 * results["hessian/trace_stderr"] + 0.2 * abs(
      results["hessian/trace"])
  # A diagonal block's top eigenvalue is at most the whole matrix's (Cauchy interlacing).
  assert abs(results["hessian/lambda_max/layer_0"]) <= abs(top) * 1.01
  assert os.path.isfile(results["png"]) and results["png"].startswith(os.path.join(workdir, "hessian"))
  assert np.isfinite(results["slq_trace_stderr"])
  # The result is kept in the run directory for lensjax report.
  with open(os.path.join(workdir, "analyses", "hessian_000012.json")) as f:
    assert json.load(f)["hessian/lambda_max"] == pytest.approx(top)
  assert cli.main(["hessian", "--workdir", workdir, "--power-iters", "0"]) == 2
  assert "--power-iters" in capsys.readouterr().err
  assert cli.main(["hessian", "--workdir", workdir, "--step", "5"]) == 2  # no checkpoint at step 5
  assert "no checkpoint at step 5" in capsys.readouterr().err
