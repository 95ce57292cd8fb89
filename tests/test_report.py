"""`lensjax report` on hand-written run directories: figures, numbers on the page, errors, CLI exit codes."""

from __future__ import annotations

import json
import math
import os
import re

import numpy as np
import pytest
from matplotlib import image as mpl_image

from conftest import run_cli
from lensjax.errors import InputError
from lensjax.analysis import records as records_lib
from lensjax.analysis.growth import growth_exponent
from lensjax.report import build, figures_events, figures_layers, page
from lensjax.report import runs as runs_lib

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
LAST_N = 3
TRAIN_STEPS = list(range(0, 100, 10))  # logged steps 0..90; the last 3 are 70, 80, 90


# --------------------------------------------------------------------------
# Synthetic runs. Per-layer values are simple functions of (layer, step), so
# their last-3 means can be written down by hand below.


def active_token(layer: int, step: int) -> float:
  return 0.4 - 0.1 * layer + step / 1000  # last-3 mean: 0.48 - 0.1·layer


def dead(layer: int, step: int) -> float:
  return 0.01 * layer + step / 10000  # last-3 mean: 0.008 + 0.01·layer


def bypass(layer: int, step: int) -> float:
  return 1.0 / (layer + 2)  # constant: 0.5, 0.333, 0.25


def train_record(step: int, num_layers: int, num_heads: int, probe: bool) -> dict:
  record = {"step": step, "train/loss": 3.0 - step / 50, "perf/tokens_per_s": 1000.0 + step}
  for l in range(num_layers):
    record[f"ffn/active_token/layer_{l}"] = active_token(l, step)
    record[f"ffn/active_seq/layer_{l}"] = min(1.0, 2 * active_token(l, step))
    record[f"ffn/active_batch/layer_{l}"] = min(1.0, 3 * active_token(l, step))
    record[f"ffn/dead/layer_{l}"] = dead(l, step)
    record[f"attn/bypass/layer_{l}"] = bypass(l, step)
    record[f"attn/max_logit/layer_{l}"] = 2.0 + l + step / 20
    record[f"adam/g2_over_v/layer_{l}"] = 1.0 + 10 * (step == 50) * (l + 1)
    record[f"norm/params/layer_{l}"] = (l + 1) * math.sqrt(step + 1)
    for h in range(num_heads):
      record[f"attn/entropy/layer_{l}/head_{h}"] = (h + 1) / (num_heads + 1)
    if probe:
      record[f"probe/ffn/active_token/layer_{l}"] = active_token(l, step) - 0.05
  record.update({"entropy/model_token": 1.0 + 1.0 / (step + 1), "entropy/target_token": 1.1,
                 "entropy/kl_token": 0.5 / (step + 1), "norm/params": 10 * math.sqrt(step),
                 "norm/cos_step": 1 - 1e-5 / (step + 1), "norm/alignment": 0.05, "adam/update_grad_cos": 0.7})
  return record


def write_jsonl(path, records: list[dict]) -> None:
  with open(path, "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in records)


# What a lean run keeps: enough for the comparison figures, few figures of its own (fast tests).
LEAN_NAMES = ("step", "train/loss", "eval/loss", "ffn/active_token/", "ffn/dead/", "attn/bypass/")


def make_run(directory, num_layers: int = 3, num_heads: int = 2, probe: bool = True, events: bool = True,
             with_config: bool = True, lean: bool = False) -> str:
  os.makedirs(directory)
  records = [train_record(s, num_layers, num_heads, probe) for s in TRAIN_STEPS]
  # An evaluation logged on its own line, and one merged into the last train record.
  eval_only = {"step": 50, "eval/loss": 2.2, **{f"eval/ffn/active_token/layer_{l}": 0.3 for l in range(num_layers)}}
  records.insert(6, eval_only)
  records[-1].update({"eval/loss": 1.5, **{f"eval/ffn/active_token/layer_{l}": 0.25 for l in range(num_layers)}})
  if lean:
    records = [{k: v for k, v in r.items() if k.startswith(LEAN_NAMES)} for r in records]
  write_jsonl(os.path.join(directory, "metrics.jsonl"), records)
  if events:
    write_jsonl(os.path.join(directory, "neuron_events.jsonl"), [
        {"step": 30, "layer": 0, "unit": 5, "event": "died", "frequency": 0.0, "steps_since_active": 12.0,
         "adam_v": 1e-11},
        {"step": 30, "layer": 2, "unit": 7, "event": "died", "frequency": 0.001, "steps_since_active": 10.0,
         "adam_v": 3e-10},
        {"step": 60, "layer": 0, "unit": 5, "event": "revived", "frequency": 0.01, "steps_since_active": 0.0,
         "adam_v": 2e-9},
    ])
  if with_config:
    config = {"model": {"num_layers": num_layers, "d_model": 32, "num_heads": num_heads, "d_ff": 128,
                        "activation": "relu"},
              "data": {"source": "markov", "markov_order": 1, "vocab_size": 8, "seq_len": 16},
              "train": {"steps": 100}}
    with open(os.path.join(directory, "config.json"), "w") as f:
      json.dump(config, f)
  return str(directory)


def minimal_run(directory) -> str:
  """Two layers, loss and one family only: a report of a few figures, for the CLI tests."""
  os.makedirs(directory)
  write_jsonl(os.path.join(directory, "metrics.jsonl"), [
      {"step": s, "train/loss": 2.0 - s / 100, "attn/max_logit": 1.0 + s / 10,
       **{f"ffn/active_token/layer_{l}": 0.5 - 0.1 * l for l in range(2)}} for s in (0, 10, 20)])
  return str(directory)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
  base = tmp_path_factory.mktemp("report")
  rich = make_run(base / "ladder_small")
  plain = make_run(base / "ladder_big", num_layers=4, probe=False, events=False, with_config=False, lean=True)
  out = base / "out"
  index = build.build_report([rich, plain], str(out), last_n=LAST_N)
  with open(index) as f:
    markdown = f.read()
  return {"rich": rich, "plain": plain, "out": str(out), "index": index, "markdown": markdown}


def image_links(markdown: str) -> list[str]:
  return re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown)


def run_part(markdown: str, name: str) -> str:
  """The page's section of one run, from its heading to the next run's."""
  start = markdown.index(f"## Run `{name}`")
  end = markdown.find("\n## Run `", start + 1)
  return markdown[start:] if end < 0 else markdown[start:end]


# --------------------------------------------------------------------------
# The report.


def test_every_figure_is_a_valid_png_linked_from_the_page(report):
  pngs = sorted(f for f in os.listdir(report["out"]) if f.endswith(".png"))
  assert len(pngs) >= 20
  for name in pngs:
    path = os.path.join(report["out"], name)
    with open(path, "rb") as f:
      assert f.read(8) == PNG_MAGIC, name
    pixels = mpl_image.imread(path)
    assert pixels.ndim == 3 and pixels.shape[0] > 100 and pixels.shape[1] > 100, name
    assert np.ptp(pixels) > 0, f"{name} is blank"
  links = image_links(report["markdown"])
  assert sorted(set(links)) == pngs  # every link exists and every figure is shown
  assert all(not os.path.isabs(link) for link in links)


def test_page_shows_the_expected_figures_only_where_data_exist(report):
  files = set(image_links(report["markdown"]))
  for what in ("loss", "entropy", "ffn_active_token", "ffn_active_token_heatmap", "ffn_dead", "attn_bypass_heatmap",
               "neuron_events", "norm_growth", "norm_params", "adam_g2_over_v", "attn_entropy_heads"):
    assert f"ladder_small_{what}.png" in files, what
  for what in ("train_loss", "eval_loss", "ffn_active_token", "ffn_dead", "attn_bypass"):
    assert f"compare_{what}.png" in files, what
  # The second run logged no neuron events and no probe batch.
  assert "ladder_big_neuron_events.png" not in files
  assert "fixed probe batch" in run_part(report["markdown"], "ladder_small")
  assert "fixed probe batch" not in run_part(report["markdown"], "ladder_big")


def test_page_table_holds_the_last_n_averages(report):
  small = run_part(report["markdown"], "ladder_small")
  # Columns: layer | active per token | dead | bypass, each the mean of steps 70, 80, 90.
  assert "| 0 (first) | 0.48 | 0.008 | 0.5 |" in small
  assert "| 1 | 0.38 | 0.018 | 0.333 |" in small
  assert "| 2 (last) | 0.28 | 0.028 | 0.25 |" in small
  assert "first layer: 0.48, last layer: 0.28" in small
  assert "first layer: 0.008, last layer: 0.028" in small
  # Config summary and final losses: train loss at step 90 is 3 - 90/50 = 1.2, eval loss 1.5.
  assert "| ladder_small | 3 | 32 | 2 | 128 | relu | markov (order 1, V 8, T 16) | 100 | 1.2 | 1.5 |" in small
  big = run_part(report["markdown"], "ladder_big")
  assert "| 3 (last) | 0.18 | 0.038 | 0.2 |" in big
  assert "| ladder_big | – | – | – | – | – | – | – | 1.2 | 1.5 |" in big  # no config.json


def test_summary_numbers_match_a_hand_computation(report):
  run = runs_lib.read_run(report["rich"])
  summary = page.summarize_run(run, LAST_N)
  np.testing.assert_allclose(summary.per_layer["ffn/active_token"], [0.48, 0.38, 0.28])
  np.testing.assert_allclose(summary.per_layer["ffn/dead"], [0.008, 0.018, 0.028])
  np.testing.assert_allclose(summary.per_layer["attn/bypass"], [1 / 2, 1 / 3, 1 / 4])
  # The separate eval record at step 50 must not count as a logged step of a train metric.
  assert runs_lib.last_n_mean(run.records, "train/loss", LAST_N) == pytest.approx(3.0 - 80 / 50)
  assert runs_lib.last_n_mean(run.records, "eval/loss", LAST_N) == pytest.approx((2.2 + 1.5) / 2)
  np.testing.assert_allclose(runs_lib.last_n_head_means(run.records, "attn/entropy", LAST_N),
                             [[1 / 3, 2 / 3]] * 3)
  assert any("t^0.50" in fact for fact in summary.facts)  # norm/params = 10·√t
  assert any("2 died, 1 revived" in fact for fact in summary.facts)


# --------------------------------------------------------------------------
# Series helpers.


def test_series_sorts_steps_and_keeps_the_later_duplicate():
  records = [{"step": 20, "a": 2.0}, {"step": 10, "a": 1.0}, {"step": 20, "a": 5.0}, {"step": 30, "b": 1.0}]
  steps, values = records_lib.series(records, "a")
  assert steps.tolist() == [10, 20] and values.tolist() == [1.0, 5.0]


def test_layer_family_is_nan_where_a_layer_is_missing():
  records = [{"step": 0, "f/layer_0": 1.0, "f/layer_1": 2.0}, {"step": 5, "f/layer_0": 3.0},
             {"step": 5, "f/layer_0/head_0": 9.0}]
  steps, values = runs_lib.layer_family(records, "f")
  assert steps.tolist() == [0, 5]
  np.testing.assert_array_equal(values, [[1.0, 3.0], [2.0, np.nan]])
  assert records_lib.family_layers(records_lib.metric_names(records), "f") == 2


def test_last_n_mean_skips_non_finite_values():
  records = [{"step": s, "x": v} for s, v in enumerate([1.0, 2.0, float("nan"), float("inf"), 4.0])]
  assert runs_lib.last_n_mean(records, "x", 3) == 4.0
  assert runs_lib.last_n_mean(records, "x", 5) == pytest.approx(7 / 3)
  assert math.isnan(runs_lib.last_n_mean(records, "missing", 3))


def test_growth_exponent_recovers_a_power_law():
  steps = np.arange(0, 1000, 10)
  assert growth_exponent(steps, 3.0 * np.sqrt(steps + 0.0)) == pytest.approx(0.5, abs=1e-6)
  assert math.isnan(growth_exponent(steps[:2], np.ones(2)))


def test_event_counts_bin_onto_the_next_logging_step():
  events = [{"step": 3, "layer": 0, "event": "died"}, {"step": 10, "layer": 1, "event": "died"},
            {"step": 11, "layer": 1, "event": "revived"}, {"step": 99, "layer": 0, "event": "died"}]
  counts = figures_events.event_counts(events, "died", np.array([0, 10, 20]), num_layers=2)
  np.testing.assert_array_equal(counts, [[0, 1, 1], [0, 1, 0]])


def test_deep_model_curves_use_a_colour_bar_and_survive_nan(tmp_path):
  values = np.linspace(0, 1, 12 * 5).reshape(12, 5)
  values[3, 2], values[4, 1] = np.nan, np.inf
  path = figures_layers.layer_curves([figures_layers.LayerPanel("training batch", np.arange(5) * 10, values)], "deep",
                                     "fraction", str(tmp_path / "deep.png"))
  with open(path, "rb") as f:
    assert f.read(8) == PNG_MAGIC


# --------------------------------------------------------------------------
# Errors and the command line.


def test_missing_directory_is_an_input_error_naming_it(tmp_path):
  missing = str(tmp_path / "no_such_run")
  with pytest.raises(InputError, match=re.escape(missing)):
    runs_lib.read_run(missing)


def test_directory_without_metrics_is_an_input_error_naming_it(tmp_path):
  (tmp_path / "config.json").write_text("{}")
  with pytest.raises(InputError, match=re.escape(str(tmp_path)) + ".*metrics.jsonl"):
    runs_lib.read_run(str(tmp_path))


def test_empty_metrics_file_is_an_input_error(tmp_path):
  (tmp_path / "metrics.jsonl").write_text('{"step": 0, "train/lo')  # only a partial line
  with pytest.raises(InputError, match="no complete record"):
    runs_lib.read_run(str(tmp_path))


def test_nothing_is_written_when_one_run_is_bad(tmp_path):
  good = minimal_run(tmp_path / "good")
  out = tmp_path / "out"
  with pytest.raises(InputError):
    build.build_report([good, str(tmp_path / "missing")], str(out))
  assert not out.exists()


def test_cli_writes_the_report_and_exits_0(tmp_path):
  run = minimal_run(tmp_path / "tiny")
  out = tmp_path / "out"
  result = run_cli("report", run, "--out", str(out), "--last", "2")
  assert result.returncode == 0, result.stderr
  links = image_links((out / "index.md").read_text())
  assert links and all((out / link).is_file() for link in links)
  assert "first layer: 0.5, last layer: 0.4" in (out / "index.md").read_text()


@pytest.mark.parametrize("case", ["missing directory", "no metrics.jsonl"])
def test_cli_bad_run_directory_exits_2_naming_it(tmp_path, case):
  run = tmp_path / "run"
  if case == "no metrics.jsonl":
    run.mkdir()
  result = run_cli("report", str(run), "--out", str(tmp_path / "out"))
  assert result.returncode == 2
  assert str(run) in result.stderr and "Traceback" not in result.stderr


def test_a_histogram_of_one_value_stays_inside_the_quantity_s_range():
  from lensjax.report.figures_events import _histogram_bins
  for values, bounds, low, high in (([0.0, 0.0], (0.0, 1.0), 0.0, 0.05), ([1.0], (0.0, 1.0), 0.9, 1.0),
                                    ([0.3], (0.0, 1.0), 0.275, 0.325), ([5.0], None, 4.75, 5.25)):
    bins = _histogram_bins(np.asarray(values), False, bounds)
    assert (bins[0], bins[-1]) == pytest.approx((low, high)) and len(bins) == 31, values
  spread = _histogram_bins(np.asarray([0.1, 0.4]), False, (0.0, 1.0))
  assert (spread[0], spread[-1]) == pytest.approx((0.1, 0.4))


def test_the_analyses_a_run_holds_get_their_section(tmp_path):
  run = minimal_run(tmp_path / "analysed")
  before = build.build_report([run], str(tmp_path / "before"))
  assert "### Analyses" not in open(before).read()  # nothing analysed: no section
  os.makedirs(os.path.join(run, "analyses"))
  with open(os.path.join(run, "analyses", "hessian_000020.json"), "w") as f:
    json.dump({"step": 20, "hessian/lambda_max": 3.0, "hessian/lambda_maxabs": -5.0, "hessian/trace": 1.0,
               "hessian/trace_stderr": 0.5, "hessian/stability_threshold": 200.0, "slq_trace": 1.2,
               "slq_trace_stderr": 0.7, "top_eigenvalues": [3.0, 1.0],
               "density": {"nodes": [-5.0, 1.0, 3.0], "weights": [0.2, 0.5, 0.3]}}, f)
  with open(os.path.join(run, "analyses", "entropy_000020.json"), "w") as f:
    json.dump({"step": 20, "method": "exact", "eval/entropy_model_seq": 4.0, "eval/entropy_target_seq": 4.5,
               "eval/kl_seq": 0.3}, f)
  with open(os.path.join(run, "analyses", "saturation_000020.json"), "w") as f:
    json.dump({"step": 20, "scale": 1000.0, "eval/saturation/layer_0": 0.9, "eval/saturation/layer_1": 0.5,
               "eval/saturated_head/layer_0/head_0": 1.0, "eval/saturated_head/layer_0/head_1": 4.0,
               "saturated_head_histogram": {"edges": [0.0, 0.5, 1.0], "counts": [1, 1]}}, f)
  index = build.build_report([run], str(tmp_path / "after"), figure_format="pdf")
  markdown = open(index).read()
  assert "### Analyses" in markdown and "1 of 2 heads" in markdown and "largest |λ| -5" in markdown
  for what in ("curvature", "hessian_density", "saturation", "entropy_analysis"):
    path = tmp_path / "after" / f"analysed_{what}.pdf"
    assert path.read_bytes().startswith(b"%PDF"), what
    assert f"(analysed_{what}.pdf)" in markdown
  with pytest.raises(InputError, match="--format"):
    build.build_report([run], str(tmp_path / "bad"), figure_format="jpg")
