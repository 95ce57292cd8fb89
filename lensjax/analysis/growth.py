"""Parameter norm growth laws (Merrill et al. 2021): which curve ‖θ_t‖ follows.

Least-squares fits of a norm series y_t (`norm/params`, `norm/params/layer_{l}`,
`norm/params/embed` of a run's metrics.jsonl) against the step t:

  sqrt     a·√t + b          the law Merrill et al. report without strong weight decay
  linear   a·t + b
  quarter  a·t^¼ + b
  exp      a·e^{bt} + c      (c = 0 with `exp_offset=False`)

each with r² = 1 − SSE/SST, and a free power law a·t^p + b whose p is "the
growth exponent" (0.5 for √t). Laws with two parameters are ranked by r²; the
exponential has three and nests the linear law (b → 0), so `best` is the
law with the lowest BIC, n·ln(SSE/n) + k·ln n: among equal k that is the
highest r², and the exponential must earn its extra parameter.

Nonlinear parameters (b of the exponential, p of the power law) are found by
variable projection: for a fixed value the rest is linear least squares, so
only a 1-D search remains (a log-spaced grid, then golden-section refinement).
Steps are divided by the last step inside the fits, for conditioning.

`growth_report(records)` gives all of it as a dict; `growth_figure(records, path)`
draws the norm with its fits, per-layer norms, and `norm/cos_step`,
`norm/alignment` over training.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from collections.abc import Callable, Sequence

import numpy as np

LAWS = ("sqrt", "linear", "quarter", "exp")
FORMULAS = {"sqrt": "a*sqrt(t) + b", "linear": "a*t + b", "quarter": "a*t**0.25 + b", "exp": "a*exp(b*t) + c",
            "power": "a*t**p + b"}
MIN_POINTS = 4  # below this a two-parameter fit says nothing
_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0
_LAYER_NAME = re.compile(r"^norm/params/layer_(\d+)$")
# SSE floor relative to SST: below it two fits are equally exact (float rounding), and BIC's ln(SSE) is finite.
_SSE_FLOOR = 1e-12


# --------------------------------------------------------------------------
# Linear least squares and a 1-D search: the two building blocks.


def _linear_fit(basis_NxK: np.ndarray, y_N: np.ndarray) -> tuple[np.ndarray, float]:
  """Coefficients [K] and SSE of y ≈ basis @ coef; columns are normalised first for conditioning."""
  scale_K = np.linalg.norm(basis_NxK, axis=0)
  scale_K = np.where(scale_K > 0, scale_K, 1.0)
  coef_K, *_ = np.linalg.lstsq(basis_NxK / scale_K, y_N, rcond=None)
  coef_K = coef_K / scale_K
  residual_N = y_N - basis_NxK @ coef_K
  return coef_K, float(residual_N @ residual_N)


def _minimise_1d(sse: Callable[[float], float], grid: np.ndarray, iterations: int = 80) -> float:
  """The argmin of `sse`: best point of a sorted grid, refined by golden section between its neighbours."""
  values = np.array([sse(x) for x in grid])
  i = int(np.nanargmin(values))
  lo, hi = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
  x1, x2 = hi - _GOLDEN * (hi - lo), lo + _GOLDEN * (hi - lo)
  f1, f2 = sse(x1), sse(x2)
  for _ in range(iterations):
    if f1 <= f2:
      hi, x2, f2 = x2, x1, f1
      x1 = hi - _GOLDEN * (hi - lo)
      f1 = sse(x1)
    else:
      lo, x1, f1 = x1, x2, f2
      x2 = lo + _GOLDEN * (hi - lo)
      f2 = sse(x2)
  best = min(((grid[i], values[i]), (x1, f1), (x2, f2)), key=lambda pair: pair[1])
  return float(best[0])


def _r2(sse: float, y_N: np.ndarray) -> float:
  sst = float(np.sum((y_N - y_N.mean()) ** 2))
  return 1.0 - sse / sst if sst > 0 else (1.0 if sse == 0 else 0.0)


def _fit_record(params: dict, sse: float, y_N: np.ndarray, num_params: int) -> dict:
  return {**params, "r2": _r2(sse, y_N), "sse": sse, "num_params": num_params}


# --------------------------------------------------------------------------
# The laws.


def fit_power(t_N: np.ndarray, y_N: np.ndarray, exponent: float) -> dict:
  """y ≈ a·t^exponent + b (√t: 0.5, t^¼: 0.25, linear: 1)."""
  t_N, y_N = np.asarray(t_N, np.float64), np.asarray(y_N, np.float64)
  t_max = float(t_N.max())
  (alpha, b), sse = _linear_fit(np.stack([(t_N / t_max) ** exponent, np.ones_like(t_N)], axis=1), y_N)
  return _fit_record({"a": alpha / t_max ** exponent, "b": b}, sse, y_N, 2)


def _expm1_basis(tau_N: np.ndarray, rate: float) -> np.ndarray:
  # (e^{rate·τ} − 1)/rate spans the same space with 1 as e^{rate·τ}, stays well conditioned as
  # rate → 0 (where it tends to τ: the linear law), and does not overflow for large |rate|.
  if abs(rate) < 1e-12:
    return tau_N
  return np.expm1(rate * tau_N) / rate


def fit_exp(t_N: np.ndarray, y_N: np.ndarray, offset: bool = True) -> dict:
  """y ≈ a·e^{bt} + c (or a·e^{bt} without `offset`), by variable projection over b."""
  t_N, y_N = np.asarray(t_N, np.float64), np.asarray(y_N, np.float64)
  t_max = float(t_N.max())
  tau_N = t_N / t_max
  magnitudes = np.logspace(-3, math.log10(60.0), 40)  # |b|·t_max: from nearly linear to 60 e-foldings
  grid = np.concatenate([-magnitudes[::-1], magnitudes])

  if offset:
    def solve(rate):
      basis = np.stack([_expm1_basis(tau_N, rate), np.ones_like(tau_N)], axis=1)
      return _linear_fit(basis, y_N)
  else:
    def solve(rate):
      (a,), sse = _linear_fit(np.exp(rate * tau_N)[:, None], y_N)
      return np.array([a]), sse

  rate = _minimise_1d(lambda r: solve(r)[1], grid)
  coef, sse = solve(rate)
  b = rate / t_max
  if offset:
    alpha, gamma = coef  # y = alpha·(e^{rate τ} − 1)/rate + gamma
    a = alpha / rate if rate else math.inf
    return _fit_record({"a": a, "b": b, "c": gamma - a}, sse, y_N, 3)
  return _fit_record({"a": float(coef[0]), "b": b, "c": 0.0}, sse, y_N, 2)


def fit_growth_exponent(t_N: np.ndarray, y_N: np.ndarray) -> dict:
  """y ≈ a·t^p + b with p free in [0.01, 4]: {"p", "a", "b", "r2", ...}."""
  t_N, y_N = np.asarray(t_N, np.float64), np.asarray(y_N, np.float64)
  p = _minimise_1d(lambda e: fit_power(t_N, y_N, e)["sse"], np.logspace(-2, math.log10(4.0), 48))
  return {"p": p, **fit_power(t_N, y_N, p)} | {"num_params": 3}


def _bic(fit: dict, y_N: np.ndarray) -> float:
  n = len(y_N)
  sst = float(np.sum((y_N - y_N.mean()) ** 2))
  sse = max(fit["sse"], _SSE_FLOOR * max(sst, 1e-300))
  return n * math.log(sse / n) + fit["num_params"] * math.log(n)


def fit_laws(t_N: Sequence[float], y_N: Sequence[float], exp_offset: bool = True) -> dict:
  """Every law fitted to one series: {"fits": {law: {params, "r2"}}, "best", "exponent", ...}.

  Points with a non-finite value are dropped. Fewer than MIN_POINTS points:
  {"points": n, "fits": {}, "best": None, "exponent": None}.
  """
  t_N, y_N = np.asarray(t_N, np.float64), np.asarray(y_N, np.float64)
  keep = np.isfinite(t_N) & np.isfinite(y_N) & (t_N >= 0)
  t_N, y_N = t_N[keep], y_N[keep]
  result = {"points": int(t_N.size), "fits": {}, "best": None, "exponent": None}
  if t_N.size < MIN_POINTS or t_N.max() <= 0:
    return result
  order = np.argsort(t_N, kind="stable")
  t_N, y_N = t_N[order], y_N[order]
  fits = {"sqrt": fit_power(t_N, y_N, 0.5), "linear": fit_power(t_N, y_N, 1.0),
          "quarter": fit_power(t_N, y_N, 0.25), "exp": fit_exp(t_N, y_N, exp_offset)}
  bics = {law: _bic(fit, y_N) for law, fit in fits.items()}
  for law, fit in fits.items():
    fit["formula"] = FORMULAS[law]
    fit["bic"] = bics[law]
  exponent = fit_growth_exponent(t_N, y_N)
  exponent["formula"] = FORMULAS["power"]
  result.update({"first_step": int(t_N[0]), "last_step": int(t_N[-1]), "initial": float(y_N[0]),
                 "final": float(y_N[-1]), "fits": fits, "best": min(LAWS, key=lambda law: bics[law]),
                 "exponent": exponent})
  return result


def evaluate(fit: dict, law: str, t_N) -> np.ndarray:
  """The fitted curve of `law` at steps `t_N`."""
  t_N = np.asarray(t_N, np.float64)
  if law == "exp":
    return fit["a"] * np.exp(fit["b"] * t_N) + fit["c"]
  exponent = {"sqrt": 0.5, "linear": 1.0, "quarter": 0.25}.get(law, fit.get("p"))
  return fit["a"] * t_N ** exponent + fit["b"]


# --------------------------------------------------------------------------
# From a run's records.


def series(records: Sequence[dict], name: str) -> tuple[np.ndarray, np.ndarray]:
  """(steps, values) of metric `name`, sorted by step, a step logged twice keeping its later value."""
  by_step = {}
  for record in records:
    value = record.get(name)
    if isinstance(value, (int, float)) and not isinstance(value, bool) and "step" in record:
      by_step[int(record["step"])] = float(value)
  steps = np.array(sorted(by_step), np.int64)
  return steps, np.array([by_step[s] for s in steps], np.float64)


def norm_names(records: Sequence[dict]) -> list[str]:
  """`norm/params`, then `norm/params/layer_{l}` by l, then `norm/params/embed`: those present."""
  present = set()
  for record in records:
    present.update(k for k in record if k.startswith("norm/params"))
  layers = sorted((int(m.group(1)), name) for name in present if (m := _LAYER_NAME.match(name)))
  names = ["norm/params"] if "norm/params" in present else []
  names += [name for _, name in layers]
  return names + (["norm/params/embed"] if "norm/params/embed" in present else [])


def growth_report(records: Sequence[dict], exp_offset: bool = True) -> dict:
  """{metric name: fit_laws(...)} for the global, per-layer and embedding norms in `records`."""
  return {name: fit_laws(*series(records, name), exp_offset=exp_offset) for name in norm_names(records)}


def summary_text(report: dict) -> str:
  lines = ["norm growth fits (r²; best by BIC; p of a·t^p + b)"]
  for name, result in report.items():
    if not result["fits"]:
      lines.append(f"  {name}: {result['points']} points, too few to fit")
      continue
    r2 = "  ".join(f"{law} {result['fits'][law]['r2']:.4f}" for law in LAWS)
    lines.append(f"  {name}: {result['initial']:.4g} -> {result['final']:.4g}  r²: {r2}  best {result['best']}  "
                 f"p = {result['exponent']['p']:.3f}")
  return "\n".join(lines)


# --------------------------------------------------------------------------
# The figure.

_LAW_STYLES = {"sqrt": ("tab:red", "--"), "linear": ("tab:gray", ":"), "quarter": ("tab:purple", "-."),
               "exp": ("tab:orange", (0, (5, 1, 1, 1)))}
_LAW_LABELS = {"sqrt": "a√t + b", "linear": "at + b", "quarter": "at^¼ + b", "exp": "ae^{bt} + c"}


def growth_figure(records: Sequence[dict], path: str, title: str | None = None, report: dict | None = None) -> str | None:
  """A PNG at `path`: ‖θ_t‖ with its four fits; per-layer norms with √t fits; cos_step and alignment.

  Returns `path`, or None when `records` hold no `norm/params`. Drawn on a
  matplotlib Figure (Agg), never through pyplot's global state.
  """
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  from matplotlib import colormaps  # pylint: disable=import-outside-toplevel
  from matplotlib.figure import Figure  # pylint: disable=import-outside-toplevel

  report = growth_report(records) if report is None else report
  if "norm/params" not in report:
    return None
  fig = Figure(figsize=(15.5, 4.2), layout="constrained")
  ax_total, ax_layers, ax_step = fig.subplots(1, 3)
  steps, values = series(records, "norm/params")
  ax_total.plot(steps, values, "o", color="tab:blue", markersize=3, label="‖θ_t‖")
  result = report["norm/params"]
  dense = np.linspace(0.0, float(steps.max()) if steps.size else 1.0, 300)
  for law, fit in result["fits"].items():
    color, style = _LAW_STYLES[law]
    marker = " (best)" if law == result["best"] else ""
    ax_total.plot(dense, evaluate(fit, law, dense), color=color, linestyle=style,
                  label=f"{_LAW_LABELS[law]}: r² {fit['r2']:.4f}{marker}")
  if values.size:  # keep the data in view: a fitted a·t^¼ + b can dive far below it near t = 0
    span = max(float(values.max() - values.min()), 1e-12)
    ax_total.set_ylim(float(values.min()) - 0.1 * span, float(values.max()) + 0.1 * span)
  if result["exponent"]:
    ax_total.set_title(f"‖θ‖₂ and fitted laws (a·t^p + b: p = {result['exponent']['p']:.2f})")
  else:
    ax_total.set_title("‖θ‖₂")
  ax_total.set_xlabel("training step")
  ax_total.set_ylabel("‖θ‖₂")
  ax_total.legend(fontsize="small")
  ax_total.grid(alpha=0.3)

  layer_names = [n for n in report if _LAYER_NAME.match(n)]
  colors = [colormaps["viridis"](x) for x in np.linspace(0.0, 0.85, max(len(layer_names), 1))]
  for color, name in zip(colors, layer_names):
    layer_steps, layer_values = series(records, name)
    ax_layers.plot(layer_steps, layer_values, "o", color=color, markersize=2, label=name.rsplit("/", 1)[-1])
    fit = report[name]["fits"].get("sqrt")
    if fit:
      ax_layers.plot(dense, evaluate(fit, "sqrt", dense), color=color, linestyle="--", linewidth=1)
  ax_layers.set_title("‖θ_l‖₂ per block (dashed: a√t + b)")
  ax_layers.set_xlabel("training step")
  if 0 < len(layer_names) <= 8:
    ax_layers.legend(fontsize="small")
  ax_layers.grid(alpha=0.3)

  cos_steps, cos_values = series(records, "norm/cos_step")
  align_steps, align_values = series(records, "norm/alignment")
  if cos_steps.size:
    # cos(θ_t, θ_t+1) sits a hair below 1: its distance from 1 is what moves.
    distance = np.clip(1.0 - cos_values, 1e-12, None)
    ax_step.semilogy(cos_steps, distance, color="tab:green", label="1 − cos(θ_t, θ_t+1)")
    ax_step.set_ylabel("1 − cos(θ_t, θ_t+1) (log)", color="tab:green")
  if align_steps.size:
    ax_align = ax_step.twinx()
    ax_align.plot(align_steps, align_values, color="tab:red", label="cos(δ_t, θ_t)")
    ax_align.axhline(0.0, color="gray", linewidth=0.8)
    ax_align.set_ylabel("alignment cos(δ_t, θ_t)", color="tab:red")
  ax_step.set_title("direction change per step and update alignment")
  ax_step.set_xlabel("training step")
  ax_step.grid(alpha=0.3)
  if title:
    fig.suptitle(title)
  fig.savefig(path, dpi=120)
  return path


def main(argv: list[str] | None = None) -> int:
  """`python -m lensjax.analysis.growth WORKDIR [--json] [--figure PATH]`."""
  import os  # pylint: disable=import-outside-toplevel
  from lensjax.errors import InputError  # pylint: disable=import-outside-toplevel
  from lensjax.io.metrics_log import read_metrics  # pylint: disable=import-outside-toplevel
  parser = argparse.ArgumentParser(prog="python -m lensjax.analysis.growth", description=__doc__.splitlines()[0])
  parser.add_argument("workdir", help="a run directory written by lensjax train")
  parser.add_argument("--json", action="store_true", help="print one JSON object instead of a summary")
  parser.add_argument("--figure", default=None, help="also write the figure to this PNG")
  args = parser.parse_args(argv)
  path = os.path.join(args.workdir, "metrics.jsonl")
  try:
    if not os.path.isfile(path):
      raise InputError(f"{args.workdir!r} holds no metrics.jsonl; pass the --workdir of a lensjax train run.")
    records = read_metrics(path)
    report = growth_report(records)
    if not report:
      raise InputError(f"{path} logs no norm/params; the norm lens runs on logging steps of lensjax train.")
  except InputError as e:
    print(f"lensjax: error: {e}", file=sys.stderr)
    return 2
  if args.figure:
    growth_figure(records, args.figure, report=report)
  print(json.dumps(report) if args.json else summary_text(report))
  return 0


if __name__ == "__main__":
  sys.exit(main())
