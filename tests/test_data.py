"""Data sources: true conditionals, determinism, sharding, input errors."""

from __future__ import annotations

import numpy as np
import pytest

from lensjax.data import base
from lensjax.data import ByteText
from lensjax.data import default_corpus_bytes
from lensjax.data import MarkovTarget
from lensjax.data import Source
from lensjax.data import text
from lensjax.data import TokenFile
from lensjax.errors import InputError


def full_sequences(batch: dict[str, np.ndarray]) -> np.ndarray:
  """[B, T+1]: the sequences a batch was cut from."""
  return np.concatenate([batch["inputs"], batch["targets"][:, -1:]], axis=1)


def write_ids(path, ids, dtype="<u2") -> str:
  np.asarray(ids, dtype=dtype).tofile(path)
  return str(path)


def check_batch_layout(batch, rows, seq_len, vocab_size, knows_conditionals):
  assert batch["inputs"].shape == (rows, seq_len)
  assert batch["inputs"].dtype == np.int32
  assert batch["targets"].dtype == np.int32
  assert batch["mask"].dtype == np.float32
  np.testing.assert_array_equal(batch["mask"], 1.0)
  np.testing.assert_array_equal(batch["inputs"][:, 1:],
                                batch["targets"][:, :-1])
  assert batch["inputs"].min() >= 0 and batch["inputs"].max() < vocab_size
  assert ("target_probs" in batch) == knows_conditionals
  if knows_conditionals:
    assert batch["target_probs"].shape == (rows, seq_len, vocab_size)
    assert batch["target_probs"].dtype == np.float32


# ------------------------------------------------------------------ Markov


@pytest.mark.parametrize("order,vocab_size", [(1, 5), (2, 3)])
def test_markov_transitions_match_empirical_frequencies(order, vocab_size):
  source = MarkovTarget(vocab_size, order, alpha=0.7, seq_len=64, seed=3)
  batch = source.batch(0, 2048)
  check_batch_layout(batch, 2048, 64, vocab_size, True)
  np.testing.assert_allclose(source.transition.sum(-1), 1.0, atol=1e-12)
  np.testing.assert_allclose(batch["target_probs"].sum(-1), 1.0, atol=1e-5)

  tokens = full_sequences(batch)
  windows = np.lib.stride_tricks.sliding_window_view(tokens, order + 1, axis=1)
  contexts = source.context_index(windows[..., :order]).ravel()
  nexts = windows[..., order].ravel()
  counts = np.zeros_like(source.transition)
  np.add.at(counts, (contexts, nexts), 1)
  totals = counts.sum(-1, keepdims=True)
  assert totals.min() > 1000  # every context well sampled
  # Five binomial standard deviations per cell: fails by chance ~1e-6.
  p = source.transition
  tolerance = 5 * np.sqrt(p * (1 - p) / totals) + 1 / totals
  assert np.all(np.abs(counts / totals - p) <= tolerance)


def test_markov_target_probs_are_rows_of_each_context():
  source = MarkovTarget(4, 2, alpha=0.5, seq_len=16, seed=0)
  batch = source.batch(5, 8)
  inputs, probs = batch["inputs"], batch["target_probs"]
  for t in range(1, 16):
    rows = source.transition[source.context_index(inputs[:, t - 1:t + 1])]
    np.testing.assert_allclose(probs[:, t], rows, rtol=1e-6)
  # Arbitrary inputs, not just sampled ones, get the same treatment.
  np.testing.assert_array_equal(source.token_conditionals(inputs), probs)


@pytest.mark.parametrize("order", [1, 2, 3])
def test_markov_first_positions_are_uniform(order):
  vocab_size = 4
  source = MarkovTarget(vocab_size, order, alpha=0.05, seq_len=12, seed=1)
  batch = source.batch(0, 4096)
  # Targets x_1..x_{k-1} are still part of the uniform start.
  np.testing.assert_allclose(batch["target_probs"][:, :order - 1], 0.25)
  # The start tokens themselves are uniform even though alpha is tiny.
  start = full_sequences(batch)[:, :order]
  freqs = np.bincount(start.ravel(), minlength=vocab_size) / start.size
  assert np.abs(freqs - 0.25).max() < 5 * np.sqrt(0.25 * 0.75 / start.size)
  # And after the start, alpha=0.05 makes the conditionals far from uniform.
  assert np.abs(batch["target_probs"][:, order:] - 0.25).max() > 0.5


def test_markov_expected_entropies_match_sampled_conditionals():
  source = MarkovTarget(6, 2, alpha=0.3, seq_len=10, seed=2)
  probs = source.batch(0, 8192)["target_probs"].astype(np.float64)
  logs = np.log(np.where(probs > 0, probs, 1.0))
  sampled = -(probs * logs).sum(-1).mean(0)
  exact = source.expected_target_entropies()
  assert exact[0] == pytest.approx(np.log(6))
  np.testing.assert_allclose(sampled, exact, atol=0.03)


def test_markov_small_alpha_means_low_entropy():
  peaked = MarkovTarget(16, 1, alpha=0.05, seq_len=8, seed=0)
  flat = MarkovTarget(16, 1, alpha=10.0, seq_len=8, seed=0)
  assert peaked.row_entropies().mean() < 0.5 * flat.row_entropies().mean()


def test_markov_is_deterministic_per_step_and_split():
  source = MarkovTarget(8, 2, alpha=0.5, seq_len=32, seed=7)
  again = MarkovTarget(8, 2, alpha=0.5, seq_len=32, seed=7)
  first = source.batch(3, 16)
  for other in (source.batch(3, 16), again.batch(3, 16)):
    for key in first:
      np.testing.assert_array_equal(first[key], other[key])
  assert not np.array_equal(first["inputs"], source.batch(4, 16)["inputs"])
  heldout = source.batch(3, 16, split="heldout")
  assert not np.array_equal(first["inputs"], heldout["inputs"])
  other_seed = MarkovTarget(8, 2, alpha=0.5, seq_len=32, seed=8)
  assert not np.array_equal(source.transition, other_seed.transition)


@pytest.mark.parametrize("num_sequences", [None, 6])
def test_markov_process_shards_concatenate_to_global_batch(num_sequences):
  source = MarkovTarget(5, 1, alpha=0.5, seq_len=16, seed=4,
                        num_sequences=num_sequences)
  for split in ("train", "heldout"):
    whole = source.batch(2, 8, split=split)
    for count in (2, 4):
      parts = [source.batch(2, 8, split=split, process_index=p,
                            process_count=count) for p in range(count)]
      for key in whole:
        np.testing.assert_array_equal(
            np.concatenate([part[key] for part in parts]), whole[key])


def test_markov_finite_set_cycles_through_each_sequence_once_per_epoch():
  num_sequences, batch_size = 10, 4
  source = MarkovTarget(7, 1, alpha=1.0, seq_len=20, seed=5,
                        num_sequences=num_sequences)
  training_set = source.training_set()
  assert training_set.shape == (num_sequences, 21)
  assert len({tuple(row) for row in training_set}) == num_sequences
  index_of = {tuple(row): i for i, row in enumerate(training_set)}

  # 5 steps of 4 rows = exactly 2 epochs; step 2 straddles the boundary.
  visited = np.concatenate([
      [index_of[tuple(row)] for row in full_sequences(source.batch(s, 4))]
      for s in range(5)
  ])
  for epoch in range(2):
    order = visited[epoch * num_sequences:(epoch + 1) * num_sequences]
    assert sorted(order) == list(range(num_sequences))
    np.testing.assert_array_equal(order, source.epoch_order(epoch))
  assert not np.array_equal(visited[:10], visited[10:])

  # A batch larger than the set spans several epochs, still exactly once each.
  big = [index_of[tuple(row)] for row in full_sequences(source.batch(0, 30))]
  for epoch in range(3):
    assert sorted(big[epoch * 10:(epoch + 1) * 10]) == list(range(10))

  # Held-out rows are fresh draws, not members of the training set.
  heldout = full_sequences(source.batch(0, 8, split="heldout"))
  assert not any(tuple(row) in index_of for row in heldout)


def test_markov_rejects_bad_arguments():
  with pytest.raises(InputError, match="reduce vocab_size or order"):
    MarkovTarget(1024, 3, alpha=1.0, seq_len=8, seed=0)
  with pytest.raises(InputError, match="alpha"):
    MarkovTarget(4, 1, alpha=0.0, seq_len=8, seed=0)
  with pytest.raises(InputError, match="vocab_size"):
    MarkovTarget(1, 1, alpha=1.0, seq_len=8, seed=0)
  source = MarkovTarget(4, 1, alpha=1.0, seq_len=8, seed=0)
  with pytest.raises(ValueError, match="split"):
    source.batch(0, 4, split="test")
  with pytest.raises(InputError, match="batch_size=5"):
    source.batch(0, 5, process_count=2)
  with pytest.raises(ValueError, match="training_set"):
    source.training_set()


def test_a_stationary_start_too_large_to_solve_stops_the_run_when_its_source_is_built():
  """The dense stationary solve has a limit; the run's source (built before anything compiles) names the keys."""
  from conftest import make_tiny_config
  from lensjax.data.factory import make_source
  config = make_tiny_config(**{"data.vocab_size": 17, "data.markov_order": 3, "data.markov_initial": "stationary"})
  with pytest.raises(InputError, match=r"data.markov_initial=stationary .* 4,913 contexts, more than 4,096; "
                                       r"use data.markov_initial=uniform"):
    make_source(config)
  assert make_source(make_tiny_config(**{"data.markov_initial": "stationary"})).initial == "stationary"


# -------------------------------------------------------------------- text


def test_token_windows_are_contiguous_slices(tmp_path):
  num_tokens, seq_len = 1000, 16
  ids = np.arange(num_tokens)
  source = TokenFile(write_ids(tmp_path / "ids.bin", ids, "<u4"), seq_len,
                     seed=0, vocab_size=num_tokens, dtype="uint32",
                     heldout_fraction=0.1)
  assert isinstance(source, Source) and not source.knows_conditionals
  train_stop = source.regions["train"][1]
  assert train_stop == 900
  for split, (lo, hi) in source.regions.items():
    batch = source.batch(1, 32, split=split)
    check_batch_layout(batch, 32, seq_len, num_tokens, False)
    starts = batch["inputs"][:, 0]
    np.testing.assert_array_equal(
        batch["inputs"], starts[:, None] + np.arange(seq_len))
    np.testing.assert_array_equal(batch["targets"], batch["inputs"] + 1)
    assert starts.min() >= lo and starts.max() + seq_len + 1 <= hi


def test_byte_text_reads_file_bytes(tmp_path):
  data = bytes(np.random.default_rng(0).integers(0, 256, 5000, np.uint8))
  path = tmp_path / "corpus.txt"
  path.write_bytes(data)
  source = ByteText(str(path), seq_len=32, seed=1)
  assert source.vocab_size == 256
  batch = source.batch(0, 8)
  check_batch_layout(batch, 8, 32, 256, False)
  for row in full_sequences(batch):
    start = data.find(bytes(row.astype(np.uint8)))
    assert 0 <= start <= source.regions["train"][1] - 33


def test_text_is_deterministic_and_shards_concatenate(tmp_path):
  path = write_ids(tmp_path / "ids.bin",
                   np.random.default_rng(0).integers(0, 50, 4000))
  source = TokenFile(path, seq_len=8, seed=3, vocab_size=50)
  same = TokenFile(path, seq_len=8, seed=3, vocab_size=50)
  first = source.batch(2, 8)
  np.testing.assert_array_equal(first["inputs"], same.batch(2, 8)["inputs"])
  assert not np.array_equal(first["inputs"], source.batch(3, 8)["inputs"])
  assert not np.array_equal(first["inputs"],
                            source.batch(2, 8, split="heldout")["inputs"])
  for split in ("train", "heldout"):
    whole = source.batch(5, 8, split=split)
    parts = [source.batch(5, 8, split=split, process_index=p, process_count=2)
             for p in range(2)]
    for key in whole:
      np.testing.assert_array_equal(
          np.concatenate([part[key] for part in parts]), whole[key])
  with pytest.raises(ValueError, match="split"):
    source.batch(0, 8, split="validation")


def test_text_input_errors_name_the_file(tmp_path):
  missing = str(tmp_path / "missing.bin")
  with pytest.raises(InputError, match="missing.bin.*does not exist"):
    TokenFile(missing, 8, 0, vocab_size=10)
  with pytest.raises(InputError, match="missing.bin.*does not exist"):
    ByteText(missing, 8, 0)

  empty = tmp_path / "empty.bin"
  empty.write_bytes(b"")
  with pytest.raises(InputError, match="empty.bin.*is empty"):
    TokenFile(str(empty), 8, 0, vocab_size=10)

  short = write_ids(tmp_path / "short.bin", np.zeros(12))
  with pytest.raises(InputError, match=r"short.bin.*holds 12 tokens.*needs "
                     r"at least 18"):
    TokenFile(short, 8, 0, vocab_size=10)

  odd = tmp_path / "odd.bin"
  odd.write_bytes(b"\x00" * 101)
  with pytest.raises(InputError, match="odd.bin.*101 bytes.*multiple"):
    TokenFile(str(odd), 8, 0, vocab_size=10)

  ok = write_ids(tmp_path / "ok.bin", np.zeros(100))
  with pytest.raises(InputError, match="int64.*ok.bin"):
    TokenFile(ok, 8, 0, vocab_size=10, dtype="int64")

  ids = np.zeros(1000)
  ids[777] = 42
  bad = write_ids(tmp_path / "bad.bin", ids)
  with pytest.raises(InputError,
                     match="bad.bin.*id 42 at position 777.*vocab_size=40"):
    TokenFile(bad, 8, 0, vocab_size=40)
  TokenFile(bad, 8, 0, vocab_size=43)  # large enough: fine


def test_big_files_are_checked_window_by_window(tmp_path, monkeypatch):
  monkeypatch.setattr(text, "FULL_SCAN_MAX_TOKENS", 100)
  ids = np.zeros(1000)
  ids[200:] = 42
  source = TokenFile(write_ids(tmp_path / "big.bin", ids), 8, 0,
                     vocab_size=40)  # no scan on construction
  with pytest.raises(InputError, match=r"big.bin.*id 42 at position \d+"):
    source.batch(0, 16)


def test_heldout_fraction_must_be_a_fraction(tmp_path):
  path = write_ids(tmp_path / "ids.bin", np.zeros(100))
  with pytest.raises(InputError, match="heldout_fraction"):
    TokenFile(path, 8, 0, vocab_size=10, heldout_fraction=1.0)


def test_default_corpus_is_substantial_english():
  corpus = default_corpus_bytes()
  assert len(corpus) > 100_000
  assert b" the " in corpus
  source = ByteText.from_default_corpus(seq_len=128, seed=0)
  check_batch_layout(source.batch(0, 4), 4, 128, 256, False)
  assert source.regions["heldout"][1] == len(corpus)


def test_process_rows_and_steps_are_validated():
  assert base.process_rows(8, 1, 2) == slice(4, 8)
  with pytest.raises(InputError, match="batch_size=6"):
    base.process_rows(6, 0, 4)
  with pytest.raises(ValueError, match="process_index"):
    base.process_rows(8, 2, 2)
  with pytest.raises(ValueError, match="step"):
    base.check_step(-1)


# ------------------------------------------------------- prepared directory


def write_prepared(directory, train_ids, val_ids, vocab_size, dtype="uint16"):
  """A directory in the layout of `lensjax prepare`, written by hand (no tokenizer needed to read it)."""
  import json
  from lensjax.data import prepared
  directory.mkdir()
  write_ids(directory / prepared.TRAIN_FILE, train_ids, np.dtype(dtype).newbyteorder("<"))
  write_ids(directory / prepared.VAL_FILE, val_ids, np.dtype(dtype).newbyteorder("<"))
  (directory / prepared.META_FILE).write_text(json.dumps(
      {"format": prepared.FORMAT, "vocab_size": vocab_size, "token_dtype": dtype, "eot_id": None}))
  return str(directory)


def test_a_prepared_directory_evaluates_on_val_bin_only(tmp_path):
  from conftest import make_tiny_config
  from lensjax.data.factory import make_source
  directory = write_prepared(tmp_path / "prepared", np.arange(1000) % 100, 100 + np.arange(300) % 100, 70_000,
                             "uint32")
  source = text.PreparedTokens(directory, seq_len=16, seed=0, vocab_size=70_000)
  assert source.vocab_size == 70_000 and source.dtype == "uint32"
  for step in range(3):
    train, heldout = source.batch(step, 16), source.batch(step, 16, split="heldout")
    assert full_sequences(train).max() < 100 and full_sequences(heldout).min() >= 100
  config = make_tiny_config(**{"data.source": "tokens", "data.path": directory, "model.vocab_size": 70_000})
  assert isinstance(make_source(config), text.PreparedTokens)
  with pytest.raises(InputError, match=r"model.vocab_size=300 differs from the vocabulary of 70,000 tokens in "
                                       r".*meta.json; drop the override"):
    make_source(config.updated({"model.vocab_size": 300}))


def test_a_prepared_directory_fills_the_vocabulary_and_dtype_of_the_config(tmp_path):
  from conftest import make_tiny_config
  from lensjax import config as config_lib
  from lensjax.data import prepared
  directory = write_prepared(tmp_path / "prepared", np.zeros(100), np.zeros(100), 300)
  config = make_tiny_config(**{"data.source": "tokens", "data.path": directory, "model.vocab_size": 0,
                               "data.token_dtype": "uint32"})
  config_lib.validate(config, 8)  # vocab_size=0 is fine for a directory
  filled = prepared.with_prepared_vocab(config)
  assert (filled.model.vocab_size, filled.data.token_dtype) == (300, "uint16")
  assert prepared.with_prepared_vocab(make_tiny_config()) == make_tiny_config()
  bare = tmp_path / "bare"
  bare.mkdir()
  with pytest.raises(InputError, match=r"is a directory without meta.json; prepare it with `lensjax prepare"):
    config_lib.validate(config.updated({"data.path": str(bare)}), 8)
  with pytest.raises(InputError, match=r"with a .bin file needs model.vocab_size"):
    config_lib.validate(config.updated({"data.path": write_ids(tmp_path / "ids.bin", np.zeros(100))}), 8)
  (tmp_path / "prepared" / "meta.json").write_text("{}")
  with pytest.raises(InputError, match=r"meta.json is not a meta.json of `lensjax prepare`"):
    text.PreparedTokens(directory, 8, 0, 300)


def test_a_prepared_directory_too_short_for_a_window_names_the_file(tmp_path):
  directory = write_prepared(tmp_path / "prepared", np.zeros(100), np.zeros(5), 300)
  with pytest.raises(InputError, match=r"val.bin.*holds 5 validation tokens but seq_len=8 needs at least 10"):
    text.PreparedTokens(directory, 8, 0, 300)
