"""JAX's persistent compilation cache, which every `lensjax` command turns on before it compiles anything.

A GPT-2-sized step takes minutes to compile; with the cache a second run of the same program (a resume, the next
analysis of a checkpoint, a rerun of `lensjax bench`) reads the executable from disk instead. Where (README,
"Compile time and the compilation cache"):

  $LENSJAX_CACHE_DIR if set, else $XDG_CACHE_HOME/lensjax/jax (by default ~/.cache/lensjax/jax);
  LENSJAX_COMPILATION_CACHE=0 switches it off;
  LENSJAX_CACHE_MIN_COMPILE_S (default 1) caches only programs that took at least this long to compile.

A cache the user configured through JAX itself (JAX_COMPILATION_CACHE_DIR, jax.config) is left as it is. A
directory that cannot be created or written costs one line on stderr and the run compiles without a cache.
Importing lensjax changes nothing: a library user calls `enable_compilation_cache()` if they want it.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Mapping

SWITCH_VAR = "LENSJAX_COMPILATION_CACHE"
DIR_VAR = "LENSJAX_CACHE_DIR"
MIN_COMPILE_VAR = "LENSJAX_CACHE_MIN_COMPILE_S"
# A program that compiles faster than this is not written: reading it back saves next to nothing, and the many
# small programs of a run (initialisers, metric reductions) would fill the directory.
DEFAULT_MIN_COMPILE_S = 1.0
OFF_VALUES = ("0", "false", "no", "off")
# XLA's per-fusion autotuning results on GPU, kept in this subfolder of the cache (the name JAX itself gives it).
AUTOTUNE_FLAG = "xla_gpu_per_fusion_autotune_cache_dir"


def cache_dir(environ: Mapping[str, str] = os.environ) -> str:
  """$LENSJAX_CACHE_DIR, else $XDG_CACHE_HOME/lensjax/jax, else ~/.cache/lensjax/jax."""
  if environ.get(DIR_VAR):
    return os.path.expanduser(environ[DIR_VAR])
  base = environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "lensjax", "jax")


def _warn(message: str) -> None:
  print(f"lensjax: warning: {message}", file=sys.stderr, flush=True)


def _write_problem(path: str) -> str | None:
  """Why `path` cannot hold the cache (it cannot be created, or a file cannot be written in it), or None."""
  try:
    os.makedirs(path, exist_ok=True)
    with tempfile.TemporaryFile(dir=path):
      pass
  except OSError as e:
    return f"{type(e).__name__}: {e.strerror or e}"
  return None


def _min_compile_s(environ: Mapping[str, str]) -> float | None:
  """$LENSJAX_CACHE_MIN_COMPILE_S, else None where JAX's own variable already set it, else the default."""
  text = environ.get(MIN_COMPILE_VAR, "").strip()
  if not text:
    return None if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" in os.environ else DEFAULT_MIN_COMPILE_S
  try:
    return float(text)
  except ValueError:
    _warn(f"{MIN_COMPILE_VAR}={text!r} is not a number of seconds; caching programs that compile in "
          f"{DEFAULT_MIN_COMPILE_S:g} s or more")
    return DEFAULT_MIN_COMPILE_S


def _keep_xla_caches_in(path: str, jax) -> None:
  """XLA's own caches (autotuning on GPU) in the cache directory too: through JAX where it knows the option
  (it then puts them in subfolders of the cache), else through XLA's flag, which only a backend not yet started
  reads; a choice already made in the environment is the user's. (The process's own environment: that is what
  JAX and XLA read.)"""
  if "jax_persistent_cache_enable_xla_caches" in jax.config.values:
    if "JAX_PERSISTENT_CACHE_ENABLE_XLA_CACHES" not in os.environ:
      # Only the autotune cache: JAX's "all" adds XLA's kernel cache, which JAX does not yet enable by default.
      jax.config.update("jax_persistent_cache_enable_xla_caches", AUTOTUNE_FLAG)
    return
  flags = os.environ.get("XLA_FLAGS", "")
  if f"--{AUTOTUNE_FLAG}" in flags or _backend_started():
    return
  autotune_dir = os.path.join(path, AUTOTUNE_FLAG)
  os.makedirs(autotune_dir, exist_ok=True)  # XLA expects the folder to exist
  os.environ["XLA_FLAGS"] = f"{flags} --{AUTOTUNE_FLAG}={autotune_dir}".strip()


def _backend_started() -> bool:
  try:
    from jax._src import xla_bridge
    return xla_bridge.backends_are_initialized()
  except (ImportError, AttributeError):  # a JAX without this private helper: assume the worst, change no flag
    return True


def enable_compilation_cache(environ: Mapping[str, str] = os.environ) -> str | None:
  """Turns on JAX's persistent compilation cache in `cache_dir()`, unless switched off or already configured
  through JAX; call it before the first compilation. Returns the directory the cache uses, or None when off."""
  if environ.get(SWITCH_VAR, "1").strip().lower() in OFF_VALUES:
    return None
  import jax
  if not jax.config.values.get("jax_enable_compilation_cache", True):  # switched off through JAX itself
    return None
  configured = jax.config.values.get("jax_compilation_cache_dir")
  if configured:  # the user's own JAX setting, with their threshold and XLA caches: not ours to change
    return configured
  path = cache_dir(environ)
  problem = _write_problem(path)
  if problem:
    _warn(f"no compilation cache: cannot write {path} ({problem}); set {DIR_VAR} to a writable directory, or "
          f"{SWITCH_VAR}=0")
    return None
  min_compile_s = _min_compile_s(environ)
  if min_compile_s is not None:
    jax.config.update("jax_persistent_cache_min_compile_time_secs", min_compile_s)
  _keep_xla_caches_in(path, jax)
  jax.config.update("jax_compilation_cache_dir", path)
  return path
