"""`lensjax bench`: compile and time the compiled pieces of a config on this device.

Row groups (`--only train,hvp,entropy,sampler`, default all):
  train    the plain and the logging train step, on batch 0;
  hvp      one gradient and one Hessian-vector product of the plain loss of
           `lensjax/hessian/operators.py` (float32 parameters, explicit-softmax
           attention) at `--precision` (float32, tf32, bf16; default the
           config's stats.hessian_precision; the row notes name it) on batch
           0, in micro-batches whose logits fit 2 GiB;
  entropy  the exact-enumeration pass of `analysis/entropy.py`: all V^T
           prefixes when `auto` would enumerate them, else one chunk of
           prefixes, the unit of work the exact pass repeats;
  sampler  one batch of the Monte Carlo sampler: T tokens per sequence at
           temperature 1 with the KV cache.

Each row: median seconds per call over `steps` calls after `warmup` calls
(fewer where the first call shows that they would not fit `--row-budget`),
each call timed with the device synchronised (for the train rows also
`pipelined_seconds`: the same calls queued back to back and waited for once,
the rate of the training loop, which never waits for a step); tokens/s and sequences/s;
TFLOP/s per device and MFU against the device's dense bf16 peak from the
FLOPs per token of `FORMULAS`; compile time; XLA's device-memory account of
the compiled program (arguments, outputs, temporaries). The train and HVP
rows run on every device (batch sharded); the entropy and sampler rows on one
device, since those analyses do not split their work over devices.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import statistics
import sys
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from lensjax import config as config_lib
from lensjax import parallel, perf
from lensjax.errors import InputError
from lensjax.hessian.precision import check_precision_flag, chosen_precision
from lensjax.train import loop
from lensjax.train.ensemble import member_of

GROUPS = ("train", "hvp", "entropy", "sampler")
WARMUP = 3
# Seconds of calls a row may take after its compile (`--row-budget`): an HVP row at GPT-2 scale on a CPU would
# otherwise take most of an hour at the default --steps.
ROW_BUDGET_S = 60.0
# A row cut to fit its budget keeps at least this many timed calls, for a median of more than one call; one
# call if even these would not fit.
MIN_CUT_CALLS = 3
# A gradient or HVP micro-batch keeps at most this many bytes of float32 logits: the HVP holds
# about five B×T×V tensors (logits, their tangent, softmax, cotangent and its tangent).
MICRO_LOGITS_BYTES = 2 * 2**30
# Forward-over-reverse costs about three gradients in FLOPs; above this ratio something is wasted.
HVP_TARGET_RATIO = 3.5
# The sampler row takes the Monte Carlo batch (entropy.MC_BATCH), halved until its KV cache fits this.
SAMPLER_CACHE_BYTES = 4 * 2**30
# Beyond this, an estimate of a full enumeration's time is left out of the notes as meaningless.
YEAR_S = 365.25 * 86400
MAX_ESTIMATE_S = 1e4 * YEAR_S

FORMULAS = {
    "train": f"{perf.FLOP_FORMULA}: forward and backward",
    "hvp": ("gradient: 6*N + 12*L*T*D per token; HVP (forward-over-reverse): 3x that, 18*N + 36*L*T*D (each "
            "matmul of the forward and backward pass gains one tangent matmul per operand); at the precision "
            "the row notes name (float32, tf32 or bf16), MFU against the bf16 peak whatever it is"),
    "entropy": "forward only: 2*N + 4*L*T*D per token (a third of the training count), model FLOPs only",
    "sampler": "forward only: 2*N + 4*L*T*D per sampled token (the KV cache is attended over its full length T)",
}


def calls_within_budget(first_s: float, warmup: int, steps: int, budget_s: float,
                        repeats: float = 1.0) -> tuple[int, int]:
  """(warm-up calls, timed calls) of a row whose first call took `first_s`, cut so that the row's calls end within
  `budget_s` seconds, the first one included; each timed call costs `repeats` calls (2 where the calls are timed
  again pipelined). The warm-ups stay while `MIN_CUT_CALLS` timed calls still fit after them, else the first call
  is the only warm-up; one timed call when not even those fit."""
  if budget_s == math.inf:
    return warmup, steps
  per_call = max(first_s, 1e-9)

  def timed_calls_fitting(warmups: int) -> int:
    # The calls after the first: warmups + timed - 1 of them, and the pipelined repeat of each timed one.
    # (A nudge against rounding: a budget of exactly five calls fits five.)
    return math.floor(((budget_s - first_s) / per_call - warmups + 1) / repeats + 1e-9)

  if timed_calls_fitting(warmup) >= steps:
    return warmup, steps
  for warmups in (warmup, min(warmup, 1)):
    fitting = timed_calls_fitting(warmups)
    if fitting >= min(MIN_CUT_CALLS, steps):
      return warmups, min(fitting, steps)
  return min(warmup, 1), 1


def _time_calls(name: str, fn, args_fn, steps: int, warmup: int, budget_s: float = math.inf,
                repeats: float = 1.0) -> tuple[list[float], str]:
  """(seconds of each of `steps` calls after `warmup` untimed ones, a note for the row: "" or what the budget
  cut): fewer calls where the first shows that they would not end within `budget_s` (`calls_within_budget`).
  After the first call, one line on stderr says how long it took and about how long the rest will take (an HVP
  row at GPT-2 scale on a CPU takes minutes)."""
  times, note = [], ""
  total, i = warmup + steps, 0
  while i < total:
    args = args_fn()
    jax.block_until_ready(args)
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    seconds = time.perf_counter() - start
    if i >= warmup:
      times.append(seconds)
    if i == 0 and total > 1:
      kept_warmup, kept_steps = calls_within_budget(seconds, warmup, steps, budget_s, repeats)
      if (kept_warmup, kept_steps) != (warmup, steps):
        note = (f"timed {kept_steps} of {steps} calls" + (f" after {kept_warmup} warm-up" if kept_warmup < warmup
                                                          else "") + f" (row budget {budget_s:g} s)")
        warmup, steps = kept_warmup, kept_steps
      total = warmup + steps
      print(f"bench: {name}: call 1/{total} took {seconds:.3g} s; about {_duration(seconds * (total - 1))} for "
            f"the other {total - 1}" + (f": {note}" if note else ""), file=sys.stderr, flush=True)
    i += 1
  return times, note


def _time_pipelined(fn, args_fn, steps: int) -> float:
  """Seconds per call of `steps` calls queued without waiting: host dispatch overlaps the device's work."""
  jax.block_until_ready(args_fn())
  start = time.perf_counter()
  for _ in range(steps):
    out = fn(*args_fn())
  jax.block_until_ready(out)
  return (time.perf_counter() - start) / steps


def _compile(name: str, jitted, *args, **kwargs):
  """(compiled program, seconds to lower and compile it); says on stderr what it compiles and how long it took,
  since a large model's rows take minutes in all and the table comes at the end."""
  print(f"bench: {name}: compiling", file=sys.stderr, flush=True)
  start = time.perf_counter()
  compiled = jitted.lower(*args, **kwargs).compile()
  seconds = time.perf_counter() - start
  print(f"bench: {name}: compiled in {seconds:.1f} s, timing", file=sys.stderr, flush=True)
  return compiled, seconds


def _row(name: str, group: str, times: list[float], *, compiled, compile_s: float, tokens: int, seq_len: int,
         flops_token: float | None, devices: int, notes: str = "") -> dict:
  """One row: `tokens` per call, `flops_token` FLOPs per token (None: no MFU), over `devices` devices."""
  seconds = statistics.median(times)
  row = {"name": name, "group": group, "seconds": seconds, "calls": len(times), "tokens_per_s": tokens / seconds,
         "sequences_per_s": tokens / seq_len / seconds, "tflops_per_device": None, "mfu": None,
         "compile_s": compile_s, "memory_gib": perf.memory_gib(compiled), "notes": notes}
  if flops_token is not None:
    row["tflops_per_device"] = flops_token * tokens / seconds / devices / 1e12
    peak = perf.device_peak_tflops()
    row["mfu"] = row["tflops_per_device"] / peak if peak else None
  return row


def forward_flops_per_token(params, cfg: config_lib.ModelConfig, seq_len: int) -> float:
  """2·N + 4·L·T·D: the forward pass, a third of `perf.flops_per_token`."""
  return perf.flops_per_token(params, cfg, seq_len) / 3.0


# --------------------------------------------------------------------------
# Row groups.


def _no_row(row: dict) -> None:
  pass


def bench_train_steps(run: loop.Run, steps: int, warmup: int = WARMUP, row_budget: float = math.inf,
                      on_row: Callable[[dict], None] = _no_row) -> list[dict]:
  """The plain and the logging train step on batch 0 (they donate `run.state`: it is gone afterwards); `on_row`
  gets each row as soon as it is complete."""
  config = run.config
  batch = loop.device_batch(run, 0)
  state_holder = [run.state]
  T, members = config.data.seq_len, len(run.members)
  # An ensemble's step trains every member: its tokens are all members' tokens, at one member's FLOPs per token.
  params = member_of(run.state.params, 0) if run.ensemble else run.state.params
  flops_token = perf.flops_per_token(params, config.model, T)
  rows = []
  for name, fn in (("train step (plain)", run.plain_step), ("train step (logging)", run.logging_step)):
    compiled, compile_s = _compile(name, fn, state_holder[0], batch)

    def call(state, batch, compiled=compiled):
      state_holder[0], metrics = compiled(state, batch)
      return metrics

    # Each timed call is run once more in the pipelined timing: twice the calls for the budget.
    times, cut = _time_calls(name, call, lambda: (state_holder[0], batch), steps, warmup, row_budget, repeats=2)
    pipelined = _time_pipelined(call, lambda: (state_holder[0], batch), len(times))
    ensemble = f"{members} members in one program" if run.ensemble else ""
    rows.append(_row(name, "train", times, compiled=compiled, compile_s=compile_s,
                     tokens=members * config.train.batch_size * T, seq_len=T, flops_token=flops_token,
                     devices=jax.device_count(), notes="; ".join(filter(None, (cut, ensemble)))))
    rows[-1]["pipelined_seconds"] = pipelined
    rows[-1]["notes"] = "; ".join(filter(None, (f"pipelined {1e3 * pipelined:.2f} ms", rows[-1]["notes"])))
    if len(rows) == 1:
      on_row(rows[0])
  plain, logging = rows[0]["seconds"], rows[1]["seconds"]
  rows[1]["vs_plain"] = logging / plain
  rows[1]["amortised_at_log_every_100"] = (99 * plain + logging) / (100 * plain)
  # Its own notes (pipelined time, budget cut, ensemble) after the comparison, not the plain row's.
  rows[1]["notes"] = (f"{rows[1]['vs_plain']:.3f}x plain; {rows[1]['amortised_at_log_every_100']:.4f}x at "
                      f"log_every=100" + (f"; {rows[1]['notes']}" if rows[1]["notes"] else ""))
  on_row(rows[1])
  return rows


def micro_batches(batch_size: int, seq_len: int, vocab: int, budget: int = MICRO_LOGITS_BYTES) -> int:
  """The fewest micro-batches (a divisor of the batch) whose float32 logits fit `budget` bytes."""
  for n in range(1, batch_size + 1):
    if batch_size % n == 0 and (batch_size // n) * seq_len * vocab * 4 <= budget:
      return n
  return batch_size


def _hvp_setup(config: config_lib.Config):
  """Float32 parameters of the plain model (fresh init), batch 0 sharded over the mesh, a random tangent."""
  from lensjax.data.factory import make_source
  from lensjax.hessian.operators import plain_batch, plain_model_config
  from lensjax.model import Transformer
  from lensjax.ops.trees import tree_random_normal
  mesh = parallel.make_mesh(fsdp=config.parallel.fsdp)
  local = make_source(config).batch(0, config.train.batch_size, process_index=jax.process_index(),
                                    process_count=jax.process_count())
  batch = plain_batch(parallel.shard_batch(local, mesh))
  model = Transformer(plain_model_config(config.model))
  init = jax.jit(lambda key: model.init(key, batch["inputs"][:1])["params"], out_shardings=parallel.replicated(mesh))
  params = init(jax.random.PRNGKey(config.train.seed))
  tangent = jax.jit(tree_random_normal)(jax.random.PRNGKey(1), params)
  return params, batch, tangent


def bench_hvp(config: config_lib.Config, steps: int, warmup: int = WARMUP, num_micro: int | None = None,
              precision: str | None = None, row_budget: float = math.inf,
              on_row: Callable[[dict], None] = _no_row) -> list[dict]:
  """A gradient and a Hessian-vector product of the plain loss on batch 0, over the same micro-batches, at
  `precision` (default: the config's stats.hessian_precision); `on_row` gets each row as soon as it is complete."""
  from lensjax.hessian import operators
  precision = chosen_precision(precision, config)
  params, batch, tangent = _hvp_setup(config)
  B, T = batch["inputs"].shape
  n = num_micro or micro_batches(B, T, config.model.vocab_size)
  loss_fn = operators.make_loss_fn(config.model, precision)
  gradient_flops = perf.flops_per_token(params, config.model, T)
  programs = (("gradient (plain loss)", operators.value_and_grad_program, (params, batch), gradient_flops),
              ("HVP (plain loss)", operators.hvp_program, (params, batch, tangent), 3 * gradient_flops))
  rows = []
  for name, fn, args, flops_token in programs:
    compiled, compile_s = _compile(name, fn, loss_fn, *args, num_micro=n)
    times, cut = _time_calls(name, compiled, lambda args=args: args, steps, warmup, row_budget)
    rows.append(_row(name, "hvp", times, compiled=compiled, compile_s=compile_s, tokens=B * T, seq_len=T,
                     flops_token=flops_token, devices=jax.device_count(),
                     notes="; ".join(filter(None, (f"precision {precision}",
                                                   f"{n} micro-batch{'es' if n > 1 else ''}", cut)))))
    if len(rows) == 1:
      on_row(rows[0])
  ratio = rows[1]["vs_gradient"] = rows[1]["seconds"] / rows[0]["seconds"]
  verdict = "meets" if ratio <= HVP_TARGET_RATIO else "misses"
  rows[1]["notes"] += f"; {ratio:.2f}x the gradient ({verdict} the {HVP_TARGET_RATIO}x target)"
  on_row(rows[1])
  return rows


def _analysis_model(config: config_lib.Config, source):
  """(model config, target law or None, V, T, float32 log p_0) as `entropy.SequenceEntropy` sets them up."""
  from lensjax.analysis import entropy
  # Explicit attention, as SequenceEntropy: a fused kernel may not take these short sequences.
  cfg = dataclasses.replace(config.model, attention="xla")
  law = entropy.target_law(source)
  if law is None:  # text: no law of x_0; the row times the model's part of the same work
    V, T = config.model.vocab_size, config.data.seq_len
    log_initial_V = np.full(V, -math.log(V))
  else:
    V, T, log_initial_V = law.vocab_size, law.seq_len, law.log_initial_V
  return cfg, law, V, T, jnp.asarray(log_initial_V, jnp.float32)


def _power_text(V: int, T: int) -> str:
  """'V^T = 8^4 = 4,096' or, when large, 'V^T = 8^16 ≈ 2.8e14'."""
  digits = T * math.log10(V)
  if digits < 12:
    return f"V^T = {V}^{T} = {V**T:,}"
  exponent = math.floor(digits)
  return f"V^T = {V}^{T} ≈ {10 ** (digits - exponent):.1f}e{exponent}"


def _duration(seconds: float) -> str:
  for unit, size in (("years", YEAR_S), ("days", 86400), ("h", 3600), ("min", 60)):
    if seconds >= size:
      return f"{seconds / size:,.1f} {unit}"
  return f"{seconds:.2f} s"


def bench_entropy(config: config_lib.Config, params, source, steps: int, warmup: int = WARMUP,
                  max_chunk_elements: int | None = None, row_budget: float = math.inf) -> list[dict]:
  """The exact pass: every chunk of prefixes if `auto` enumerates this V^T, else one chunk of them."""
  from lensjax.analysis import entropy, entropy_terms
  cfg, law, V, T, log_initial_V = _analysis_model(config, source)
  total = V**T
  chunk = entropy_terms.chunk_size(cfg, V, T, total, max_chunk_elements or entropy_terms.MAX_CHUNK_ELEMENTS)
  full = law is not None and total <= entropy.MAX_ENUMERATE
  # One chunk of a large V^T: prefix digits in base 1 are all zero, which is the same program (the work does
  # not depend on the token values) without int32 prefix numbers that V^T would overflow.
  fn = jax.jit(functools.partial(entropy_terms.prefix_terms, model_fn=entropy_terms.model_apply_fn(cfg),
                                 target_fn=law.log_probs if law else None, chunk=chunk, vocab_size=V if full else 1,
                                 seq_len=T, total=total if full else chunk))
  args = (params, law.params if law else None, log_initial_V)
  compiled, compile_s = _compile("exact entropy", fn, *args, jnp.int32(0))
  starts = [jnp.int32(s) for s in range(0, total if full else chunk, chunk)]
  times, cut = _time_calls("exact entropy", lambda: [compiled(*args, s) for s in starts], lambda: (), steps, warmup,
                           row_budget)
  sequences = total if full else chunk
  whose = "model and target" if law else "model only (no target law for text data)"
  if full:
    notes = f"all {_power_text(V, T)} prefixes, {len(starts)} chunk(s) of {chunk:,}; {whose}"
  else:
    # In logarithms: V^T overflows a float long before it stops being a Python int.
    log10_estimate = T * math.log10(V) + math.log10(statistics.median(times) / chunk)
    estimate = f"{_duration(10**log10_estimate)} at this rate" if log10_estimate < math.log10(MAX_ESTIMATE_S) else ""
    verdict = (f"all of them: about {estimate}" if total <= entropy.HARD_MAX_ENUMERATE
               else "not enumerable" + (f" ({estimate})" if estimate else ""))
    notes = f"one chunk of {chunk:,} prefix{'es' if chunk > 1 else ''}; {_power_text(V, T)} sequences: {verdict}; {whose}"
  name = "entropy: exact pass" if full else "entropy: one chunk"
  return [_row(name, "entropy", times, compiled=compiled, compile_s=compile_s, tokens=sequences * T, seq_len=T,
               flops_token=forward_flops_per_token(params, cfg, T), devices=1,
               notes="; ".join(filter(None, (notes, cut))))]


def sampler_batch(cfg: config_lib.ModelConfig, seq_len: int, budget: int = SAMPLER_CACHE_BYTES) -> tuple[int, int]:
  """(sequences per sampler call, bytes of their KV cache): the Monte Carlo batch, halved until it fits."""
  from lensjax.analysis import entropy
  from lensjax.model import init_cache
  shapes = jax.eval_shape(lambda: init_cache(cfg, 1, seq_len))
  per_sequence = sum(s.size * s.dtype.itemsize for s in jax.tree.leaves(shapes))
  batch = entropy.MC_BATCH
  while batch > 1 and batch * per_sequence > budget:
    batch //= 2
  return batch, batch * per_sequence


def bench_sampler(config: config_lib.Config, params, source, steps: int, warmup: int = WARMUP,
                  row_budget: float = math.inf) -> list[dict]:
  """One batch of ancestral samples of the model with the KV cache, as the Monte Carlo estimate draws them."""
  from lensjax.analysis import entropy_terms
  cfg, _, _, T, log_initial_V = _analysis_model(config, source)
  B, cache_bytes = sampler_batch(cfg, T)
  fn = jax.jit(functools.partial(entropy_terms.model_sample_terms, cfg=cfg, seq_len=T, batch=B))
  args = (params, jax.random.PRNGKey(0), log_initial_V)
  compiled, compile_s = _compile("sampler", fn, *args)
  times, cut = _time_calls("sampler", compiled, lambda: args, steps, warmup, row_budget)
  notes = f"batch of {B:,} sequences of {T} sampled tokens, temperature 1, KV cache {cache_bytes / 2**30:.2f} GiB"
  notes = "; ".join(filter(None, (notes, cut)))
  return [_row("sampler (KV cache)", "sampler", times, compiled=compiled, compile_s=compile_s, tokens=B * T,
               seq_len=T, flops_token=forward_flops_per_token(params, cfg, T), devices=1, notes=notes)]


# --------------------------------------------------------------------------
# The command.


def parse_only(text: str | None) -> tuple[str, ...]:
  """`--only train,hvp` -> ("train", "hvp") in table order; None: every group."""
  if text is None:
    return GROUPS
  names = [name.strip() for name in text.split(",") if name.strip()]
  unknown = [name for name in names if name not in GROUPS]
  if unknown or not names:
    raise InputError(f"--only {text!r} names no row group{' ' + ', '.join(map(repr, unknown)) if unknown else ''}; "
                     f"pass a comma list of {', '.join(GROUPS)}.")
  return tuple(group for group in GROUPS if group in names)


def _train_rows(config: config_lib.Config, groups: tuple[str, ...], steps: int, warmup: int, row_budget: float,
                on_row: Callable[[dict], None]) -> tuple[list[dict], tuple]:
  """(the train rows, (parameters of one model on the host, data source) for the analysis rows): the rows of
  one built run, whose device memory is all freed once this returns, before the HVP builds its own model."""
  run = loop.build(config)
  params = member_of(run.state.params, 0) if run.ensemble else run.state.params  # the analyses take one model
  # A host copy: the train steps donate the state these parameters are part of.
  analysis_inputs = (jax.device_get(params), run.source)
  rows = bench_train_steps(run, steps, warmup, row_budget=row_budget, on_row=on_row) if "train" in groups else []
  return rows, analysis_inputs


def bench(config: config_lib.Config, groups: tuple[str, ...] = GROUPS, steps: int = 20, warmup: int = WARMUP,
          row_budget: float = ROW_BUDGET_S, on_row: Callable[[dict], None] = _no_row,
          precision: str | None = None) -> list[dict]:
  """Every row of `groups`, timed in table order; `config` as `loop.prepare` gives it; `precision` for the hvp
  rows. `on_row` gets each row as soon as it is complete."""
  rows = {}
  if set(groups) & {"train", "entropy", "sampler"}:
    rows["train"], (host_params, source) = _train_rows(config, groups, steps, warmup, row_budget, on_row)
  if "hvp" in groups:
    rows["hvp"] = bench_hvp(config, steps, warmup, precision=precision, row_budget=row_budget, on_row=on_row)
  analyses = (("entropy", bench_entropy), ("sampler", bench_sampler))
  if any(group in groups for group, _ in analyses):
    params = jax.device_put(host_params, jax.devices()[0])  # those analyses do not split their work over devices
    for group, bench_group in analyses:
      if group in groups:
        rows[group] = bench_group(config, params, source, steps, warmup, row_budget=row_budget)
        on_row(rows[group][0])
  return [row for group in GROUPS for row in rows.get(group, [])]


def table_header() -> str:
  return (f"{'':22s} {'ms':>10s} {'tokens/s':>12s} {'seqs/s':>10s} {'TFLOP/s':>8s} {'MFU':>6s} "
          f"{'compile s':>9s} {'mem GiB':>8s}  notes")


def table_line(r: dict) -> str:
  tflops = f"{r['tflops_per_device']:.3g}" if r["tflops_per_device"] is not None else "n/a"
  mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "n/a"
  memory = f"{r['memory_gib']:.3g}" if r["memory_gib"] is not None else "n/a"
  return (f"{r['name']:22s} {1e3 * r['seconds']:10.2f} {r['tokens_per_s']:12,.0f} {r['sequences_per_s']:10,.1f} "
          f"{tflops:>8s} {mfu:>6s} {r['compile_s']:9.1f} {memory:>8s}  {r['notes']}")


def format_table(rows: list[dict]) -> str:
  return "\n".join([table_header()] + [table_line(r) for r in rows])


def report_head(result: dict) -> str:
  """The device line and the table header: what the text mode prints before the first row is timed."""
  peak = result["peak_tflops"]
  return "\n".join([f"device {result['device']}, jax {result['jax']}; MFU against "
                    + (f"{peak:.0f} TFLOP/s dense bf16 per device" if peak else
                       "no known bf16 peak for this device (n/a)"), table_header()])


def report_tail(result: dict) -> str:
  lines = ["FLOPs per token (N = parameters excluding position embeddings):"]
  lines += [f"  {group:8s} {formula}" for group, formula in result["formulas"].items()]
  return "\n".join(lines)


def format_report(result: dict) -> str:
  """The whole text report at once: what the text mode of `main` has printed by its end."""
  return "\n".join([report_head(result)] + [table_line(r) for r in result["rows"]] + [report_tail(result)])


def _print_now(text: str) -> None:
  print(text, flush=True)


def main(config: config_lib.Config, as_json: bool, steps: int, only: str | None = None,
         row_budget: float | None = None, precision: str | None = None) -> int:
  """The text mode prints the table header first and then each row as soon as it is timed (a large model's rows
  take minutes each); --json prints one object at the end."""
  groups = parse_only(only)
  if steps < 1:
    raise InputError(f"--steps {steps} times nothing; pass --steps 1 or more.")
  row_budget = ROW_BUDGET_S if row_budget is None else row_budget
  if not row_budget > 0:
    raise InputError(f"--row-budget {row_budget:g} leaves no time to time a row; pass a number of seconds above 0.")
  check_precision_flag(precision)
  config = loop.prepare(config)
  result = {"device": f"{jax.devices()[0].device_kind} x{jax.device_count()}", "jax": jax.__version__,
            "peak_tflops": perf.device_peak_tflops(), "formulas": {g: FORMULAS[g] for g in groups}}
  if as_json:
    result["rows"] = bench(config, groups, steps, row_budget=row_budget, precision=precision)
    print(json.dumps(result))
    return 0
  _print_now(report_head(result))
  result["rows"] = bench(config, groups, steps, row_budget=row_budget, precision=precision,
                         on_row=lambda row: _print_now(table_line(row)))
  _print_now(report_tail(result))
  return 0
