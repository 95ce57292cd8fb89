"""Injected faults: kill -9 (also mid-checkpoint), a corrupt newest checkpoint, a full disk, bad input.

Every run here uses one config (`faults_config`, varied only in keys that do
not change the compiled step), so that the session's persistent compilation
cache compiles its step once for the in-process runs and every `lensjax
train` subprocess.
"""

from __future__ import annotations

import concurrent.futures
import errno
import os
import re
import shutil
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from etils import epath

from conftest import damage, make_tiny_config, popen_cli, run_cli, write_config_file
from test_cli import snapshot
from test_train import assert_states_equal, host, logged_metrics
from lensjax import cli
from lensjax.errors import CheckpointWriteError
from lensjax.io.checkpoints import Checkpoints, abstract_like
from lensjax.train import loop

STEPS = 80


def faults_config(**overrides):
  """The tiny model with asynchronous saves; overrides must leave the compiled step alone.

  GELU rather than ReLU: with no kink in the activation, runs on different
  device counts (test_multiprocess) stay within rounding of each other for the
  whole run, instead of parting when a unit's pre-activation crosses zero.
  """
  return make_tiny_config(**{"train.steps": STEPS, "model.activation": "gelu", "logging.log_every": 3,
                             "checkpoint.save_every": 1000, "checkpoint.keep": 3, "checkpoint.async_save": True,
                             **overrides})


def finished_state(workdir):
  """The train state of a run directory's newest checkpoint, restored into the layout of a fresh build."""
  run = loop.build(loop.prepare(faults_config()))
  checkpoints = Checkpoints(os.path.join(workdir, "checkpoints"), keep=10, async_save=False)
  try:
    step = checkpoints.latest_step()
    assert step == STEPS, f"{workdir} holds no final checkpoint (newest: {step})"
    return host(checkpoints.restore(step, abstract_like(run.state)))
  finally:
    checkpoints.close()


def step_dirs(workdir) -> list[str]:
  return sorted(os.listdir(os.path.join(workdir, "checkpoints")))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """The uninterrupted run: (workdir, final state on the host)."""
  workdir = str(tmp_path_factory.mktemp("uninterrupted"))
  return workdir, host(loop.train(faults_config(), workdir))


def assert_same_run(workdir, reference, state=None) -> None:
  """Bit for bit the uninterrupted run: final train state and every metrics.jsonl record (timings aside)."""
  reference_dir, reference_state = reference
  assert_states_equal(finished_state(workdir) if state is None else host(state), reference_state)
  assert logged_metrics(workdir) == logged_metrics(reference_dir)


# ---------------------------------------------------------------------------
# kill -9


KILL_SEED = 1123
# Each sequence restarts `lensjax train` on its own run directory and kills it
# (SIGKILL) once per mode, in an order drawn from the seeded generator:
#   startup  a random moment of start-up: import, restore, metrics truncation, compilation;
#   write    while the k-th checkpoint of this start is being written (k = 1..3; the kill
#            follows the appearance of Orbax's temporary step directory by 0-10 ms);
#   random   a random moment 0-0.5 s after this start's first checkpoint is complete.
# Two sequences run side by side, one per CPU core; the last start of each runs to the end.
MODES = ("startup", "write", "write", "random", "random")
LOOP_STARTED = "compiled the logging step"


def tmp_entries(checkpoint_dir) -> set[tuple[str, int]]:
  """Orbax's unfinished step directories, by name and inode (a rewrite of the same step is a new inode)."""
  try:
    return {(e.name, e.inode()) for e in os.scandir(checkpoint_dir) if "orbax-checkpoint-tmp" in e.name}
  except FileNotFoundError:
    return set()


def finished_steps(checkpoint_dir) -> list[int]:
  try:
    return sorted(int(name) for name in os.listdir(checkpoint_dir) if name.isdigit())
  except FileNotFoundError:
    return []


def wait_until(condition, process, deadline: float, poll: float) -> bool:
  """Polls `condition` while `process` runs; False if the process exited first."""
  while not condition():
    if process.poll() is not None:
      return False
    assert time.monotonic() < deadline, "a trial of the kill test took more than 120 s"
    time.sleep(poll)
  return True


def kill_sequence(workdir: str, config_file: str, rng: np.random.Generator, logs) -> list[dict]:
  """Starts, kills (SIGKILL) and restarts `lensjax train` once per mode, then lets it finish."""
  checkpoint_dir = os.path.join(workdir, "checkpoints")
  trials = []
  for number, mode in enumerate(list(rng.permutation(MODES)) + ["finish"]):
    # A harmless change on every restart: how often to save.
    save_every = 1000 if mode == "finish" else int(rng.integers(1, 4))
    resume_from = max(finished_steps(checkpoint_dir), default=None)
    log_path = logs / f"{os.path.basename(workdir)}_{number}_{mode}.log"
    with open(log_path, "w") as log:
      process = popen_cli("train", "--config", config_file, "--workdir", workdir,
                          f"--config.checkpoint.save_every={save_every}", stdout=log, stderr=log)
    stale = tmp_entries(checkpoint_dir)
    log_text = lambda: log_path.read_text()
    deadline = time.monotonic() + 120
    seen = set()

    def writes_started():
      seen.update(tmp_entries(checkpoint_dir) - stale)
      return len(seen)

    try:
      if mode == "finish":
        process.wait(timeout=120)
      elif mode == "startup":
        time.sleep(rng.uniform(0.2, 4.0))
      elif wait_until(lambda: LOOP_STARTED in log_text(), process, deadline, poll=0.01):
        if mode == "write":
          k = int(rng.integers(1, 4))
          wait_until(lambda: writes_started() >= k, process, deadline, poll=0.002)
          time.sleep(rng.uniform(0.0, 0.01))
        else:
          wait_until(lambda: max(finished_steps(checkpoint_dir), default=0) > (resume_from or 0), process, deadline,
                     poll=0.01)
          time.sleep(rng.uniform(0.0, 0.5))
    finally:
      exited = process.poll() is not None
      process.kill()
      process.wait()
    text = log_text()
    if exited:
      assert process.returncode == 0, f"trial {number} ({mode}) exited with {process.returncode}:\n{text}"
    if resume_from is not None and "resuming from" in text:
      assert f"resuming from the checkpoint at step {resume_from} " in text, (resume_from, text)
    assert "unreadable" not in text, f"trial {number} ({mode}) found a broken checkpoint:\n{text}"
    trials.append({"mode": mode, "killed": not exited, "during_write": bool(tmp_entries(checkpoint_dir) - stale),
                   "save_every": save_every, "resumed_from": resume_from})
    if exited:  # finished before the kill: nothing left to interrupt
      break
  return trials


def test_kill_9_at_random_moments_then_resuming_equals_the_uninterrupted_run(reference, tmp_path):
  config_file = write_config_file(tmp_path / "faults.py", faults_config())
  (tmp_path / "logs").mkdir()
  workdirs = [str(tmp_path / f"run{i}") for i in range(2)]
  with concurrent.futures.ThreadPoolExecutor(len(workdirs)) as pool:
    futures = [pool.submit(kill_sequence, workdir, config_file, np.random.default_rng([KILL_SEED, i]),
                           tmp_path / "logs") for i, workdir in enumerate(workdirs)]
    trials = [future.result() for future in futures]
  kills = [t for sequence in trials for t in sequence if t["killed"]]
  summary = "\n".join(map(str, [t for sequence in trials for t in sequence]))
  print(summary)
  assert len(kills) >= 2 * len(MODES), f"fewer kills than planned (a run finished early):\n{summary}"
  assert sum(t["during_write"] for t in kills) >= 2, f"no kill landed during a checkpoint write:\n{summary}"
  for workdir in workdirs:
    # The partial writes of the killed runs were cleaned up when the next run started.
    assert tmp_entries(os.path.join(workdir, "checkpoints")) == set(), step_dirs(workdir)
    assert_same_run(workdir, reference)


def test_death_right_after_a_checkpoint_commits_loses_no_metrics_record(reference, tmp_path, monkeypatch):
  """Step 3's record is queued when checkpoint 4 is saved; it must reach metrics.jsonl before the checkpoint does."""

  class Killed(BaseException):
    pass

  save = Checkpoints.save

  def save_then_die(self, step, state, meta):
    save(self, step, state, meta)
    if step == 4:
      self.wait()  # the checkpoint is on disk: a kill now is a kill after the commit
      raise Killed

  workdir = str(tmp_path / "run")
  monkeypatch.setattr(Checkpoints, "save", save_then_die)
  with pytest.raises(Killed):
    loop.train(faults_config(**{"checkpoint.save_every": 2}), workdir)
  monkeypatch.undo()
  assert finished_steps(os.path.join(workdir, "checkpoints")) == [2, 4]
  assert_same_run(workdir, reference, loop.train(faults_config(), workdir))


# ---------------------------------------------------------------------------
# A corrupt newest checkpoint


@pytest.mark.parametrize("how", ["truncate", "garble"])
def test_a_corrupt_newest_checkpoint_falls_back_to_the_previous_one_and_resumes_exactly(how, reference, tmp_path,
                                                                                       capfd):
  workdir = str(tmp_path / "run")
  loop.train(faults_config(**{"checkpoint.save_every": 6}), workdir, stop_at_step=12)
  assert step_dirs(workdir) == ["12", "6"]
  damage(os.path.join(workdir, "checkpoints", "12"), how)
  capfd.readouterr()
  state = loop.train(faults_config(**{"checkpoint.save_every": 12}), workdir)
  stderr = capfd.readouterr().err
  assert re.search(r"warning: resumed from checkpoint 6 instead of the newest, 12\b", stderr), stderr
  assert "resuming from the checkpoint at step 6" in stderr
  # The unreadable step is kept aside, so that the resumed run could write step 12 afresh.
  assert step_dirs(workdir) == ["12.unreadable", "60", "72", "80"]
  assert_same_run(workdir, reference, state)


# ---------------------------------------------------------------------------
# A full disk


# Orbax's failed background write leaves an asyncio loop that Python collects later, with a warning.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_full_disk_during_a_save_stops_with_one_sentence_and_keeps_the_earlier_checkpoints(reference, tmp_path,
                                                                                            monkeypatch):
  """From the write of step 12 on, every file Orbax writes in Python fails with ENOSPC (as on a full disk).

  The save is asynchronous, so the failure surfaces at the next save; the
  error names the directory, says the disk is full, and names the newest
  intact checkpoint, from which the same command resumes exactly.
  """
  workdir = str(tmp_path / "run")
  checkpoint_dir = os.path.join(workdir, "checkpoints")
  write_text = epath.Path.write_text
  full = []

  def write_on_a_filling_disk(path, *args, **kwargs):
    if f"{os.sep}12.orbax-checkpoint-tmp" in str(path):
      full.append(str(path))
    if full and str(path).startswith(checkpoint_dir):
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
    return write_text(path, *args, **kwargs)

  monkeypatch.setattr(epath.Path, "write_text", write_on_a_filling_disk)
  with pytest.raises(CheckpointWriteError) as info:
    loop.train(faults_config(**{"checkpoint.save_every": 4}), workdir)
  monkeypatch.undo()
  message = str(info.value)
  assert full, "the injected fault never fired"
  assert message.startswith(f"the disk holding {checkpoint_dir} is full")
  assert "newest: step 8" in message and message.count(". ") == 0 and message.endswith(".")
  assert finished_steps(checkpoint_dir) == [4, 8]
  # As a user would: a new process (this one's failed save may still have TensorStore writes in flight).
  config_file = write_config_file(tmp_path / "faults.py", faults_config())
  result = run_cli("train", "--config", config_file, "--workdir", workdir)
  assert result.returncode == 0, result.stderr
  assert "resuming from the checkpoint at step 8" in result.stderr
  assert_same_run(workdir, reference)


def can_mount_tmpfs() -> bool:
  probe = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
                          "mount -t tmpfs -o size=64k tmpfs /tmp"], capture_output=True)
  return probe.returncode == 0


@pytest.mark.skipif(sys.platform != "linux" or not shutil.which("unshare") or not can_mount_tmpfs(),
                    reason="needs unprivileged user and mount namespaces to mount a small tmpfs")
def test_a_really_full_disk_on_the_command_line_exits_1_with_one_sentence(tmp_path):
  """The checkpoint directory is a tmpfs that a filler file fills up as soon as checkpoint 2 is complete, so a
  later save meets TensorStore's own ENOSPC (whatever size a checkpoint has on this machine): exit 1, one
  sentence naming the directory and the newest intact checkpoint."""
  workdir = tmp_path / "run"
  checkpoints = workdir / "checkpoints"
  checkpoints.mkdir(parents=True)
  # Enough steps that training is still running when the disk fills.
  config_file = write_config_file(tmp_path / "faults.py", faults_config(**{"checkpoint.save_every": 2,
                                                                           "train.steps": 2000}))
  script = (f"mount -t tmpfs -o size=64m tmpfs {checkpoints} || exit 90\n"
            f"{sys.executable} -m lensjax train --config {config_file} --workdir {workdir} &\n"
            "pid=$!\n"
            f"while [ ! -d {checkpoints}/2 ] && kill -0 $pid 2>/dev/null; do sleep 0.05; done\n"
            f"dd if=/dev/zero of={checkpoints}/.filler bs=1M 2>/dev/null\n"
            "wait $pid\n")
  result = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script],
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))), env=dict(os.environ),
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 1, result.stderr
  lines = result.stderr.strip().splitlines()
  errors = [line for line in lines if line.startswith("lensjax: error:")]
  # One sentence, first and alone: none of Orbax's, TensorStore's or asyncio's reports of the failed writes
  # around it, and no traceback through lensjax's own code.
  assert len(errors) == 1 and lines[-1] == errors[0], result.stderr
  assert not [line for line in lines if line.startswith(("ERROR:", "WARNING:absl", "future:", "Traceback"))], \
      result.stderr
  assert not [line for line in lines if line.lstrip().startswith("File ") and f"{os.sep}lensjax{os.sep}" in line
              and "site-packages" not in line], result.stderr
  assert re.fullmatch(rf"lensjax: error: the disk holding {checkpoints} is full, so a checkpoint could "
                      r"not be written; the checkpoints already there are intact \(newest: step \d+\), so after "
                      r"freeing space the same command resumes from it\.", errors[0]), errors[0]


# ---------------------------------------------------------------------------
# Resuming with another config, and bad input, through the CLI (in-process)


class CompileCounter:
  """Counts JAX tracing and compilation events while it is active."""

  def __init__(self):
    self.events = []

  def __call__(self, event, duration, **kwargs):
    if event.startswith("/jax/core/compile/") or event.startswith("/jax/compilation_cache/"):
      self.events.append(event)

  def __enter__(self):
    jax.monitoring.register_event_duration_secs_listener(self)
    return self

  def __exit__(self, *exc):
    jax.monitoring.unregister_event_duration_listener(self)


def test_resume_through_the_cli_refuses_an_incompatible_config_and_accepts_harmless_changes(reference, tmp_path,
                                                                                           capsys):
  workdir = str(tmp_path / "run")
  loop.train(faults_config(**{"checkpoint.save_every": 6}), workdir, stop_at_step=12)
  config_file = write_config_file(tmp_path / "faults.py", faults_config())
  train = ["train", "--config", config_file, "--workdir", workdir]
  before = snapshot(workdir)
  capsys.readouterr()
  with CompileCounter() as compiles:
    code = cli.main(train + ["--config.model.d_ff=128", "--config.train.seed=1", "--config.optim.lr=0.5"])
  stderr = capsys.readouterr().err
  assert code == 2, stderr
  assert "model.d_ff (checkpoint 64, config 128)" in stderr and "train.seed (checkpoint 0, config 1)" in stderr
  assert "optim.lr" not in stderr  # may change on resume
  assert compiles.events == [] and snapshot(workdir) == before
  # Checkpoint cadence, retention, progress display and attention=auto (xla on CPU) leave the run unchanged.
  code = cli.main(train + ["--config.checkpoint.save_every=25", "--config.checkpoint.keep=2",
                           "--config.logging.progress=lines", "--config.model.attention=auto"])
  assert code == 0, capsys.readouterr().err
  assert "resuming from the checkpoint at step 12" in capsys.readouterr().err
  assert step_dirs(workdir) == ["75", "80"]
  assert_same_run(workdir, reference)


def write_tokens(path, ids, dtype="<u2") -> str:
  np.asarray(ids, dtype=dtype).tofile(path)
  return str(path)


# case: (overrides, strings the error must contain); {tokens}, {short}, ... are data files made below.
BAD_INPUT = {
    "mistyped section": (["--config.modle.num_layers=4"], ["modle.num_layers", "did you mean model.num_layers"]),
    "bool of the wrong form": (["--config.model.use_bias=maybe"], ["model.use_bias", "bool", "'maybe'"]),
    "unknown choice": (["--config.model.activation=tanh"], ["model.activation", "'tanh'", "relu, gelu, swiglu"]),
    "negative learning rate": (["--config.optim.lr=-0.1"], ["optim.lr", "positive"]),
    "zero steps": (["--config.train.steps=0"], ["train.steps", "positive"]),
    "dropout of one": (["--config.model.dropout=1.0"], ["model.dropout", "[0, 1)"]),
    "heldout fraction of one": (["--config.data.heldout_fraction=1"], ["data.heldout_fraction", "(0, 1)"]),
    "fsdp not dividing the devices": (["--config.parallel.fsdp=3"], ["parallel.fsdp=3", "8 devices"]),
    "markov vocabulary mismatch": (["--config.model.vocab_size=9"], ["model.vocab_size=9", "data.vocab_size=8"]),
    "tokens without a path": (["--config.data.source=tokens", "--config.model.vocab_size=64"], ["data.path"]),
    "tokens without a vocabulary": (["--config.data.source=tokens", "--config.data.path={tokens}"],
                                    ["model.vocab_size"]),
    "token id outside the vocabulary": (
        ["--config.data.source=tokens", "--config.data.path={out_of_vocab}", "--config.model.vocab_size=64"],
        ["{out_of_vocab}", "token id 64", "position 70", "vocab_size=64"]),
    "token file too short": (["--config.data.source=tokens", "--config.data.path={short}",
                              "--config.model.vocab_size=64"], ["{short}", "holds 20 tokens", "seq_len=16"]),
    "token file of odd size": (["--config.data.source=tokens", "--config.data.path={odd}",
                                "--config.model.vocab_size=64"], ["{odd}", "201 bytes", "uint16"]),
    "empty token file": (["--config.data.source=tokens", "--config.data.path={empty}",
                          "--config.model.vocab_size=64"], ["{empty}", "empty"]),
    "missing token file": (["--config.data.source=tokens", "--config.data.path={missing}",
                            "--config.model.vocab_size=64"], ["{missing}", "does not exist"]),
    "byte file too short": (["--config.data.source=bytes", "--config.data.path={short_text}"],
                            ["{short_text}", "holds 12 tokens"]),
}


@pytest.fixture(scope="module")
def data_files(tmp_path_factory):
  base = tmp_path_factory.mktemp("data")
  ids = np.arange(400) % 64
  bad = ids.copy()
  bad[70] = 64
  (base / "odd.bin").write_bytes(b"\x01" * 201)
  (base / "empty.bin").write_bytes(b"")
  (base / "short.txt").write_bytes(b"twelve bytes")
  return {"tokens": write_tokens(base / "tokens.bin", ids), "out_of_vocab": write_tokens(base / "oov.bin", bad),
          "short": write_tokens(base / "short.bin", ids[:20]), "odd": str(base / "odd.bin"),
          "empty": str(base / "empty.bin"), "missing": str(base / "missing.bin"),
          "short_text": str(base / "short.txt"), "config": write_config_file(base / "faults.py", faults_config())}


@pytest.mark.parametrize("case", BAD_INPUT)
def test_bad_input_on_the_command_line_exits_2_with_one_sentence_before_compiling(case, data_files, tmp_path,
                                                                                  capsys):
  overrides, expected = BAD_INPUT[case]
  fill = lambda text: text.format(**data_files)
  workdir = tmp_path / "run"
  loop_train = ["train", "--config", data_files["config"], "--workdir", str(workdir)]
  with CompileCounter() as compiles:
    code = cli.main(loop_train + [fill(o) for o in overrides])
  stderr = capsys.readouterr().err
  assert code == 2, stderr
  lines = [line for line in stderr.splitlines() if line.strip()]
  assert len(lines) == 1 and lines[0].startswith("lensjax: error: "), stderr
  assert lines[0].endswith((".", "?")), lines[0]
  for text in map(fill, expected):
    assert text in lines[0], f"{text!r} not in {lines[0]!r}"
  assert compiles.events == [], f"compiled before rejecting the input: {compiles.events}"
  assert not os.path.exists(workdir / "metrics.jsonl") and not os.path.exists(workdir / "config.json")
