"""The persistent compilation cache of `lensjax` commands: filled by a first run, read by a second, off when
switched off, a warning and no cache when its directory cannot be written, JAX's own setting left alone, and no
global change from importing lensjax.

Each case is a real `lensjax train` process without the suite's JAX_COMPILATION_CACHE_DIR (conftest), so that
lensjax picks the directory itself; LENSJAX_CACHE_MIN_COMPILE_S=0 caches the tiny test programs, which compile
in well under the default second.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from conftest import REPO, make_tiny_config, write_config_file
from lensjax import compile_cache

TRAIN_STEPS = 2
# JAX's compiler says so at debug level, once per program read from the cache.
HIT = re.compile(r"persistent compilation cache hit", re.IGNORECASE)
COMPILED = re.compile(r"compiled the (plain|logging) step in ([\d.]+) s")


def lensjax_env(**changes: str | None) -> dict[str, str]:
  """This process's environment without the suite's cache settings (and its switch), with `changes` (None:
  removed)."""
  env = {k: v for k, v in os.environ.items() if k not in ("JAX_COMPILATION_CACHE_DIR", "JAX_ENABLE_COMPILATION_CACHE",
                                                           "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS",
                                                           compile_cache.SWITCH_VAR)}
  env.update({compile_cache.MIN_COMPILE_VAR: "0", "JAX_DEBUG_LOG_MODULES": "jax._src.compiler"})
  for key, value in changes.items():
    if value is None:
      env.pop(key, None)
    else:
      env[key] = value
  return env


def start(args: list[str], env: dict[str, str]) -> subprocess.Popen:
  return subprocess.Popen([sys.executable, "-m", "lensjax", *args], cwd=REPO, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)


def finish(process: subprocess.Popen) -> tuple[int, str]:
  _, stderr = process.communicate(timeout=300)
  return process.returncode, stderr


def entries(path) -> set[str]:
  """The cache's executables (JAX names them KEY-cache; other files are its bookkeeping)."""
  return {name for name in os.listdir(path) if name.endswith("-cache")} if os.path.isdir(path) else set()


def compile_seconds(stderr: str) -> float:
  times = [float(seconds) for _, seconds in COMPILED.findall(stderr)]
  assert len(times) == 2, stderr
  return sum(times)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """Two identical runs into one cache, one after the other; meanwhile the cases that need no cache of their
  own (off, unwritable, a bare import) run beside them."""
  base = tmp_path_factory.mktemp("cache")
  config = write_config_file(base / "tiny.py", make_tiny_config(**{"train.steps": TRAIN_STEPS}))
  train = lambda name: ["train", "--config", config, "--workdir", str(base / name)]
  (base / "a_file").write_text("not a directory\n")
  places = {"cache": base / "cache", "off": base / "off_cache", "unwritable": base / "a_file" / "cache"}
  beside = {
      "off": start(train("off"), lensjax_env(LENSJAX_CACHE_DIR=str(places["off"]), LENSJAX_COMPILATION_CACHE="0")),
      "unwritable": start(train("unwritable"), lensjax_env(LENSJAX_CACHE_DIR=str(places["unwritable"]))),
      "import": subprocess.Popen(
          [sys.executable, "-c", "import jax, lensjax.cli, lensjax.train.loop, lensjax.bench; "
           "print(jax.config.values['jax_compilation_cache_dir'])"],
          cwd=REPO, env=lensjax_env(LENSJAX_CACHE_DIR=str(base / "import_cache")), stdout=subprocess.PIPE,
          stderr=subprocess.PIPE, text=True),
  }
  env = lensjax_env(LENSJAX_CACHE_DIR=str(places["cache"]))
  first = finish(start(train("first"), env))
  after_first = entries(places["cache"])
  second = finish(start(train("second"), env))
  results = {"first": first, "second": second, "after_first": after_first, "after_second": entries(places["cache"])}
  for name, process in beside.items():
    stdout, stderr = process.communicate(timeout=300)
    results[name] = (process.returncode, stderr, stdout)
  return results, places


def test_a_first_run_fills_the_cache(runs):
  results, _ = runs
  code, stderr = results["first"]
  assert code == 0, stderr
  assert results["after_first"], "no executable written to LENSJAX_CACHE_DIR"
  assert not HIT.search(stderr), "a first run into an empty cache found something in it"


def test_a_second_identical_run_reads_the_cache_and_compiles_no_slower(runs):
  results, _ = runs
  code, stderr = results["second"]
  assert code == 0, stderr
  assert HIT.search(stderr), "the second run read nothing from the cache"
  assert results["after_second"] == results["after_first"], "the second run compiled programs the first had cached"
  # The train steps read from disk rather than compiled: no slower, but for the noise of a busy machine.
  assert compile_seconds(stderr) <= 1.25 * compile_seconds(results["first"][1]) + 0.5


def test_switched_off_it_writes_nothing(runs):
  results, places = runs
  code, stderr, _ = results["off"]
  assert code == 0, stderr
  assert not entries(places["off"]) and not HIT.search(stderr)


def test_an_unwritable_directory_is_one_warning_and_training_goes_on(runs):
  results, places = runs
  code, stderr, _ = results["unwritable"]
  assert code == 0, stderr
  warnings = [line for line in stderr.splitlines() if line.startswith("lensjax: warning:")]
  assert len(warnings) == 1 and str(places["unwritable"]) in warnings[0] and "LENSJAX_CACHE_DIR" in warnings[0], stderr
  assert COMPILED.search(stderr), stderr


def test_a_cache_configured_through_jax_is_left_as_it_is(tmp_path):
  import jax
  configured = jax.config.values["jax_compilation_cache_dir"]
  if not configured:  # this process then has no cache of its own to keep: enabling one would change the session
    pytest.skip("the suite runs without a compilation cache (LENSJAX_COMPILATION_CACHE=0)")
  other = tmp_path / "lensjax_cache"
  assert compile_cache.enable_compilation_cache({compile_cache.DIR_VAR: str(other)}) == configured
  assert jax.config.values["jax_compilation_cache_dir"] == configured and not other.exists()


def test_importing_lensjax_configures_no_cache(runs):
  results, _ = runs
  code, stderr, stdout = results["import"]
  assert code == 0, stderr
  assert stdout.strip() == "None"


def test_the_directory_follows_the_environment():
  assert compile_cache.cache_dir({"LENSJAX_CACHE_DIR": "/x/y", "XDG_CACHE_HOME": "/c"}) == "/x/y"
  assert compile_cache.cache_dir({"XDG_CACHE_HOME": "/c"}) == os.path.join("/c", "lensjax", "jax")
  assert compile_cache.cache_dir({}) == os.path.join(os.path.expanduser("~"), ".cache", "lensjax", "jax")
