"""Masked reductions over arrays, accumulated in float32."""

from __future__ import annotations

import jax
import jax.numpy as jnp

F32 = jnp.float32


def masked_mean(x, mask) -> jax.Array:
  """Mean of `x` over the entries where `mask` is 1 (0 when there are none), in float32."""
  x, mask = x.astype(F32), mask.astype(F32)
  return jnp.sum(x * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def masked_quantiles(x, mask, qs) -> jax.Array:
  """float32 [Q]: the quantiles `qs` of the entries of `x` where `mask` > 0 (`mask` broadcasts to `x`), as
  numpy.quantile's default ("linear") method defines them; NaN when no entry is real.

  The k-th smallest of the n real entries sits at position k − 1; quantile q interpolates linearly between
  the two entries around position q·(n − 1).
  """
  x_N = jnp.ravel(x).astype(F32)
  real_N = jnp.ravel(jnp.broadcast_to(mask, jnp.shape(x))) > 0
  qs_Q = jnp.asarray(qs, F32)
  if x_N.size == 0:
    return jnp.full(qs_Q.shape, jnp.nan, F32)
  count = jnp.sum(real_N)
  # Padding sorts after every real entry, so the real ones fill positions 0..n−1.
  sorted_N = jnp.sort(jnp.where(real_N, x_N, jnp.inf))
  position_Q = qs_Q * jnp.maximum(count - 1, 0).astype(F32)
  below_Q = jnp.floor(position_Q)
  low_Q = jnp.clip(below_Q.astype(jnp.int32), 0, x_N.size - 1)
  high_Q = jnp.clip(jnp.minimum(low_Q + 1, count - 1), 0, x_N.size - 1)
  low, high = sorted_N[low_Q], sorted_N[high_Q]
  # Equal neighbours give the value itself even when it is infinite (inf − inf would be NaN).
  value_Q = jnp.where(high == low, low, low + (position_Q - below_Q) * (high - low))
  return jnp.where(count > 0, value_Q, jnp.nan)
