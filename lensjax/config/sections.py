"""The config tree: one frozen dataclass per section, the allowed choices, typed construction from nested
dicts and dotted keys, and machine-dependent resolution."""

from __future__ import annotations

import dataclasses
import difflib
import typing
from typing import Any

from lensjax.errors import InputError
from lensjax.hessian.precision import DEFAULT_PRECISION, PRECISION_NAMES  # the names and their meaning; no JAX

@dataclasses.dataclass(frozen=True)
class ModelConfig:
  num_layers: int = 2  # Transformer blocks
  d_model: int = 64  # width of the residual stream
  num_heads: int = 4  # attention heads per block (d_model must divide by it)
  d_ff: int = 256  # FFN hidden units per block
  vocab_size: int = 0  # 0: take it from the data source
  vocab_multiple: int = 1  # pad the output layer to a multiple of this (128 on GPU)
  max_len: int = 128  # longest sequence the learned positions cover
  activation: str = "relu"  # relu | gelu | swiglu
  active_threshold: float = 0.0  # a unit is active on a token when A > this
  norm: str = "pre"  # pre: x + f(LN(x)) | post: LN(x + f(x)) | branch: x + LN(f(x)) (Merrill et al.'s "pre_norm")
  block: str = "attention+ffn"  # attention+ffn | attention_only | ffn_only
  positions: str = "learned"  # learned | rotary
  tie_embeddings: bool = True  # the output layer reuses the token embedding
  use_bias: bool = True  # biases in the linear layers and norms
  dropout: float = 0.0  # dropout rate (0: none)
  dtype: str = "float32"  # compute dtype; parameters are always float32
  loss_logits_dtype: str = "float32"  # dtype the output matmul writes the loss's logits in (softmax sums stay float32)
  loss_chunk_logits: int = 2**27  # most logits one chunk of the training loss holds (larger: fewer chunks, more memory)
  attention: str = "xla"  # xla (explicit softmax) | cudnn | auto (cudnn on GPU); Hessians run blockwise (by query blocks)
  attention_mask: str = "causal"  # causal | merrill_multiplicative: hidden logits times 0, not -inf (a reproduction control, xla only)
  scan_layers: bool = False  # one scanned block instead of unrolled layers (faster compile, slower step)
  remat: bool = False  # recompute activations in the backward pass to save memory
  init_std: float = 0.02  # standard deviation of the normal initialisation


@dataclasses.dataclass(frozen=True)
class DataConfig:
  source: str = "markov"  # markov | teacher | bytes | tokens
  seq_len: int = 64  # tokens per training sequence
  seed: int = 0  # seed of the target distribution itself (for text: of the data order)
  order_seed: int = -1  # seed of the data order of a controlled target (-1: data.seed)
  vocab_size: int = 16  # markov and teacher targets
  markov_order: int = 1  # tokens of context of the markov target
  markov_alpha: float = 0.1  # Dirichlet concentration of transition rows
  markov_initial: str = "uniform"  # first `markov_order` tokens: uniform | stationary (the chain's stationary law)
  teacher_layers: int = 2  # layers of the teacher Transformer target
  teacher_d_model: int = 64  # width of the teacher target
  teacher_heads: int = 4  # attention heads of the teacher target
  teacher_temperature: float = 1.0  # softmax temperature of the teacher target (lower: lower entropy)
  num_sequences: int = 0  # >0: a finite training set of N sequences
  path: str = ""  # bytes: a text file ("" = built-in corpus); tokens: a .bin file
  token_dtype: str = "uint16"  # integer type of a .bin token file
  heldout_fraction: float = 0.05  # share of a text corpus held out for evaluation


@dataclasses.dataclass(frozen=True)
class OptimConfig:
  name: str = "adamw"  # adamw | adam | sgd | adafactor
  lr: float = 3e-3  # peak learning rate
  schedule: str = "cosine"  # constant | cosine | linear | rsqrt
  warmup_steps: int = 50  # linear warm-up steps before the schedule
  min_lr_ratio: float = 0.1  # cosine / linear decay floor as a fraction of lr
  b1: float = 0.9  # Adam's first-moment decay
  b2: float = 0.95  # Adam's second-moment decay
  eps: float = 1e-8  # Adam's epsilon
  momentum: float = 0.9  # sgd
  weight_decay: float = 0.0  # weight decay (adamw: decoupled; adam, sgd: added to the gradient)
  lr_per_member: tuple[float, ...] = ()  # one learning rate per ensemble member (empty: optim.lr for all)
  weight_decay_per_member: tuple[float, ...] = ()  # one weight decay per ensemble member (empty: optim.weight_decay)
  decay_exempt: bool = True  # no weight decay on norms, biases, embeddings
  clip_norm: float = 1.0  # global-norm clipping; 0 disables


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  steps: int = 300  # updates to train for in all
  batch_size: int = 32  # global, across all devices and processes
  seed: int = 0  # initialisation and dropout (data order: data.seed)
  nan_policy: str = "halt"  # halt: stop at a non-finite loss/gradient | skip: skip that update | freeze (members > 1)
  max_skipped: int = 20  # nan_policy=skip: halt (exit 3) when more updates than this are skipped in a row; 0: never
  members: int = 1  # >1: an ensemble of runs that differ in their seeds, trained as one vmapped program
  vary: str = "init+data+target"  # what member i's seeds (base + i) vary: any of init, data (order), target, joined by +


@dataclasses.dataclass(frozen=True)
class StatsConfig:
  dead_window: int = 100  # a unit is dead after this many steps without activity
  attention_sub_batch: int = 4  # rows for attention statistics when attention=cudnn
  probe_tokens: int = 0  # >0: FFN/attention statistics on a fixed held-out probe batch of this many tokens
  saturation_every: int = 0  # >0: eval/saturation/* and eval/saturated_head/* (c = 1000) every this many steps
  hessian_every: int = 0  # >0: hessian/* (power iteration, Hutchinson trace) every this many steps; 0 = off
  hessian_power_iters: int = 20  # power iterations per hessian/* measurement, warm-started (3x the first time)
  hessian_trace_probes: int = 8  # Rademacher probes of the Hutchinson trace (0: no hessian/trace)
  hessian_precision: str = DEFAULT_PRECISION  # float32 | tf32 | bf16: matmul precision and compute dtype of hessian/*, and the default --precision of lensjax hessian, spikes, bench (lensjax/hessian/precision.py)
  spike_window: int = 20  # spike/*: a loss is a spike above the median of the previous this-many losses ...
  spike_k: float = 6.0  # ... by more than this many median absolute deviations
  unit_trace: bool = False  # per-unit arrays [L, F] of every logging step in RUNDIR/unit_trace/ (for lensjax deaths)


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
  save_every: int = 100  # steps between checkpoints (and one at the end)
  keep: int = 3  # the newest checkpoints kept
  keep_every: int = 0  # >0: also keep every checkpoint whose step is a multiple of this (history for replay)
  async_save: bool = True  # write checkpoints in the background


@dataclasses.dataclass(frozen=True)
class LoggingConfig:
  log_every: int = 10  # steps between logging steps (statistics, metrics.jsonl, TensorBoard)
  eval_every: int = 100  # 0 disables held-out evaluation
  entropy_every: int = 0  # >0: whole-sequence entropy and KL (eval/entropy_*_seq) every this many steps; 0 disables
  eval_batches: int = 2  # held-out batches averaged per evaluation
  progress: str = "auto"  # auto (a live line on a terminal) | lines | none
  tb_per_layer_scalars: bool = False  # TensorBoard: also one scalar card per layer/head (default: heat maps and mean/min/max/first/last)


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
    "model.norm": ("pre", "post", "branch"),
    "model.attention_mask": ("causal", "merrill_multiplicative"),
    "model.block": ("attention+ffn", "attention_only", "ffn_only"),
    "model.positions": ("learned", "rotary"),
    "model.dtype": ("float32", "bfloat16", "float16"),
    "model.loss_logits_dtype": ("float32", "bfloat16"),
    "model.attention": ("xla", "cudnn", "auto"),
    "data.source": ("markov", "teacher", "bytes", "tokens"),
    "data.token_dtype": ("uint16", "uint32"),
    "optim.name": ("adamw", "adam", "sgd", "adafactor"),
    "optim.schedule": ("constant", "cosine", "linear", "rsqrt"),
    "logging.progress": ("auto", "lines", "none"),
    "data.markov_initial": ("uniform", "stationary"),
    "train.nan_policy": ("halt", "skip", "freeze"),
    "stats.hessian_precision": PRECISION_NAMES,
}


# --------------------------------------------------------------------------
# Typed construction: every key and type checked.


def _field_types(cls) -> dict[str, Any]:
  return typing.get_type_hints(cls)


def _all_keys(config: Config) -> list[str]:
  keys = []
  for section in dataclasses.fields(config):
    for f in dataclasses.fields(getattr(config, section.name)):
      keys.append(f"{section.name}.{f.name}")
  return keys


def _example(kind) -> str:
  return {bool: "true", int: "4", float: "0.001"}.get(kind, "[0.001,0.003]" if _is_tuple(kind) else "name")


def _is_tuple(kind) -> bool:
  return typing.get_origin(kind) is tuple


def _type_name(kind) -> str:
  return "a list of numbers" if _is_tuple(kind) else kind.__name__


def checked_value(key: str, value, kind):
  """`value` as the type of config key `key`, or an InputError naming the key and the fix."""
  if _is_tuple(kind):
    numbers = isinstance(value, (list, tuple)) and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    if numbers:
      return tuple(float(v) for v in value)
  elif kind is float and isinstance(value, int) and not isinstance(value, bool):
    return float(value)
  elif isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
    return value
  raise InputError(f"config key {key} expects {_type_name(kind)}, got {value!r}; fix the config file or pass "
                   f"--config.{key}={_example(kind)}.")


def unknown_key_error(key: str, config: Config) -> InputError:
  close = difflib.get_close_matches(key, _all_keys(config), n=1)
  hint = f"did you mean {close[0]}?" if close else "see lensjax/config.py for the keys."
  return InputError(f"unknown config key {key!r}; {hint}")


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
      checked[key] = checked_value(full, value, kinds[key])
    sections[section_name] = dataclasses.replace(section, **checked)
  return dataclasses.replace(config, **sections)


# Optimiser keys that shape the optimiser's state only through a switch: when it is on, the optax chain of
# `lensjax.train.optim.make_optimizer` has one more part (the part's own value, a clipping norm or a decay rate, may
# change on resume; turning the part on or off may not). Each switch reads the config as nested dicts.
# tests/test_resume_structure.py checks them against the states the optimisers build.
STATE_SWITCHES = {
    "optim.clip_norm": lambda c: c["optim"]["clip_norm"] > 0,  # clip_by_global_norm leads the chain
    # adam, sgd: coupled decay (add_decayed_weights); adafactor: its own decay part; adamw's chain always has one.
    "optim.weight_decay": lambda c: c["optim"]["weight_decay"] > 0 and c["optim"]["name"] != "adamw",
    "optim.momentum": lambda c: bool(c["optim"]["momentum"]) and c["optim"]["name"] == "sgd",  # sgd's trace
}

# Keys that fix the shapes or the meaning of the train state's own part (parameters, optimiser state, RNG): the
# model's shape (all of model.* but how it computes: dropout, attention kernel and mask, remat, compute dtype, the
# loss's logits dtype and chunks), the data's vocabulary and law, the optimiser and its switches, the initialisation
# seed. The lenses add the keys of theirs
# (`Lens.resume_keys`); train.members is the run directory's layout (`lensjax.train.resume.check_members`). The rest
# (steps, logging and checkpoint intervals, learning rate, ...) may change on resume.
STATE_KEYS = tuple(f"model.{f.name}" for f in dataclasses.fields(ModelConfig)
                   if f.name not in ("dropout", "attention", "attention_mask", "remat", "dtype", "loss_logits_dtype",
                                     "loss_chunk_logits")) + (
                       "data.source", "data.vocab_size", "data.markov_order", "optim.name") + tuple(
                           STATE_SWITCHES) + ("train.seed",)


def resolve(config: Config, platform: str) -> Config:
  """Fills the values that depend on the data or the machine (written to config.json)."""
  model = config.model
  if model.attention == "auto":
    gpu_ready = (platform == "gpu" and model.dtype in ("bfloat16", "float16")
                 and model.attention_mask == "causal")  # the fused kernel knows only the causal mask
    model = dataclasses.replace(model, attention="cudnn" if gpu_ready else "xla")
  if model.vocab_size == 0:
    model = dataclasses.replace(model, vocab_size={"bytes": 256}.get(config.data.source, config.data.vocab_size))
  return dataclasses.replace(config, model=model)
