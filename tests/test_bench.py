"""`lensjax bench`: every row group timed, the table and --json agree, --only selects and rejects.

One run goes through a subprocess (`python -m lensjax bench --json`); the
others call `cli.main` in this process, where the compilation cache that
conftest shares with subprocesses turns their compiles into cache reads.
"""

from __future__ import annotations

import json
import re
import math

import pytest

from conftest import make_tiny_config, run_cli, write_config_file
from lensjax import bench as bench_lib
from lensjax import cli

# T = 4: V^T = 8^4 prefixes, so the entropy row is the whole exact pass, and the sampler draws 4 tokens.
SMALL = ["--config.data.seq_len=4"]
ROWS = {"train": ["train step (plain)", "train step (logging)"], "hvp": ["gradient (plain loss)", "HVP (plain loss)"],
        "entropy": ["entropy: exact pass"], "sampler": ["sampler (KV cache)"]}


@pytest.fixture(scope="module")
def config_file(tmp_path_factory):
  return write_config_file(tmp_path_factory.mktemp("bench") / "tiny.py", make_tiny_config(**{"model.num_layers": 1}))


@pytest.fixture(scope="module")
def json_result(config_file):
  result = run_cli("bench", "--config", config_file, *SMALL, "--steps", "2", "--json")
  assert result.returncode == 0, result.stderr
  return json.loads(result.stdout)


def bench_here(capsys, config_file, *args) -> tuple[int, str, str]:
  """`lensjax bench` in this process: (exit code, stdout, stderr)."""
  capsys.readouterr()
  code = cli.main(["bench", "--config", config_file, *SMALL, *args])
  out, err = capsys.readouterr()
  return code, out, err


def table_names(stdout: str) -> list[str]:
  lines = stdout.splitlines()
  header = next(i for i, line in enumerate(lines) if "tokens/s" in line and "MFU" in line)
  end = next(i for i, line in enumerate(lines) if line.startswith("FLOPs per token"))
  return [line[:22].strip() for line in lines[header + 1:end]]


def test_every_row_group_is_timed(json_result):
  rows = json_result["rows"]
  assert [r["name"] for r in rows] == [name for group in ROWS.values() for name in group]
  assert [r["group"] for r in rows] == [group for group, names in ROWS.items() for _ in names]
  for r in rows:
    assert r["seconds"] > 0 and r["tokens_per_s"] > 0 and r["sequences_per_s"] > 0, r
    assert r["tflops_per_device"] > 0 and r["compile_s"] > 0, r
    assert r["mfu"] is None  # no bf16 peak is known for a CPU
    if r["group"] == "train":  # the loop's rate: queued calls overlap host dispatch, so never much slower
      assert r["pipelined_seconds"] > 0, r  # its ratio to the synchronised time is load noise on a shared CPU
      assert f"pipelined {1e3 * r['pipelined_seconds']:.2f} ms" in r["notes"], r  # its own, not the other step's
  assert set(json_result["formulas"]) == set(ROWS)
  assert "12*L*T*D" in json_result["formulas"]["train"] and "2*N + 4*L*T*D" in json_result["formulas"]["entropy"]
  assert "precision tf32;" in rows[3]["notes"]  # the config's stats.hessian_precision, by default
  entropy_row = rows[4]
  assert "8^4 = 4,096 prefixes" in entropy_row["notes"]
  assert entropy_row["sequences_per_s"] == pytest.approx(4096 / entropy_row["seconds"])


def test_table_has_the_rows_of_the_json(capsys, config_file, json_result):
  code, out, err = bench_here(capsys, config_file, "--steps", "1")
  assert code == 0, err
  assert table_names(out) == [r["name"] for r in json_result["rows"]]
  assert "6*N + 12*L*T*D" in out and "2*N + 4*L*T*D" in out


def test_only_hvp_gives_the_two_hvp_rows(capsys, config_file):
  code, out, err = bench_here(capsys, config_file, "--only", "hvp", "--steps", "3", "--precision", "bf16", "--json")
  assert code == 0, err
  result = json.loads(out)
  assert [r["name"] for r in result["rows"]] == ROWS["hvp"]
  assert all(r["notes"].startswith("precision bf16;") for r in result["rows"])
  # Each stage says on stderr what it compiles and when it starts timing, one line each.
  for name in ROWS["hvp"]:
    assert f"bench: {name}: compiling\n" in err and re.search(rf"bench: {re.escape(name)}: compiled in [\d.]+ s, timing",
                                                             err), err
    # and, after its first call, how long the others will take (3 steps after the warm-up calls)
    assert re.search(rf"bench: {re.escape(name)}: call 1/\d+ took [\d.e-]+ s; about [^\n]+ for the other \d+\n", err), err
  ratio = result["rows"][1]["vs_gradient"]
  assert math.isfinite(ratio) and ratio > 1


def test_only_rejects_an_unknown_group(capsys, config_file):
  code, out, err = bench_here(capsys, config_file, "--only", "train,nonsense")
  assert code == 2 and not out
  assert "--only" in err and "nonsense" in err and "sampler" in err


def test_entropy_row_of_a_vocabulary_too_large_to_enumerate_times_one_chunk():
  import jax
  import jax.numpy as jnp
  from lensjax.data.factory import make_source
  from lensjax.model import Transformer
  from lensjax.train import loop
  # V^T = 256^128 = 2^1024: past the largest float, as gpt2_small's 50257^1024 is.
  config = loop.prepare(make_tiny_config(**{"data.source": "bytes", "data.seq_len": 128, "model.max_len": 128,
                                            "model.num_layers": 1}))
  init = jax.jit(lambda key: Transformer(config.model).init(key, jnp.zeros((1, 128), jnp.int32))["params"])
  [row] = bench_lib.bench_entropy(config, init(jax.random.PRNGKey(0)), make_source(config), steps=1, warmup=0,
                                  max_chunk_elements=2**14)
  assert row["name"] == "entropy: one chunk" and row["seconds"] > 0 and row["tokens_per_s"] > 0
  assert "one chunk of 1 prefix;" in row["notes"] and "256^128 ≈ 1.8e308 sequences: not enumerable;" in row["notes"]
  assert "model only" in row["notes"]


def test_only_parses_a_comma_list_in_table_order():
  assert bench_lib.parse_only("sampler, train") == ("train", "sampler")
  assert bench_lib.parse_only(None) == bench_lib.GROUPS


def test_the_table_prints_each_row_as_soon_as_it_is_timed(capsys, monkeypatch, config_file):
  printed_before = {}  # row name -> stdout printed when its compile began
  parts = []
  compile_row = bench_lib._compile

  def spy(name, *args, **kwargs):
    parts.append(capsys.readouterr().out)
    printed_before[name] = "".join(parts)
    return compile_row(name, *args, **kwargs)

  monkeypatch.setattr(bench_lib, "_compile", spy)
  capsys.readouterr()
  code = cli.main(["bench", "--config", config_file, *SMALL, "--only", "hvp", "--steps", "1"])
  out = "".join(parts) + capsys.readouterr().out
  assert code == 0
  gradient, hvp = ROWS["hvp"]
  assert "tokens/s" in printed_before[gradient] and gradient not in printed_before[gradient]
  assert gradient in printed_before[hvp] and hvp not in printed_before[hvp]
  assert table_names(out) == ROWS["hvp"]


def test_a_row_budget_cuts_the_timed_calls_and_the_notes_say_so(capsys, config_file):
  code, out, err = bench_here(capsys, config_file, "--only", "hvp", "--steps", "1000", "--row-budget", "0.2",
                              "--json")
  assert code == 0, err
  for row in json.loads(out)["rows"]:
    assert row["calls"] == 1 or 3 <= row["calls"] < 1000, row
    assert f"timed {row['calls']} of 1000 calls" in row["notes"] and "row budget 0.2 s" in row["notes"], row
  assert re.search(r"bench: HVP \(plain loss\): call 1/\d+ took [^\n]+: timed \d+ of 1000 calls", err), err


def test_a_row_budget_keeps_three_timed_calls_or_one():
  fits = bench_lib.calls_within_budget
  assert fits(0.01, 3, 20, 1.0) == (3, 20)  # 23 calls of 10 ms fit a second: nothing cut
  assert fits(0.01, 3, 20, 0.1) == (3, 7)  # after the first call, 9 more: 2 warm-ups and 7 timed ones
  assert fits(0.01, 3, 20, 0.06) == (3, 3)
  assert fits(0.01, 3, 20, 0.04) == (1, 3)  # the warm-ups go before the timed calls drop below 3
  assert fits(0.01, 3, 20, 0.025) == (1, 1)  # not even 3: one timed call
  assert fits(0.01, 3, 20, 0.1, repeats=2) == (3, 3)  # each timed call runs again pipelined
  assert fits(1.0, 0, 5, 0.5) == (0, 1)  # no warm-up: the first call was the timed one
  assert fits(0.01, 3, 20, math.inf) == (3, 20)


def test_row_budget_must_be_positive(capsys, config_file):
  code, out, err = bench_here(capsys, config_file, "--row-budget", "0")
  assert code == 2 and not out and "--row-budget" in err
