"""Adam's moments as optax keeps them, wherever they sit in the optimiser chain."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from lensjax.ops.arrays import F32


def find_adam_state(opt_state) -> optax.ScaleByAdamState | None:
  """The first `ScaleByAdamState` in the optimiser state, or None."""
  is_adam = lambda x: isinstance(x, optax.ScaleByAdamState)
  found = [s for s in jax.tree_util.tree_leaves(opt_state, is_leaf=is_adam) if is_adam(s)]
  return found[0] if found else None


def bias_corrections(count, b1: float, b2: float) -> tuple[jax.Array, jax.Array]:
  """(1 − β₁^count, 1 − β₂^count): the denominators of m̂ and v̂ at this count."""
  count = jnp.asarray(count).astype(F32)
  return 1.0 - b1 ** count, 1.0 - b2 ** count


def second_moment(adam: optax.ScaleByAdamState, b2: float):
  """v̂ = ν / (1 − β₂^count) leaf by leaf; 0 before the first update (count 0, ν still empty)."""
  count = adam.count.astype(F32)
  correction = 1.0 - b2 ** count
  return jax.tree.map(lambda nu: jnp.where(count > 0, nu.astype(F32) / jnp.maximum(correction, 1e-30), 0.0), adam.nu)
