"""Shared test setup: 8 fake CPU devices, a tiny config, a CLI runner.

The environment variables are set at import time, before anything imports
jax, so that every test (and every subprocess a test starts, which inherits
os.environ) sees the same 8 CPU devices; multi-device code paths then run on
any laptop.
"""

from __future__ import annotations

import atexit
import os
import re
import shutil
import subprocess
import sys
import tempfile

NUM_DEVICES = 8
_other_flags = re.sub(r"--xla_force_host_platform_device_count=\S*", "", os.environ.get("XLA_FLAGS", ""))
os.environ["XLA_FLAGS"] = f"{_other_flags.strip()} --xla_force_host_platform_device_count={NUM_DEVICES}".strip()
os.environ["JAX_PLATFORMS"] = "cpu"
# A compilation cache shared by this session and its subprocesses: the train
# tests build the same tiny step many times (straight, resumed, in a CLI
# subprocess), and each compile of it costs seconds on a small CPU. Every
# program is written (the tiny ones compile in well under lensjax's 1 s
# threshold). LENSJAX_COMPILATION_CACHE=0 runs the suite without it.
# LENSJAX_CACHE_DIR points to a temporary folder too, so that no test (and no
# command a test starts without JAX's setting) writes to the user's own cache.
_session_cache = tempfile.mkdtemp(prefix="lensjax-tests-jit-cache-")
atexit.register(shutil.rmtree, _session_cache, ignore_errors=True)
os.environ["LENSJAX_CACHE_DIR"] = _session_cache
if os.environ.get("LENSJAX_COMPILATION_CACHE", "1").strip().lower() not in ("0", "false", "no", "off"):
  os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", _session_cache)
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from lensjax.config import Config  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_tiny_config(**overrides) -> Config:
  """A config whose step takes milliseconds on CPU (compiling it still takes seconds).

  `overrides` are dotted keys with Python values, e.g. `**{"train.steps": 20}`.
  """
  config = Config().updated({
      "model.num_layers": 2, "model.d_model": 32, "model.num_heads": 4, "model.d_ff": 64, "model.max_len": 16,
      "data.source": "markov", "data.vocab_size": 8, "data.markov_order": 1, "data.markov_alpha": 0.5,
      "data.seq_len": 16,
      "train.steps": 6, "train.batch_size": 8, "train.seed": 0,
      "optim.lr": 1e-2, "optim.warmup_steps": 2, "optim.weight_decay": 0.01,
      "logging.log_every": 2, "logging.eval_every": 0, "logging.eval_batches": 1, "logging.progress": "none",
      "checkpoint.save_every": 100, "checkpoint.keep": 3,
      # Synchronous saves: fewer threads to reason about when a test fails.
      "checkpoint.async_save": False,
      "stats.dead_window": 3,
  })
  return config.updated(overrides)


@pytest.fixture
def tiny_config() -> Config:
  return make_tiny_config()


def run_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
  """Runs `python -m lensjax ARGS...` from the repository root and captures its output."""
  return subprocess.run([sys.executable, "-m", "lensjax", *args], cwd=REPO, env=dict(os.environ),
                        capture_output=True, text=True, timeout=timeout)


def popen_cli(*args: str, **kwargs) -> subprocess.Popen:
  """Starts `python -m lensjax ARGS...` in the background; output piped unless `kwargs` say otherwise."""
  options = dict(stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  options.update(kwargs)
  return subprocess.Popen([sys.executable, "-m", "lensjax", *args], cwd=REPO, env=dict(os.environ), **options)


def write_config_file(path, config: Config) -> str:
  """A config file whose get_config() returns exactly `config` (via its JSON form)."""
  from lensjax import config as config_lib
  json_path = str(path) + ".json"
  config_lib.save_json(config, json_path)
  with open(path, "w") as f:
    f.write("from lensjax.config import load_json\n\n\n"
            f"def get_config():\n  return load_json({json_path!r})\n")
  return str(path)


def preempted_sources(make_source, at_step: int, only=lambda config: True):
  """A `make_source` whose sources send this process SIGTERM while training batch `at_step` is read (for the
  configs `only` picks), as a scheduler's preemption would arrive mid-run."""
  import signal

  def make(config):
    source = make_source(config)
    read = source.batch

    def batch(step, *args, **kwargs):
      if step == at_step and kwargs.get("split", "train") == "train" and only(config):
        os.kill(os.getpid(), signal.SIGTERM)
      return read(step, *args, **kwargs)

    source.batch = batch
    return source

  return make


def damage(directory, how: str) -> None:
  """Truncates every file under `directory` to half its size, or overwrites 16 bytes in its middle."""
  rng = np.random.default_rng(0)
  files = [os.path.join(root, name) for root, _, names in os.walk(directory) for name in names]
  assert files, directory
  for path in files:
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
      if how == "truncate":
        f.truncate(size // 2)
      else:
        f.seek(max(size // 2 - 8, 0))
        f.write(rng.integers(0, 256, 16, dtype=np.uint8).tobytes())
