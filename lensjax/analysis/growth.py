"""Parameter norm growth laws (Merrill et al. 2021): which curve ‖θ_t‖ follows.

Least-squares fits of a norm series y_t (`norm/params`, `norm/params/layer_{l}`,
`norm/params/embed` of a run's metrics.jsonl) against the step t:

  sqrt     a·√t + b          the law Merrill et al. report without strong weight decay
  linear   a·t + b
  quarter  a·t^¼ + b
  exp      a·e^{bt} + c      (c = 0 with `exp_offset=False`)

each with r² = 1 − SSE/SST, and a free power law a·t^p + b whose p is the
growth exponent (0.5 for √t; `growth_exponent`, the one definition the report
and the results pages use). Laws with two parameters are ranked by r²; the
exponential has three and nests the linear law (b → 0), so `best` is the
law with the lowest BIC, n·ln(SSE/n) + k·ln n: among equal k that is the
highest r², and the exponential must earn its extra parameter.

Nonlinear parameters (b of the exponential, p of the power law) are found by
variable projection: for a fixed value the rest is linear least squares, so
only a 1-D search remains (a log-spaced grid, then golden-section refinement).
Steps are divided by the last step inside the fits, for conditioning.

`growth_report(records)` gives all of it as a dict (lensjax.report.figures_growth
draws it; `lensjax growth WORKDIR` prints it).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence

import numpy as np

from lensjax.analysis.records import series

LAWS = ("sqrt", "linear", "quarter", "exp")
FORMULAS = {"sqrt": "a*sqrt(t) + b", "linear": "a*t + b", "quarter": "a*t**0.25 + b", "exp": "a*exp(b*t) + c",
            "power": "a*t**p + b"}
MIN_POINTS = 4  # below this a two-parameter fit says nothing
_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0
LAYER_NORM = re.compile(r"^norm/params/layer_(\d+)$")
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


def _fit_points(t_N, y_N) -> tuple[np.ndarray, np.ndarray]:
  """The points a fit uses, sorted by step: finite values at steps t ≥ 0."""
  t_N, y_N = np.asarray(t_N, np.float64), np.asarray(y_N, np.float64)
  keep = np.isfinite(t_N) & np.isfinite(y_N) & (t_N >= 0)
  order = np.argsort(t_N[keep], kind="stable")
  return t_N[keep][order], y_N[keep][order]


def _enough(t_N: np.ndarray) -> bool:
  return t_N.size >= MIN_POINTS and t_N.max() > 0


def growth_exponent(t_N: Sequence[float], y_N: Sequence[float]) -> float:
  """The growth exponent of a norm series: p of the least-squares fit y ≈ a·t^p + b, p free in [0.01, 4].

  Over every finite point at t ≥ 0 (0.5 for ‖θ‖ ∝ √t, Merrill et al. 2021); NaN
  with fewer than MIN_POINTS points. It is `fit_laws(...)["exponent"]["p"]`.
  """
  t_N, y_N = _fit_points(t_N, y_N)
  return fit_growth_exponent(t_N, y_N)["p"] if _enough(t_N) else math.nan


def fit_laws(t_N: Sequence[float], y_N: Sequence[float], exp_offset: bool = True) -> dict:
  """Every law fitted to one series: {"fits": {law: {params, "r2"}}, "best", "exponent", ...}.

  Points with a non-finite value are dropped. Fewer than MIN_POINTS points:
  {"points": n, "fits": {}, "best": None, "exponent": None}.
  """
  t_N, y_N = _fit_points(t_N, y_N)
  result = {"points": int(t_N.size), "fits": {}, "best": None, "exponent": None}
  if not _enough(t_N):
    return result
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


def norm_names(records: Sequence[dict]) -> list[str]:
  """`norm/params`, `norm/params/non_embedding`, `norm/params/layer_{l}` by l, `norm/params/embed`: those present."""
  present = set()
  for record in records:
    present.update(k for k in record if k.startswith("norm/params"))
  layers = sorted((int(m.group(1)), name) for name in present if (m := LAYER_NORM.match(name)))
  names = [name for name in ("norm/params", "norm/params/non_embedding") if name in present]
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
