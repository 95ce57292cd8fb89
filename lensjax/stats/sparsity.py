"""FFN dynamic sparsity: token / sequence / batch activity and dead units.

The model's aux carries, per layer, the active fractions (computed where the
activations live) and `ffn_unit_active` [L, F], whether each unit fired on at
least one real token of the batch. Dead-unit tracking runs on every step from
that flag alone.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def dead_units(last_active_LxF: jax.Array, step: jax.Array, window: int) -> jax.Array:
  """A unit is dead at `step` when it fired on none of the last `window` steps."""
  return (step - last_active_LxF) >= window


def track_dead_units(last_active_LxF, unit_active_LxF, step, window: int):
  """Updates the per-unit last-active step and reports dead / died / revived.

  Returns `(new_last_active_LxF, metrics)` where the metrics are [L] vectors.
  """
  if last_active_LxF is None:  # no FFN in this model
    return last_active_LxF, {}
  was_dead = dead_units(last_active_LxF, step - 1, window)
  new_last_active = jnp.where(unit_active_LxF, step, last_active_LxF)
  is_dead = dead_units(new_last_active, step, window)
  count = lambda x: jnp.sum(x, axis=-1).astype(jnp.float32)
  metrics = {
      "ffn/dead": jnp.mean(is_dead.astype(jnp.float32), axis=-1),
      "ffn/died": count(is_dead & ~was_dead),
      "ffn/revived": count(~is_dead & was_dead),
  }
  return new_last_active, metrics


_ACTIVITY_NAMES = {"ffn_active_token": "ffn/active_token", "ffn_active_seq": "ffn/active_seq",
                   "ffn_active_batch": "ffn/active_batch"}


def activity_lens(view) -> dict:
  """Per-layer token / sequence / batch active fractions, [L] each."""
  return {name: view.aux[key] for key, name in _ACTIVITY_NAMES.items() if key in view.aux}


def eval_activity_lens(view) -> dict:
  return {"eval/" + name: value for name, value in activity_lens(view).items()}


def jaccard(a_LxF: jax.Array, b_LxF: jax.Array) -> jax.Array:
  """Per-layer |A ∩ B| / |A ∪ B| of two sets of units; 1 when both are empty."""
  intersection = jnp.sum(a_LxF & b_LxF, axis=-1).astype(jnp.float32)
  union = jnp.sum(a_LxF | b_LxF, axis=-1).astype(jnp.float32)
  return jnp.where(union > 0, intersection / jnp.maximum(union, 1.0), 1.0)
