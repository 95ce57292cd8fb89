"""Persistence of active-unit sets between the two probes, against the exact chance level."""

from __future__ import annotations

import functools
import itertools
import math
from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lensjax.stats.persistence import PERSIST_NAMES, expected_random_jaccard, persistence, probe_persistence

THRESHOLD = 0.0


def jaccard_of_sets(x: set, y: set) -> float:
  return 1.0 if not x | y else len(x & y) / len(x | y)


@functools.cache
def brute_force_null(a: int, b: int, units: int) -> float:
  """The mean Jaccard over every pair of subsets of sizes a and b of range(units)."""
  pairs = [(set(x), set(y)) for x in itertools.combinations(range(units), a)
           for y in itertools.combinations(range(units), b)]
  return sum(jaccard_of_sets(x, y) for x, y in pairs) / len(pairs)


def exact_null(a: int, b: int, units: int) -> float:
  """E[I / (a + b − I)] over the hypergeometric law of I, in exact rational arithmetic."""
  if a == b == 0:
    return 1.0
  total = sum(Fraction(math.comb(a, i) * math.comb(units - a, b - i), a + b - i) * i
              for i in range(max(0, a + b - units), min(a, b) + 1))
  return float(total / math.comb(units, b))


def test_the_null_equals_brute_force_enumeration_for_every_pair_of_sizes():
  units = 6
  sizes = np.arange(units + 1)
  a_SxS, b_SxS = np.meshgrid(sizes, sizes, indexing="ij")
  got = np.asarray(expected_random_jaccard(jnp.asarray(a_SxS), jnp.asarray(b_SxS), units))
  want = np.vectorize(lambda a, b: brute_force_null(int(a), int(b), units))(a_SxS, b_SxS)
  np.testing.assert_allclose(got, want, atol=2e-7)
  assert got[0, 0] == 1.0 and got[units, units] == 1.0  # both empty, both everything
  assert got[0, 3] == 0.0  # one set empty, the other not


@pytest.mark.parametrize("a, b", [(1, 1), (10, 900), (512, 512), (1000, 1020), (1024, 3), (0, 5), (1024, 1024)])
def test_the_null_at_a_real_width_keeps_float32_precision(a, b):
  np.testing.assert_allclose(float(expected_random_jaccard(a, b, 1024)), exact_null(a, b, 1024), atol=2e-6)


def test_the_null_agrees_with_random_subsets_drawn_many_times():
  units, a, b, draws = 200, 30, 120, 20000
  rng = np.random.default_rng(0)
  x_DxF = np.argsort(rng.random((draws, units)), axis=1) < a  # a uniformly random subset of size a per draw
  y_DxF = np.argsort(rng.random((draws, units)), axis=1) < b
  samples = (x_DxF & y_DxF).sum(1) / (x_DxF | y_DxF).sum(1)
  standard_error = samples.std() / math.sqrt(draws)
  assert abs(float(expected_random_jaccard(a, b, units)) - samples.mean()) < 4 * standard_error


def reference(a_train, mask_train, a_heldout, mask_heldout, threshold=THRESHOLD) -> dict:
  """Sets of unit indices, loops over pairs, the brute-force null and np.corrcoef."""
  B, _, F = a_train.shape
  active = lambda a, m: (a > threshold) & (m[:, :, None] > 0)
  train, heldout = active(a_train, mask_train), active(a_heldout, mask_heldout)
  units_of = lambda x: {f for f in range(F) if x[..., f].any()}
  lift = lambda o, n: (o - n) / (1 - n) if n < 1 else math.nan
  out = {}
  s, t = units_of(train), units_of(heldout)
  out["batch_jaccard"], out["batch_jaccard_null"] = jaccard_of_sets(s, t), brute_force_null(len(s), len(t), F)
  pairs = [i for i in range(B) if mask_train[i].any() and mask_heldout[i].any()]
  observed = [jaccard_of_sets(units_of(train[i]), units_of(heldout[i])) for i in pairs]
  nulls = [brute_force_null(len(units_of(train[i])), len(units_of(heldout[i])), F) for i in pairs]
  out["seq_jaccard"] = np.mean(observed) if pairs else math.nan
  out["seq_jaccard_null"] = np.mean(nulls) if pairs else math.nan
  for level in ("batch", "seq"):
    out[f"{level}_lift"] = lift(out[f"{level}_jaccard"], out[f"{level}_jaccard_null"])
  f_train, f_heldout = train.sum((0, 1)) / mask_train.sum(), heldout.sum((0, 1)) / mask_heldout.sum()
  constant = np.ptp(f_train) == 0 or np.ptp(f_heldout) == 0
  out["frequency_corr"] = math.nan if constant else np.corrcoef(f_train, f_heldout)[0, 1]
  return out


# One compilation for all the hand-built probes of one shape, as the probe step compiles it.
jitted_persistence = jax.jit(persistence, static_argnums=4)


def computed(a_train, mask_train, a_heldout, mask_heldout) -> dict:
  return {k: float(v) for k, v in jitted_persistence(a_train, mask_train, a_heldout, mask_heldout, THRESHOLD).items()}


def check(got: dict, want: dict) -> None:
  assert set(got) == set(want)
  for name in want:
    np.testing.assert_allclose(got[name], want[name], atol=1e-6, err_msg=name)


# Four sequence pairs, T = 3 tokens, F = 6 units. Training row 3 is padding only (its pair does not count),
# held-out row 1 is padded after one token; padding fires units that no real token fires.
MASK_TRAIN = np.array([[1, 1, 1], [1, 1, 1], [1, 1, 0], [0, 0, 0]], np.float32)
MASK_HELDOUT = np.array([[1, 1, 1], [1, 0, 0], [1, 1, 1], [1, 1, 1]], np.float32)


def hand_built_probes():
  a_train = np.full((4, 3, 6), -1.0, np.float32)
  a_heldout = np.full((4, 3, 6), -1.0, np.float32)
  a_train[0, 0, [0, 1]] = 1.0
  a_train[0, 2, 2] = 0.5
  a_train[1, 1, [0, 3]] = 2.0
  a_train[2, 0, 0] = 1.0
  a_train[2, 2, 5] = 4.0  # padding
  a_train[3] = 1.0  # the padding row
  a_heldout[0, 1, [1, 2, 4]] = 1.0
  a_heldout[1, 0, 3] = 1.0
  a_heldout[1, 1:, :] = 3.0  # padding
  a_heldout[2, :, 0] = 0.2
  a_heldout[3, 2, 1] = 1.0
  return a_train, MASK_TRAIN, a_heldout, MASK_HELDOUT


def test_observed_values_and_nulls_match_numpy_with_padding():
  probes = hand_built_probes()
  got, want = computed(*probes), reference(*probes)
  check(got, want)
  # By hand: units {0,1,2,3} against {0,1,2,3,4}; pairs 0, 1 and 2 count: {0,1,2}~{1,2,4}, {0,3}~{3}, {0}~{0}.
  np.testing.assert_allclose(got["batch_jaccard"], 4 / 5, rtol=1e-6)
  np.testing.assert_allclose(got["seq_jaccard"], (2 / 4 + 1 / 2 + 1) / 3, rtol=1e-6)
  assert 0 < got["batch_lift"] < 1


def test_identical_sets_have_lift_one_and_correlated_frequencies():
  a_train, mask, _, _ = hand_built_probes()
  got = computed(a_train, mask, a_train, mask)
  check(got, reference(a_train, mask, a_train, mask))
  assert got["batch_jaccard"] == 1.0 and got["seq_jaccard"] == 1.0
  np.testing.assert_allclose([got["batch_lift"], got["seq_lift"], got["frequency_corr"]], 1.0, rtol=1e-6)


def test_a_dead_layer_and_a_saturated_layer_have_no_lift():
  mask = np.ones((4, 3), np.float32)
  dead = np.full((4, 3, 6), -1.0, np.float32)
  got = computed(dead, mask, dead, mask)
  check(got, reference(dead, mask, dead, mask))
  assert got["batch_jaccard"] == got["batch_jaccard_null"] == 1.0  # both sets empty
  assert all(math.isnan(got[name]) for name in ("batch_lift", "seq_lift", "frequency_corr"))

  rng = np.random.default_rng(4)
  saturated = np.where(rng.random((4, 3, 6)) < 0.5, 1.0, -1.0).astype(np.float32)
  saturated[:, 0, :] = 1.0  # every sequence uses every unit, at its first token
  reversed_rows = saturated[::-1].copy()
  got = computed(saturated, mask, reversed_rows, mask)
  check(got, reference(saturated, mask, reversed_rows, mask))
  assert got["batch_jaccard"] == got["batch_jaccard_null"] == got["seq_jaccard_null"] == 1.0
  assert math.isnan(got["batch_lift"]) and math.isnan(got["seq_lift"])
  assert np.isfinite(got["frequency_corr"])  # the units still fire at different rates


def test_one_empty_set_overlaps_nothing_and_without_real_pairs_sequences_are_nan():
  a_train, mask_train, _, _ = hand_built_probes()
  dead = np.full(a_train.shape, -1.0, np.float32)
  got = computed(a_train, mask_train, dead, MASK_HELDOUT)
  check(got, reference(a_train, mask_train, dead, MASK_HELDOUT))
  assert got["batch_jaccard"] == 0.0 and got["batch_jaccard_null"] == 0.0 and got["batch_lift"] == 0.0

  no_pairs = np.array([[1, 1, 1], [0, 0, 0], [1, 0, 0], [0, 0, 0]], np.float32)
  other = np.array([[0, 0, 0], [1, 1, 1], [0, 0, 0], [1, 0, 0]], np.float32)
  got = computed(a_train, no_pairs, a_train, other)
  check(got, reference(a_train, no_pairs, a_train, other))
  assert all(math.isnan(got[name]) for name in ("seq_jaccard", "seq_jaccard_null", "seq_lift"))


@pytest.mark.parametrize("scanned", [False, True])
def test_probe_persistence_reports_each_layer_under_persist_names(scanned):
  a_train, mask_train, a_heldout, mask_heldout = hand_built_probes()
  layers_train, layers_heldout = [a_train, -np.ones_like(a_train)], [a_heldout, -np.ones_like(a_heldout)]
  stack = (lambda xs: jnp.stack(xs)) if scanned else (lambda xs: tuple(map(jnp.asarray, xs)))
  metrics = jax.jit(functools.partial(probe_persistence, threshold=THRESHOLD))(
      {"mask": jnp.asarray(mask_train)}, {"ffn_hidden": stack(layers_train)},
      {"mask": jnp.asarray(mask_heldout)}, {"ffn_hidden": stack(layers_heldout)})
  assert set(metrics) == set(PERSIST_NAMES)
  for layer, probes in enumerate([(a_train, mask_train, a_heldout, mask_heldout),
                                  (layers_train[1], mask_train, layers_heldout[1], mask_heldout)]):
    check({name.removeprefix("persist/"): float(value[layer]) for name, value in metrics.items()}, reference(*probes))


def test_probes_of_different_shapes_are_refused():
  a = jnp.zeros((2, 3, 4))
  with pytest.raises(ValueError, match="one to one"):
    persistence(a, jnp.ones((2, 3)), jnp.zeros((4, 3, 4)), jnp.ones((4, 3)), THRESHOLD)
