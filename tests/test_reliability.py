"""Non-finite steps, incompatible resumes, FSDP sharding, and the two step variants."""

from __future__ import annotations

import io
import json
import os

import jax
import numpy as np
import pytest

from conftest import make_tiny_config, run_cli, write_config_file
from lensjax import cli
from lensjax import config as config_lib
from lensjax import parallel
from lensjax.errors import InputError, TrainingHalted
from lensjax.io import progress
from lensjax.io.metrics_log import read_metrics
from lensjax.stats.dead_units import neuron_events
from lensjax.train import guards, loop


def host(tree):
  return jax.tree.map(np.asarray, jax.device_get(tree))


def explosive_config(**overrides):
  """A learning rate that drives the loss to inf/NaN within a few steps."""
  return make_tiny_config(**{"optim.lr": 1e4, "optim.clip_norm": 0.0, "optim.warmup_steps": 0, "train.steps": 12,
                             "checkpoint.save_every": 1, **overrides})


def test_halt_keeps_the_last_good_checkpoint_and_names_the_step(tmp_path):
  workdir = str(tmp_path / "run")
  with pytest.raises(TrainingHalted, match=r"non-finite loss or gradient at step \d+") as info:
    loop.train(explosive_config(), workdir)
  bad_step = int(str(info.value).split("at step ")[1].split(",")[0])
  steps = sorted(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints")) if s.isdigit())
  assert steps and max(steps) <= bad_step, (steps, bad_step)
  assert f"step {max(steps)}" in str(info.value)


def test_halt_still_writes_the_heat_maps_of_the_steps_logged_before_it(tmp_path):
  """The figure thread's queue is drained when the loop raises: every logged step's heat map reaches disk."""
  from tensorboard.backend.event_processing import event_accumulator
  workdir = str(tmp_path / "run")
  with pytest.raises(TrainingHalted) as info:
    loop.train(explosive_config(**{"logging.log_every": 1, "checkpoint.save_every": 100}), workdir)
  bad_step = int(str(info.value).split("at step ")[1].split(",")[0])
  logged = [r["step"] for r in read_metrics(os.path.join(workdir, "metrics.jsonl")) if "ffn/dead/mean" in r
            or "ffn/dead/layer_0" in r]
  assert logged and max(logged) <= bad_step
  events = event_accumulator.EventAccumulator(os.path.join(workdir, "tb"), size_guidance={"images": 0}).Reload()
  assert [image.step for image in events.Images("ffn/dead/heatmap")] == logged


def test_halt_exits_3_on_the_command_line(tmp_path):
  config_file = write_config_file(tmp_path / "explosive.py", explosive_config())
  result = run_cli("train", "--config", str(config_file), "--workdir", str(tmp_path / "run"))
  assert result.returncode == 3, result.stderr
  assert "non-finite loss or gradient" in result.stderr and "nan_policy=skip" in result.stderr


def test_skip_counts_the_skipped_steps_and_keeps_parameters_finite(tmp_path):
  state = loop.train(explosive_config(**{"train.nan_policy": "skip"}), str(tmp_path / "run"))
  skipped = int(state.skipped_steps)
  assert skipped > 0
  assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(host(state.params)))
  records = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
  assert records[-1]["train/skipped_steps"] == skipped


def test_skip_halts_with_exit_3_once_more_than_max_skipped_updates_in_a_row_are_skipped(tmp_path, capsys):
  config_file = write_config_file(tmp_path / "explosive.py", explosive_config(**{
      "train.nan_policy": "skip", "train.max_skipped": 3, "checkpoint.save_every": 100}))
  assert cli.main(["train", "--config", str(config_file), "--workdir", str(tmp_path / "run")]) == 3
  err = capsys.readouterr().err
  halted = [line for line in err.splitlines() if line.startswith("lensjax: halted:")]
  assert len(halted) == 1 and "4 updates in a row were skipped" in halted[0], err
  assert "train.max_skipped=3" in halted[0] and "nothing after the last checkpoint was saved" in halted[0]
  assert not os.path.isdir(tmp_path / "run" / "checkpoints" / "12")


class _Counts:
  """A stand-in for the train state and the run, as SkipStreak reads them."""

  def __init__(self, skipped, ensemble):
    self.skipped_steps, self.ensemble = np.asarray(skipped), ensemble


@pytest.mark.parametrize("members", [1, 2])
def test_skip_streak_counts_updates_skipped_in_a_row_one_step_late_and_per_member(members):
  # Cumulative skipped counts after each step. Member 0 skips steps 1, 3 and 4 (never more than 2 in a row);
  # member 1 skips steps 1 to 3 (3 in a row: allowed) and 5 to 8 (4 in a row: one more than max_skipped).
  member_0 = [0, 1, 1, 2, 3, 3, 3, 3, 3]
  member_1 = [0, 1, 2, 3, 3, 4, 5, 6, 7]
  counts = np.stack([member_0, member_1], axis=1) if members == 2 else np.asarray(member_0)
  start = _Counts(np.zeros(members, np.int32) if members == 2 else 0, members == 2)
  streak = guards.SkipStreak(3, start, start)
  for step, count in enumerate(counts):
    streak.update(step, count)  # looks at step - 1: no halt before step 8 has been looked at
  if members == 1:
    streak.finish()
  else:
    with pytest.raises(TrainingHalted, match=r"member 1 of the ensemble: 4 updates in a row were skipped for a "
                                             r"non-finite loss or gradient \(steps 5 to 8; train.max_skipped=3\)"):
      streak.finish()


def test_the_progress_line_shows_the_skipped_updates_and_an_eta_from_the_rate_after_compiling(monkeypatch):
  clock = iter([1000.0, 1002.0, 1006.0])  # the first line comes 1,000 s after start-up (compiling)
  monkeypatch.setattr(progress.time, "perf_counter", lambda: next(clock))
  stream = io.StringIO()
  line = progress.Progress("lines", 10, stream=stream)
  line.update(3, {"train/loss": 2.5, "train/skipped_steps": 0.0})
  line.update(4, {"train/loss": 2.5, "train/skipped_steps": 2.0})
  line.update(5, {"train/loss": 2.5, "train/skipped_steps": 2.0})
  first, second, third = stream.getvalue().splitlines()
  assert "skipped" not in first and "skipped 2" in second
  # No rate before the second line; then 2 s per step since the first line, for the 5 and 4 steps left.
  assert "ETA" not in first and second.endswith("ETA 0:00:10") and third.endswith("ETA 0:00:12")


def test_resume_with_another_model_shape_exits_2_naming_the_keys(tmp_path):
  workdir = str(tmp_path / "run")
  loop.train(make_tiny_config(**{"train.steps": 2}), workdir)
  before = sorted(os.listdir(os.path.join(workdir, "checkpoints")))
  with pytest.raises(InputError, match=r"model\.d_model \(checkpoint 32, config 64\)"):
    loop.train(make_tiny_config(**{"train.steps": 4, "model.d_model": 64}), workdir)
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == before


def test_resume_accepts_harmless_changes(tmp_path):
  workdir = str(tmp_path / "run")
  loop.train(make_tiny_config(**{"train.steps": 2}), workdir)
  state = loop.train(make_tiny_config(**{"train.steps": 4, "logging.log_every": 1, "checkpoint.save_every": 3}),
                     workdir)
  assert int(state.step) == 4


def test_resume_conflicts_lists_every_differing_key():
  saved = config_lib.to_dict(make_tiny_config())
  changed = make_tiny_config(**{"model.num_layers": 3, "data.vocab_size": 9, "train.steps": 99})
  conflicts = config_lib.resume_conflicts(saved, changed)
  assert [c.split(" ")[0] for c in conflicts] == ["model.num_layers", "data.vocab_size"]


def test_fsdp_over_eight_devices_matches_one_device():
  config = loop.prepare(make_tiny_config(**{"parallel.fsdp": 4}))
  one = loop.build(config, mesh=parallel.make_mesh(jax.devices()[:1]))
  sharded = loop.build(config, mesh=parallel.make_mesh(jax.devices(), fsdp=4))
  kernel = sharded.state.params["layer_0"]["ffn"]["up"]["kernel"]
  assert len(kernel.sharding.device_set) == 8 and kernel.addressable_shards[0].data.shape[1] == 64 // 4
  states = []
  for run in (one, sharded):
    state = run.state
    for step in range(3):
      state, metrics = run.plain_step(state, loop.device_batch(run, step))
    states.append((host(state.params), float(metrics["train/loss"])))
  assert states[0][1] == pytest.approx(states[1][1], rel=1e-5)
  for a, b in zip(jax.tree.leaves(states[0][0]), jax.tree.leaves(states[1][0])):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=5e-5)


def test_plain_and_logging_steps_make_the_same_update_bit_for_bit():
  run = loop.build(loop.prepare(make_tiny_config()))
  batch = loop.device_batch(run, 0)
  copy = lambda: jax.tree.map(lambda x: x.copy(), run.state)
  plain, _ = run.plain_step(copy(), batch)
  logging, metrics = run.logging_step(copy(), batch)
  for a, b in zip(jax.tree.leaves(host(plain.params)), jax.tree.leaves(host(logging.params))):
    assert np.array_equal(a, b)
  assert "entropy/model_token" in metrics and "entropy/model_token" not in run.plain_step(copy(), batch)[1]


def test_neuron_events_list_each_unit_that_died_or_revived():
  died = np.zeros((2, 4), bool)
  died[1, 2] = True
  revived = np.zeros((2, 4), bool)
  revived[0, 0] = revived[0, 3] = True
  units = {"units/died": died, "units/revived": revived, "units/frequency": np.arange(8.0).reshape(2, 4) / 10,
           "units/adam_v": np.full((2, 4), 2.0)}
  events = neuron_events(40, units)
  assert [(e["layer"], e["unit"], e["event"]) for e in events] == [(1, 2, "died"), (0, 0, "revived"),
                                                                   (0, 3, "revived")]
  assert events[0]["frequency"] == pytest.approx(0.6) and events[0]["adam_v"] == 2.0 and events[0]["step"] == 40


def test_a_model_without_ffn_saves_and_resumes(tmp_path):
  """No FFN means no dead-unit tracker; the checkpoint must still write and restore."""
  workdir = str(tmp_path / "run")
  config = make_tiny_config(**{"model.block": "attention_only", "train.steps": 3, "checkpoint.save_every": 2})
  loop.train(config, workdir, stop_at_step=2)
  state = loop.train(config, workdir)
  assert int(state.step) == 3 and "dead_units" not in state.lens_state
