"""Loss spikes: detect them, replay training up to them, and measure what the curvature did.

Detection is one rule (`lensjax.stats.spikes`), used online in the train
step (`spike/detected`, every step) and offline here over metrics.jsonl: the
same `update` run in `lax.scan` over the logged losses, so the two agree by
construction (offline, "the previous W losses" are the previous W *logged*
records).

Replay: data order and every key are functions of (seed, step), so the state
at any step is the nearest checkpoint at or before it (or the initial state,
a function of the seed) advanced by the same compiled steps, in the same
plain/logging pattern as training used. On CPU that is bit for bit.
"""

from __future__ import annotations

import os
import sys
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from lensjax.analysis.records import series
from lensjax.hessian.metrics import (RESIDUAL_NAMES, hessian_core, initial_vectors, optim_spec, update_terms,
                                    vector_shardings_like)
from lensjax.hessian.operators import make_loss_fn, plain_batch
from lensjax.hessian.precision import DEFAULT_PRECISION
from lensjax.io.checkpoints import Checkpoints, abstract_like
from lensjax.io.names import flatten_metrics
from lensjax.ops.trees import match_shardings
from lensjax.stats.spikes import SpikeWindow, spike_window, threshold, update  # noqa: F401 (re-exported)


# --------------------------------------------------------------------------
# Detection (the rule itself is lensjax.stats.spikes, shared with the train step).


@jax.jit
def _scan_losses(window: SpikeWindow, losses_N):
  def body(window, loss):
    median, _, limit = threshold(window)
    window, detected = update(window, loss)
    return window, (detected, median, limit)
  return jax.lax.scan(body, window, losses_N)[1]


class SeriesVerdicts(NamedTuple):
  detected: np.ndarray  # bool [N]
  median: np.ndarray  # float32 [N]: median of the window each loss was judged against
  threshold: np.ndarray  # float32 [N]


def judge_series(losses, window: int = 20, k: float = 6.0) -> SeriesVerdicts:
  """The online rule applied to a whole series of losses, oldest first."""
  losses_N = jnp.asarray(np.asarray(losses, np.float32))
  if losses_N.size == 0:
    return SeriesVerdicts(np.zeros(0, bool), np.zeros(0, np.float32), np.zeros(0, np.float32))
  detected, median, limit = jax.device_get(_scan_losses(spike_window(window, k), losses_N))
  return SeriesVerdicts(np.asarray(detected), np.asarray(median), np.asarray(limit))


def detect_spikes(steps, losses, window: int = 20, k: float = 6.0) -> list[int]:
  """The steps whose loss is a spike (offline, e.g. over metrics.jsonl; same rule as `update`)."""
  verdicts = judge_series(losses, window, k)
  return [int(s) for s, d in zip(steps, verdicts.detected) if d]


class SpikeEvent(NamedTuple):
  first: int  # first detected step
  last: int  # last detected step of the event
  steps: list[int]  # every detection in it


def group_detections(detections: list[int], gap: int) -> list[SpikeEvent]:
  """Detections at most `gap` steps apart form one event (one replay, one figure)."""
  events: list[list[int]] = []
  for step in sorted(detections):
    if events and step - events[-1][-1] <= gap:
      events[-1].append(step)
    else:
      events.append([step])
  return [SpikeEvent(e[0], e[-1], e) for e in events]


def loss_series(records: list[dict]) -> tuple[list[int], list[float]]:
  """(steps, train/loss) of metrics.jsonl records, sorted by step; a later record of a step wins."""
  steps, losses = series(records, "train/loss")
  return steps.tolist(), losses.tolist()


# --------------------------------------------------------------------------
# Replay.


def copy_state(state):
  """A fresh copy (same shardings): the compiled steps donate their input state."""
  return jax.tree.map(jnp.copy, state)


def is_logging_step(config, step: int) -> bool:
  """The variant training ran at `step` (as in `loop.train`); replay must use the same for bitwise equality."""
  return step % config.logging.log_every == 0 or step == config.train.steps - 1


def restore_at_or_before(run, workdir: str, step: int):
  """`(start, state)`: the newest readable checkpoint at or before `step`, else the initial state at 0."""
  from lensjax.train.state import MIGRATE
  checkpoints = Checkpoints(os.path.join(workdir, "checkpoints"), keep=10**6, async_save=False, migrate=MIGRATE,
                            reader=True)
  try:
    for saved in reversed([s for s in checkpoints.steps() if s <= step]):
      try:
        return saved, checkpoints.restore(saved, abstract_like(run.state))
      except Exception as e:  # a truncated write: an older checkpoint replays just as well
        print(f"warning: checkpoint {saved} is unreadable ({type(e).__name__}); trying an older one.", file=sys.stderr)
  finally:
    checkpoints.close()
  return 0, copy_state(run.state)


StepHook = Callable[[int, object, object, dict, dict], None]


def replay(run, state, start: int, stop: int, on_step: StepHook | None = None, hook_from: int = 0):
  """Advances `state`, the state at step `start`, through steps start..stop−1; returns the state at `stop`.

  Each step runs the variant training ran. For steps ≥ `hook_from`,
  `on_step(step, before, after, metrics, batch)` gets a copy of the state
  before the step, the state after it (do not keep it: the next step donates
  it) and the logging step's metrics; where training ran the plain step, the
  logging step runs on a copy for its metrics and its result is dropped.
  """
  from lensjax.train import loop  # heavy import, only when replaying
  for step in range(start, stop):
    batch = loop.device_batch(run, step)
    logging = is_logging_step(run.config, step)
    before = copy_state(state) if on_step is not None and step >= hook_from else None
    state, metrics = (run.logging_step if logging else run.plain_step)(state, batch)
    if before is not None:
      if not logging:
        _, metrics = run.logging_step(copy_state(before), batch)
      on_step(step, before, state, metrics, batch)
  return state


# --------------------------------------------------------------------------
# What each replayed step is measured for.

# Logging-step metrics kept in a spike's timeline (flattened names).
TIMELINE_PREFIXES = ("train/loss", "train/lr", "train/grad_norm", "ffn/dead/", "ffn/died/", "ffn/revived/",
                     "adam/", "norm/update")


class StepAnalyser:
  """`on_step` hook of `replay` that measures the curvature at θ_t on batch t and the update δ_t.

  Per step: λ_max(H) and λ_max(P^{-1/2} H P^{-1/2}) by warm-started power
  iterations (`cold_iters` the first time, `power_iters` after), the
  stability threshold at that step's learning rate, δᵀHδ/‖δ‖², g·δ, ½δᵀHδ and
  the actual change L(θ_{t+1}) − L(θ_t) on the same batch, all at `precision` (lensjax/hessian/precision.py).
  """

  def __init__(self, run, key, power_iters: int = 20, cold_iters: int = 60, precision: str = DEFAULT_PRECISION):
    self.loss_fn = make_loss_fn(run.config.model, precision)
    self.optim = optim_spec(run.config.optim)
    self.key, self.power_iters, self.cold_iters = key, power_iters, cold_iters
    self.vectors = None
    self.records: list[dict] = []

  def __call__(self, step, before, after, metrics, batch) -> None:
    batch = plain_batch(batch)
    key = jax.random.fold_in(self.key, step)
    iters = self.power_iters
    if self.vectors is None:
      self.vectors, iters = initial_vectors(before.params, key), self.cold_iters
    vectors = match_shardings(self.vectors, vector_shardings_like(before.params))
    curvature, self.vectors, residuals = hessian_core(
        self.loss_fn, before.params, batch, before.opt_state, metrics["train/lr"], key, vectors,
        power_iters=iters, optim=self.optim, trace_probes=0)
    terms = update_terms(self.loss_fn, before.params, after.params, batch)
    logged = {k: v for k, v in metrics.items() if not k.startswith("units/")}
    logged, curvature, terms, residuals = jax.device_get((logged, curvature, terms, residuals))
    record = {"step": int(step)}
    record.update({k: v for k, v in flatten_metrics(logged).items() if k.startswith(TIMELINE_PREFIXES)})
    record.update(flatten_metrics(curvature))
    record.update(flatten_metrics(terms))
    record.update({RESIDUAL_NAMES[k]: float(v) for k, v in residuals.items()})
    self.records.append(record)


def analyse(run, workdir: str, first: int, stop: int, key, power_iters: int = 20,
            precision: str = DEFAULT_PRECISION) -> tuple[int, list[dict]]:
  """Replays from the checkpoint at or before `first` and measures steps first..stop−1.

  Returns `(checkpoint step, one record per measured step)`.
  """
  start, state = restore_at_or_before(run, workdir, first)
  analyser = StepAnalyser(run, key, power_iters=power_iters, cold_iters=3 * power_iters, precision=precision)
  replay(run, state, start, stop, on_step=analyser, hook_from=first)
  return start, analyser.records
