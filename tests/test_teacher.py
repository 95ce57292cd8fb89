"""The teacher Transformer target: true conditionals, sampling, determinism, process split."""

from __future__ import annotations

import numpy as np
import pytest

from lensjax.data import base
from lensjax.data.teacher import TeacherTarget

V, T = 6, 8


@pytest.fixture(scope="module")
def teacher():
  return TeacherTarget(V, T, seed=3, num_layers=1, d_model=16, num_heads=2, temperature=1.0)


@pytest.fixture(scope="module")
def big_batch(teacher):
  # Large enough that 5-sigma bounds are tight: ~1365 sequences per first token.
  return teacher.batch(0, 8192)


def test_batch_layout_and_conditionals_sum_to_one(teacher):
  batch = teacher.batch(1, 8)
  assert batch["inputs"].shape == batch["targets"].shape == (8, T)
  assert batch["inputs"].dtype == batch["targets"].dtype == np.int32
  np.testing.assert_array_equal(batch["inputs"][:, 1:], batch["targets"][:, :-1])
  np.testing.assert_array_equal(batch["mask"], 1.0)
  probs = batch["target_probs"]
  assert probs.shape == (8, T, V) and probs.dtype == np.float32
  assert np.all(probs >= 0)
  np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)


def test_target_probs_equal_token_conditionals_of_the_inputs(teacher):
  batch = teacher.batch(2, 8)
  np.testing.assert_allclose(teacher.token_conditionals(batch["inputs"]), batch["target_probs"], rtol=1e-5,
                             atol=1e-6)
  # Causal: the conditionals of a prefix do not depend on what follows it.
  np.testing.assert_allclose(teacher.token_conditionals(batch["inputs"][:, :3]), batch["target_probs"][:, :3],
                             rtol=1e-5, atol=1e-6)


def test_second_token_follows_the_conditional_given_the_first(teacher, big_batch):
  first, second = big_batch["inputs"][:, 0], big_batch["targets"][:, 0]
  # First tokens are uniform: each count is within 5 binomial std of N/V.
  counts = np.bincount(first, minlength=V)
  n = len(first)
  assert np.all(np.abs(counts - n / V) <= 5 * np.sqrt(n * (1 / V) * (1 - 1 / V)))
  for v in range(V):
    p = teacher.token_conditionals(np.array([[v]]))[0, 0]
    observed = np.bincount(second[first == v], minlength=V) / counts[v]
    # 5 binomial standard deviations per cell: fails by chance ~1e-6.
    tolerance = 5 * np.sqrt(p * (1 - p) / counts[v]) + 1 / counts[v]
    assert np.all(np.abs(observed - p) <= tolerance), (v, observed, p)


def test_last_token_frequencies_match_the_mean_conditional(teacher, big_batch):
  # E[1{x_T = v}] = E[p(v | x<T)]: checks the sampler at the end of the sequence too.
  last, probs = big_batch["targets"][:, -1], big_batch["target_probs"][:, -1]
  observed = np.bincount(last, minlength=V) / len(last)
  expected = probs.mean(axis=0)
  tolerance = 5 * np.sqrt(expected * (1 - expected) / len(last))
  assert np.all(np.abs(observed - expected) <= tolerance), (observed, expected)
  # The teacher is not uniform, so this was not a check of uniform noise.
  assert np.abs(expected - 1 / V).max() > 0.02


def test_is_deterministic_per_seed_step_and_split(teacher):
  first = teacher.batch(3, 8)
  again = TeacherTarget(V, T, seed=3, num_layers=1, d_model=16, num_heads=2).batch(3, 8)
  for key in first:
    np.testing.assert_array_equal(first[key], again[key])
  assert not np.array_equal(first["inputs"], teacher.batch(4, 8)["inputs"])
  assert not np.array_equal(first["inputs"], teacher.batch(3, 8, split="heldout")["inputs"])
  other = TeacherTarget(V, T, seed=4, num_layers=1, d_model=16, num_heads=2)
  assert not np.allclose(other.token_conditionals(first["inputs"]), first["target_probs"])


def test_process_shards_concatenate_to_global_batch(teacher):
  for split in base.SPLITS:
    whole = teacher.batch(5, 8, split=split)
    for count in (2, 4):
      parts = [teacher.batch(5, 8, split=split, process_index=p, process_count=count) for p in range(count)]
      for key in whole:
        np.testing.assert_array_equal(np.concatenate([part[key] for part in parts]), whole[key])
