"""The run directory under faults a cluster user meets: two trainers on one directory, a lock left by a killed
trainer, a run directory that is a file or read-only, bad data, SIGTERM while starting, and analyses that read a
directory a trainer holds. Real processes and real signals where the fault lives in them."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import damage, make_tiny_config, popen_cli, run_cli, write_config_file
from lensjax import cli
from lensjax.errors import InputError
from lensjax.io import run_lock
from lensjax.io.checkpoints import Checkpoints, abstract_like
from lensjax.train import loop
from lensjax.train.state import MIGRATE

LONG = {"train.steps": 1_000_000, "logging.log_every": 1, "checkpoint.save_every": 5, "logging.progress": "none"}


def wait_for(condition, process, what: str, timeout: float = 240.0) -> None:
  deadline = time.monotonic() + timeout
  while not condition():
    assert process.poll() is None, f"the trainer exited before {what}: {process.communicate()[1]}"
    assert time.monotonic() < deadline, f"no {what} within {timeout} s"
    time.sleep(0.05)


# --- the lock itself -------------------------------------------------------------


def test_a_second_claim_is_refused_naming_the_holder_and_a_released_lock_is_free(tmp_path):
  run_dir = str(tmp_path / "run")
  lock = run_lock.claim(run_dir)
  holder = run_lock.holder(run_dir)
  assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
  with pytest.raises(InputError, match=rf"in use by another lensjax train \(pid {os.getpid()} on host "):
    run_lock.claim(run_dir)  # flock locks belong to the open file: a second open is a second claimant
  lock.release()
  assert run_lock.holder(run_dir) is None
  run_lock.claim(run_dir).release()


def test_a_lock_dies_with_its_process_even_on_kill_9(tmp_path):
  run_dir = str(tmp_path / "run")
  child = subprocess.Popen([sys.executable, "-c", "import sys, time; from lensjax.io import run_lock; "
                            f"run_lock.claim({run_dir!r}); print('held', flush=True); time.sleep(600)"],
                           stdout=subprocess.PIPE, text=True, cwd=os.path.dirname(os.path.dirname(__file__)))
  try:
    assert child.stdout.readline().strip() == "held"
    assert run_lock.holder(run_dir)["pid"] == child.pid
    with pytest.raises(InputError, match=f"pid {child.pid}"):
      run_lock.claim(run_dir)
  finally:
    child.kill()
    child.wait()
  # The file still names the dead holder, but nothing holds the lock.
  assert json.loads(open(os.path.join(run_dir, run_lock.LOCK_NAME)).read())["pid"] == child.pid
  assert run_lock.holder(run_dir) is None
  run_lock.claim(run_dir).release()


def test_without_flock_a_stale_lock_is_recognised_by_host_and_pid(tmp_path, monkeypatch):
  def no_flock(fd, operation):
    raise OSError(errno.ENOLCK, "No locks available")
  monkeypatch.setattr(fcntl, "flock", no_flock)
  run_dir = tmp_path / "run"
  run_dir.mkdir()
  path = run_dir / run_lock.LOCK_NAME
  dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
  holders = {"dead": {"host": socket.gethostname(), "pid": int(dead.stdout)},
             "alive": {"host": socket.gethostname(), "pid": os.getppid()},
             "elsewhere": {"host": socket.gethostname() + "-other", "pid": 1}}
  for name, info in holders.items():
    path.write_text(json.dumps({**info, "started": "then"}))
    if name == "dead":  # taken over
      lock = run_lock.claim(str(run_dir))
      assert json.loads(path.read_text())["pid"] == os.getpid()
      lock.release()
      assert not path.exists()
    elif name == "alive":
      with pytest.raises(InputError, match=f"in use by another lensjax train \\(pid {os.getppid()}"):
        run_lock.claim(str(run_dir))
    else:
      with pytest.raises(InputError, match=rf"on another host .*delete {path} and run again"):
        run_lock.claim(str(run_dir))


# --- two trainers, through the command line --------------------------------------


def test_a_second_trainer_on_a_live_run_is_refused_with_exit_2_and_the_first_loses_nothing(tmp_path):
  config_file = write_config_file(tmp_path / "long.py", make_tiny_config(**LONG))
  workdir = str(tmp_path / "run")
  metrics = os.path.join(workdir, "metrics.jsonl")
  first = popen_cli("train", "--config", config_file, "--workdir", workdir, stdout=subprocess.DEVNULL)
  try:
    wait_for(lambda: os.path.exists(metrics) and os.path.getsize(metrics) > 0, first, "first record")
    second = run_cli("train", "--config", config_file, "--workdir", workdir)
    assert second.returncode == 2, second.stderr
    assert second.stderr.strip() == second.stderr.strip().splitlines()[0], second.stderr  # one line
    assert f"in use by another lensjax train (pid {first.pid} on host {socket.gethostname()}" in second.stderr
  finally:
    first.send_signal(signal.SIGTERM)
    _, err = first.communicate(timeout=120)
  assert first.returncode == 0, err
  steps = [json.loads(line)["step"] for line in open(metrics)]
  assert steps == sorted(set(steps)) and steps[0] == 0  # one writer: no step twice, none lost
  assert run_lock.holder(workdir) is None


# --- the run directory and the data, checked before anything is written -----------


def read_only_dir(tmp_path):
  """A directory this process cannot write: chmod for a user, a read-only tmpfs for root (root ignores modes)."""
  folder = tmp_path / "read_only"
  folder.mkdir()
  if os.geteuid() != 0:
    folder.chmod(0o555)
    return folder, lambda: folder.chmod(0o755)
  mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(folder)], capture_output=True)
  if mounted.returncode != 0:
    pytest.skip(f"root cannot mount a read-only tmpfs here ({mounted.stderr.decode().strip()})")
  return folder, lambda: subprocess.run(["umount", str(folder)], check=False)


def test_a_run_directory_that_is_a_file_or_read_only_exits_2_with_one_sentence(tmp_path, capsys):
  config_file = write_config_file(tmp_path / "tiny.py", make_tiny_config(**{"train.steps": 2}))
  a_file = tmp_path / "a_file"
  a_file.write_text("keep me")
  folder, restore = read_only_dir(tmp_path)
  try:
    cases = {str(a_file): f"--workdir {a_file} is a file, not a directory",
             str(a_file / "run"): f"lies under {a_file}, which is a file",
             str(folder): f"--workdir {folder} cannot be written (it is read-only",
             str(folder / "run"): f"cannot be written (its folder {folder} is read-only"}
    for workdir, message in cases.items():
      assert cli.main(["train", "--config", config_file, "--workdir", workdir]) == 2
      err = capsys.readouterr().err
      assert message in err and err.count("\n") == 1, err
    assert a_file.read_text() == "keep me" and os.listdir(folder) == []
  finally:
    restore()


def test_bad_data_is_refused_before_the_run_directory_exists(tmp_path, capsys):
  empty, out_of_vocab, a_dir = tmp_path / "empty.bin", tmp_path / "ids.bin", tmp_path / "texts"
  empty.write_bytes(b"")
  np.arange(300, dtype=np.uint16).tofile(out_of_vocab)
  a_dir.mkdir()
  cases = {"empty": ({"data.source": "tokens", "data.path": str(empty), "model.vocab_size": 256}, "is empty"),
           "out of vocabulary": ({"data.source": "tokens", "data.path": str(out_of_vocab), "model.vocab_size": 256},
                                 "holds token id 256 at position 256, outside vocab_size=256"),
           "a directory for bytes": ({"data.source": "bytes", "data.path": str(a_dir)},
                                     f"data.path {str(a_dir)!r} is a directory; data.source=bytes reads one text file")}
  for name, (overrides, message) in cases.items():
    config_file = write_config_file(tmp_path / "bad.py", make_tiny_config(**{"train.steps": 2, **overrides}))
    workdir = tmp_path / f"run {name}"
    assert cli.main(["train", "--config", config_file, "--workdir", str(workdir)]) == 2, name
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert not workdir.exists(), name
  # A real process: nothing after the sentence either (no checkpoint manager's traceback at shutdown).
  config_file = write_config_file(tmp_path / "bad.py", make_tiny_config(**{"train.steps": 2, **cases["empty"][0]}))
  result = run_cli("train", "--config", config_file, "--workdir", str(tmp_path / "run"))
  assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
  assert not (tmp_path / "run").exists()


# --- SIGTERM while the trainer starts --------------------------------------------


def test_sigterm_while_starting_exits_0_and_the_same_command_then_trains(tmp_path):
  config_file = write_config_file(tmp_path / "tiny.py", make_tiny_config(**{"train.steps": 3}))
  workdir = str(tmp_path / "run")
  process = popen_cli("train", "--config", config_file, "--workdir", workdir)
  time.sleep(0.5)  # past the interpreter's own start, long before JAX has been imported
  process.send_signal(signal.SIGTERM)
  _, err = process.communicate(timeout=240)
  assert process.returncode == 0, err
  assert "SIGTERM: stopping at step 0, nothing trained since the start" in err and "Traceback" not in err, err
  again = run_cli("train", "--config", config_file, "--workdir", workdir)
  assert again.returncode == 0 and "done at step 3" in again.stderr, again.stderr


# --- analyses read, never rename ---------------------------------------------------


def test_a_reader_falls_back_past_a_damaged_checkpoint_without_touching_it(tmp_path):
  workdir = str(tmp_path / "run")
  loop.train(make_tiny_config(**{"train.steps": 8, "checkpoint.save_every": 4, "logging.progress": "none"}), workdir)
  directory = os.path.join(workdir, "checkpoints")
  damage(os.path.join(directory, "8"), "truncate")
  before = sorted(os.listdir(directory))
  run = loop.build(loop.prepare(make_tiny_config(**{"train.steps": 8})))
  reader = Checkpoints(directory, keep=10**6, async_save=False, migrate=MIGRATE, reader=True)
  step, _ = reader.restore_latest_valid(abstract_like(run.state))
  assert step == 4 and sorted(os.listdir(directory)) == before
  shutil.rmtree(os.path.join(directory, "4"))
  with pytest.raises(InputError, match="if a trainer is writing them, wait for its next checkpoint"):
    Checkpoints(directory, keep=10**6, async_save=False, migrate=MIGRATE, reader=True).restore_latest_valid(
        abstract_like(run.state))
