"""Masked reductions over arrays, accumulated in float32."""

from __future__ import annotations

import jax
import jax.numpy as jnp

F32 = jnp.float32


def masked_mean(x, mask) -> jax.Array:
  """Mean of `x` over the entries where `mask` is 1 (0 when there are none), in float32."""
  x, mask = x.astype(F32), mask.astype(F32)
  return jnp.sum(x * mask) / jnp.maximum(jnp.sum(mask), 1.0)
