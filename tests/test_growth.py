"""Norm growth laws: each fit recovers its own law's parameters and wins on its own data."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from lensjax import cli
from lensjax.analysis import growth
from lensjax.report.figures_growth import growth_figure

STEPS = np.arange(0, 3001, 20, dtype=np.float64)
# law: (true parameters, series); the exponential's own offset c included.
LAWS = {
    "sqrt": ({"a": 3.0, "b": 10.0}, 3.0 * np.sqrt(STEPS) + 10.0),
    "linear": ({"a": 0.02, "b": 10.0}, 0.02 * STEPS + 10.0),
    "quarter": ({"a": 5.0, "b": 10.0}, 5.0 * STEPS ** 0.25 + 10.0),
    "exp": ({"a": 2.0, "b": 1e-3, "c": 5.0}, 2.0 * np.exp(1e-3 * STEPS) + 5.0),
}


@pytest.mark.parametrize("law", LAWS)
@pytest.mark.parametrize("noise", [0.0, 1e-3])
def test_each_fit_recovers_its_law_and_wins(law, noise):
  truth, values = LAWS[law]
  rng = np.random.default_rng(1)
  values = values * (1.0 + noise * rng.standard_normal(values.shape))
  result = growth.fit_laws(STEPS, values)
  fit = result["fits"][law]
  tolerance = 1e-6 if noise == 0 else 2e-2
  for name, want in truth.items():
    np.testing.assert_allclose(fit[name], want, rtol=tolerance, err_msg=f"{law}.{name}")
  assert fit["r2"] > (1 - 1e-9 if noise == 0 else 0.9999)
  assert result["best"] == law, {k: v["r2"] for k, v in result["fits"].items()}
  # By r² as well, against every law that does not contain this one (a·e^{bt} + c tends to the
  # linear law as b → 0, so on linear data it ties on r²: that is why `best` uses BIC).
  nested = {"linear": {"exp"}}.get(law, set())
  others = [v["r2"] for k, v in result["fits"].items() if k != law and k not in nested]
  assert max(others) < fit["r2"] - 1e-3


@pytest.mark.parametrize("law,exponent", [("sqrt", 0.5), ("linear", 1.0), ("quarter", 0.25)])
def test_growth_exponent(law, exponent):
  result = growth.fit_laws(STEPS, LAWS[law][1])
  np.testing.assert_allclose(result["exponent"]["p"], exponent, atol=1e-3)


def test_exp_without_offset():
  values = 2.0 * np.exp(1e-3 * STEPS)
  fit = growth.fit_exp(STEPS, values, offset=False)
  np.testing.assert_allclose([fit["a"], fit["b"], fit["c"]], [2.0, 1e-3, 0.0], rtol=1e-6, atol=1e-12)


def records_from(series: dict[str, np.ndarray], steps=STEPS) -> list[dict]:
  """metrics.jsonl records: logging steps with the given metrics, and eval records without them."""
  records = []
  for i, step in enumerate(steps):
    records.append({"step": int(step), "train/loss": 1.0, **{k: float(v[i]) for k, v in series.items()}})
    if i % 10 == 9:
      records.append({"step": int(step), "eval/loss": 1.0})
  return records


def test_growth_report_and_figure(tmp_path):
  layers = {f"norm/params/layer_{l}": (l + 1) * np.sqrt(STEPS) + 5.0 for l in range(3)}
  records = records_from({"norm/params": LAWS["sqrt"][1], **layers, "norm/params/embed": LAWS["linear"][1],
                          "norm/cos_step": 1.0 - 1e-4 / (1.0 + STEPS), "norm/alignment": 0.1 * np.cos(STEPS)})
  report = growth.growth_report(records)
  assert list(report) == ["norm/params", "norm/params/layer_0", "norm/params/layer_1", "norm/params/layer_2",
                          "norm/params/embed"]
  assert report["norm/params"]["best"] == "sqrt" and report["norm/params/embed"]["best"] == "linear"
  for l in range(3):
    np.testing.assert_allclose(report[f"norm/params/layer_{l}"]["fits"]["sqrt"]["a"], l + 1, rtol=1e-6)
  assert report["norm/params"]["points"] == len(STEPS)  # eval records carry no norm and are skipped
  json.dumps(report)  # the report is what `--json` prints
  path = growth_figure(records, str(tmp_path / "growth.png"), title="synthetic")
  assert path and os.path.getsize(path) > 10_000
  assert growth_figure([{"step": 0, "train/loss": 1.0}], str(tmp_path / "none.png")) is None


def test_too_few_points_and_main(tmp_path, capsys):
  assert growth.fit_laws([0, 10, 20], [1.0, 2.0, 3.0])["fits"] == {}
  workdir = tmp_path / "run"
  workdir.mkdir()
  with open(workdir / "metrics.jsonl", "w") as f:
    for record in records_from({"norm/params": LAWS["sqrt"][1]}):
      f.write(json.dumps(record) + "\n")
  assert cli.main(["growth", "--workdir", str(workdir), "--json", "--figure", str(tmp_path / "g.png")]) == 0
  assert json.loads(capsys.readouterr().out)["norm/params"]["best"] == "sqrt"
  assert cli.main(["growth", "--workdir", str(tmp_path / "missing")]) == 2
