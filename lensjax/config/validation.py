"""Validation of a whole config before anything compiles, and resume compatibility with a checkpoint's config."""

from __future__ import annotations

import math
import os
import shlex

from lensjax.config.ensemble import VARY, vary_parts
from lensjax.config.sections import CHOICES, STATE_KEYS, STATE_SWITCHES, Config, to_dict
from lensjax.errors import InputError


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
      "model.loss_chunk_logits": m.loss_chunk_logits,
      "data.seq_len": d.seq_len, "data.vocab_size": d.vocab_size, "data.markov_order": d.markov_order,
      "train.steps": t.steps, "train.batch_size": t.batch_size, "stats.dead_window": config.stats.dead_window,
      "stats.attention_sub_batch": config.stats.attention_sub_batch,
      "checkpoint.save_every": config.checkpoint.save_every, "checkpoint.keep": config.checkpoint.keep,
      "logging.log_every": config.logging.log_every, "logging.eval_batches": config.logging.eval_batches,
      "parallel.fsdp": config.parallel.fsdp, "stats.spike_window": config.stats.spike_window,
      "train.members": t.members,
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
  _validate_ensemble(config)
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
  _validate_probes(config, device_count)
  if config.stats.unit_trace:
    _check(m.block != "attention_only", "stats.unit_trace traces FFN units, but model.block=attention_only has none; "
           "pass --config.stats.unit_trace=false.")
    _check(m.activation != "swiglu", "stats.unit_trace traces one pre-activation per FFN unit, but "
           "model.activation=swiglu gives each unit two (gate and up); train with model.activation=relu or gelu, "
           "or pass --config.stats.unit_trace=false.")
  _check(device_count % config.parallel.fsdp == 0,
         f"parallel.fsdp={config.parallel.fsdp} does not divide the {device_count} devices; use a divisor of {device_count}.")
  if m.attention == "cudnn":
    _check(platform == "gpu", f"model.attention=cudnn needs an NVIDIA GPU but this run is on {platform}; use --config.model.attention=xla (or auto).")
    _check(m.dtype in ("bfloat16", "float16"), f"model.attention=cudnn needs model.dtype bfloat16 or float16, not {m.dtype}; change one of them.")
    _check(m.attention_mask == "causal", "model.attention_mask=merrill_multiplicative needs the explicit softmax, but "
           "model.attention=cudnn has only the causal mask; pass --config.model.attention=xla.")
  if m.vocab_size and d.source in ("markov", "teacher"):
    _check(m.vocab_size == d.vocab_size,
           f"model.vocab_size={m.vocab_size} differs from data.vocab_size={d.vocab_size}; set model.vocab_size=0 to take it from the data.")
  if d.source == "tokens":
    _check(bool(d.path), "data.source=tokens needs data.path, a directory of `lensjax prepare` or a binary file of token "
           "ids; pass --config.data.path=DIR.")
    if os.path.isdir(d.path):  # a prepared directory: its meta.json gives the vocabulary (checked by the data source)
      _check(os.path.isfile(os.path.join(d.path, "meta.json")), f"data.path {d.path!r} is a directory without meta.json; "
             f"prepare it with `lensjax prepare --input TEXT... --out {d.path}` or pass a .bin file.")
    else:
      _check(m.vocab_size > 0, "data.source=tokens with a .bin file needs model.vocab_size (the tokenizer's vocabulary); "
             "pass --config.model.vocab_size=N.")
  if d.source in ("bytes", "tokens") and d.path:
    accepted = "an existing file" + (" or prepared directory" if d.source == "tokens" else "")
    _check(not (d.source == "bytes" and os.path.isdir(d.path)),
           f"data.path {d.path!r} is a directory; data.source=bytes reads one text file: pass a file (or "
           "data.source=tokens with a directory of `lensjax prepare`).")
    _check(os.path.isfile(d.path) or (d.source == "tokens" and os.path.isdir(d.path)),
           f"data file {d.path!r} (data.path) does not exist; pass {accepted}.")


def _validate_probes(config: Config, device_count: int) -> None:
  """The probes hold exactly stats.probe_tokens tokens: whole sequences, as many on every device."""
  tokens, seq_len = config.stats.probe_tokens, config.data.seq_len
  if tokens <= 0 or seq_len <= 0:
    return  # no probes, or named by the sign checks
  round_up = lambda multiple: -(-tokens // multiple) * multiple
  _check(tokens % seq_len == 0,
         f"stats.probe_tokens={tokens} is not a whole number of data.seq_len={seq_len} sequences; use a multiple "
         f"of {seq_len}, e.g. {round_up(seq_len)}.")
  rows = tokens // seq_len
  _check(rows % device_count == 0,
         f"stats.probe_tokens={tokens} makes {rows} sequences of data.seq_len={seq_len}, which do not split over "
         f"the {device_count} devices; use a multiple of {device_count * seq_len} tokens, e.g. "
         f"{round_up(device_count * seq_len)}.")


def _validate_ensemble(config: Config) -> None:
  t, o = config.train, config.optim
  if t.members < 1:
    return  # named by the positive-key check
  parts = vary_parts(t.vary)
  _check(bool(parts) and all(p in VARY for p in parts),
         f"config key train.vary is {t.vary!r}; join some of {', '.join(VARY)} with '+', e.g. init+data.")
  for key, values in (("optim.lr_per_member", o.lr_per_member), ("optim.weight_decay_per_member",
                                                                 o.weight_decay_per_member)):
    _check(not values or len(values) == t.members,
           f"config key {key} lists {len(values)} values for train.members={t.members}; give one per member "
           "or none.")
  _check(all(lr > 0 and math.isfinite(lr) for lr in o.lr_per_member),
         f"config key optim.lr_per_member is {list(o.lr_per_member)}; every learning rate must be a positive number.")
  _check(all(wd >= 0 and math.isfinite(wd) for wd in o.weight_decay_per_member),
         f"config key optim.weight_decay_per_member is {list(o.weight_decay_per_member)}; every weight decay must "
         "be zero or positive.")
  _check(t.max_skipped >= 0, f"config key train.max_skipped is {t.max_skipped}; it must be 0 (no limit) or a "
                             "positive number of updates.")
  if t.nan_policy == "freeze":
    _check(t.members > 1, "train.nan_policy=freeze keeps the other members of an ensemble going; with "
                          "train.members=1 use halt or skip.")
  if t.members > 1:
    _check(config.parallel.fsdp == 1, f"train.members={t.members} replicates every member on every device; set "
                                      "parallel.fsdp=1 (ensembles are for models small enough to replicate).")


def resume_differences(saved: dict, config: Config, keys: tuple[str, ...] = STATE_KEYS) -> list[tuple]:
  """`(key, checkpoint's value, config's value)` for each of `keys` on which a checkpoint's config (`saved`, nested
  dicts as its metadata holds them) and `config` disagree: in value, or for a key of STATE_SWITCHES, in its switch."""
  current = to_dict(config)
  # A key the checkpoint predates takes config's value: it cannot conflict (as older runs could not set it).
  filled = {section: {**values, **saved.get(section, {})} for section, values in current.items()}
  plain = lambda value: list(value) if isinstance(value, tuple) else value  # JSON gives back lists
  differences = []
  for key in dict.fromkeys(keys):  # once each: the lenses' resume keys repeat some of STATE_KEYS
    section, name = key.split(".")
    old, new = filled[section][name], current[section][name]
    switch = STATE_SWITCHES.get(key)
    differs = (switch(filled) != switch(current)) if switch else (plain(old) != plain(new))
    if differs:
      differences.append((key, old, new))
  return differences


def resume_conflicts(saved: dict, config: Config, keys: tuple[str, ...] = STATE_KEYS) -> list[str]:
  """`resume_differences` as `KEY (checkpoint OLD, config NEW)`."""
  return [f"{key} (checkpoint {old!r}, config {new!r})" for key, old, new in resume_differences(saved, config, keys)]


def override_flag(key: str, value) -> str:
  """The command-line override that sets `key` to `value`: `--config.optim.clip_norm=0.0`."""
  if isinstance(value, bool):
    text = "true" if value else "false"
  elif isinstance(value, (list, tuple)):
    text = "[" + ",".join(repr(v) for v in value) + "]"
  else:
    text = str(value)
  return shlex.quote(f"--config.{key}={text}")
