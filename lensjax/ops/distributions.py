"""Entropy and KL divergence of categorical distributions over the last axis, with 0 log 0 = 0.

In jnp (traceable) from probabilities or log-probabilities, and in
NumPy float64 for laws known on the host.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def entropy_of_probs(p_xV) -> jax.Array:
  """H(p) = −Σ p log p."""
  positive = p_xV > 0
  return -jnp.sum(jnp.where(positive, p_xV * jnp.log(jnp.where(positive, p_xV, 1.0)), 0.0), axis=-1)


def entropy_of_log_probs(log_p_xV) -> jax.Array:
  """H(p) from log p (−inf allowed)."""
  p = jnp.exp(log_p_xV)
  return -jnp.sum(jnp.where(p > 0, p * log_p_xV, 0.0), axis=-1)


def kl_of_probs(p_xV, log_q_xV) -> jax.Array:
  """KL(p ‖ q) = Σ p (log p − log q) from p and log q."""
  positive = p_xV > 0
  log_p = jnp.log(jnp.where(positive, p_xV, 1.0))
  return jnp.sum(jnp.where(positive, p_xV * (log_p - log_q_xV), 0.0), axis=-1)


def kl_of_log_probs(log_p_xV, log_q_xV) -> jax.Array:
  """KL(p ‖ q) from log p and log q."""
  p = jnp.exp(log_p_xV)
  return jnp.sum(jnp.where(p > 0, p * (log_p_xV - log_q_xV), 0.0), axis=-1)


def entropy_nats(probs_NxV) -> np.ndarray:
  """Shannon entropy of each row in float64 on the host."""
  probs_NxV = np.asarray(probs_NxV, np.float64)
  logs = np.log(np.where(probs_NxV > 0, probs_NxV, 1.0))
  return -(probs_NxV * logs).sum(axis=-1)
