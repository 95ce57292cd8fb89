"""The host loop: build, restore, step, log, evaluate, checkpoint.

Everything on the device stays on the device: step t+1 is dispatched before
step t's metrics are fetched, and only logging steps fetch anything.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import sys
import time

import jax
import numpy as np

from lensjax import config as config_lib
from lensjax import parallel, perf
from lensjax.data.factory import make_source
from lensjax.io.checkpoints import Checkpoints, abstract_like
from lensjax.io.metrics_log import MetricsLog, truncate_after
from lensjax.io.names import flatten_metrics
from lensjax.io.progress import Progress
from lensjax.io.tensorboard import SummaryWriter
from lensjax.model import Transformer
from lensjax.stats import lenses as lens_lib
from lensjax.train import optim
from lensjax.train.state import create_state
from lensjax.train.step import eval_step, jit_train_step


def platform() -> str:
  return jax.devices()[0].platform


def prepare(config: config_lib.Config) -> config_lib.Config:
  """Validates and resolves a config for this machine; raises InputError."""
  config_lib.validate(config, jax.device_count(), jax.process_count(), platform())
  return config_lib.resolve(config, platform())


@dataclasses.dataclass
class Run:
  """The compiled pieces of one run; built once, used by train and the analyses."""
  config: config_lib.Config
  source: object
  mesh: jax.sharding.Mesh
  state: object
  plain_step: object
  logging_step: object
  eval_fn: object
  schedule: object


def build(config: config_lib.Config, mesh=None) -> Run:
  """Builds source, model, optimiser, initial state and compiled steps."""
  mesh = mesh or parallel.make_mesh()
  source = make_source(config)
  model_plain = Transformer(config.model, collect_stats=False)
  model_stats = Transformer(config.model, collect_stats=True)
  tx, schedule = optim.make_optimizer(config.optim, config.train.steps)
  replicated, batch_sharding = parallel.replicated(mesh), parallel.batch_sharding(mesh)
  init = jax.jit(lambda: create_state(model_plain, tx, config.model, config.data.seq_len, config.train.seed),
                 out_shardings=replicated)
  state = init()
  state_sharding = jax.tree.map(lambda x: x.sharding, state)
  common = dict(tx=tx, schedule=schedule, dead_window=config.stats.dead_window)
  plain = jit_train_step(state_sharding, batch_sharding, replicated, model=model_plain, **common)
  logging = jit_train_step(state_sharding, batch_sharding, replicated, model=model_stats,
                           lenses=lens_lib.train_lenses(config, source), **common)
  eval_fn = jax.jit(lambda p, b: eval_step(p, b, model=model_stats, lenses=lens_lib.eval_lenses(config, source)),
                    in_shardings=(state_sharding.params, batch_sharding), out_shardings=replicated)
  return Run(config, source, mesh, state, plain, logging, eval_fn, schedule)


class _Preemption:
  """Turns SIGTERM into a flag the loop checks between steps."""

  def __init__(self):
    self.requested = False
    self._previous = None

  def __enter__(self):
    try:
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # not the main thread: no signal handling
      self._previous = None
    return self

  def _handle(self, signum, frame):
    self.requested = True

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


def _log(message: str) -> None:
  if jax.process_index() == 0:
    print(message, file=sys.stderr, flush=True)


def _batch(run: Run, step: int, split: str = "train"):
  local = run.source.batch(step, run.config.train.batch_size, split=split,
                           process_index=jax.process_index(), process_count=jax.process_count())
  return parallel.shard_batch(local, run.mesh)


def evaluate(run: Run, params) -> dict:
  """Held-out metrics averaged over the fixed held-out batches 0..eval_batches-1 (device arrays)."""
  results = [run.eval_fn(params, _batch(run, i, split="heldout")) for i in range(run.config.logging.eval_batches)]
  return jax.tree.map(lambda *xs: sum(xs) / len(xs), *results)


def compile_steps(run: Run, state):
  """Compiles both step variants ahead of time, so that no step of the loop compiles."""
  batch = _batch(run, 0)
  compiled = []
  for name, fn in (("plain", run.plain_step), ("logging", run.logging_step)):
    start = time.perf_counter()
    compiled.append(fn.lower(state, batch).compile())
    _log(f"compiled the {name} step in {time.perf_counter() - start:.1f} s")
  return compiled


def train(config: config_lib.Config, workdir: str) -> object:
  """Trains (or resumes) into `workdir`; returns the final train state."""
  config = prepare(config)
  is_writer = jax.process_index() == 0
  os.makedirs(workdir, exist_ok=True)
  run = build(config)
  checkpoints = Checkpoints(os.path.join(workdir, "checkpoints"), config.checkpoint.keep, config.checkpoint.async_save)
  start_step, restored = checkpoints.restore_latest_valid(abstract_like(run.state))
  state = run.state if restored is None else restored
  start_step = start_step or 0
  metrics_path = os.path.join(workdir, "metrics.jsonl")
  if restored is not None:
    dropped = truncate_after(metrics_path, start_step - 1) if is_writer else 0
    _log(f"resuming from the checkpoint at step {start_step} in {checkpoints.directory}"
         + (f" (dropped {dropped} metric records logged after it)" if dropped else ""))
  if is_writer:
    config_lib.save_json(config, os.path.join(workdir, "config.json"))
  flops_token = perf.flops_per_token(state.params, config.model, config.data.seq_len)
  _log(perf.describe(state.params, config.model, config.data.seq_len))

  writer = SummaryWriter(os.path.join(workdir, "tb")) if is_writer else None
  metrics_log = MetricsLog(metrics_path) if is_writer else None
  progress = Progress(config.logging.progress, config.train.steps, start_step)
  tokens_per_step = config.train.batch_size * config.data.seq_len
  pending: list[tuple[int, dict]] = []
  last_emit: tuple[int, float] | None = None

  def emit():
    nonlocal last_emit
    for step, device_metrics in pending:
      metrics = flatten_metrics(jax.device_get(device_metrics))
      now = time.perf_counter()
      if last_emit is not None and step > last_emit[0]:
        metrics.update(perf.perf_metrics((now - last_emit[1]) / (step - last_emit[0]), tokens_per_step, flops_token))
      last_emit = (step, now)
      if is_writer:
        writer.scalars(step, metrics)
        metrics_log.write(step, metrics)
      progress.update(step, metrics)
    pending.clear()

  total = config.train.steps
  if start_step < total:
    plain_step, logging_step = compile_steps(run, state)
  log_every, eval_every, save_every = config.logging.log_every, config.logging.eval_every, config.checkpoint.save_every
  saved_step = start_step
  with _Preemption() as preemption:
    for step in range(start_step, total):
      if preemption.requested:
        _log(f"SIGTERM: saving a checkpoint at step {step} and exiting")
        break
      is_log = step % log_every == 0 or step == total - 1
      step_fn = logging_step if is_log else plain_step
      state, metrics = step_fn(state, _batch(run, step))
      emit()  # the previous logging step's metrics, now that this step is queued
      if is_log:
        pending.append((step, metrics))
      if eval_every and ((step + 1) % eval_every == 0 or step == total - 1):
        eval_metrics = evaluate(run, state.params)
        if pending and pending[-1][0] == step:
          pending[-1][1].update(eval_metrics)
        else:
          pending.append((step, eval_metrics))
      if (step + 1) % save_every == 0:
        checkpoints.save(step + 1, state, {"config": config_lib.to_dict(config)})
        saved_step = step + 1
    emit()
  final_step = int(jax.device_get(state.step))
  if final_step != saved_step:
    checkpoints.save(final_step, state, {"config": config_lib.to_dict(config)})
  checkpoints.close()
  progress.close()
  if is_writer:
    writer.close()
    metrics_log.close()
  _log(f"done at step {final_step}; run directory {workdir}")
  return state
