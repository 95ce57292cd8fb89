"""Pure train and eval steps.

`train_step(state, batch) -> (state, metrics)` is one screen long. Statistics
are plugged in as *lenses*: pure functions `lens(view) -> {name: array}` of a
`StepView`, which holds what the step already computed. The plain and the
logging variant of the step differ only in the model (`collect_stats`) and the
lenses they are built with, so the plain step pays nothing for statistics.

Metric values are scalars, or vectors [L] / matrices [L, H] that the host
expands to `name/layer_{l}` and `name/layer_{l}/head_{h}` (see
`lensjax.io.names.flatten_metrics`). Per-unit arrays [L, F] are named
`units/...`; the host turns them into histograms and neuron events.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import optax

from lensjax.model import head_matrix
from lensjax.stats import spikes
from lensjax.stats.sparsity import dead_units, track_dead_units
from lensjax.train.loss import fused_loss, masked_token_mean

F32 = jnp.float32


class StepView(NamedTuple):
  """What a lens may look at; all of it already computed by the step."""
  batch: dict
  tokens: dict  # per-token float32 [B, T]: nll, and on logging steps entropy (+ target_entropy, kl)
  aux: dict  # per-layer summaries, leading axis L
  params: Any  # θ_t
  new_params: Any  # θ_{t+1}
  grads: Any
  updates: Any  # δ_t = θ_{t+1} − θ_t
  opt_state: Any  # after this step's update
  step: jax.Array


Lens = Callable[[StepView], dict]


def cross_entropy(logits_BxTxV, targets_BxT, mask_BxT):
  """Mean next-token cross-entropy over real tokens from explicit logits, in float32."""
  logits_BxTxV = logits_BxTxV.astype(F32)
  logz_BxT = jax.nn.logsumexp(logits_BxTxV, axis=-1)
  target_logit_BxT = jnp.take_along_axis(logits_BxTxV, targets_BxT[..., None], axis=-1)[..., 0]
  return masked_token_mean(logz_BxT - target_logit_BxT, mask_BxT)


def loss_and_outputs(params, batch, model, dropout_key, deterministic: bool):
  """Loss, per-token statistics and aux. The logging variant (collect_stats) adds the entropies."""
  h_BxTxD, aux = model.apply({"params": params}, batch["inputs"], batch["mask"], deterministic=deterministic,
                             rngs={"dropout": dropout_key}, return_hidden=True)
  mask_BxT = batch["mask"].astype(F32)
  weights_BxT = mask_BxT / jnp.maximum(jnp.sum(mask_BxT), 1.0)  # the loss is the mean over real tokens
  loss, tokens = fused_loss(h_BxTxD, head_matrix(params, model.cfg), batch["targets"], weights_BxT,
                            model.cfg.vocab_size, with_entropy=model.collect_stats,
                            target_probs_BxTxV=batch.get("target_probs") if model.collect_stats else None)
  return loss, (tokens, aux)


def global_norm(tree) -> jax.Array:
  """‖tree‖₂ over every coordinate, accumulated in float32."""
  return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(F32))) for x in jax.tree.leaves(tree)))


def _select(keep_new, new, old):
  return jax.tree.map(lambda n, o: jnp.where(keep_new, n, o), new, old)


def train_step(state, batch, *, model, tx, schedule, dead_window: int, lenses: Sequence[Lens] = (),
               nan_policy: str = "halt"):
  deterministic = model.cfg.dropout == 0.0
  dropout_key = jax.random.fold_in(state.rng, state.step)
  grad_fn = jax.value_and_grad(loss_and_outputs, has_aux=True)
  (loss, (tokens, aux)), grads = grad_fn(state.params, batch, model, dropout_key, deterministic)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  grad_norm = global_norm(grads)
  # A non-finite step changes nothing; under `halt` neither does any later one,
  # so the host finds the last good state when it notices and stops.
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
  apply = finite & ((state.first_bad_step < 0) | (nan_policy == "skip"))
  params, opt_state = _select(apply, (optax.apply_updates(state.params, updates), opt_state),
                              (state.params, state.opt_state))
  last_active, metrics = track_dead_units(state.unit_last_active, aux.get("ffn_unit_active"), state.step, dead_window)
  skipped = state.skipped_steps + (~finite).astype(jnp.int32)
  loss_window, spiked = spikes.update(state.loss_window, loss)
  spike_count = state.spike_count + spiked.astype(jnp.int32)
  last_spike_step = jnp.where(spiked, state.step, state.last_spike_step)
  metrics.update({"train/loss": loss, "train/grad_norm": grad_norm, "train/lr": schedule(state.step),
                  "train/skipped_steps": skipped, "spike/detected": spiked.astype(F32), "spike/count": spike_count,
                  "spike/last_step": last_spike_step})
  view = StepView(batch, tokens, aux, state.params, params, grads, updates, opt_state, state.step)
  for lens in lenses:
    metrics.update(lens(view))
  new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state, unit_last_active=last_active,
                            skipped_steps=skipped, loss_window=loss_window, spike_count=spike_count,
                            last_spike_step=last_spike_step,
                            first_bad_step=jnp.where((state.first_bad_step < 0) & ~finite, state.step,
                                                     state.first_bad_step))
  if model.collect_stats and last_active is not None:
    new_state, units = neuron_events(new_state, view, dead_window)
    metrics.update(units)
  return new_state, metrics


def neuron_events(state, view, dead_window: int):
  """Units that entered or left the dead set since the last logging step, with their context."""
  dead_LxF = dead_units(state.unit_last_active, state.step - 1, dead_window)
  units = {"units/died": dead_LxF & ~state.dead_at_last_log, "units/revived": ~dead_LxF & state.dead_at_last_log,
           "units/frequency": view.aux["ffn_unit_frequency"],
           "units/steps_since_active": (state.step - 1 - state.unit_last_active).astype(F32)}
  return state.replace(dead_at_last_log=dead_LxF), units


def eval_step(params, batch, *, model, lenses: Sequence[Lens] = (), loss_name: str = "eval/loss"):
  """Held-out loss (and held-out lenses) for one batch, without an update."""
  loss, (tokens, aux) = loss_and_outputs(params, batch, model, jax.random.PRNGKey(0), True)
  metrics = {loss_name: loss}
  view = StepView(batch, tokens, aux, params, params, None, None, None, jnp.zeros((), jnp.int32))
  for lens in lenses:
    metrics.update(lens(view))
  return metrics


def jit_train_step(state_sharding, batch_sharding, replicated, **parts):
  """The step compiled once, with shardings and the state donated."""
  return jax.jit(functools.partial(train_step, **parts), in_shardings=(state_sharding, batch_sharding),
                 out_shardings=(state_sharding, replicated), donate_argnums=0)
