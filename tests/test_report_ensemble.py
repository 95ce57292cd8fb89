"""`lensjax report` on seed ensembles: t quantiles, means with 95% intervals, ensemble directories, settings."""

from __future__ import annotations

import json
import math
import os
import re

import numpy as np
import pytest
from matplotlib import image as mpl_image

from conftest import run_cli
from lensjax.config import Config, to_dict
from lensjax.errors import InputError
from lensjax.report import build, ensemble, ensemble_section, intervals, sizes
from lensjax.report import runs as runs_lib

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
LAST_N = 3
STEPS = (0, 10, 20, 30, 40, 50)  # the last 3 logged: 30, 40, 50
FINAL_LOSSES = (1.0, 1.2, 1.4)
# By hand: mean 1.2, s = 0.2, t_{0.975, 2} = 4.302653, half-width 4.302653 · 0.2 / √3 = 0.496828.
HALF_WIDTH = 4.302652729749464 * 0.2 / math.sqrt(3)


# --------------------------------------------------------------------------
# Hand-built member directories: losses flat over the last LAST_N logged steps, so their last-N means are known.


def member_config(seed: int, lr: float = 3e-3, weight_decay: float = 0.0, d_model: int = 32) -> dict:
  config = to_dict(Config().updated({"train.seed": seed, "data.seed": seed, "optim.lr": lr,
                                     "optim.weight_decay": weight_decay, "model.d_model": d_model,
                                     "train.steps": STEPS[-1]}))
  config["data"]["order_seed"] = 100 + seed  # an ensemble member's own data order
  return config


def write_member(path: str, config: dict, final_loss: float) -> str:
  os.makedirs(path)
  records = [{"step": s, "train/loss": final_loss + max(0, 30 - s) / 10, "perf/tokens_per_s": 500.0,
              "ffn/active_token/layer_0": 0.3} for s in STEPS]
  records[2]["eval/loss"] = final_loss + 0.1 + 0.5  # step 20
  records[-1]["eval/loss"] = final_loss + 0.1  # step 50
  with open(os.path.join(path, "metrics.jsonl"), "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in records)
  with open(os.path.join(path, "config.json"), "w") as f:
    json.dump(config, f)
  return path


def write_ensemble(path: str, configs: list[dict], losses: list[float], member_dirs: list[str] | None = None) -> str:
  """An ensemble directory as `lensjax train --config.train.members=N` leaves it: ensemble.json and its members."""
  os.makedirs(path)
  member_dirs = member_dirs or [f"member_{i}" for i in range(len(configs))]
  for name, config, loss in zip(member_dirs, configs, losses):
    write_member(os.path.join(path, name), config, loss)
  base = json.loads(json.dumps(configs[0]))
  base["train"]["members"] = len(configs)
  with open(os.path.join(path, "ensemble.json"), "w") as f:
    json.dump({"members": len(configs), "member_dirs": member_dirs, "config": base}, f)
  return path


def read_page(index: str) -> str:
  with open(index) as f:
    return f.read()


def image_links(markdown: str) -> list[str]:
  return re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown)


@pytest.fixture(scope="module")
def seeds_report(tmp_path_factory):
  base = str(tmp_path_factory.mktemp("ensemble"))
  directory = write_ensemble(os.path.join(base, "seeds"), [member_config(s) for s in range(3)], list(FINAL_LOSSES))
  out = os.path.join(base, "out")
  markdown = read_page(build.build_report([directory], out, last_n=LAST_N))
  return {"dir": directory, "out": out, "markdown": markdown}


# --------------------------------------------------------------------------
# Student's t.


@pytest.mark.parametrize("df, expected", [(1, 12.706), (2, 4.303), (4, 2.776), (9, 2.262), (29, 2.045)])
def test_t_quantile_matches_the_tables(df, expected):
  assert intervals.t_quantile(0.975, df) == pytest.approx(expected, abs=5e-4)


@pytest.mark.parametrize("p", [0.55, 0.8, 0.975, 0.995, 0.9995])
def test_t_quantile_matches_the_closed_forms_of_one_and_two_degrees(p):
  assert intervals.t_quantile(p, 1) == pytest.approx(math.tan(math.pi * (p - 0.5)), rel=1e-10)
  assert intervals.t_quantile(p, 2) == pytest.approx((2 * p - 1) / math.sqrt(2 * p * (1 - p)), rel=1e-10)
  assert intervals.t_quantile(1 - p, 7) == pytest.approx(-intervals.t_quantile(p, 7), rel=1e-12)


def test_t_quantile_inverts_the_distribution_and_tends_to_the_normal():
  for df in (1, 3, 12, 57.5):
    for p in (0.6, 0.9, 0.99):
      assert intervals.t_cdf(intervals.t_quantile(p, df), df) == pytest.approx(p, abs=1e-12)
  assert intervals.t_quantile(0.975, 1e7) == pytest.approx(1.959964, abs=1e-5)
  assert intervals.t_quantile(0.5, 3) == 0.0
  assert intervals.t_critical(3) == pytest.approx(4.302653, abs=1e-6)
  with pytest.raises(ValueError):
    intervals.t_quantile(1.0, 3)
  with pytest.raises(ValueError):
    intervals.t_critical(1)


def test_mean_interval_by_hand():
  i = intervals.mean_interval([1.0, 1.4, 1.2])
  assert (i.mean, i.n, i.minimum, i.maximum) == (pytest.approx(1.2), 3, 1.0, 1.4)
  assert i.std == pytest.approx(0.2) and i.half_width == pytest.approx(HALF_WIDTH)
  assert (i.low, i.high) == (pytest.approx(1.2 - HALF_WIDTH), pytest.approx(1.2 + HALF_WIDTH))
  two = intervals.mean_interval([1.0, float("nan"), 2.0])  # a diverged member is left out, not averaged in
  assert two.n == 2 and two.half_width == pytest.approx(12.706204736 * math.sqrt(0.5) / math.sqrt(2))
  one = intervals.mean_interval([5.0])
  assert (one.mean, one.n) == (5.0, 1) and math.isnan(one.half_width) and math.isnan(one.std)
  assert intervals.mean_interval([]).n == 0


# --------------------------------------------------------------------------
# Reading and grouping.


def test_an_ensemble_directory_expands_into_its_members_in_member_order(tmp_path):
  order = ["member_2", "member_0", "member_1"]  # ensemble.json's order, not the listing's
  directory = write_ensemble(str(tmp_path / "ens"), [member_config(s) for s in range(3)], [1.0, 1.1, 1.2],
                             member_dirs=order)
  runs = runs_lib.read_runs([directory])
  assert [run.name for run in runs] == [f"ens/{name}" for name in order]
  assert [run.config["train"]["seed"] for run in runs] == [0, 1, 2]
  assert all(run.ensemble == directory for run in runs)
  plain = runs_lib.read_runs([os.path.join(directory, name) for name in order])  # W/member_*: ordinary runs
  assert [run.name for run in plain] == order and not any(run.ensemble for run in plain)


def test_a_broken_ensemble_is_an_input_error_naming_what_is_wrong(tmp_path):
  directory = write_ensemble(str(tmp_path / "ens"), [member_config(s) for s in range(2)], [1.0, 1.1])
  os.rename(os.path.join(directory, "member_1"), os.path.join(directory, "moved"))
  with pytest.raises(InputError, match=re.escape(os.path.join(directory, "member_1"))):
    runs_lib.read_runs([directory])
  with open(os.path.join(directory, "ensemble.json"), "w") as f:
    f.write('{"members": 2, "member_dirs": ["member_0"]}')
  with pytest.raises(InputError, match="member_dirs"):
    runs_lib.read_runs([directory])
  with open(os.path.join(directory, "ensemble.json"), "w") as f:
    f.write('{"members": ')
  with pytest.raises(InputError, match="not valid JSON"):
    runs_lib.read_runs([directory])


def test_replicas_differ_in_seeds_only_and_a_grid_is_one_group_per_setting(tmp_path):
  # Member i of a 2 × 2 grid: lr alternating, weight decay in pairs, one seed each; then two seeds per setting.
  settings = [(1e-3, 0.0), (3e-3, 0.0), (1e-3, 0.1), (3e-3, 0.1)] * 2
  configs = [member_config(seed, lr, wd) for seed, (lr, wd) in enumerate(settings)]
  directory = write_ensemble(str(tmp_path / "grid"), configs, [1.0 + i / 10 for i in range(8)])
  runs = runs_lib.read_runs([directory])
  assert sizes.seed_groups(runs) == [[0, 4], [1, 5], [2, 6], [3, 7]]
  groups = ensemble.ensemble_groups(runs, LAST_N)
  assert [g.setting for g in groups] == [{"optim.lr": "0.001", "optim.weight_decay": "0.0"},
                                         {"optim.lr": "0.003", "optim.weight_decay": "0.0"},
                                         {"optim.lr": "0.001", "optim.weight_decay": "0.1"},
                                         {"optim.lr": "0.003", "optim.weight_decay": "0.1"}]
  assert groups[1].label == "grid (optim.lr = 0.003, optim.weight_decay = 0.0)"
  assert groups[1].names == ("grid/member_1", "grid/member_5")
  loss = groups[1].metrics[0]
  assert loss.name == "train/loss" and loss.member_values == (pytest.approx(1.1), pytest.approx(1.5))
  assert loss.interval.half_width == pytest.approx(12.706204736 * math.sqrt(0.08) / math.sqrt(2))
  # A different model is a different setting even when everything else matches.
  other = write_member(str(tmp_path / "wide"), member_config(0, 1e-3, 0.0, d_model=64), 1.0)
  assert sizes.seed_groups(runs_lib.read_runs([directory, other]))[-1] == [8]


def test_scalar_metrics_are_those_every_member_logged_losses_first(tmp_path):
  directory = write_ensemble(str(tmp_path / "e"), [member_config(s) for s in range(2)], [1.0, 1.1])
  runs = runs_lib.read_runs([directory])
  assert ensemble.scalar_metric_names(runs) == ["train/loss", "eval/loss", "perf/tokens_per_s"]


def test_member_band_is_the_mean_and_t_interval_at_each_shared_step(tmp_path):
  directory = write_ensemble(str(tmp_path / "e"), [member_config(s) for s in range(3)], list(FINAL_LOSSES))
  band = ensemble.member_band(runs_lib.read_runs([directory]), "train/loss")
  assert band.steps.tolist() == list(STEPS) and len(band.members) == 3
  np.testing.assert_allclose(band.mean, [1.2 + max(0, 30 - s) / 10 for s in STEPS])
  np.testing.assert_allclose(band.half_width, HALF_WIDTH)  # the members differ by a constant at every step
  evaluation = ensemble.member_band(runs_lib.read_runs([directory]), "eval/loss")
  assert evaluation.steps.tolist() == [20, 50]


# --------------------------------------------------------------------------
# The page.


def test_the_page_summarises_the_members_with_the_t_interval(seeds_report):
  markdown = seeds_report["markdown"]
  part = markdown[markdown.index("## Seed ensembles"):markdown.index("## Run `")]
  assert "### `seeds`" in part and "3 members: `seeds_member_0`, `seeds_member_1`, `seeds_member_2`." in part
  assert "t = 4.303 for n = 3" in part
  low, high = f"{1.2 - HALF_WIDTH:.4g}", f"{1.2 + HALF_WIDTH:.4g}"
  assert (low, high) == ("0.7032", "1.697")
  assert f"| `train/loss` | 3 | 1.2 | [{low}, {high}] (± 0.4968) | 0.2 | 1 – 1.4 |" in part
  assert "| `eval/loss` | 3 | 1.55 |" in part  # mean of steps 20 and 50: final + 0.35
  assert "| `perf/tokens_per_s` | 3 | 500 | [500, 500] (± 0) | 0 | 500 – 500 |" in part
  assert "ffn/active_token/layer_0" not in part  # per-layer families have their own tables


def test_the_ensemble_figure_is_drawn_and_linked_and_members_share_one_set_of_run_figures(seeds_report):
  markdown, out = seeds_report["markdown"], seeds_report["out"]
  links = image_links(markdown)
  assert "ensemble_seeds_loss.png" in links
  path = os.path.join(out, "ensemble_seeds_loss.png")
  with open(path, "rb") as f:
    assert f.read(8) == PNG_MAGIC
  pixels = mpl_image.imread(path)
  assert pixels.shape[0] > 100 and np.ptp(pixels) > 0
  assert "t_{0.975, 2} · s/√3, t = 4.303" in markdown
  assert sorted(set(links)) == sorted(f for f in os.listdir(out) if f.endswith(".png"))
  assert "## Run `seeds_member_0`" in markdown and "## Run `seeds_member_1`" not in markdown


def test_one_member_has_no_interval_and_says_so(tmp_path):
  directory = write_ensemble(str(tmp_path / "solo"), [member_config(0)], [1.3])
  markdown = read_page(build.build_report([directory], str(tmp_path / "out"), last_n=LAST_N))
  part = markdown[markdown.index("## Seed ensembles"):markdown.index("## Run `")]
  assert "1 member: `solo_member_0`. One member: no interval." in part
  assert "| `train/loss` | 1 | 1.3 | one member: no interval | – | 1.3 – 1.3 |" in part
  assert "t = " not in part.split("\n\n")[1]  # the intro quotes no critical value for n = 1
  groups = ensemble.ensemble_groups(runs_lib.read_runs([directory]), LAST_N)
  assert math.isnan(groups[0].metrics[0].interval.half_width)
  assert ensemble_section.interval_text(groups[0].metrics[0].interval) == ensemble_section.ONE_MEMBER


def test_runs_without_replicas_get_no_ensemble_section(tmp_path):
  a = write_member(str(tmp_path / "a"), member_config(0, d_model=32), 1.0)
  b = write_member(str(tmp_path / "b"), member_config(0, d_model=64), 1.0)
  markdown = read_page(build.build_report([a, b], str(tmp_path / "out"), last_n=LAST_N))
  assert "## Seed ensembles" not in markdown


def test_member_directories_given_one_by_one_are_still_summarised_as_replicas(tmp_path):
  directory = write_ensemble(str(tmp_path / "e"), [member_config(s) for s in range(3)], list(FINAL_LOSSES))
  members = [os.path.join(directory, f"member_{i}") for i in range(3)]
  markdown = read_page(build.build_report(members, str(tmp_path / "out"), last_n=LAST_N))
  assert "3 members: `member_0`, `member_1`, `member_2`." in markdown
  assert f"[0.7032, 1.697] (± 0.4968)" in markdown


def test_cli_reports_an_ensemble_directory(tmp_path):
  directory = write_ensemble(str(tmp_path / "e"), [member_config(s) for s in range(2)], [1.0, 1.2])
  out = tmp_path / "out"
  result = run_cli("report", directory, "--out", str(out), "--last", str(LAST_N))
  assert result.returncode == 0, result.stderr
  markdown = (out / "index.md").read_text()
  assert "## Seed ensembles" in markdown and (out / "ensemble_e_loss.png").is_file()


def test_standard_error_bars_against_size_say_what_they_are_and_quote_the_t_interval(tmp_path):
  from test_report_entropy import write_member as write_sweep_member
  dirs = [write_sweep_member(str(tmp_path), f"small_s{s}", d_model=32, seed=s, num_params=1000,
                             model_entropy=6.9 + s / 10, kl=0.02) for s in range(3)]
  dirs.append(write_sweep_member(str(tmp_path), "big_s0", d_model=64, seed=0, num_params=4000, model_entropy=6.95,
                                 kl=0.01))
  markdown = read_page(build.build_report(dirs, str(tmp_path / "out"), last_n=2))
  part = markdown[markdown.index("## Against model size"):markdown.index("## Run `")]
  assert "one standard error over them" in part and "not a 95% interval" in part
  assert "± t_{0.975, 2} = 4.303 of them" in part
  assert "over 3 seeds is ± 4.303 standard errors (Student t, 2 df)" in part  # the figures' captions
  assert "2 SE" not in markdown and "two standard errors" not in markdown
  # The same three seeds are summarised as an ensemble, with the interval those captions quote.
  assert "### `small (model.d_ff = 128, model.d_model = 32)`" in markdown and "t = 4.303 for n = 3" in markdown
  assert "### `big_s0" not in markdown  # a lone run is no ensemble
