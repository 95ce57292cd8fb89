"""The report's "Analyses" section: what `lensjax hessian`, `entropy`, `saturation` and `spikes` left in a run.

Where each writes (all under the run directory W):

  W/analyses/hessian_{N}.json      `lensjax hessian --step N`: λ_max, largest |λ|, preconditioned λ_max and the
                                   threshold, both traces ± standard error, the SLQ density's nodes and weights
  W/analyses/entropy_{N}.json      `lensjax entropy`: whole-sequence H(Q), H(P), KL(P ‖ Q) ± standard error
  W/analyses/saturation_{N}.json   `lensjax saturation`: per-layer cosines, keys per head, the head histogram
  W/spikes/report.json             `lensjax spikes`: detected spikes and the replayed timelines

and the in-training `hessian/*` of metrics.jsonl (stats.hessian_every). Each
figure is drawn only when its data exist; a file that does not parse is
skipped, so a half-written analysis never stops the report.
"""

from __future__ import annotations

import glob
import json
import math
import os
import re

import numpy as np
from matplotlib.figure import Figure

from lensjax.analysis.records import series
from lensjax.report import runs as runs_lib
from lensjax.report.figures_hessian import spectral_density_figure
from lensjax.report.growth_sweep import ARGMAX_KEYS
from lensjax.report.page import FigureEntry, Section, figure_entry
from lensjax.report.plotting import STEP_LABEL, finite, integer_ticks, new_figure, save, sequential_colors
from lensjax.report.runs import RunRecord

# lensjax/analysis/common.py ANALYSES_DIR, repeated: that module imports jax and the checkpoints, which a report of
# finished runs does not need.
ANALYSES_DIR = "analyses"
SPIKES_REPORT = os.path.join("spikes", "report.json")
_STEP_FILE = re.compile(r"^(hessian|entropy|saturation)_(\d+)\.json$")


def _read_json(path: str):
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def read_analyses(run_path: str) -> dict[str, list[dict]]:
  """{"hessian" | "entropy" | "saturation": [result, ...] by step} from W/analyses."""
  found: dict[str, list[dict]] = {}
  for path in sorted(glob.glob(os.path.join(run_path, ANALYSES_DIR, "*.json"))):
    match = _STEP_FILE.match(os.path.basename(path))
    result = _read_json(path) if match else None
    if isinstance(result, dict) and isinstance(result.get("step"), int):
      found.setdefault(match.group(1), []).append(result)
  for results in found.values():
    results.sort(key=lambda r: r["step"])
  return found


def _number(value) -> float:
  return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan


def _column(results: list[dict], name: str) -> np.ndarray:
  return np.array([_number(r.get(name)) for r in results])


def _fmt(value) -> str:
  value = _number(value)
  return "n/a" if not math.isfinite(value) else f"{value:.4g}"


# --------------------------------------------------------------------------
# Figures.


def curvature_figure(records: list[dict], checkpoints: list[dict], path: str) -> str:
  """λ_max of H and of Adam's P^{-1/2} H P^{-1/2} against the stability threshold, and tr(H) ± its standard error,
  over training (metrics.jsonl) with the `lensjax hessian` checkpoints as larger markers."""
  fig, axes = new_figure(2, panel_width=5.5)
  ax, ax_trace = axes[0]
  for name, label, color in (("hessian/lambda_max", "λ_max(H)", "tab:blue"),
                             ("hessian/lambda_max_precond", "λ_max(P^-½ H P^-½)", "tab:orange"),
                             ("hessian/stability_threshold", "stability threshold", "tab:red")):
    steps, values = series(records, name)
    if steps.size:
      ax.plot(steps, finite(values), color=color, linestyle="--" if "threshold" in name else "-", marker="o",
              markersize=2, label=label)
    at = [(r["step"], _number(r.get(name))) for r in checkpoints if math.isfinite(_number(r.get(name)))]
    if at:
      ax.plot(*zip(*at), linestyle="none", marker="D", markersize=6, color=color, markeredgecolor="k",
              label=f"{label}, lensjax hessian" if not steps.size or "threshold" not in name else None)
  ax.set_yscale("symlog", linthresh=1.0)
  ax.set_xlabel(STEP_LABEL)
  ax.set_ylabel("top eigenvalue (symlog)")
  ax.set_title("Curvature against the stability threshold")
  ax.grid(alpha=0.3)
  ax.legend(fontsize="x-small")
  steps, values = series(records, "hessian/trace")
  if steps.size:
    _, errors = series(records, "hessian/trace_stderr")
    errors = finite(errors) if errors.size == steps.size else None
    ax_trace.errorbar(steps, finite(values), yerr=errors, marker="o", markersize=2, capsize=2, label="Hutchinson")
  for name, error, label, marker in (("hessian/trace", "hessian/trace_stderr", "Hutchinson, lensjax hessian", "D"),
                                     ("slq_trace", "slq_trace_stderr", "SLQ, lensjax hessian", "s")):
    at = [r for r in checkpoints if math.isfinite(_number(r.get(name)))]
    if at:
      ax_trace.errorbar([r["step"] for r in at], [_number(r[name]) for r in at],
                        yerr=[_number(r.get(error)) if math.isfinite(_number(r.get(error))) else 0.0 for r in at],
                        linestyle="none", marker=marker, markersize=6, capsize=3, label=label)
  ax_trace.set_xlabel(STEP_LABEL)
  ax_trace.set_ylabel("tr(H) ± one standard error")
  ax_trace.set_title("Hessian trace")
  ax_trace.grid(alpha=0.3)
  if ax_trace.get_legend_handles_labels()[0]:
    ax_trace.legend(fontsize="x-small")
  return save(fig, path)


def saturation_figure(result: dict, path: str) -> str:
  """Per layer, cos(h(θ), h(cθ)); beside it the heads of the saturated network by keys attended / keys visible."""
  fig, axes = new_figure(2, panel_width=5.0)
  ax, ax_heads = axes[0]
  cosines = [(int(m.group(1)), _number(v)) for k, v in result.items()
             if (m := re.fullmatch(r"eval/saturation/layer_(\d+)", k))]
  cosines.sort()
  if cosines:
    layers, values = zip(*cosines)
    ax.bar(layers, values, color=sequential_colors(len(layers), "viridis"))
    ax.set_xticks(integer_ticks(len(layers), most=16))
    ax.set_ylim(min(0.0, min(values)), 1.0)
  ax.set_xlabel("layer")
  ax.set_ylabel("cos(h_l(θ), h_l(cθ))")
  ax.set_title(f"Saturation at step {result['step']}, c = {_number(result.get('scale')):g}")
  histogram = result.get("saturated_head_histogram") or {}
  if histogram.get("edges") and histogram.get("counts"):
    edges = np.asarray(histogram["edges"], np.float64)
    ax_heads.bar(edges[:-1], histogram["counts"], width=np.diff(edges), align="edge", color="tab:blue",
                 edgecolor="white")
  ax_heads.set_xlim(0.0, 1.0)
  ax_heads.set_xlabel("keys above the threshold / visible keys")
  ax_heads.set_ylabel("heads")
  ax_heads.set_title("Heads of the saturated network")
  return save(fig, path)


def sequence_entropy_figure(results: list[dict], path: str) -> str:
  """Whole-sequence H(Q) against H(P), and KL(P ‖ Q), at the checkpoints `lensjax entropy` measured."""
  fig, axes = new_figure(1, panel_width=7.0)
  ax = axes[0, 0]
  steps = np.array([r["step"] for r in results])
  for name, label, color in (("eval/entropy_target_seq", "target H(P)", "k"),
                             ("eval/entropy_model_seq", "model H(Q)", "tab:blue"),
                             ("eval/kl_seq", "KL(P ‖ Q)", "tab:green")):
    errors = np.nan_to_num(_column(results, name + "_stderr"))
    ax.errorbar(steps, _column(results, name), yerr=errors, marker="o", capsize=3, color=color, label=label,
                linestyle="--" if name == "eval/entropy_target_seq" else "-")
  ax.set_xlabel(STEP_LABEL)
  ax.set_ylabel("nats per sequence (± one standard error)")
  ax.set_title("Whole-sequence entropy (lensjax entropy)")
  ax.grid(alpha=0.3)
  ax.legend(fontsize="small")
  return save(fig, path)


def spikes_figure(records: list[dict], report: dict, path: str) -> str:
  """The logged train loss with each detected spike marked, and λ_max against the threshold at each replayed one."""
  fig = Figure(figsize=(9.0, 5.5), layout="constrained")
  ax_loss, ax_curv = fig.subplots(2, 1, sharex=True)
  steps, losses = series(records, "train/loss")
  ax_loss.plot(steps, finite(losses), color="0.3", linewidth=1.0, label="train/loss")
  detected = [s for s in report.get("detected", []) if isinstance(s, int)]
  for step in detected:
    for ax in (ax_loss, ax_curv):
      ax.axvline(step, color="tab:red", alpha=0.3, linewidth=2)
  ax_loss.set_ylabel("loss")
  ax_loss.set_title(f"{len(detected)} spike step(s) detected (lensjax spikes); replayed events below")
  for entry in report.get("spikes", []):
    timeline = entry.get("timeline") or []
    for name, color in (("hessian/lambda_max", "tab:blue"), ("hessian/lambda_max_precond", "tab:orange"),
                        ("hessian/stability_threshold", "tab:red")):
      at = [(r["step"], _number(r.get(name))) for r in timeline if math.isfinite(_number(r.get(name)))]
      if at:
        ax_curv.plot(*zip(*at), color=color, marker="o", markersize=2,
                     linestyle="--" if "threshold" in name else "-", label=name)
  ax_curv.set_yscale("symlog", linthresh=1.0)
  ax_curv.set_ylabel("curvature (symlog)")
  ax_curv.set_xlabel(STEP_LABEL)
  handles, labels = ax_curv.get_legend_handles_labels()
  if handles:
    unique = dict(zip(labels, handles))
    ax_curv.legend(unique.values(), unique.keys(), fontsize="x-small")
  return save(fig, path)


# --------------------------------------------------------------------------
# The section.


def analyses_section(run: RunRecord, output) -> Section | None:
  """The run's "Analyses" section (`output(what)` is a figure's path); None when nothing was analysed."""
  found = read_analyses(run.path)
  entries: list[FigureEntry] = []
  hessians = found.get("hessian", [])
  if runs_lib.has_metric(run, "hessian/lambda_max") or hessians:
    path = curvature_figure(run.records, hessians, output("curvature"))
    last = hessians[-1] if hessians else {}
    numbers = (f" At checkpoint {last['step']} (`lensjax hessian`): λ_max(H) {_fmt(last.get('hessian/lambda_max'))}, "
               f"largest |λ| {_fmt(last.get('hessian/lambda_maxabs'))}, λ_max(P^-½ H P^-½) "
               f"{_fmt(last.get('hessian/lambda_max_precond'))} against the threshold "
               f"{_fmt(last.get('hessian/stability_threshold'))}; tr(H) {_fmt(last.get('hessian/trace'))} ± "
               f"{_fmt(last.get('hessian/trace_stderr'))} (Hutchinson), {_fmt(last.get('slq_trace'))} ± "
               f"{_fmt(last.get('slq_trace_stderr'))} (SLQ).") if last else ""
    entries.append(figure_entry(path, "curvature", "Top eigenvalue of the Hessian and of Adam's preconditioned "
                                                   "Hessian against the stability threshold ((2 + 2β₁)/((1 − β₁)η) = "
                                                   "38/η for Adam at β₁ 0.9, 2/η for SGD): crossing it means the step "
                                                   "size no longer fits the curvature (edge of stability). Right: the "
                                                   "trace with one standard error." + numbers))
    with_density = [r for r in hessians if (r.get("density") or {}).get("nodes")]
    if with_density:
      last = with_density[-1]
      path = spectral_density_figure(last["density"]["nodes"], last["density"]["weights"], output("hessian_density"),
                                     f"Hessian spectral density at step {last['step']} (SLQ)")
      entries.append(figure_entry(path, "spectral density", "Stochastic Lanczos quadrature density of H: mass below "
                                                            "0 is negative curvature; isolated outliers at the right "
                                                            "are the top eigenvalues " +
                                  ", ".join(_fmt(x) for x in last.get("top_eigenvalues", [])) + "."))
  saturations = found.get("saturation", [])
  if saturations:
    last = saturations[-1]
    path = saturation_figure(last, output("saturation"))
    heads = [v for k, v in last.items() if re.fullmatch(r"eval/saturated_head/layer_\d+/head_\d+", k)]
    argmax = sum(_number(v) <= ARGMAX_KEYS for v in heads)
    entries.append(figure_entry(path, "saturation", "How close the network is to its saturated limit f(x; cθ) "
                                                    "(Merrill et al. 2021): 1 = already saturated. Head classes: "
                                                    f"{argmax} of {len(heads)} heads attend to at most "
                                                    f"{ARGMAX_KEYS:g} keys per query at cθ (argmax heads), the other "
                                                    f"{len(heads) - argmax} average over several (averaging heads)."))
  entropies = found.get("entropy", [])
  if entropies:
    last = entropies[-1]
    path = sequence_entropy_figure(entropies, output("entropy_analysis"))
    entries.append(figure_entry(path, "sequence entropy", "Whole-sequence entropy of the model against the target's "
                                                          f"(`lensjax entropy`, {last.get('method', '?')}): at step "
                                                          f"{last['step']} H(Q) "
                                                          f"{_fmt(last.get('eval/entropy_model_seq'))}, H(P) "
                                                          f"{_fmt(last.get('eval/entropy_target_seq'))}, KL "
                                                          f"{_fmt(last.get('eval/kl_seq'))} nats; H(Q) below H(P) is "
                                                          "the low-entropy bias of Ren & Liu 2025."))
  spikes = _read_json(os.path.join(run.path, SPIKES_REPORT))
  if isinstance(spikes, dict) and runs_lib.has_metric(run, "train/loss"):
    path = spikes_figure(run.records, spikes, output("spikes"))
    replayed = ", ".join(f"step {e.get('step')} (from checkpoint {e.get('checkpoint')})"
                         for e in spikes.get("spikes", [])) or "none"
    entries.append(figure_entry(path, "spikes", "Loss spikes found by `lensjax spikes` (red bands) and the "
                                                f"curvature of the replayed events: {replayed}. Per-event timelines "
                                                "are in the run's spikes/ folder."))
  return Section("Analyses", entries) if entries else None
