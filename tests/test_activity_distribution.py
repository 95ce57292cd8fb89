"""Quantiles of FFN activity over tokens and over units, against NumPy on hand-built activations."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from conftest import make_tiny_config
from lensjax.ops.arrays import masked_quantiles
from lensjax.stats import lenses as lens_lib
from lensjax.stats.activity_distribution import QUANTILES, SUFFIXES, ActivityDistributionLens
from lensjax.stats.lens import Renamed, StepView

QS = (0.0, 0.1, 0.25, 0.5, 0.9, 0.99, 1.0)


def quantiles(x, mask, qs=QS):
  return np.asarray(masked_quantiles(jnp.asarray(x), jnp.asarray(mask), qs))


@pytest.mark.parametrize("case", ["distinct", "ties", "one real entry", "padding holds extremes", "two real"])
def test_masked_quantiles_match_numpy_on_the_real_entries(case):
  rng = np.random.default_rng(3)
  x = rng.normal(size=(4, 6)).astype(np.float32)
  mask = (rng.random((4, 6)) < 0.7).astype(np.float32)
  if case == "ties":
    x = np.array([[0.25, 0.5, 0.5, 0.5, 0.75, 0.25], [0.5, 0.5, 0.0, 0.0, 1.0, 0.5],
                  [0.25, 0.25, 0.25, 0.5, 0.5, 0.5], [1.0, 1.0, 1.0, 0.0, 0.0, 0.0]], np.float32)
  elif case == "one real entry":
    mask = np.zeros_like(mask)
    mask[2, 3] = 1.0
  elif case == "padding holds extremes":
    x[mask == 0] = np.where(rng.random(int((mask == 0).sum())) < 0.5, -1e6, 1e6)
  elif case == "two real":
    mask = np.zeros_like(mask)
    mask[0, 0] = mask[3, 5] = 1.0
  want = np.quantile(x[mask > 0].astype(np.float64), QS)
  np.testing.assert_allclose(quantiles(x, mask), want, rtol=1e-6, atol=1e-7)


def test_masked_quantiles_interpolate_as_numpy_by_hand():
  # Real entries 1, 2, 4, 8 (padding 100): q = 0.5 sits at position 1.5, halfway between 2 and 4.
  x = np.array([8.0, 100.0, 1.0, 4.0, 2.0], np.float32)
  mask = np.array([1, 0, 1, 1, 1], np.float32)
  np.testing.assert_allclose(quantiles(x, mask, (0.0, 0.5, 0.9, 1.0)), [1.0, 3.0, 4.0 + 0.7 * 4.0, 8.0], rtol=1e-6)


def test_masked_quantiles_of_nothing_are_nan_and_a_scalar_mask_broadcasts():
  x = np.arange(5, dtype=np.float32)
  assert np.all(np.isnan(quantiles(x, np.zeros(5, np.float32))))
  assert np.all(np.isnan(quantiles(x, False)))
  assert np.all(np.isnan(quantiles(np.zeros((0,), np.float32), np.zeros((0,), np.float32))))
  np.testing.assert_allclose(quantiles(x, True), np.quantile(x, QS), rtol=1e-6)


# Two layers of B = 3 sequences, T = 4 tokens, F = 5 units. Row 1 is padded after 2 tokens, row 2 is padding
# only; padding fires units that no real token fires, which must not count.
MASK_3x4 = np.array([[1, 1, 1, 1], [1, 1, 0, 0], [0, 0, 0, 0]], np.float32)
THRESHOLD = 0.25


def hand_built_layer() -> np.ndarray:
  a = np.full((3, 4, 5), -1.0, np.float32)
  a[0, 0, :3] = 1.0  # 3 of 5
  a[0, 1, 0] = 0.3  # 1 of 5
  a[0, 2, 1] = THRESHOLD  # at the threshold: not active (0 of 5)
  a[0, 3, [0, 1, 4]] = 2.0  # 3 of 5
  a[1, 0, 0] = 0.5  # 1 of 5
  a[1, 1, :] = 0.9  # 5 of 5
  a[1, 2:, 3] = 9.0  # unit 3 on padding only
  a[2] = 9.0  # the padding row fires everything
  return a


def reference(a_BxTxF, mask_BxT, threshold):
  """Loops over tokens and units: the real tokens' active fractions and the units' frequencies, np.quantile."""
  B, T, F = a_BxTxF.shape
  fractions, fired, real = [], np.zeros(F), 0
  for b in range(B):
    for t in range(T):
      if mask_BxT[b, t] > 0:
        real += 1
        on = [a_BxTxF[b, t, f] > threshold for f in range(F)]
        fractions.append(sum(on) / F)
        fired += on
  if not real:
    return np.full(len(QUANTILES), np.nan), np.full(len(QUANTILES), np.nan)
  return np.quantile(fractions, QUANTILES), np.quantile(fired / real, QUANTILES)


def lens_metrics(per_layer, mask, threshold=THRESHOLD):
  view = StepView({"mask": jnp.asarray(mask)}, {}, {"ffn_hidden": per_layer}, None, None, None, None, None, None,
                  jnp.zeros((), jnp.int32), True)
  return {k: np.asarray(v) for k, v in ActivityDistributionLens(threshold).update(None, view)[1].items()}


def check_against_reference(metrics, layers, mask, threshold=THRESHOLD):
  names = {f"ffn/{kind}_{suffix}" for kind in ("active_token", "unit_frequency") for suffix in SUFFIXES}
  assert set(metrics) == names
  for l, a in enumerate(layers):
    tokens_Q, units_Q = reference(a, mask, threshold)
    for q, suffix in enumerate(SUFFIXES):
      np.testing.assert_allclose(metrics[f"ffn/active_token_{suffix}"][l], tokens_Q[q], rtol=1e-6, atol=1e-7)
      np.testing.assert_allclose(metrics[f"ffn/unit_frequency_{suffix}"][l], units_Q[q], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("scanned", [False, True])
def test_lens_matches_numpy_with_padding_and_an_all_dead_layer(scanned):
  live = hand_built_layer()
  dead = -np.abs(np.random.default_rng(1).normal(size=live.shape)).astype(np.float32)
  dead[2] = 5.0  # even the dead layer fires on padding
  layers = [live, dead]
  per_layer = jnp.stack(layers) if scanned else tuple(map(jnp.asarray, layers))
  metrics = lens_metrics(per_layer, MASK_3x4)
  check_against_reference(metrics, layers, MASK_3x4)
  # By hand, the live layer: real-token fractions {0.6, 0.2, 0, 0.6, 0.2, 1}; the median is 0.4.
  np.testing.assert_allclose(metrics["ffn/active_token_p50"][0], 0.4, rtol=1e-6)
  # Unit frequencies over the 6 real tokens: unit 0 on 5, unit 1 on 3, unit 2 on 2, unit 3 on 1, unit 4 on 2.
  np.testing.assert_allclose(metrics["ffn/unit_frequency_p50"][0], 2 / 6, rtol=1e-6)
  for name in metrics:  # the all-dead layer
    assert metrics[name][1] == 0.0, name


def test_a_batch_without_real_tokens_has_no_quantiles():
  metrics = lens_metrics((jnp.asarray(hand_built_layer()),), np.zeros((3, 4), np.float32))
  assert all(np.isnan(value).all() for value in metrics.values())


def test_lens_runs_on_the_training_logging_step_and_on_both_probes():
  config = make_tiny_config()
  assert any(isinstance(lens, ActivityDistributionLens) for lens in lens_lib.train_lenses(config))
  for prefix, lenses in (("probe/", lens_lib.probe_lenses(config)),
                         ("probe_train/", lens_lib.probe_lenses(config, "probe_train/"))):
    assert any(isinstance(lens, Renamed) and isinstance(lens.inner, ActivityDistributionLens)
               and lens.prefix == prefix for lens in lenses), prefix
  assert not any(isinstance(lens, ActivityDistributionLens) for lens in lens_lib.train_lenses(config)
                 if lens.every_step)
  attention_only = make_tiny_config(**{"model.block": "attention_only"})
  for lenses in (lens_lib.train_lenses(attention_only), lens_lib.probe_lenses(attention_only)):
    assert not any(isinstance(getattr(lens, "inner", lens), ActivityDistributionLens) for lens in lenses)
