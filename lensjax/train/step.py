"""Pure train and eval steps.

`train_step(state, batch) -> (state, metrics)` is one screen long. Statistics
come from lenses (`lensjax.stats.lens`): the step computes the loss, the
gradient and the update, hands a `StepView` of them to each lens and collects
their new state and metrics. The plain and the logging variant differ only in
the lenses they carry (and so in what the model captures and whether the loss
computes per-token entropies), so the plain step pays for no statistic it does
not run.

Metric values are scalars, or vectors [L] / matrices [L, H] that the host
expands to `name/layer_{l}` and `name/layer_{l}/head_{h}` (see
`lensjax.io.names.flatten_metrics`). Per-unit arrays [L, F] are named
`units/...`; the lenses' host halves turn them into histograms and events.
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import optax

from lensjax.model import CAPTURES, Transformer, head_matrix
from lensjax.ops.arrays import F32
from lensjax.ops.trees import tree_norm
from lensjax.stats import lens as lens_lib
from lensjax.stats.lens import TOKEN_ENTROPY, Lens, StepView
from lensjax.train.loss import fused_loss


def model_for(cfg, lenses: Sequence[Lens]) -> Transformer:
  """The model that captures exactly what `lenses` need."""
  return Transformer(cfg, capture=tuple(sorted(lens_lib.needs_of(lenses) & CAPTURES.keys())))


def loss_and_outputs(params, batch, model, dropout_key, with_entropy: bool):
  """Loss, per-token statistics (entropies only `with_entropy`) and the model's captured tensors."""
  h_BxTxD, captured = model.apply({"params": params}, batch["inputs"], batch["mask"],
                                  deterministic=model.cfg.dropout == 0.0, rngs={"dropout": dropout_key},
                                  return_hidden=True)
  mask_BxT = batch["mask"].astype(F32)
  weights_BxT = mask_BxT / jnp.maximum(jnp.sum(mask_BxT), 1.0)  # the loss is the mean over real tokens
  loss, tokens = fused_loss(h_BxTxD, head_matrix(params, model.cfg), batch["targets"], weights_BxT,
                            model.cfg.vocab_size, with_entropy=with_entropy,
                            target_probs_BxTxV=batch.get("target_probs") if with_entropy else None,
                            max_chunk_logits=model.cfg.loss_chunk_logits, logits_dtype=model.cfg.loss_logits_dtype)
  return loss, (tokens, captured)


def _select(keep_new, new, old):
  return jax.tree.map(lambda n, o: jnp.where(keep_new, n, o), new, old)


def train_step(state, batch, *, model, tx, schedule, lenses: Sequence[Lens] = (), logging: bool = False,
               nan_policy: str = "halt"):
  dropout_key = jax.random.fold_in(state.rng, state.step)
  grad_fn = jax.value_and_grad(loss_and_outputs, has_aux=True)
  with_entropy = TOKEN_ENTROPY in lens_lib.needs_of(lenses)
  (loss, (tokens, captured)), grads = grad_fn(state.params, batch, model, dropout_key, with_entropy)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  grad_norm = tree_norm(grads)
  # A non-finite step changes nothing; under `halt` neither does any later one,
  # so the host finds the last good state when it notices and stops.
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
  apply = finite & ((state.first_bad_step < 0) | (nan_policy == "skip"))
  params, opt_state = _select(apply, (optax.apply_updates(state.params, updates), opt_state),
                              (state.params, state.opt_state))
  view = StepView(batch, tokens, captured, loss, state.params, params, grads, updates, opt_state, state.step, logging)
  lens_state, metrics = lens_lib.run(lenses, state.lens_state, view)
  skipped = state.skipped_steps + (~finite).astype(jnp.int32)
  metrics.update({"train/loss": loss, "train/grad_norm": grad_norm, "train/lr": schedule(state.step),
                  "train/skipped_steps": skipped})
  first_bad = jnp.where((state.first_bad_step < 0) & ~finite, state.step, state.first_bad_step)
  return state.replace(step=state.step + 1, params=params, opt_state=opt_state, lens_state=lens_state,
                       skipped_steps=skipped, first_bad_step=first_bad), metrics


def evaluated(params, batch, model, lenses: Sequence[Lens], loss_name: str) -> tuple[dict, dict]:
  """`(metrics, captured)`: one batch's loss and lenses without an update, and what the model captured."""
  with_entropy = TOKEN_ENTROPY in lens_lib.needs_of(lenses)
  loss, (tokens, captured) = loss_and_outputs(params, batch, model, jax.random.PRNGKey(0), with_entropy)
  view = StepView(batch, tokens, captured, loss, params, params, None, None, None, jnp.zeros((), jnp.int32), True)
  _, metrics = lens_lib.run(lenses, {}, view)
  return {loss_name: loss, **metrics}, captured


def eval_step(params, batch, *, model, lenses: Sequence[Lens] = (), loss_name: str = "eval/loss"):
  """Held-out loss (and held-out lenses) for one batch, without an update."""
  return evaluated(params, batch, model, lenses, loss_name)[0]


def probe_step(params, train_probe, heldout_probe, *, model, train_lenses: Sequence[Lens],
               heldout_lenses: Sequence[Lens], compare=None):
  """Both fixed probes without an update: each one's loss and lenses (`probe_train/`, `probe/`), and
  `compare(train_probe, its captures, heldout_probe, its captures)`, statistics of the pair, from the same
  forward passes."""
  train_metrics, train_captured = evaluated(params, train_probe, model, train_lenses, "probe_train/loss")
  heldout_metrics, heldout_captured = evaluated(params, heldout_probe, model, heldout_lenses, "probe/loss")
  pair = compare(train_probe, train_captured, heldout_probe, heldout_captured) if compare else {}
  return {**train_metrics, **heldout_metrics, **pair}


def jit_train_step(state_sharding, batch_sharding, replicated, **parts):
  """The step compiled once, with shardings and the state donated."""
  return jax.jit(functools.partial(train_step, **parts), in_shardings=(state_sharding, batch_sharding),
                 out_shardings=(state_sharding, replicated), donate_argnums=0)
