"""`lensjax train` input errors: exit code 2, a message naming the culprit, nothing on disk touched."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys

import pytest

from conftest import make_tiny_config, popen_cli, write_config_file
from lensjax.io import run_lock

TRAIN = ["train", "--config", "{config}", "--workdir", "{workdir}"]

# case: (command line, strings stderr must contain). Placeholders: {config} a
# valid tiny config file, {workdir} a directory holding a previous run,
# {empty} an empty file, {missing} a path that does not exist.
CASES = {
    "unknown key": (TRAIN + ["--config.model.num_layer=4"], ["model.num_layer", "did you mean model.num_layers"]),
    "wrong type": (TRAIN + ["--config.model.num_layers=four"], ["model.num_layers", "'four'"]),
    "d_model not divisible by num_heads": (TRAIN + ["--config.model.d_model=30"], ["model.d_model", "model.num_heads"]),
    "batch not divisible by devices": (TRAIN + ["--config.train.batch_size=12"], ["train.batch_size", "8 devices"]),
    "seq_len above max_len": (TRAIN + ["--config.data.seq_len=32"], ["data.seq_len", "model.max_len"]),
    "missing config file": (["train", "--config", "{missing}", "--workdir", "{workdir}"], ["{missing}"]),
    "missing data file": (TRAIN + ["--config.data.source=bytes", "--config.data.path={missing}"], ["{missing}"]),
    "empty data file": (TRAIN + ["--config.data.source=bytes", "--config.data.path={empty}"], ["{empty}", "empty"]),
    "cudnn attention on cpu": (TRAIN + ["--config.model.attention=cudnn"], ["model.attention", "cpu"]),
    "override without value": (TRAIN + ["--config.model.num_layers"], ["--config.model.num_layers"]),
    "override without dashes": (TRAIN + ["model.num_layers=4"], ["model.num_layers=4"]),
}


def snapshot(directory) -> dict[str, tuple[str, int]]:
  """Every file and folder under `directory`, with content hash and mtime, but the run directory's lock (each
  trainer that starts takes it and writes its name there, refused or not)."""
  state = {}
  for root, dirs, files in os.walk(directory):
    for name in dirs + [f for f in files if f != run_lock.LOCK_NAME]:
      path = os.path.join(root, name)
      digest = ""
      if os.path.isfile(path):
        with open(path, "rb") as f:
          digest = hashlib.sha256(f.read()).hexdigest()
      state[os.path.relpath(path, directory)] = (digest, os.stat(path).st_mtime_ns)
  return state


def make_previous_run(workdir) -> str:
  """A workdir that already holds a run's files (stand-ins: only their bytes matter)."""
  (workdir / "tb").mkdir(parents=True)
  (workdir / "checkpoints" / "10").mkdir(parents=True)
  (workdir / "config.json").write_text('{"model": {"num_layers": 2}}\n')
  (workdir / "metrics.jsonl").write_text('{"step": 0, "train/loss": 2.0}\n{"step": 10, "train/loss": 1.5}\n')
  (workdir / "tb" / "events.out.tfevents.1.host").write_bytes(b"\x00" * 64)
  (workdir / "checkpoints" / "10" / "state").write_bytes(b"\x01" * 64)
  return str(workdir)


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
  """Runs every case at once: each process spends its time importing, so they overlap well."""
  base = tmp_path_factory.mktemp("cli")
  (base / "empty.txt").write_bytes(b"")
  places = {"config": write_config_file(base / "tiny.py", make_tiny_config()),
            "empty": str(base / "empty.txt"), "missing": str(base / "no_such_file.py")}
  started = {}
  for number, (case, (args, expected)) in enumerate(CASES.items()):
    fill = lambda text: text.format(workdir=str(base / f"run{number}"), **places)
    workdir = make_previous_run(base / f"run{number}")
    started[case] = (popen_cli(*map(fill, args)), workdir, snapshot(workdir), list(map(fill, expected)))
  results = {}
  for case, (process, workdir, before, expected) in started.items():
    _, stderr = process.communicate(timeout=300)
    results[case] = (process.returncode, stderr, expected, before, snapshot(workdir))
  return results


@pytest.mark.parametrize("case", CASES)
def test_bad_input_exits_2_naming_the_problem_and_leaves_the_workdir_alone(case, outcomes):
  returncode, stderr, expected, before, after = outcomes[case]
  assert returncode == 2, f"exit code {returncode}\nstderr:\n{stderr}"
  for text in expected:
    assert text in stderr, f"{text!r} not in stderr:\n{stderr}"
  assert "Traceback" not in stderr  # a sentence for people, not a crash
  assert "compiled" not in stderr  # rejected before any compilation
  assert after == before, "the previous run's files changed"


def test_the_command_modules_do_not_import_the_cli():
  # cli.py imports the analyses' commands and owns parsing and exit codes; the reverse would be a cycle.
  code = ("import sys; from lensjax import sweep; "
          "from lensjax.analysis import growth_cli, hessian_cli, saturation_cli, spikes_cli; "
          "print('lensjax.cli' in sys.modules)")
  done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
  assert done.stdout.strip() == "False", done.stdout + done.stderr
