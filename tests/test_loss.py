"""The chunked loss: same values and gradients as the plain whole-logits loss."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lensjax.train.loss import chunk_length, fused_loss, token_statistics

B, T, D, V, V_PADDED = 4, 12, 8, 10, 16


def inputs():
  keys = jax.random.split(jax.random.PRNGKey(0), 3)
  h_BxTxD = jax.random.normal(keys[0], (B, T, D))
  head_DxV = jax.random.normal(keys[1], (D, V_PADDED))
  targets_BxT = jax.random.randint(keys[2], (B, T), 0, V)
  # Right padding of various lengths, and one sequence that is all padding.
  mask_BxT = (jnp.arange(T)[None, :] < jnp.array([12, 10, 5, 0])[:, None]).astype(jnp.float32)
  return h_BxTxD, head_DxV, targets_BxT, mask_BxT / mask_BxT.sum()


def plain_loss(h_BxTxD, head_DxV, targets_BxT, weights_BxT):
  z_BxTxV = (h_BxTxD @ head_DxV)[..., :V]  # the padded columns are not part of the vocabulary
  nll_BxT = jax.nn.logsumexp(z_BxTxV, -1) - jnp.take_along_axis(z_BxTxV, targets_BxT[..., None], -1)[..., 0]
  return jnp.sum(nll_BxT * weights_BxT)


@pytest.mark.parametrize("max_chunk_logits", [10**9, B * 3 * V_PADDED, B * V_PADDED])
def test_fused_loss_and_gradients_equal_the_plain_loss(max_chunk_logits):
  h, head, targets, weights = inputs()
  fused = lambda h, head: fused_loss(h, head, targets, weights, V, max_chunk_logits=max_chunk_logits)[0]
  loss, (dh, dhead) = jax.value_and_grad(fused, argnums=(0, 1))(h, head)
  want, (want_dh, want_dhead) = jax.value_and_grad(plain_loss, argnums=(0, 1))(h, head, targets, weights)
  np.testing.assert_allclose(loss, want, rtol=1e-6)
  np.testing.assert_allclose(dh, want_dh, atol=1e-6)
  np.testing.assert_allclose(dhead, want_dhead, atol=1e-6)
  assert np.all(np.asarray(dhead)[:, V:] == 0.0), "padded vocabulary columns must get no gradient"


def test_fused_statistics_equal_the_gradient_free_path_and_chunks_tile_the_sequence():
  h, head, targets, weights = inputs()
  assert chunk_length(B, T, V_PADDED, B * 5 * V_PADDED) == 4  # the largest divisor of 12 that fits
  whole = token_statistics(h, head, targets, V, with_entropy=True)
  for max_chunk_logits in (B * 4 * V_PADDED, B * V_PADDED):
    _, fused = fused_loss(h, head, targets, weights, V, with_entropy=True, max_chunk_logits=max_chunk_logits)
    for key in ("nll", "entropy"):
      np.testing.assert_allclose(fused[key], whole[key], rtol=1e-6, atol=1e-6)


def test_bfloat16_inputs_give_gradients_of_their_own_dtype():
  h, head, targets, weights = inputs()
  grads = jax.grad(lambda h, head: fused_loss(h, head, targets, weights, V)[0], argnums=(0, 1))(
      h.astype(jnp.bfloat16), head.astype(jnp.bfloat16))
  assert grads[0].dtype == jnp.bfloat16 and grads[1].dtype == jnp.bfloat16
