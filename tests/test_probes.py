"""The fixed probes: exactly stats.probe_tokens tokens from each split, the same for every seed, member and model."""

from __future__ import annotations

import dataclasses
import os

import jax
import numpy as np
import pytest

from conftest import make_tiny_config, write_config_file
from lensjax import cli
from lensjax import config as config_lib
from lensjax.data.factory import make_source
from lensjax.data.targets import MarkovTarget
from lensjax.data.teacher import TeacherTarget
from lensjax.data.text import PreparedTokens, TokenFile
from lensjax.errors import InputError
from lensjax.io.metrics_log import read_metrics
from lensjax.stats.persistence import PERSIST_NAMES
from lensjax.train import loop
from lensjax.train.ensemble import member_of
from test_data import full_sequences, write_ids, write_prepared

PROBE_TOKENS = 128  # 8 sequences of the tiny config's 16 tokens: one per fake device
SPLITS = ("train", "heldout")


def probe_config(**overrides):
  return make_tiny_config(**{"stats.probe_tokens": PROBE_TOKENS, **overrides})


def host(batch) -> dict:
  return {key: np.asarray(jax.device_get(value)) for key, value in batch.items()}


def assert_same(a: dict, b: dict) -> None:
  assert set(a) == set(b)
  for key in a:
    np.testing.assert_array_equal(a[key], b[key], err_msg=key)


# ------------------------------------------------------------------ sources


def test_text_probes_are_evenly_spaced_windows_of_their_own_split_whatever_the_seed(tmp_path):
  num_tokens, seq_len, rows = 2000, 16, 8
  path = write_ids(tmp_path / "ids.bin", np.arange(num_tokens), "<u4")  # a token is its own position
  sources = [TokenFile(path, seq_len, seed=seed, vocab_size=num_tokens, dtype="uint32", heldout_fraction=0.1)
             for seed in (0, 7)]
  for split in SPLITS:
    start, stop = sources[0].regions[split]
    probe = sources[0].probe(rows, split=split)
    starts = probe["inputs"][:, 0]
    np.testing.assert_array_equal(starts, start + np.arange(rows) * (stop - start - seq_len) // rows)
    assert starts.min() >= start and starts.max() + seq_len + 1 <= stop
    np.testing.assert_array_equal(full_sequences(probe), starts[:, None] + np.arange(seq_len + 1))
    assert_same(probe, sources[1].probe(rows, split=split))
    parts = [sources[0].probe(rows, split=split, process_index=p, process_count=2) for p in range(2)]
    assert_same({key: np.concatenate([part[key] for part in parts]) for key in probe}, probe)
  with pytest.raises(ValueError, match="split"):
    sources[0].probe(rows, split="validation")


def test_a_prepared_directory_probes_train_bin_and_val_bin(tmp_path):
  directory = write_prepared(tmp_path / "prepared", np.arange(1000) % 100, 100 + np.arange(300) % 100, 300)
  source = PreparedTokens(directory, seq_len=16, seed=0, vocab_size=300)
  assert full_sequences(source.probe(8, split="train")).max() < 100
  assert full_sequences(source.probe(8, split="heldout")).min() >= 100


def test_markov_probes_depend_on_the_target_alone():
  make = lambda seed, order_seed, num_sequences=None: MarkovTarget(8, 1, 0.5, 16, seed, num_sequences,
                                                                   order_seed=order_seed)
  for num_sequences in (None, 50):
    source = make(3, 3, num_sequences)
    for split in SPLITS:
      probe = source.probe(8, split=split)
      assert_same(probe, make(3, 11, num_sequences).probe(8, split=split))
      assert not np.array_equal(probe["inputs"], make(4, 3, num_sequences).probe(8, split=split)["inputs"])
      np.testing.assert_allclose(probe["target_probs"], source.token_conditionals(probe["inputs"]))
    # Neither probe is an ordinary batch of its split, nor the other probe.
    assert not np.array_equal(source.probe(8)["inputs"], source.probe(8, split="heldout")["inputs"])
    assert not np.array_equal(source.probe(8, split="heldout")["inputs"], source.batch(0, 8, split="heldout")["inputs"])
  finite = make(3, 3, 50)
  training_set = {tuple(row) for row in finite.training_set()}
  train_rows = [tuple(row) for row in full_sequences(finite.probe(8))]
  np.testing.assert_array_equal(full_sequences(finite.probe(8)), finite.training_set()[np.arange(8) * 50 // 8])
  assert all(row in training_set for row in train_rows)
  assert not any(tuple(row) in training_set for row in full_sequences(finite.probe(8, split="heldout")))


def test_teacher_probes_do_not_follow_the_order_seed():
  make = lambda order_seed: TeacherTarget(8, 4, 1, num_layers=1, d_model=16, num_heads=2, order_seed=order_seed)
  first, other = make(1), make(9)
  for split in SPLITS:
    assert_same(first.probe(8, split=split), other.probe(8, split=split))
  assert not np.array_equal(first.probe(8)["inputs"], first.probe(8, split="heldout")["inputs"])


# --------------------------------------------------------------- the run's probes


@pytest.fixture(scope="module")
def runs():
  """A solo run, one that differs in every seed but the target's and in its model's width, and two ensembles."""
  built = {"solo": probe_config(),
           "other seeds and width": probe_config(**{"train.seed": 5, "data.order_seed": 9, "model.d_model": 16,
                                                    "model.d_ff": 32}),
           "ensemble": probe_config(**{"train.members": 2, "train.vary": "init+data"}),
           "targets": probe_config(**{"train.members": 2})}
  return {name: loop.build(loop.prepare(config)) for name, config in built.items()}


def test_probes_hold_exactly_probe_tokens_and_ignore_train_and_order_seeds_and_width(runs):
  probes = {name: [host(batch) for batch in loop.probe_batches(run)] for name, run in runs.items()}
  for batch in probes["solo"]:
    assert batch["inputs"].shape == (PROBE_TOKENS // 16, 16) and batch["mask"].sum() == PROBE_TOKENS
  for split in range(2):
    assert_same(probes["solo"][split], probes["other seeds and width"][split])
    for member in range(2):  # every member of the ensemble sees the solo run's probes
      assert_same({k: v[member] for k, v in probes["ensemble"][split].items()}, probes["solo"][split])
  assert not np.array_equal(probes["solo"][0]["inputs"], probes["solo"][1]["inputs"])
  # Members with targets of their own: each member's probes are those of its own target, whatever its seeds.
  targets = runs["targets"]
  for member, member_config in enumerate(targets.members):
    reseeded = member_config.updated({"train.seed": 40, "data.order_seed": 41})
    for split_index, split in enumerate(SPLITS):
      want = make_source(reseeded).probe(PROBE_TOKENS // 16, split=split)
      assert_same({k: v[member] for k, v in probes["targets"][split_index].items()}, want)
  assert loop.probe_batches(dataclasses.replace(runs["solo"], config=make_tiny_config())) is None  # probe_tokens 0


def test_each_member_of_an_ensemble_gets_its_solo_probe_statistics(runs):
  ensemble = runs["ensemble"]
  metrics = host(ensemble.probe_fn(ensemble.state.params, *loop.probe_batches(ensemble)))
  solo = runs["solo"]  # the same model shape and probes as each member
  assert {name for name in metrics if name.startswith("persist/")} == set(PERSIST_NAMES)
  assert {"probe/loss", "probe_train/loss", "probe/ffn/active_token_p50", "probe_train/ffn/unit_frequency_p99",
          "probe_train/attn/entropy"} <= set(metrics)
  for member in range(2):
    alone = host(solo.probe_fn(member_of(ensemble.state.params, member), *loop.probe_batches(solo)))
    for name, value in alone.items():
      np.testing.assert_allclose(metrics[name][member], value, rtol=2e-5, atol=1e-6, err_msg=name)
  assert not np.allclose(metrics["probe/loss"][0], metrics["probe/loss"][1])  # two members, two models


def test_training_logs_both_probes_and_their_persistence_at_every_logging_step(tmp_path):
  workdir = str(tmp_path / "run")
  loop.train(probe_config(**{"train.steps": 3, "logging.log_every": 2}), workdir)
  logged = [r for r in read_metrics(os.path.join(workdir, "metrics.jsonl")) if "train/loss" in r]
  assert [r["step"] for r in logged] == [0, 2]
  for record in logged:
    for layer in range(2):
      for name in PERSIST_NAMES + ("probe_train/ffn/active_token_p10", "probe/ffn/unit_frequency_p90",
                                   "probe_train/ffn/active_batch", "ffn/active_token_p99"):
        assert f"{name}/layer_{layer}" in record, name
    assert "probe/loss" in record and "probe_train/loss" in record


# --------------------------------------------------------------- validation


@pytest.mark.parametrize("tokens, sentence", [
    (100, "stats.probe_tokens=100 is not a whole number of data.seq_len=16 sequences; use a multiple of 16, "
          "e.g. 112."),
    (48, "stats.probe_tokens=48 makes 3 sequences of data.seq_len=16, which do not split over the 8 devices; use "
         "a multiple of 128 tokens, e.g. 128."),
])
def test_a_probe_of_other_sizes_exits_2_with_one_sentence(tokens, sentence, tmp_path, capsys):
  config_file = write_config_file(tmp_path / "config.py", make_tiny_config())
  code = cli.main(["train", "--config", config_file, "--workdir", str(tmp_path / "run"),
                   f"--config.stats.probe_tokens={tokens}"])
  err = capsys.readouterr().err
  assert code == 2 and sentence in err, err
  assert err.count("lensjax: error:") == 1
  assert not os.path.exists(tmp_path / "run")


def test_the_layer_sparsity_probe_of_8192_tokens_is_whole_on_common_device_counts():
  # configs/layer_sparsity.py's probe: 32 sequences of 256 tokens.
  config = make_tiny_config(**{"stats.probe_tokens": 8192, "data.seq_len": 256, "model.max_len": 256,
                               "train.batch_size": 96})
  for devices in (1, 2, 4, 8, 16, 32):
    config_lib.validate(config, devices)
  with pytest.raises(InputError, match="32 sequences of data.seq_len=256, which do not split over the 6 devices"):
    config_lib.validate(config, 6)
