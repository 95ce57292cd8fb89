"""`lensjax report` on sweep members: H(Q) vs H(P), gap, KL and sparsity against size, seed replicas folded."""

from __future__ import annotations

import json
import math
import os
import re

import numpy as np
import pytest
from matplotlib import image as mpl_image

from lensjax.errors import InputError
from lensjax.report import build, figures_size, page, plotting, size_section, sizes
from lensjax.report import runs as runs_lib

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
LAST_N = 2
STEPS = (0, 10, 20, 30)  # the last 2 logged: 20, 30
TARGET = 7.0  # H(P), nats per sequence, T = 8


def write_member(directory, name: str, *, d_model: int, seed: int, num_params: int, model_entropy: float,
                 kl: float, block: str = "attention+ffn", num_layers: int = 2, progress: str = "lines",
                 model_stderr: float = 0.0) -> str:
  """A finished sweep member: config.json, metrics.jsonl and entropy.json, values chosen to check by hand."""
  path = os.path.join(directory, name)
  os.makedirs(path)
  config = {"model": {"num_layers": num_layers, "d_model": d_model, "num_heads": 2, "d_ff": 4 * d_model,
                      "activation": "relu", "block": block},
            "data": {"source": "markov", "markov_order": 2, "vocab_size": 4, "seq_len": 8},
            "train": {"steps": 30, "seed": seed}, "logging": {"progress": progress}}
  records = []
  for step in STEPS:
    record = {"step": step, "train/loss": 1.0 - step / 100}
    for l in range(num_layers):
      if block != "attention_only":
        record[f"ffn/active_token/layer_{l}"] = 0.1 * (l + 1) + step / 1000 + seed / 100
      if block != "ffn_only":
        record[f"attn/bypass/layer_{l}"] = 1.0 / (l + 1)
    records.append(record)
  records[-1]["eval/loss"] = 0.9 + seed / 100
  with open(os.path.join(path, "config.json"), "w") as f:
    json.dump(config, f)
  with open(os.path.join(path, "metrics.jsonl"), "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in records)
  entropy = {"name": name, "step": 30, "num_params": num_params, "seq_len": 8, "method": "exact",
             "eval/entropy_model_seq": model_entropy, "eval/entropy_model_seq_stderr": model_stderr,
             "eval/entropy_target_seq": TARGET, "eval/entropy_target_seq_stderr": 0.0,
             "eval/kl_seq": kl, "eval/kl_seq_stderr": 0.0,
             "entropy_gap_seq": model_entropy - TARGET, "entropy_gap_seq_stderr": model_stderr}
  with open(os.path.join(path, "entropy.json"), "w") as f:
    json.dump(entropy, f)
  return path


@pytest.fixture(scope="module")
def sweep_report(tmp_path_factory):
  base = str(tmp_path_factory.mktemp("sweep"))
  dirs = [
      # The small model, three seeds: H(Q) 6.9, 7.0, 7.1 (mean 7.0, standard error 0.1/√3 · √3 = 0.0577...).
      write_member(base, "small_s0", d_model=32, seed=0, num_params=1000, model_entropy=6.9, kl=0.02),
      write_member(base, "small_s1", d_model=32, seed=1, num_params=1000, model_entropy=7.0, kl=0.04,
                   progress="none"),  # logging differs: still a replica
      write_member(base, "small_s2", d_model=32, seed=2, num_params=1000, model_entropy=7.1, kl=0.06),
      write_member(base, "big_s0", d_model=64, seed=0, num_params=4000, model_entropy=6.95, kl=0.01,
                   num_layers=3),
      write_member(base, "no_ffn", d_model=32, seed=0, num_params=600, model_entropy=7.2, kl=0.3,
                   block="attention_only", model_stderr=0.05),
  ]
  out = os.path.join(base, "report")
  index = build.build_report(dirs, out, last_n=LAST_N)
  with open(index) as f:
    markdown = f.read()
  runs = [runs_lib.read_run(d) for d in dirs]
  return {"dirs": dirs, "out": out, "markdown": markdown, "runs": runs}


def image_links(markdown: str) -> list[str]:
  return re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown)


# --------------------------------------------------------------------------
# Pure parts.


def test_combine_is_the_standard_error_over_replicas_plus_their_own():
  e = sizes.combine([1.0, 2.0, 3.0])
  assert (e.mean, e.n) == (2.0, 3) and e.err == pytest.approx(1.0 / math.sqrt(3))
  e = sizes.combine([1.0, 2.0, 3.0], [0.3, 0.4, 0.0])
  assert e.err == pytest.approx(math.sqrt(1.0 / 3 + (0.09 + 0.16) / 9))
  e = sizes.combine([5.0], [0.2])  # one Monte Carlo run: only its own error
  assert (e.mean, e.err, e.n) == (5.0, 0.2, 1)
  e = sizes.combine([1.0, float("nan"), 3.0])  # a missing replica is left out, not averaged as NaN
  assert (e.mean, e.n) == (2.0, 2) and e.err == pytest.approx(1.0)
  assert sizes.combine([]).n == 0 and math.isnan(sizes.combine([]).mean)


def test_seed_groups_ignore_seed_and_logging_only(sweep_report):
  runs = sweep_report["runs"]
  assert sizes.seed_groups(runs) == [[0, 1, 2], [3], [4]]
  assert sizes.group_label(["L2_D64_s0", "L2_D64_s1"]) == "L2_D64"
  assert sizes.group_label(["a-seed3"]) == "a"
  assert sizes.group_label(["x", "y"]) == "x"
  no_config = runs_lib.RunRecord(name="n", path="/p/n", config={}, records=[{"step": 0}], events=[])
  assert sizes.seed_key(no_config) == "path:/p/n"


def test_size_points_match_a_hand_computation(sweep_report):
  points = sizes.size_points(sweep_report["runs"], LAST_N)
  assert [p.label for p in points] == ["no_ffn", "small", "big"]  # by parameter count
  no_ffn, small, big = points
  assert small.runs == ("small_s0", "small_s1", "small_s2") and small.num_params == 1000 and small.seq_len == 8
  assert small.model_entropy.mean == pytest.approx(7.0)
  assert small.model_entropy.err == pytest.approx(0.1 / math.sqrt(3))  # sample std 0.1 over 3 seeds
  assert small.gap.mean == pytest.approx(0.0) and small.gap.err == pytest.approx(0.1 / math.sqrt(3))
  assert small.kl.mean == pytest.approx(0.04) and small.target_entropy.mean == TARGET
  assert small.target_entropy.err == 0.0
  assert small.eval_loss.mean == pytest.approx(0.91)
  # ffn/active_token of layer l, seed s at steps 20, 30: 0.1(l+1) + 0.025 + s/100 over the last 2.
  active = small.layers["ffn/active_token"]
  assert active["first"].mean == pytest.approx(0.135) and active["last"].mean == pytest.approx(0.235)
  assert active["mean"].mean == pytest.approx(0.185) and active["mean"].err == pytest.approx(0.01 / math.sqrt(3))
  assert big.layers["attn/bypass"]["mean"].mean == pytest.approx((1 + 1 / 2 + 1 / 3) / 3)
  assert big.layers["attn/bypass"]["last"].mean == pytest.approx(1 / 3)
  assert big.gap.mean == pytest.approx(-0.05) and big.gap.err == 0.0 and big.gap.n == 1
  # No FFN: no FFN activity, a Monte Carlo error of its own.
  assert no_ffn.block == "attention_only" and no_ffn.layers["ffn/active_token"]["mean"].n == 0
  assert no_ffn.model_entropy.err == pytest.approx(0.05)


# --------------------------------------------------------------------------
# The page.


def test_size_figures_are_valid_pngs_linked_from_the_page(sweep_report):
  links = image_links(sweep_report["markdown"])
  for what in ("entropy", "gap_kl", "sparsity"):
    name = f"size_{what}.png"
    assert name in links, name
    path = os.path.join(sweep_report["out"], name)
    with open(path, "rb") as f:
      assert f.read(8) == PNG_MAGIC
    pixels = mpl_image.imread(path)
    assert pixels.shape[0] > 100 and np.ptp(pixels) > 0, name
  pngs = sorted(f for f in os.listdir(sweep_report["out"]) if f.endswith(".png"))
  assert sorted(set(links)) == pngs  # every figure is shown and every link exists


def test_seed_replicas_get_one_set_of_run_figures_but_every_table_row(sweep_report):
  markdown, out = sweep_report["markdown"], sweep_report["out"]
  assert "## Run `small_s0`" in markdown and "## Run `small_s1`" not in markdown
  assert os.path.isfile(os.path.join(out, "small_s0_ffn_active_token_heatmap.png"))
  assert not any(f.startswith(("small_s1_", "small_s2_")) for f in os.listdir(out))
  assert "`small_s0` for `small_s1`, `small_s2`" in markdown
  for name in ("small_s1", "small_s2"):  # still in the comparison table
    assert f"| {name} | 2 | 32 |" in markdown


def test_size_table_holds_the_estimates(sweep_report):
  markdown = sweep_report["markdown"]
  part = markdown[markdown.index("## Against model size"):markdown.index("## Run `")]
  err = f"{0.1 / math.sqrt(3):.4f}"
  assert (f"| small | 3 | 1,000 | 7.0000 | 7.0000 ± {err} | 0.0000 ± {err} | 0.0400 ± {0.02 / math.sqrt(3):.4f} | "
          f"0.9100 ± {0.01 / math.sqrt(3):.4f} | 0.875 | 0.185 ± 0.006 (0.135 / 0.235) | 0.750 (1 / 0.5) |") in part
  assert ("| big | 1 | 4,000 | 7.0000 | 6.9500 | -0.0500 | 0.0100 | 0.9000 | 0.875 | 0.225 (0.125 / 0.325) | "
          "0.611 (1 / 0.333) |") in part
  assert ("| no_ffn | 1 | 600 | 7.0000 | 7.2000 ± 0.0500 | 0.2000 ± 0.0500 | 0.3000 | 0.9000 | 0.875 | – | "
          "0.750 (1 / 0.5) |") in part


def test_no_size_section_without_entropy_files(tmp_path):
  run = write_member(str(tmp_path), "plain", d_model=32, seed=0, num_params=1, model_entropy=7.0, kl=0.1)
  os.remove(os.path.join(run, "entropy.json"))
  index = build.build_report([run], str(tmp_path / "out"), last_n=LAST_N)
  with open(index) as f:
    markdown = f.read()
  assert "## Against model size" not in markdown
  assert not any(link.startswith("size_") for link in image_links(markdown))


def test_format_estimate():
  assert page.format_estimate(sizes.Estimate(7.17241, 0.0031, 3)) == "7.1724 ± 0.0031"
  assert page.format_estimate(sizes.Estimate(7.17241, 0.0, 1)) == "7.1724"
  assert page.format_estimate(sizes.NO_ESTIMATE) == "–"


@pytest.mark.parametrize("content", ["{\"eval/entropy_model", "{\"name\": \"x\"}"])
def test_bad_entropy_file_is_an_input_error_naming_it(tmp_path, content):
  run = write_member(str(tmp_path), "m", d_model=32, seed=0, num_params=1, model_entropy=7.0, kl=0.1)
  with open(os.path.join(run, "entropy.json"), "w") as f:
    f.write(content)
  with pytest.raises(InputError, match=re.escape(os.path.join(run, "entropy.json"))):
    runs_lib.read_run(run)


def test_integer_ticks_keep_the_ends_without_crowding_the_last():
  assert plotting.integer_ticks(51, most=8) == [0, 7, 14, 21, 28, 35, 42, 50]  # 49 would print over 50
  assert plotting.integer_ticks(10, most=4) == [0, 3, 6, 9]
  assert plotting.integer_ticks(11, most=4) == [0, 3, 6, 10]
  assert plotting.integer_ticks(1) == [0] and plotting.integer_ticks(2) == [0, 1]


def test_heat_map_step_ticks_fall_on_round_steps_at_their_columns():
  logged = np.r_[np.arange(0, 400, 10), 399]  # log_every 10, and the last step
  positions, labels = plotting.round_step_ticks(logged)
  assert labels == ["0", "50", "100", "150", "200", "250", "300", "350"] and positions[2] == 10.0
  uneven = np.array([0, 10, 20, 100, 200])  # a coarser cadence later: 150 lies halfway between columns 3 and 4
  positions, labels = plotting.round_step_ticks(uneven, most=4)
  assert dict(zip(labels, positions))["150"] == pytest.approx(3.5)
  assert plotting.round_step_ticks(np.array([7])) == ([0.0], ["7"])
  assert plotting.round_step_ticks(np.array([], np.int64)) == ([], [])


def test_whole_sequence_entropy_over_training_is_drawn_when_logged(tmp_path):
  run = write_member(str(tmp_path), "traj", d_model=32, seed=0, num_params=1, model_entropy=7.0, kl=0.1)
  with open(os.path.join(run, "metrics.jsonl"), "a") as f:
    for step, model in ((9, 9.0), (19, 7.1), (29, 6.98)):
      f.write(json.dumps({"step": step, "eval/entropy_model_seq": model, "eval/entropy_target_seq": TARGET,
                          "eval/kl_seq": abs(model - TARGET) / 2}) + "\n")
  index = build.build_report([run], str(tmp_path / "out"), last_n=LAST_N)
  with open(index) as f:
    links = image_links(f.read())
  assert "traj_sequence_entropy.png" in links
  with open(tmp_path / "out" / "traj_sequence_entropy.png", "rb") as f:
    assert f.read(8) == PNG_MAGIC


def test_parameter_axis_labels_and_ticks():
  assert [figures_size.parameter_label(v) for v in (800, 20_000, 1_500_000, 2e9)] == ["800", "20k", "1.5M", "2B"]
  assert figures_size.parameter_ticks(20_000, 1_000_000) == [20_000, 50_000, 100_000, 200_000, 500_000, 1_000_000]
  assert figures_size.parameter_ticks(30_000, 40_000) == []  # no 1-2-5 value inside: the axis falls back to the data


def test_log_colours_only_when_values_span_decades():
  assert plotting.log_color_norm(np.array([[0.5, 1.0], [0.6, 0.9]])) is None
  norm = plotting.log_color_norm(np.array([[50.0, 40.0], [0.03, 0.0]]))  # zero and NaN are left out
  assert norm is not None and (norm.vmin, norm.vmax) == (0.03, 50.0)
  assert plotting.log_color_norm(np.zeros((2, 2))) is None


def test_gap_axis_turns_symmetric_log_only_for_an_outlier():
  assert size_section.symlog_threshold([0.01, -0.02, 0.03]) is None
  assert size_section.symlog_threshold([0.01, -0.02, 0.03, 1.6]) == pytest.approx(2 * 0.025)
  assert size_section.symlog_threshold([0.0, 5.0]) is None  # too few models to call one an outlier
