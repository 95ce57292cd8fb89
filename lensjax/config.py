"""Typed config tree, config files, dotted overrides and validation.

A config file `configs/NAME.py` defines `get_config() -> Config`. Overrides on
the command line use dotted paths: `--config.model.num_layers=4`. Everything is
checked here, before anything compiles, and every problem is reported as an
`InputError` naming the key and the fix.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import json
import math
import os
import typing
from typing import Any

from lensjax.errors import InputError


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  num_layers: int = 2
  d_model: int = 64
  num_heads: int = 4
  d_ff: int = 256
  vocab_size: int = 0  # 0: take it from the data source
  vocab_multiple: int = 1  # pad the output layer to a multiple of this (128 on GPU)
  max_len: int = 128
  activation: str = "relu"  # relu | gelu | swiglu
  active_threshold: float = 0.0  # a unit is active on a token when A > this
  norm: str = "pre"  # pre | post
  block: str = "attention+ffn"  # attention+ffn | attention_only | ffn_only
  positions: str = "learned"  # learned | rotary
  tie_embeddings: bool = True
  use_bias: bool = True
  dropout: float = 0.0
  dtype: str = "float32"  # compute dtype; parameters are always float32
  attention: str = "xla"  # xla (explicit softmax) | cudnn | auto (cudnn on GPU)
  scan_layers: bool = False
  remat: bool = False
  init_std: float = 0.02


@dataclasses.dataclass(frozen=True)
class DataConfig:
  source: str = "markov"  # markov | teacher | bytes | tokens
  seq_len: int = 64
  seed: int = 0  # seed of the target distribution itself
  vocab_size: int = 16  # markov and teacher targets
  markov_order: int = 1
  markov_alpha: float = 0.1  # Dirichlet concentration of transition rows
  markov_initial: str = "uniform"  # first `markov_order` tokens: uniform | stationary (the chain's stationary law)
  teacher_layers: int = 2
  teacher_d_model: int = 64
  teacher_heads: int = 4
  teacher_temperature: float = 1.0
  num_sequences: int = 0  # >0: a finite training set of N sequences
  path: str = ""  # bytes: a text file ("" = built-in corpus); tokens: a .bin file
  token_dtype: str = "uint16"
  heldout_fraction: float = 0.05


@dataclasses.dataclass(frozen=True)
class OptimConfig:
  name: str = "adamw"  # adamw | adam | sgd | adafactor
  lr: float = 3e-3
  schedule: str = "cosine"  # constant | cosine | linear | rsqrt
  warmup_steps: int = 50
  min_lr_ratio: float = 0.1  # cosine / linear decay floor as a fraction of lr
  b1: float = 0.9
  b2: float = 0.95
  eps: float = 1e-8
  momentum: float = 0.9  # sgd
  weight_decay: float = 0.0
  decay_exempt: bool = True  # no weight decay on norms, biases, embeddings
  clip_norm: float = 1.0  # global-norm clipping; 0 disables


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  steps: int = 300
  batch_size: int = 32  # global, across all devices and processes
  seed: int = 0  # initialisation and dropout (data order: data.seed)
  nan_policy: str = "halt"  # halt: stop at a non-finite loss/gradient | skip: skip that update


@dataclasses.dataclass(frozen=True)
class StatsConfig:
  dead_window: int = 100  # a unit is dead after this many steps without activity
  attention_sub_batch: int = 4  # rows for attention statistics when attention=cudnn
  probe_tokens: int = 0  # >0: FFN/attention statistics on a fixed held-out probe batch of this many tokens
  saturation_every: int = 0  # >0: eval/saturation/* and eval/saturated_head/* (c = 1000) every this many steps
  hessian_every: int = 0  # >0: hessian/* (power iteration, Hutchinson trace) every this many steps; 0 = off
  hessian_power_iters: int = 20  # power iterations per hessian/* measurement, warm-started (3x the first time)
  hessian_trace_probes: int = 8  # Rademacher probes of the Hutchinson trace (0: no hessian/trace)
  spike_window: int = 20  # spike/*: a loss is a spike above the median of the previous this-many losses ...
  spike_k: float = 6.0  # ... by more than this many median absolute deviations


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
  save_every: int = 100
  keep: int = 3  # the newest checkpoints kept
  keep_every: int = 0  # >0: also keep every checkpoint whose step is a multiple of this (history for replay)
  async_save: bool = True


@dataclasses.dataclass(frozen=True)
class LoggingConfig:
  log_every: int = 10
  eval_every: int = 100  # 0 disables held-out evaluation
  entropy_every: int = 0  # >0: whole-sequence entropy and KL (eval/entropy_*_seq) every this many steps; 0 disables
  eval_batches: int = 2
  progress: str = "auto"  # auto (a live line on a terminal) | lines | none


@dataclasses.dataclass(frozen=True)
class ParallelConfig:
  fsdp: int = 1  # devices that split parameters and optimiser state (1: replicate)


@dataclasses.dataclass(frozen=True)
class Config:
  """The whole run; frozen and hashable, so compiled functions can be cached on it (change it with `updated`)."""
  model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
  data: DataConfig = dataclasses.field(default_factory=DataConfig)
  optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
  train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
  stats: StatsConfig = dataclasses.field(default_factory=StatsConfig)
  checkpoint: CheckpointConfig = dataclasses.field(default_factory=CheckpointConfig)
  logging: LoggingConfig = dataclasses.field(default_factory=LoggingConfig)
  parallel: ParallelConfig = dataclasses.field(default_factory=ParallelConfig)

  def updated(self, values: dict[str, Any]) -> Config:
    """A copy with Python values under dotted keys: `config.updated({"model.num_layers": 4})`."""
    return updated(self, values)


CHOICES = {
    "model.activation": ("relu", "gelu", "swiglu"),
    "model.norm": ("pre", "post"),
    "model.block": ("attention+ffn", "attention_only", "ffn_only"),
    "model.positions": ("learned", "rotary"),
    "model.dtype": ("float32", "bfloat16", "float16"),
    "model.attention": ("xla", "cudnn", "auto"),
    "data.source": ("markov", "teacher", "bytes", "tokens"),
    "data.token_dtype": ("uint16", "uint32"),
    "optim.name": ("adamw", "adam", "sgd", "adafactor"),
    "optim.schedule": ("constant", "cosine", "linear", "rsqrt"),
    "logging.progress": ("auto", "lines", "none"),
    "data.markov_initial": ("uniform", "stationary"),
    "train.nan_policy": ("halt", "skip"),
}


# --------------------------------------------------------------------------
# Loading and overriding.


def load_config_file(path: str) -> Config:
  """Runs `get_config()` of a config file."""
  if not os.path.isfile(path):
    raise InputError(f"config file {path!r} does not exist; pass a file such as configs/quickstart.py.")
  spec = importlib.util.spec_from_file_location("_lensjax_config", path)
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
  except Exception as e:  # a config file is user input: report, don't trace
    raise InputError(f"config file {path!r} failed to load ({type(e).__name__}: {e}); fix the file.") from e
  if not hasattr(module, "get_config"):
    raise InputError(f"config file {path!r} defines no get_config(); add one that returns lensjax.config.Config.")
  config = module.get_config()
  if not isinstance(config, Config):
    raise InputError(f"get_config() in {path!r} returned {type(config).__name__}; it must return lensjax.config.Config.")
  return config


def _field_types(cls) -> dict[str, Any]:
  return typing.get_type_hints(cls)


def _all_keys(config: Config) -> list[str]:
  keys = []
  for section in dataclasses.fields(config):
    for f in dataclasses.fields(getattr(config, section.name)):
      keys.append(f"{section.name}.{f.name}")
  return keys


def _parse_value(key: str, text: str, kind: type) -> Any:
  try:
    if kind is bool:
      lowered = text.strip().lower()
      if lowered in ("true", "1", "yes"):
        return True
      if lowered in ("false", "0", "no"):
        return False
      raise ValueError
    if kind is int:
      value = float(text) if ("e" in text.lower() and not text.lower().startswith("0x")) else int(text, 0)
      if isinstance(value, float):
        if not value.is_integer():
          raise ValueError
        value = int(value)
      return value
    if kind is float:
      return float(text)
    return text
  except ValueError:
    raise InputError(f"config key {key} expects {kind.__name__}, got {text!r}; pass e.g. --config.{key}={_example(kind)}.") from None


def _example(kind: type) -> str:
  return {bool: "true", int: "4", float: "0.001"}.get(kind, "name")


def unknown_key_error(key: str, config: Config) -> InputError:
  close = difflib.get_close_matches(key, _all_keys(config), n=1)
  hint = f"did you mean {close[0]}?" if close else "see lensjax/config.py for the keys."
  return InputError(f"unknown config key {key!r}; {hint}")


def apply_overrides(config: Config, overrides: dict[str, str]) -> Config:
  """A copy of `config` with command-line text values `{"model.num_layers": "4", ...}` applied."""
  values = {}
  for key, text in overrides.items():
    values[key] = _parse_value(key, text, _key_type(config, key))
  return updated(config, values)


def _key_type(config: Config, key: str) -> type:
  parts = key.split(".")
  if len(parts) != 2 or parts[0] not in {f.name for f in dataclasses.fields(config)}:
    raise unknown_key_error(key, config)
  kinds = _field_types(type(getattr(config, parts[0])))
  if parts[1] not in kinds:
    raise unknown_key_error(key, config)
  return kinds[parts[1]]


def updated(config: Config, values: dict[str, Any]) -> Config:
  """A copy of `config` with Python values under dotted keys: `updated(c, {"model.num_layers": 4})`.

  Keys and types are checked as in a config file; `config` itself is frozen and stays as it was.
  """
  nested = to_dict(config)
  for key, value in values.items():
    _key_type(config, key)
    section, name = key.split(".")
    nested[section][name] = value
  return from_dict(nested)


def parse_override_args(args: list[str]) -> dict[str, str]:
  """`["--config.model.num_layers=4"]` -> `{"model.num_layers": "4"}`."""
  overrides = {}
  for arg in args:
    if not arg.startswith("--config.") or "=" not in arg:
      raise InputError(f"unrecognised argument {arg!r}; overrides look like --config.model.num_layers=4.")
    key, value = arg[len("--config."):].split("=", 1)
    overrides[key] = value
  return overrides


def to_dict(config: Config) -> dict:
  return dataclasses.asdict(config)


def from_dict(values: dict) -> Config:
  """Builds a Config from nested dicts, rejecting unknown keys and wrong types."""
  config = Config()
  sections = {}
  for section_name, section_values in values.items():
    if section_name not in {f.name for f in dataclasses.fields(config)}:
      raise unknown_key_error(section_name, config)
    section = getattr(config, section_name)
    kinds = _field_types(type(section))
    checked = {}
    for key, value in section_values.items():
      full = f"{section_name}.{key}"
      if key not in kinds:
        raise unknown_key_error(full, config)
      kind = kinds[key]
      if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
      if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise InputError(f"config key {full} expects {kind.__name__}, got {value!r}; fix the config file or pass --config.{full}={_example(kind)}.")
      checked[key] = value
    sections[section_name] = dataclasses.replace(section, **checked)
  return dataclasses.replace(config, **sections)


def save_json(config: Config, path: str) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(to_dict(config), f, indent=2, sort_keys=True)
    f.write("\n")
  os.replace(tmp, path)


def load_json(path: str) -> Config:
  with open(path) as f:
    return from_dict(json.load(f))


# --------------------------------------------------------------------------
# Validation.

# The stationary law of a Markov start is solved for densely over the V^k contexts.
MAX_STATIONARY_CONTEXTS = 4096


def stationary_start_problem(initial: str, vocab_size: int, order: int) -> str | None:
  """The sentence refusing a stationary start over too many contexts, or None when it is fine."""
  contexts = int(vocab_size)**int(order)
  if initial != "stationary" or contexts <= MAX_STATIONARY_CONTEXTS:
    return None
  return (f"data.markov_initial=stationary solves for a law over data.vocab_size**data.markov_order = {contexts:,} "
          f"contexts, more than {MAX_STATIONARY_CONTEXTS:,}; use data.markov_initial=uniform or a smaller vocabulary "
          "or order.")


def _check(ok: bool, message: str) -> None:
  if not ok:
    raise InputError(message)


def validate(config: Config, device_count: int, process_count: int = 1, platform: str = "cpu") -> None:
  """Raises InputError for the first problem found, before anything compiles."""
  for key, allowed in CHOICES.items():
    section, name = key.split(".")
    value = getattr(getattr(config, section), name)
    _check(value in allowed, f"config key {key} is {value!r}; choose one of {', '.join(allowed)}.")

  m, d, t, o = config.model, config.data, config.train, config.optim
  positive = {
      "model.num_layers": m.num_layers, "model.d_model": m.d_model, "model.num_heads": m.num_heads,
      "model.d_ff": m.d_ff, "model.max_len": m.max_len, "model.vocab_multiple": m.vocab_multiple,
      "data.seq_len": d.seq_len, "data.vocab_size": d.vocab_size, "data.markov_order": d.markov_order,
      "train.steps": t.steps, "train.batch_size": t.batch_size, "stats.dead_window": config.stats.dead_window,
      "stats.attention_sub_batch": config.stats.attention_sub_batch,
      "checkpoint.save_every": config.checkpoint.save_every, "checkpoint.keep": config.checkpoint.keep,
      "logging.log_every": config.logging.log_every, "logging.eval_batches": config.logging.eval_batches,
      "parallel.fsdp": config.parallel.fsdp, "stats.spike_window": config.stats.spike_window,
      "stats.hessian_power_iters": config.stats.hessian_power_iters,
  }
  for key, value in positive.items():
    _check(value > 0, f"config key {key} is {value}; it must be positive.")
  nonnegative = {"model.vocab_size": m.vocab_size, "data.num_sequences": d.num_sequences,
                 "optim.warmup_steps": o.warmup_steps, "checkpoint.keep_every": config.checkpoint.keep_every, "stats.probe_tokens": config.stats.probe_tokens,
                 "stats.saturation_every": config.stats.saturation_every,
                 "stats.hessian_every": config.stats.hessian_every,
                 "stats.hessian_trace_probes": config.stats.hessian_trace_probes, "optim.weight_decay": o.weight_decay,
                 "optim.clip_norm": o.clip_norm, "logging.eval_every": config.logging.eval_every,
                 "logging.entropy_every": config.logging.entropy_every}
  for key, value in nonnegative.items():
    _check(value >= 0, f"config key {key} is {value}; it must be zero or positive.")
  _check(o.lr > 0 and math.isfinite(o.lr), f"config key optim.lr is {o.lr}; it must be a positive number.")
  _check(config.stats.spike_k > 0 and math.isfinite(config.stats.spike_k),
         f"config key stats.spike_k is {config.stats.spike_k}; it must be a positive number.")
  _check(0.0 <= m.dropout < 1.0, f"config key model.dropout is {m.dropout}; it must be in [0, 1).")
  _check(d.markov_alpha > 0, f"config key data.markov_alpha is {d.markov_alpha}; it must be positive.")
  if d.source == "markov":
    _check(stationary_start_problem(d.markov_initial, d.vocab_size, d.markov_order) is None,
           stationary_start_problem(d.markov_initial, d.vocab_size, d.markov_order) or "")
  _check(d.teacher_temperature > 0, f"config key data.teacher_temperature is {d.teacher_temperature}; it must be positive.")
  _check(0.0 < d.heldout_fraction < 1.0, f"config key data.heldout_fraction is {d.heldout_fraction}; it must be in (0, 1).")
  _check(m.d_model % m.num_heads == 0,
         f"model.d_model={m.d_model} is not divisible by model.num_heads={m.num_heads}; pick a d_model that is a multiple of num_heads.")
  if m.positions == "rotary":
    _check((m.d_model // m.num_heads) % 2 == 0,
           f"rotary positions need an even head dimension, but model.d_model/model.num_heads = {m.d_model // m.num_heads}; change model.d_model or model.num_heads.")
  _check(d.seq_len <= m.max_len,
         f"data.seq_len={d.seq_len} exceeds model.max_len={m.max_len}; raise model.max_len or lower data.seq_len.")
  _check(t.batch_size % process_count == 0,
         f"train.batch_size={t.batch_size} is not divisible by the {process_count} processes; use a multiple of {process_count}.")
  _check(t.batch_size % device_count == 0,
         f"train.batch_size={t.batch_size} is not divisible by the {device_count} devices; use a multiple of {device_count}.")
  _check(device_count % config.parallel.fsdp == 0,
         f"parallel.fsdp={config.parallel.fsdp} does not divide the {device_count} devices; use a divisor of {device_count}.")
  if m.attention == "cudnn":
    _check(platform == "gpu", f"model.attention=cudnn needs an NVIDIA GPU but this run is on {platform}; use --config.model.attention=xla (or auto).")
    _check(m.dtype in ("bfloat16", "float16"), f"model.attention=cudnn needs model.dtype bfloat16 or float16, not {m.dtype}; change one of them.")
  if m.vocab_size and d.source in ("markov", "teacher"):
    _check(m.vocab_size == d.vocab_size,
           f"model.vocab_size={m.vocab_size} differs from data.vocab_size={d.vocab_size}; set model.vocab_size=0 to take it from the data.")
  if d.source == "tokens":
    _check(bool(d.path), "data.source=tokens needs data.path, a binary file of token ids; pass --config.data.path=FILE.bin.")
    _check(m.vocab_size > 0, "data.source=tokens needs model.vocab_size (the tokenizer's vocabulary); pass --config.model.vocab_size=N.")
  if d.source in ("bytes", "tokens") and d.path:
    _check(os.path.isfile(d.path), f"data file {d.path!r} (data.path) does not exist; pass an existing file.")


# Keys that fix the shapes or the meaning of the train state's own part (parameters, optimiser state, RNG); the
# lenses add the keys of theirs (`Lens.resume_keys`). The rest (steps, logging and checkpoint intervals, learning
# rate, ...) may change on resume.
STATE_KEYS = tuple(f"model.{f.name}" for f in dataclasses.fields(ModelConfig)
                   if f.name not in ("dropout", "attention", "remat", "dtype")) + (
                       "data.source", "data.vocab_size", "data.markov_order", "optim.name", "train.seed")


def resume_conflicts(saved: dict, config: Config, keys: tuple[str, ...] = STATE_KEYS) -> list[str]:
  """The `keys` whose value in a checkpoint's config differs from `config`'s."""
  current = to_dict(config)
  conflicts = []
  for key in keys:
    section, name = key.split(".")
    old, new = saved.get(section, {}).get(name), current[section][name]
    if old is not None and old != new:
      conflicts.append(f"{key} (checkpoint {old!r}, config {new!r})")
  return conflicts


def resolve(config: Config, platform: str) -> Config:
  """Fills the values that depend on the data or the machine (written to config.json)."""
  model = config.model
  if model.attention == "auto":
    gpu_ready = platform == "gpu" and model.dtype in ("bfloat16", "float16")
    model = dataclasses.replace(model, attention="cudnn" if gpu_ready else "xla")
  if model.vocab_size == 0:
    model = dataclasses.replace(model, vocab_size={"bytes": 256}.get(config.data.source, config.data.vocab_size))
  return dataclasses.replace(config, model=model)
