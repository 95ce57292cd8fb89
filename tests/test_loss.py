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


def test_bfloat16_logits_are_the_float32_loss_of_the_rounded_logits():
  """With model.loss_logits_dtype=bfloat16 only the stored logits are rounded: the loss and dL/dz are those of
  the rounded logits, computed in float32 (a float64 NumPy reference), and differ from the float32 path's."""
  h, head, targets, weights = inputs()
  z64 = np.asarray(h, np.float64) @ np.asarray(head, np.float64)
  rounded = np.asarray(jnp.asarray(z64, jnp.bfloat16), np.float64)[..., :V]
  nll = (np.log(np.exp(rounded - rounded.max(-1, keepdims=True)).sum(-1)) + rounded.max(-1)
         - np.take_along_axis(rounded, np.asarray(targets)[..., None], -1)[..., 0])
  want = float(np.sum(nll * np.asarray(weights, np.float64)))
  for max_chunk_logits in (10**9, B * V_PADDED):
    loss, stats = fused_loss(h, head, targets, weights, V, max_chunk_logits=max_chunk_logits,
                             logits_dtype="bfloat16", with_entropy=True)
    assert float(loss) == pytest.approx(want, rel=2e-6)
    np.testing.assert_allclose(np.asarray(stats["nll"]) * (np.asarray(weights) > 0), nll * (np.asarray(weights) > 0),
                               rtol=2e-5, atol=2e-5)
  float32_loss = float(fused_loss(h, head, targets, weights, V)[0])
  assert abs(float32_loss - want) > 1e-5  # the rounding is real: the option is not a no-op
  assert abs(float32_loss - want) < 1e-2 * abs(want)
  # Its gradient is that of the rounded logits' softmax: within bfloat16 rounding of the float32 one.
  grad = lambda dtype: jax.grad(lambda h: fused_loss(h, head, targets, weights, V, logits_dtype=dtype)[0])(h)
  np.testing.assert_allclose(grad("bfloat16"), grad("float32"), atol=2e-3)


def test_the_model_config_chooses_the_training_loss_chunks_and_logits_dtype():
  """model.loss_chunk_logits and model.loss_logits_dtype reach the loss of the train step."""
  import dataclasses
  from lensjax.config import ModelConfig
  from lensjax.train.step import loss_and_outputs, model_for
  cfg = ModelConfig(num_layers=1, d_model=16, num_heads=2, d_ff=32, vocab_size=V, max_len=T)
  tokens_BxT = jax.random.randint(jax.random.PRNGKey(3), (B, T + 1), 0, V)
  batch = {"inputs": tokens_BxT[:, :-1], "targets": tokens_BxT[:, 1:], "mask": jnp.ones((B, T), jnp.int32)}
  params = model_for(cfg, ()).init(jax.random.PRNGKey(0), batch["inputs"])["params"]

  def loss(**changes):
    model = model_for(dataclasses.replace(cfg, **changes), ())
    return float(loss_and_outputs(params, batch, model, jax.random.PRNGKey(1), False)[0])

  reference = loss()
  assert loss(loss_chunk_logits=B * V) == pytest.approx(reference, rel=1e-6)  # 12 chunks of one position
  rounded = loss(loss_logits_dtype="bfloat16")
  assert rounded != reference and rounded == pytest.approx(reference, rel=1e-2)
