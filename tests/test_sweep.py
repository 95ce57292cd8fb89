"""`lensjax sweep`: members train into their folders with entropy.json; bad entries exit 2; cluster commands."""

from __future__ import annotations

import json
import os
import shlex
import shutil

import pytest

from lensjax import cli
from lensjax import config as config_lib
from lensjax.io.metrics_log import read_metrics
# A session fixture shared with test_entropy_analysis: one tiny training serves both files.
from test_entropy_analysis import STEPS, tiny_entropy_config, trained_run  # noqa: F401


def write_sweep_file(directory, sweep: list) -> str:
  """A sweep config file: `sweep` over the tiny config of test_entropy_analysis (V^T = 4^6)."""
  config = tiny_entropy_config()
  json_path = os.path.join(directory, "base.json")
  config_lib.save_json(config, json_path)
  path = os.path.join(directory, "sweep_config.py")
  with open(path, "w") as f:
    f.write("from lensjax.config import load_json\n\n\n"
            f"def get_config():\n  return load_json({json_path!r})\n\n\nSWEEP = {sweep!r}\n")
  return path


# Members differ only in what leaves the compiled step alone (fast: one compilation), yet the weights differ.
MEMBERS = [{"name": "seed0", "train.seed": 0}, {"name": "seed1", "train.seed": 1, "logging.log_every": "3"}]


@pytest.fixture(scope="module")
def swept(tmp_path_factory, trained_run):
  directory = str(tmp_path_factory.mktemp("sweep"))
  config_path = write_sweep_file(directory, MEMBERS)
  workdir = os.path.join(directory, "runs")
  # Member seed0 is that run, already trained: the sweep resumes it (no step left) and only analyses it.
  shutil.copytree(trained_run[0], os.path.join(workdir, "seed0"))
  rc = cli.main(["sweep", "--config", config_path, "--workdir", workdir])
  return rc, config_path, workdir


def test_members_train_into_their_folders_and_write_entropy_files(swept):
  rc, _, workdir = swept
  assert rc == 0
  records = {}
  for member in MEMBERS:
    member_dir = os.path.join(workdir, member["name"])
    assert os.path.isfile(os.path.join(member_dir, "metrics.jsonl"))
    assert str(STEPS) in os.listdir(os.path.join(member_dir, "checkpoints"))
    with open(os.path.join(member_dir, "entropy.json")) as f:
      records[member["name"]] = record = json.load(f)
    assert record["step"] == STEPS and record["name"] == member["name"] and record["method"] == "exact"
    assert record["num_params"] > 0 and "train/loss" in record
    for name in ("eval/entropy_model_seq", "eval/entropy_target_seq", "eval/kl_seq"):
      assert record[name + "_stderr"] == 0.0 and record[name] == record[name]
  # The member's overrides reached its run.
  saved = config_lib.load_json(os.path.join(workdir, "seed1", "config.json"))
  assert saved.train.seed == 1 and saved.logging.log_every == 3
  assert records["seed0"]["eval/entropy_model_seq"] != records["seed1"]["eval/entropy_model_seq"]
  # One target: the same H(P) for every member.
  assert records["seed0"]["eval/entropy_target_seq"] == records["seed1"]["eval/entropy_target_seq"]
  with open(os.path.join(workdir, "sweep_summary.json")) as f:
    assert [r["name"] for r in json.load(f)] == ["seed0", "seed1"]


def test_a_second_run_skips_finished_members(swept, capsys):
  _, config_path, workdir = swept
  assert cli.main(["sweep", "--config", config_path, "--workdir", workdir]) == 0
  err = capsys.readouterr().err
  assert err.count("finished, skipped") == 2


BAD_SWEEPS = {
    "unknown key": ([{"name": "ok"}, {"name": "bad", "model.num_layer": 3}], ["'bad'", "model.num_layer",
                                                                             "did you mean model.num_layers"]),
    "wrong type": ([{"name": "ok"}, {"name": "bad", "model.num_layers": "three"}], ["'bad'", "model.num_layers"]),
    "invalid combination": ([{"name": "bad", "model.d_model": 30}], ["model.d_model", "num_heads"]),
    "missing name": ([{"model.d_ff": 8}], ["entry 0", "name"]),
    "duplicate name": ([{"name": "a"}, {"name": "a"}], ["two members named 'a'"]),
    "unsafe name": ([{"name": "../escape"}], ["'../escape'"]),
    "not a dict": (["model.d_ff=8"], ["entry 0"]),
    "empty": ([], ["SWEEP"]),
}


@pytest.mark.parametrize("case", BAD_SWEEPS.values(), ids=BAD_SWEEPS.keys())
@pytest.mark.parametrize("print_commands", [False, True], ids=["run", "print"])
def test_bad_entries_exit_2_before_anything_trains(case, print_commands, tmp_path, capsys):
  sweep, expected = case
  config_path = write_sweep_file(str(tmp_path), sweep)
  workdir = tmp_path / "runs"
  argv = ["sweep", "--config", config_path, "--workdir", str(workdir)] + (["--print-commands"] if print_commands else [])
  assert cli.main(argv) == 2
  captured = capsys.readouterr()
  for text in expected:
    assert text in captured.err, (text, captured.err)
  assert not workdir.exists()  # nothing trained, not even the good members before the bad one
  assert captured.out == ""


def test_print_commands_prints_one_train_line_per_member(tmp_path, capsys):
  members = [{"name": "L2_D64", "model.num_layers": 2, "model.d_model": 64, "model.activation": "gelu"},
             {"name": "tied", "model.tie_embeddings": False, "optim.lr": 0.001}]
  config_path = write_sweep_file(str(tmp_path), members)
  workdir = str(tmp_path / "runs")
  assert cli.main(["sweep", "--config", config_path, "--workdir", workdir, "--print-commands",
                   "--config.train.steps=7"]) == 0
  lines = capsys.readouterr().out.strip().splitlines()
  assert len(lines) == 2
  first, second = (shlex.split(line) for line in lines)
  assert first[:6] == ["lensjax", "train", "--config", config_path, "--workdir", os.path.join(workdir, "L2_D64")]
  assert first[6:] == ["--config.model.num_layers=2", "--config.model.d_model=64", "--config.model.activation=gelu",
                       "--config.train.steps=7"]
  assert second[5] == os.path.join(workdir, "tied")
  assert second[6:] == ["--config.model.tie_embeddings=false", "--config.optim.lr=0.001", "--config.train.steps=7"]
  assert not os.path.exists(workdir)
  # Each printed line is a valid `lensjax train` command: its config parses and validates.
  parsed = cli.parser().parse_known_args(first[1:])
  config = config_lib.apply_overrides(config_lib.load_config_file(parsed[0].config),
                                      config_lib.parse_override_args(parsed[1]))
  assert (config.model.num_layers, config.model.d_model, config.model.activation, config.train.steps) == (
      2, 64, "gelu", 7)


def test_the_shipped_sweeps_are_valid_ladders(capsys):
  from lensjax import sweep
  for path, minimum in (("configs/entropy_ladder.py", 5), ("configs/ffn_ablation.py", 6)):
    full = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), path)
    assert cli.main(["sweep", "--config", full, "--workdir", "/nonexistent/w", "--print-commands"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) >= minimum
    base = config_lib.load_config_file(full)
    # Exact enumeration of the target and of every model must be possible.
    assert base.data.vocab_size**base.data.seq_len <= 2**20
    members = sweep.parse_members(sweep.load_sweep_list(full), base, {}, lambda c: c)
    if path.endswith("entropy_ladder.py"):
      sizes = [(m.config.model.num_layers, m.config.model.d_model) for m in members]
      assert sizes == sorted(sizes) and len(set(sizes)) == len(sizes)
    else:
      blocks = {m.config.model.block for m in members}
      assert blocks == {"attention+ffn", "attention_only", "ffn_only"}
      assert len({m.config.model.d_ff for m in members if m.config.model.block == "attention+ffn"}) >= 4


SEED_MEMBERS = [{"name": f"s{seed}", "train.seed": seed} for seed in (0, 3, 7)]


def test_members_that_differ_only_in_seeds_train_as_one_ensemble(tmp_path, capsys):
  config_path = write_sweep_file(str(tmp_path), SEED_MEMBERS + [{"name": "wide", "model.d_ff": 32}])
  workdir = str(tmp_path / "runs")
  assert cli.main(["sweep", "--config", config_path, "--workdir", workdir]) == 0
  err = capsys.readouterr().err
  assert "s0, s3, s7 as one ensemble of 3" in err and "job 2/2: wide ->" in err
  entropies = []
  for member in SEED_MEMBERS:
    member_dir = os.path.join(workdir, member["name"])
    saved = config_lib.load_json(os.path.join(member_dir, "config.json"))
    assert saved.train.seed == member["train.seed"] and saved.train.members == 1  # each a solo run of its seed
    assert str(STEPS) in os.listdir(os.path.join(member_dir, "checkpoints"))
    with open(os.path.join(member_dir, "entropy.json")) as f:
      record = json.load(f)
    assert record["name"] == member["name"] and record["step"] == STEPS
    entropies.append(record["eval/entropy_model_seq"])
    # The config's periodic entropy analysis (logging.entropy_every) ran for each member inside the ensemble.
    periodic = [r for r in read_metrics(os.path.join(member_dir, "metrics.jsonl")) if "eval/entropy_model_seq" in r]
    assert [r["step"] for r in periodic] == [STEPS - 1]
    assert periodic[0]["eval/entropy_model_seq"] == pytest.approx(record["eval/entropy_model_seq"], rel=1e-6)
  assert len(set(entropies)) == 3
  assert not os.path.exists(os.path.join(workdir, "ensemble.json"))  # the members keep the sweep's folders
  with open(os.path.join(workdir, "sweep_summary.json")) as f:
    assert [r["name"] for r in json.load(f)] == ["s0", "s3", "s7", "wide"]


def test_a_group_resumed_at_different_steps_trains_one_by_one_and_says_why(tmp_path, trained_run, capsys):
  config_path = write_sweep_file(str(tmp_path), SEED_MEMBERS[:2])
  workdir = str(tmp_path / "runs")
  shutil.copytree(trained_run[0], os.path.join(workdir, "s0"))  # s0 is trained to the end; s3 has not begun
  os.remove(os.path.join(workdir, "s0", "entropy.json")) if os.path.exists(
      os.path.join(workdir, "s0", "entropy.json")) else None
  assert cli.main(["sweep", "--config", config_path, "--workdir", workdir]) == 0
  err = capsys.readouterr().err
  assert f"s0, s3 differ only in train.seed and data.seed and data.order_seed but train one by one: their " \
         f"checkpoints stand at different steps (s0: {STEPS}, s3: none)" in err
  assert cli.main(["sweep", "--config", config_path, "--workdir", workdir, "--ensembles", "none"]) == 0
  assert "one by one" not in capsys.readouterr().err  # nothing left to group: both finished
