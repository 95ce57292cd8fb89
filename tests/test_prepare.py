"""`lensjax prepare`: the split by whole documents, near-duplicates on one side, byte-identical reruns, every bad
input refused with nothing written, and a small model trained on the result learning from it."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from lensjax import cli
from lensjax.data import corpus, corpus_sources, prepared
from lensjax.data.tokenizer import Detokenizer
from lensjax.errors import InputError

WORDS = ("the king queen lord lady sword crown river night morning speaks walks sleeps sees loves fears "
         "gold castle field sea wind fire old young brave gentle true dark").split()
VOCAB = "300"


def fake_work(seed: int, sentences: int = 60) -> str:
  """A deterministic text of plain English words, one short sentence per line."""
  rng = np.random.default_rng(seed)
  lines = []
  for _ in range(sentences):
    words = [WORDS[i] for i in rng.integers(0, len(WORDS), rng.integers(5, 10))]
    lines.append(" ".join(words).capitalize() + ".")
  return "\n".join(lines) + "\n"


def old_spelling(text: str) -> str:
  """Another edition of a text: u as v at word starts, a final e added, as the First Folio spells."""
  words = []
  for word in text.split(" "):
    word = "v" + word[1:] if word.startswith("u") else word
    words.append(word + "e" if word.isalpha() and not word.endswith("e") else word)
  return " ".join(words)


@pytest.fixture
def texts(tmp_path):
  """A directory of eight works and a second edition of the first."""
  directory = tmp_path / "texts"
  directory.mkdir()
  for i in range(8):
    (directory / f"work_{i}.txt").write_text(fake_work(i))
  (directory / "work_0_folio.txt").write_text(old_spelling(fake_work(0)))
  return directory


def run_prepare(*args) -> int:
  return cli.main(["prepare", *map(str, args)])


def document_texts(directory: str, name: str) -> list[str]:
  """The documents of a .bin file, decoded and cut at end-of-text."""
  meta = prepared.read_meta(directory)
  ids = np.fromfile(os.path.join(directory, name), dtype=meta.token_dtype)
  detokenizer = Detokenizer.from_dir(directory)
  cuts = np.flatnonzero(ids == meta.eot_id)
  assert len(cuts) and cuts[-1] == len(ids) - 1  # every document ends with end-of-text
  return [detokenizer.decode(part[:-1]) for part in np.split(ids, cuts + 1)[:-1]]


def test_prepare_writes_whole_documents_on_each_side(texts, tmp_path, capsys):
  out = tmp_path / "prepared"
  assert run_prepare("--input", texts, "--out", out, "--vocab-size", VOCAB, "--val-fraction", "0.2") == 0
  meta = json.loads((out / "meta.json").read_text())
  assert meta["vocab_size"] == 300 and meta["token_dtype"] == "uint16" and meta["eot_id"] == 0
  for split, name in (("train", "train.bin"), ("val", "val.bin")):
    assert os.path.getsize(out / name) == 2 * meta["tokens"][split]
  inputs = {os.path.basename(r["path"]): r for r in meta["inputs"]}
  assert len(inputs) == 9
  assert inputs["work_3.txt"]["bytes"] == len(fake_work(3))
  by_side = {side: sorted(n for n, r in inputs.items() if r["split"] == side) for side in ("train", "val")}
  assert by_side["val"] and by_side["train"]
  # Decoding each file gives back exactly its documents, whole, in input order.
  for side, name in (("train", "train.bin"), ("val", "val.bin")):
    expected = [(texts / n).read_text() for n in sorted(by_side[side])]
    assert document_texts(str(out), name) == expected
  val_bytes = sum(inputs[n]["bytes"] for n in by_side["val"])
  assert val_bytes >= 0.2 * sum(r["bytes"] for r in inputs.values())
  assert "--config.data.path=" in capsys.readouterr().out
  assert meta["command"].startswith("lensjax prepare --input ")


def test_near_duplicate_editions_land_on_one_side_whatever_the_seed(texts, tmp_path):
  assert corpus.folded_words("Vnfolde your selfe") == corpus.folded_words("unfold your self")
  original, folio = corpus.read_document(str(texts / "work_0.txt")), corpus.read_document(str(texts / "work_0_folio.txt"))
  others = [corpus.read_document(str(texts / f"work_{i}.txt")) for i in range(1, 8)]
  assert corpus.duplicate_groups([original] + others + [folio]) == [[0, 8]] + [[i] for i in range(1, 8)]
  sides = set()
  for seed in range(6):
    out = tmp_path / f"seed_{seed}"
    assert run_prepare("--input", texts, "--out", out, "--vocab-size", VOCAB, "--val-fraction", "0.3",
                       "--seed", seed) == 0
    meta = json.loads((out / "meta.json").read_text())
    split_of = {os.path.basename(r["path"]): r["split"] for r in meta["inputs"]}
    assert split_of["work_0.txt"] == split_of["work_0_folio.txt"]
    sides.add(split_of["work_0.txt"])
    assert [sorted(map(os.path.basename, g)) for g in meta["split"]["duplicate_groups"]] == [
        ["work_0.txt", "work_0_folio.txt"]]
  assert sides == {"train", "val"}  # the pair did move: the rule, not luck, keeps it together


def test_same_inputs_and_flags_give_byte_identical_outputs(texts, tmp_path):
  out = tmp_path / "prepared"
  args = ("--input", texts, "--out", out, "--vocab-size", VOCAB)
  assert run_prepare(*args) == 0
  first = {name: (out / name).read_bytes() for name in prepared.OUTPUT_FILES}
  for name in prepared.OUTPUT_FILES:
    (out / name).unlink()
  assert run_prepare(*args) == 0
  assert {name: (out / name).read_bytes() for name in prepared.OUTPUT_FILES} == first
  assert run_prepare(*args) == 0  # the same corpus again: allowed, and the same bytes
  assert (out / "train.bin").read_bytes() == first["train.bin"]


def test_a_given_tokenizer_and_validation_set(texts, tmp_path):
  first = tmp_path / "first"
  assert run_prepare("--input", texts, "--out", first, "--vocab-size", VOCAB) == 0
  out = tmp_path / "second"
  assert run_prepare("--input", *[texts / f"work_{i}.txt" for i in range(1, 6)], "--val-input", texts / "work_7.txt",
                     "--tokenizer", first / "tokenizer.json", "--out", out) == 0
  meta = json.loads((out / "meta.json").read_text())
  assert meta["vocab_size"] == 300 and meta["documents"] == {"train": 5, "val": 1}
  assert document_texts(str(out), "val.bin") == [fake_work(7)]


def files_in(directory) -> dict[str, bytes] | None:
  if not os.path.isdir(directory):
    return None
  return {n: open(os.path.join(directory, n), "rb").read() for n in sorted(os.listdir(directory))
          if os.path.isfile(os.path.join(directory, n))}


def assert_refused(capsys, args, match: str, out) -> None:
  """`lensjax prepare ARGS` exits 2 with one error line holding `match`, and `out` is left as it was."""
  before = (sorted(os.listdir(out)) if os.path.isdir(out) else None), files_in(out)
  assert run_prepare(*args) == 2
  err = capsys.readouterr().err.strip().splitlines()  # progress lines, then the error
  errors = [line for line in err if line.startswith("lensjax: error: ")]
  assert errors == err[-1:], err
  assert match in errors[0], errors[0]
  assert ((sorted(os.listdir(out)) if os.path.isdir(out) else None), files_in(out)) == before
  assert not [n for n in os.listdir(os.path.dirname(out)) if n.startswith(".prepare-")]


def test_bad_input_is_one_sentence_exit_2_and_nothing_written(texts, tmp_path, capsys):
  out = tmp_path / "prepared"
  ok = ("--input", texts, "--vocab-size", VOCAB)
  assert_refused(capsys, ("--input", tmp_path / "nowhere", "--out", out), "nowhere does not exist", out)
  (tmp_path / "empty").mkdir()
  assert_refused(capsys, ("--input", tmp_path / "empty", "--out", out), "directory without files", out)
  (tmp_path / "blank.txt").write_text("  \n\n")
  assert_refused(capsys, ("--input", tmp_path / "blank.txt", "--out", out), "holds no text", out)
  (tmp_path / "image.txt").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
  assert_refused(capsys, ("--input", texts, tmp_path / "image.txt", "--out", out), "image.txt is a binary file", out)
  (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
  assert_refused(capsys, ("--input", tmp_path / "latin1.txt", "--out", out), "is not UTF-8", out)
  assert_refused(capsys, ("--input", texts, "--out", out, "--vocab-size", "100000"), "too large for this corpus", out)
  assert_refused(capsys, ("--input", texts, "--out", out, "--vocab-size", "100"), "below 257", out)
  assert_refused(capsys, ("--input", texts / "work_0.txt", texts / "work_0_folio.txt", "--out", out),
                 "one group of near-duplicates", out)
  assert_refused(capsys, ("--input", texts / "work_1.txt", texts / "work_0.txt", "--val-input",
                          texts / "work_0_folio.txt", "--out", out), "near-duplicates on both sides", out)
  assert_refused(capsys, (*ok, "--out", out, "--val-fraction", "1.5"), "--val-fraction 1.5", out)

  assert run_prepare(*ok, "--out", out) == 0
  assert_refused(capsys, (*ok, "--out", out, "--seed", "3"), "already holds a different prepared corpus", out)
  (texts / "work_5.txt").write_text(fake_work(50))
  assert_refused(capsys, (*ok, "--out", out), "already holds a different prepared corpus", out)
  assert run_prepare(*ok, "--out", out, "--force") == 0
  foreign = tmp_path / "foreign"
  foreign.mkdir()
  (foreign / "notes.txt").write_text("mine")
  assert_refused(capsys, (*ok, "--out", foreign), "not a prepared corpus", foreign)
  (tmp_path / "a_file").write_text("x")
  assert_refused(capsys, (*ok, "--out", tmp_path / "a_file"), "is a file", tmp_path)


def test_corpus_script_strips_licences_markup_and_writes_books():
  gutenberg = ("The Project Gutenberg EBook of Hamlet\nlicence text\n"
               "*** START OF THIS PROJECT GUTENBERG EBOOK HAMLET ***\r\n\r\n<p>Who's there?</p>  \r\n"
               "*** END OF THIS PROJECT GUTENBERG EBOOK HAMLET ***\nmore licence\n")
  assert corpus_sources.clean(gutenberg) == "Who's there?\n"
  assert corpus_sources.clean("No markers here.\n") == "No markers here.\n"
  verses = [json.dumps({"book": b, "chapter": c, "verse": v, "text": t}) for b, c, v, t in (
      ("Genesis", 1, 1, "In the beginning."), ("Genesis", 1, 2, "And the earth."), ("Genesis", 2, 1, "Thus."),
      ("Exodus", 1, 1, "Now these."))]
  assert corpus_sources.kjv_books(verses) == [
      ("Genesis", "Genesis\n\nChapter 1\n\n1 In the beginning.\n2 And the earth.\n\nChapter 2\n\n1 Thus.\n"),
      ("Exodus", "Exodus\n\nChapter 1\n\n1 Now these.\n")]
  with pytest.raises(InputError, match="line 1 of .*kjv.jsonl is not a verse record"):
    corpus_sources.kjv_books(["{}"])


def test_prepare_then_20_steps_on_it_lower_the_validation_loss(texts, tmp_path):
  from conftest import make_tiny_config
  from lensjax import runner
  out = tmp_path / "prepared"
  assert run_prepare("--input", texts, "--out", out, "--vocab-size", VOCAB, "--val-fraction", "0.2") == 0
  config = make_tiny_config(**{
      "data.source": "tokens", "data.path": str(out), "model.vocab_size": 0, "train.steps": 20,
      "logging.eval_every": 10, "logging.log_every": 10, "optim.lr": 1e-2, "optim.warmup_steps": 2,
      "checkpoint.save_every": 20})
  with pytest.raises(InputError, match=r"model.vocab_size=512 differs from the vocabulary of 300 tokens"):
    prepared.with_prepared_vocab(config.updated({"model.vocab_size": 512}))
  resolved = prepared.with_prepared_vocab(config)
  assert resolved.model.vocab_size == 300
  workdir = tmp_path / "run"
  runner.train(resolved, str(workdir))
  assert json.loads((workdir / "config.json").read_text())["model"]["vocab_size"] == 300
  records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  evals = [r["eval/loss"] for r in records if "eval/loss" in r]
  # An untrained model predicts ~uniformly (init_std 0.02): its validation loss is log V = 5.7 nats.
  assert len(evals) == 2 and evals[-1] < evals[0] < np.log(300) - 1.0, evals
  detokenizer = Detokenizer.from_run_config(resolved)
  ids = detokenizer.tokenizer.encode("The king sleeps.").ids
  pieces = detokenizer.token_texts(ids)
  assert len(pieces) == len(ids) > 1 and "".join(pieces) == detokenizer.decode(ids) == "The king sleeps."
  assert Detokenizer.from_run_config(make_tiny_config()) is None
  # `lensjax tokens` decodes held-out batch 0 with the run's tokenizer; over all its rows the mean token loss is
  # the final eval/loss (eval_batches 1, the same parameters), and the report shows the text.
  assert cli.main(["tokens", "--workdir", str(workdir), "--rows", str(config.train.batch_size), "--max-tokens",
                   "1000", "--json"]) == 0
  shown = json.loads((workdir / "tokens.json").read_text())
  assert shown["decoded_with"] == "tokenizer" and shown["step"] == 20
  assert shown["mean_nll"] == pytest.approx(evals[-1], rel=1e-5)
  heldout = runner.loop.make_source(resolved).batch(0, config.train.batch_size, split="heldout")
  row = shown["rows"][1]
  assert row["text"] == detokenizer.decode(heldout["targets"][1]) and len(row["tokens"]) == config.data.seq_len
  assert "".join(t["text"] for t in row["tokens"]) == row["text"]
  assert all(t["nll"] >= 0 and 0 <= t["entropy"] <= np.log(300) + 1e-4 for t in row["tokens"])
  from lensjax.report.build import build_report
  page = open(build_report([str(workdir)], str(tmp_path / "report"))).read()
  assert "## Held-out text, token by token" in page and shown["rows"][0]["text"][:20].split("\n")[0] in page
