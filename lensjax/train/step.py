"""Pure train and eval steps.

`train_step(state, batch) -> (state, metrics)` is one screen long. Statistics
are plugged in as *lenses*: pure functions `lens(view) -> {name: array}` of a
`StepView`, which holds what the step already computed. The plain and the
logging variant of the step differ only in the model (`collect_stats`) and the
lenses they are built with, so the plain step pays nothing for statistics.

Metric values are scalars, or vectors [L] / matrices [L, H] that the host
expands to `name/layer_{l}` and `name/layer_{l}/head_{h}` (see
`lensjax.io.names.flatten_metrics`).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import optax

from lensjax.stats.sparsity import track_dead_units

F32 = jnp.float32


class StepView(NamedTuple):
  """What a lens may look at; all of it already computed by the step."""
  batch: dict
  logits: jax.Array  # float32 [B, T, V]
  aux: dict  # per-layer summaries, leading axis L
  params: Any  # θ_t
  new_params: Any  # θ_{t+1}
  grads: Any
  updates: Any  # δ_t = θ_{t+1} − θ_t
  opt_state: Any  # after this step's update
  step: jax.Array


Lens = Callable[[StepView], dict]


def cross_entropy(logits_BxTxV, targets_BxT, mask_BxT):
  """Mean next-token cross-entropy over real tokens, in float32."""
  logits_BxTxV = logits_BxTxV.astype(F32)
  logz_BxT = jax.nn.logsumexp(logits_BxTxV, axis=-1)
  target_logit_BxT = jnp.take_along_axis(logits_BxTxV, targets_BxT[..., None], axis=-1)[..., 0]
  nll_BxT = logz_BxT - target_logit_BxT
  return jnp.sum(nll_BxT * mask_BxT) / jnp.maximum(jnp.sum(mask_BxT), 1.0)


def loss_and_outputs(params, batch, model, dropout_key, deterministic: bool):
  logits, aux = model.apply({"params": params}, batch["inputs"], batch["mask"], deterministic=deterministic,
                            rngs={"dropout": dropout_key})
  return cross_entropy(logits, batch["targets"], batch["mask"]), (logits, aux)


def train_step(state, batch, *, model, tx, schedule, dead_window: int, lenses: Sequence[Lens] = ()):
  deterministic = model.cfg.dropout == 0.0
  dropout_key = jax.random.fold_in(state.rng, state.step)
  grad_fn = jax.value_and_grad(loss_and_outputs, has_aux=True)
  (loss, (logits, aux)), grads = grad_fn(state.params, batch, model, dropout_key, deterministic)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  last_active, metrics = track_dead_units(state.unit_last_active, aux.get("ffn_unit_active"), state.step, dead_window)
  metrics.update({"train/loss": loss, "train/grad_norm": optax.global_norm(grads), "train/lr": schedule(state.step)})
  view = StepView(batch, logits, aux, state.params, params, grads, updates, opt_state, state.step)
  for lens in lenses:
    metrics.update(lens(view))
  new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state, unit_last_active=last_active)
  return new_state, metrics


def eval_step(params, batch, *, model, lenses: Sequence[Lens] = ()):
  """Held-out loss (and held-out lenses) for one batch, without an update."""
  loss, (logits, aux) = loss_and_outputs(params, batch, model, jax.random.PRNGKey(0), True)
  metrics = {"eval/loss": loss}
  view = StepView(batch, logits, aux, params, params, None, None, None, jnp.zeros((), jnp.int32))
  for lens in lenses:
    metrics.update(lens(view))
  return metrics


def jit_train_step(state_sharding, batch_sharding, replicated, **parts):
  """The step compiled once, with shardings and the state donated."""
  return jax.jit(functools.partial(train_step, **parts), in_shardings=(state_sharding, batch_sharding),
                 out_shardings=(state_sharding, replicated), donate_argnums=0)
