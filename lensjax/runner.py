"""`lensjax train`: the train loop with the periodic analyses the config asks for.

The loop (`lensjax.train.loop`) knows nothing of the analyses; they are handed
to it as data, `Periodic(every, make)`, built here from the config:

  stats.saturation_every   eval/saturation/* and eval/saturated_head/* (c = 1000) on held-out batch 0
  logging.entropy_every    eval/entropy_*_seq, eval/kl_seq: whole-sequence entropy against the target's law
  stats.hessian_every      hessian/*: λ_max, preconditioned λ_max, stability threshold, trace
"""

from __future__ import annotations

import jax

from lensjax import config as config_lib
from lensjax.train import loop
from lensjax.train.loop import Periodic


def periodic_analyses(config: config_lib.Config) -> tuple[Periodic, ...]:
  analyses = []
  if config.stats.saturation_every:
    analyses.append(Periodic(config.stats.saturation_every, saturation_analysis))
  if config.logging.entropy_every:
    analyses.append(Periodic(config.logging.entropy_every, entropy_analysis))
  if config.stats.hessian_every:
    analyses.append(Periodic(config.stats.hessian_every, hessian_analysis))
  return tuple(analyses)


def train(config: config_lib.Config, workdir: str, stop_at_step: int | None = None, **ensemble):
  """Trains (or resumes) into `workdir` with the config's periodic analyses; returns the final train state.

  `ensemble`: `members` and `run_dirs` of an ensemble of given solo configs (see `loop.train`).
  """
  return loop.train(config, workdir, stop_at_step, periodic=periodic_analyses(config), **ensemble)


def saturation_analysis(run: loop.Run):
  """On the fixed held-out batch 0, so that the series is comparable over training (as the saturation command)."""
  from lensjax.analysis.saturation import make_saturation_fn
  # A few rows: the saturated network's probabilities of every layer are live at once.
  saturation = make_saturation_fn(run.config.model, rows=min(run.config.train.batch_size, 8))
  heldout = loop.device_batch(run, 0, split="heldout")
  return lambda state, batch, step: saturation(state.params, heldout)


def entropy_analysis(run: loop.Run):
  from lensjax.analysis.entropy import periodic_entropy_metrics
  key = jax.random.fold_in(jax.random.PRNGKey(run.config.train.seed), 0xE7)
  return lambda state, batch, step: periodic_entropy_metrics(state.params, run.config, run.source,
                                                             jax.random.fold_in(key, step))


def hessian_analysis(run: loop.Run):
  """`hessian/*` at the state after a step, on that step's batch, at the next step's learning rate.

  The power iterations start from the previous measurement's eigenvectors
  (held here, on device): a resumed run starts its first measurement cold,
  with three times the iterations.
  """
  from lensjax.hessian.metrics import hessian_metrics
  from lensjax.hessian.operators import make_loss_fn
  config, vectors = run.config, {}
  loss_fn = make_loss_fn(config.model, config.stats.hessian_precision)
  key = jax.random.fold_in(jax.random.PRNGKey(config.train.seed), 0x4E55)
  iters = config.stats.hessian_power_iters

  def analysis(state, batch, step):
    warm = vectors.get("last")
    metrics, vectors["last"] = hessian_metrics(
        state.params, batch, state.opt_state, config, run.schedule(step + 1), jax.random.fold_in(key, step), warm,
        power_iters=iters if warm is not None else 3 * iters, trace_probes=config.stats.hessian_trace_probes,
        loss_fn=loss_fn)
    return metrics
  return analysis
