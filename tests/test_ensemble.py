"""Ensembles: N seeds (and per-member learning rates) trained as one vmapped program, each a complete run."""

from __future__ import annotations

import json
import os
import shutil

import jax
import numpy as np
import pytest

from conftest import damage, make_tiny_config, preempted_sources, write_config_file
from lensjax import cli
from lensjax import config as config_lib
from lensjax.analysis.common import load_checkpoint_run
from lensjax.errors import InputError, TrainingHalted
from lensjax.io.metrics_log import read_metrics
from lensjax.train import loop
from lensjax.train.ensemble import member_of

STEPS = 200
MEMBERS = 3


def ensemble_config(**overrides):
  return make_tiny_config(**{"train.steps": STEPS, "train.members": MEMBERS, "logging.log_every": 50,
                             "logging.eval_every": 100, "checkpoint.save_every": 100,
                             "optim.lr_per_member": [3e-3, 1e-3, 5e-3], **overrides})


def host(tree):
  return jax.tree.map(np.asarray, jax.device_get(tree))


def records(run_dir) -> list[dict]:
  return [{k: v for k, v in r.items() if not k.startswith("perf/")}
          for r in read_metrics(os.path.join(run_dir, "metrics.jsonl"))]


@pytest.fixture(scope="module")
def ensemble(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("ensemble"))
  return workdir, host(loop.train(ensemble_config(), workdir))


@pytest.fixture(scope="module")
def solo_runs(ensemble, tmp_path_factory):
  """Each member's config trained alone, as `lensjax train --config member_i/config.json` would."""
  workdir, _ = ensemble
  runs = []
  for i in range(MEMBERS):
    solo_dir = str(tmp_path_factory.mktemp(f"solo{i}"))
    member = config_lib.load_config_file(os.path.join(workdir, f"member_{i}", "config.json"))
    runs.append((solo_dir, host(loop.train(member, solo_dir))))
  return runs


def relative(a, b):
  return abs(a - b) / max(abs(b), 1e-12)


def test_each_member_is_the_solo_run_of_its_seed_and_learning_rate(ensemble, solo_runs):
  workdir, state = ensemble
  seeds, lrs = [], []
  for i, (solo_dir, solo_state) in enumerate(solo_runs):
    member = config_lib.load_json(os.path.join(workdir, f"member_{i}", "config.json"))
    assert member.train.members == 1 and member.optim.lr_per_member == ()
    seeds.append((member.train.seed, member.data.seed, member.data.order_seed))
    lrs.append(member.optim.lr)
    got, want = records(os.path.join(workdir, f"member_{i}")), records(solo_dir)
    assert [r["step"] for r in got] == [r["step"] for r in want]
    assert set(got[0]) == set(want[0])
    worst_first = max(relative(got[0][k], want[0][k]) for k in want[0] if k != "step")
    assert worst_first < 1e-6, worst_first  # step 0: every metric, to float32 rounding of the vmapped reductions
    assert relative(got[-1]["train/loss"], want[-1]["train/loss"]) < 1e-3
    assert relative(got[-1]["eval/loss"], want[-1]["eval/loss"]) < 1e-3
  assert seeds == [(0, 0, 0), (1, 1, 1), (2, 2, 2)] and lrs == [3e-3, 1e-3, 5e-3]
  # The members really differ: a shared seed or rate would make two of them equal.
  final = [records(os.path.join(workdir, f"member_{i}"))[-1]["train/loss"] for i in range(MEMBERS)]
  assert len(set(final)) == MEMBERS


def test_the_ensemble_directory_describes_its_members(ensemble):
  workdir, state = ensemble
  with open(os.path.join(workdir, "ensemble.json")) as f:
    described = json.load(f)
  assert described["members"] == MEMBERS and described["member_dirs"] == [f"member_{i}" for i in range(MEMBERS)]
  assert described["config"]["train"]["members"] == MEMBERS
  assert not os.path.exists(os.path.join(workdir, "config.json"))
  for i in range(MEMBERS):
    member_dir = os.path.join(workdir, f"member_{i}")
    assert {"config.json", "metrics.jsonl", "tb", "checkpoints", "neuron_events.jsonl"} <= set(os.listdir(member_dir))
  assert np.asarray(state.step).tolist() == [STEPS] * MEMBERS


def test_a_member_restores_alone_and_continues_alone(ensemble, tmp_path):
  workdir, state = ensemble
  member_dir = os.path.join(workdir, "member_1")
  loaded = load_checkpoint_run(member_dir)
  assert loaded.step == STEPS
  for got, want in zip(jax.tree.leaves(host(loaded.state)), jax.tree.leaves(member_of(state, 1))):
    assert np.array_equal(got, want)
  # A copy goes on for 10 more steps on its own, from its own config.json (the fixture's files stay as they are).
  copy = str(tmp_path / "member_1")
  os.system(f"cp -r {member_dir} {copy}")
  config_file = os.path.join(copy, "config.json")
  assert cli.main(["train", "--config", config_file, "--workdir", copy, f"--config.train.steps={STEPS + 10}"]) == 0
  assert records(copy)[-1]["step"] == STEPS + 9


def test_an_interrupted_ensemble_resumes_bit_for_bit(ensemble, tmp_path):
  workdir, state = ensemble
  resumed_dir = str(tmp_path / "resumed")
  loop.train(ensemble_config(), resumed_dir, stop_at_step=60)
  assert sorted(os.listdir(os.path.join(resumed_dir, "member_2", "checkpoints"))) == ["60"]
  resumed = host(loop.train(ensemble_config(), resumed_dir))
  for got, want in zip(jax.tree_util.tree_leaves_with_path(resumed), jax.tree.leaves(state)):
    assert np.array_equal(got[1], want), jax.tree_util.keystr(got[0])
  for i in range(MEMBERS):
    assert records(os.path.join(resumed_dir, f"member_{i}")) == records(os.path.join(workdir, f"member_{i}"))


def test_a_member_left_behind_by_an_interrupted_save_is_caught_up(ensemble, tmp_path):
  """Members 0 and 1 have a checkpoint at 100 that member 2 lacks: the ensemble resumes from 60, exactly."""
  workdir, state = ensemble
  run_dir = str(tmp_path / "run")
  config = ensemble_config(**{"checkpoint.save_every": 60})
  loop.train(config, run_dir, stop_at_step=100)
  steps = lambda i: sorted(int(s) for s in os.listdir(os.path.join(run_dir, f"member_{i}", "checkpoints"))
                           if s.isdigit())
  assert steps(2) == [60, 100]
  os.system(f"rm -rf {os.path.join(run_dir, 'member_2', 'checkpoints', '100')}")
  resumed = host(loop.train(config, run_dir))
  assert all(steps(i)[-1] == STEPS for i in range(MEMBERS))
  for got, want in zip(jax.tree.leaves(resumed), jax.tree.leaves(state)):
    assert np.array_equal(got, want)


def test_members_without_a_common_readable_step_lose_no_checkpoint(tmp_path, capfd):
  """Member 2 lacks the only step the others have: theirs are set aside, not deleted, and the ensemble starts
  again. A common step that reads back in no member stops the run with exit 2 and deletes nothing."""
  run_dir = str(tmp_path / "run")
  config = ensemble_config(**{"checkpoint.save_every": 1000})
  folder = lambda i: os.path.join(run_dir, f"member_{i}", "checkpoints")
  loop.train(config, run_dir, stop_at_step=20)
  shutil.rmtree(os.path.join(folder(2), "20"))
  loop.train(config, run_dir, stop_at_step=10)
  assert "no checkpoint step is common to every member" in capfd.readouterr().err
  assert [sorted(os.listdir(folder(i))) for i in range(MEMBERS)] == [["10", "20.unreadable"]] * 2 + [["10"]]
  for i in range(MEMBERS):
    damage(os.path.join(folder(i), "10"), "truncate")
  before = [sorted(os.listdir(folder(i))) for i in range(MEMBERS)]
  with pytest.raises(InputError, match=r"no checkpoint step that every member has could be read .*\[10\]"):
    loop.train(config, run_dir)
  assert [sorted(os.listdir(folder(i))) for i in range(MEMBERS)] == before


def test_freeze_keeps_the_other_members_when_one_diverges(tmp_path, capsys):
  config = make_tiny_config(**{"train.steps": 12, "train.members": 2, "optim.lr_per_member": [1e-2, 1e4],
                               "optim.clip_norm": 0.0, "optim.warmup_steps": 0, "train.nan_policy": "freeze",
                               "checkpoint.save_every": 6})
  state = host(loop.train(config, str(tmp_path / "run")))
  assert state.first_bad_step[0] == -1 and state.first_bad_step[1] >= 0
  assert "member 1 stopped at step" in capsys.readouterr().err
  healthy = config_lib.load_json(str(tmp_path / "run" / "member_0" / "config.json"))
  solo = host(loop.train(healthy, str(tmp_path / "solo")))
  assert records(tmp_path / "run" / "member_0")[-1]["train/loss"] == pytest.approx(
      records(tmp_path / "solo")[-1]["train/loss"], rel=1e-5)
  frozen_params = jax.tree.leaves(member_of(state.params, 1))
  assert all(np.all(np.isfinite(p)) for p in frozen_params)  # kept as it was before the bad step
  assert solo.step == 12


def test_halt_names_the_member_that_diverged(tmp_path):
  config = make_tiny_config(**{"train.steps": 12, "train.members": 2, "optim.lr_per_member": [1e-2, 1e4],
                               "optim.clip_norm": 0.0, "optim.warmup_steps": 0, "checkpoint.save_every": 1})
  with pytest.raises(TrainingHalted, match=r"member 1 of the ensemble: non-finite loss or gradient at step \d+"):
    loop.train(config, str(tmp_path / "run"))


@pytest.mark.parametrize("overrides, sentence", [
    (["--config.train.members=0"], "config key train.members is 0; it must be positive."),
    (["--config.train.members=3", "--config.optim.lr_per_member=[0.01,0.02]"],
     "config key optim.lr_per_member lists 2 values for train.members=3; give one per member or none."),
    (["--config.train.members=2", "--config.train.vary=init+seeds"], "config key train.vary is 'init+seeds'"),
    (["--config.train.members=2", "--config.parallel.fsdp=2"], "set parallel.fsdp=1"),
    (["--config.train.nan_policy=freeze"], "with train.members=1 use halt or skip"),
])
def test_bad_ensemble_input_exits_2_with_one_sentence(overrides, sentence, tmp_path, capsys):
  config_file = write_config_file(tmp_path / "config.py", make_tiny_config())
  code = cli.main(["train", "--config", config_file, "--workdir", str(tmp_path / "run"), *overrides])
  err = capsys.readouterr().err
  assert code == 2 and sentence in err, err
  assert err.count("lensjax: error:") == 1
  assert not os.path.exists(tmp_path / "run")


@pytest.mark.parametrize("command, options, key", [
    ("entropy", ["--method", "mc", "--samples", "256"], "eval/entropy_model_seq"),
    ("saturation", ["--batch-size", "8"], "eval/saturation/layer_0"),
    ("hessian", ["--power-iters", "3", "--trace-probes", "1", "--lanczos-steps", "4", "--top-k", "2", "--no-layers"],
     "hessian/lambda_max"),
    ("spikes", ["--step", "150", "--before", "1", "--after", "1", "--power-iters", "2"], "spikes"),
])
def test_every_analysis_reads_a_member_directory(ensemble, command, options, key, capsys):
  workdir, _ = ensemble
  code = cli.main([command, "--workdir", os.path.join(workdir, "member_2"), "--json", *options])
  out, err = capsys.readouterr()
  assert code == 0, err
  assert key in json.loads(out.strip().splitlines()[-1])


def test_members_restore_into_one_built_run_with_their_own_initial_parameters(ensemble):
  """What benchmarks/norm_growth_analyses.py relies on: one build serves every member of the ensemble."""
  from lensjax.analysis import common
  from lensjax.io.checkpoints import abstract_like
  from lensjax.train.state import initial_params
  from lensjax.train.step import model_for
  workdir, _ = ensemble
  first = load_checkpoint_run(os.path.join(workdir, "member_0"))
  alone = load_checkpoint_run(os.path.join(workdir, "member_2"))
  step, state = common.restore_checkpoint(os.path.join(workdir, "member_2"), abstract_like(first.state))
  assert step == alone.step == STEPS
  assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(host(state)), jax.tree.leaves(host(alone.state))))
  init = jax.jit(lambda seed: initial_params(model_for(first.config.model, ()), first.config.data.seq_len, seed))
  from_seed = host(init(alone.config.train.seed))
  assert alone.config.train.seed != first.config.train.seed
  assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(from_seed), jax.tree.leaves(host(alone.run.state.params))))
  assert not np.array_equal(jax.tree.leaves(from_seed)[0], jax.tree.leaves(host(first.run.state.params))[0])


def test_sigterm_stops_every_member_at_one_step_and_the_resumed_ensemble_is_exact(ensemble, tmp_path, monkeypatch):
  """SIGTERM arrives while step 70's batches are read: one checkpoint per member at 71, then an exact resume."""
  workdir, state = ensemble
  run_dir = str(tmp_path / "run")
  make_source = loop.make_source
  monkeypatch.setattr(loop, "make_source", preempted_sources(make_source, 70, lambda c: c.train.seed == 0))
  interrupted = loop.train(ensemble_config(), run_dir)
  assert np.asarray(interrupted.step).tolist() == [71] * MEMBERS
  from tensorboard.backend.event_processing import event_accumulator
  for i in range(MEMBERS):
    saved = [s for s in os.listdir(os.path.join(run_dir, f"member_{i}", "checkpoints")) if s.isdigit()]
    assert saved == ["71"], saved
    # The heat maps of the steps logged before the stop reached disk (the figure thread was drained).
    events = event_accumulator.EventAccumulator(os.path.join(run_dir, f"member_{i}", "tb"),
                                                size_guidance={"images": 0}).Reload()
    assert [image.step for image in events.Images("ffn/dead/heatmap")] == [0, 50]
  monkeypatch.setattr(loop, "make_source", make_source)
  resumed = host(loop.train(ensemble_config(), run_dir))
  for got, want in zip(jax.tree.leaves(resumed), jax.tree.leaves(state)):
    assert np.array_equal(got, want)
