"""Figures and a summary table for a results page from `benchmarks/gpu_norm_growth.sh`'s output.

Usage: python3 benchmarks/norm_growth_figures.py RESULTS_DIR OUT_DIR

RESULTS_DIR holds norm_growth_metrics.jsonl, norm_growth_saturation.json and
norm_growth_members.json. OUT_DIR receives:
  norm_sqrt_fits.png         ‖θ_t‖ of every member (weight decay by row, learning rate by column) with its a√t + b fit
  growth_grid.png            weight decay × learning rate: growth exponent p of a·t^p + b, final ‖θ‖, final saturation
  saturation_over_training.png  mean over layers of eval/saturation/layer_{l} over training (when the runs logged it)
  saturated_head_histogram.png  per member, heads by keys / visible keys in the saturated network (final checkpoint)
  growth_<member>.png        lensjax.analysis.growth's figure for each member without weight decay
  summary.md                 one row per member: loss, norms, best law, r², p, saturation
"""

from __future__ import annotations

import json
import os
import re
import sys

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from lensjax.analysis import growth  # noqa: E402

DPI = 120
_SATURATION = re.compile(r"^eval/saturation/layer_(\d+)$")


def load(results_dir: str):
  """(records by member, saturation by member, members) in the members' file order."""
  with open(os.path.join(results_dir, "norm_growth_members.json")) as f:
    members = json.load(f)
  records = {name: [] for name in members}
  with open(os.path.join(results_dir, "norm_growth_metrics.jsonl")) as f:
    for line in f:
      if line.strip():
        record = json.loads(line)
        records.setdefault(record.pop("member"), []).append(record)
  saturation_path = os.path.join(results_dir, "norm_growth_saturation.json")
  saturation = json.load(open(saturation_path)) if os.path.exists(saturation_path) else {}
  return records, saturation, members


def grid_axes(members: dict) -> tuple[list[float], list[float], dict[str, tuple[int, int]]]:
  """Weight decays (rows), learning rates (columns) and each member's cell."""
  def value(member, key):
    return float(members[member]["overrides"][key])
  wds = sorted({value(m, "optim.weight_decay") for m in members})
  lrs = sorted({value(m, "optim.lr") for m in members})
  cells = {m: (wds.index(value(m, "optim.weight_decay")), lrs.index(value(m, "optim.lr"))) for m in members}
  return wds, lrs, cells


def _mean_saturation(result: dict) -> float:
  values = [v for k, v in result.items() if _SATURATION.match(k)]
  return float(np.mean(values)) if values else float("nan")


def _mean_head_count(result: dict) -> float:
  values = [v for k, v in result.items() if k.startswith("eval/saturated_head/layer_")]
  return float(np.mean(values)) if values else float("nan")


def sqrt_fits_figure(records, reports, members, path: str) -> str:
  wds, lrs, cells = grid_axes(members)
  fig = Figure(figsize=(3.6 * len(lrs) + 0.5, 2.9 * len(wds) + 0.4), layout="constrained")
  axes = fig.subplots(len(wds), len(lrs), squeeze=False)
  for name, (row, col) in cells.items():
    ax = axes[row, col]
    steps, values = growth.series(records.get(name, []), "norm/params")
    ax.plot(steps, values, "o", markersize=2, color="tab:blue")
    result = reports[name].get("norm/params", {})
    fit = result.get("fits", {}).get("sqrt")
    if fit:
      dense = np.linspace(0, steps.max(), 200)
      ax.plot(dense, growth.evaluate(fit, "sqrt", dense), "--", color="tab:red")
      ax.set_title(f"wd {wds[row]:g}, lr {lrs[col]:g}\n√t r² {fit['r2']:.3f}, p {result['exponent']['p']:.2f}, "
                   f"best {result['best']}", fontsize="small")
    else:
      ax.set_title(f"wd {wds[row]:g}, lr {lrs[col]:g}: no norm logged", fontsize="small")
    ax.grid(alpha=0.3)
    if row == len(wds) - 1:
      ax.set_xlabel("training step")
    if col == 0:
      ax.set_ylabel("‖θ‖₂")
  fig.suptitle("Parameter norm and its a√t + b fit (dashed), weight decay by row, learning rate by column")
  fig.savefig(path, dpi=DPI)
  return path


def _heatmap(ax, matrix, wds, lrs, title, fmt):
  image = ax.imshow(matrix, cmap="viridis", aspect="auto")
  ax.set_xticks(range(len(lrs)), [f"{lr:g}" for lr in lrs])
  ax.set_yticks(range(len(wds)), [f"{wd:g}" for wd in wds])
  ax.set_xlabel("learning rate")
  ax.set_ylabel("weight decay")
  ax.set_title(title)
  finite = matrix[np.isfinite(matrix)]
  middle = (finite.max() + finite.min()) / 2 if finite.size else 0.0
  for (i, j), v in np.ndenumerate(matrix):
    ax.text(j, i, fmt.format(v) if np.isfinite(v) else "–", ha="center", va="center",
            color="black" if np.isfinite(v) and v > middle else "white")
  return image


def grid_figure(reports, saturation, members, path: str) -> str:
  wds, lrs, cells = grid_axes(members)
  exponent, final, saturated = (np.full((len(wds), len(lrs)), np.nan) for _ in range(3))
  for name, (row, col) in cells.items():
    result = reports[name].get("norm/params", {})
    if result.get("exponent"):
      exponent[row, col] = result["exponent"]["p"]
      final[row, col] = result["final"]
    saturated[row, col] = _mean_saturation(saturation.get(name, {}))
  fig = Figure(figsize=(15, 3.8), layout="constrained")
  axes = fig.subplots(1, 3)
  for ax, matrix, title, fmt in ((axes[0], exponent, "growth exponent p (‖θ‖ ≈ a·t^p + b)", "{:.2f}"),
                                 (axes[1], final, "final ‖θ‖₂", "{:.0f}"),
                                 (axes[2], saturated, "saturation: mean over layers of\ncos(h(θ), h(1000θ)), final",
                                  "{:.3f}")):
    fig.colorbar(_heatmap(ax, matrix, wds, lrs, title, fmt), ax=ax)
  fig.savefig(path, dpi=DPI)
  return path


def saturation_over_training_figure(records, members, path: str) -> str | None:
  wds, lrs, cells = grid_axes(members)
  curves = {}
  for name in members:
    by_step = {}
    for record in records.get(name, []):
      values = [v for k, v in record.items() if _SATURATION.match(k)]
      if values:
        by_step[record["step"]] = float(np.mean(values))
    if by_step:
      curves[name] = (np.array(sorted(by_step)), np.array([by_step[s] for s in sorted(by_step)]))
  if not curves:
    return None
  fig = Figure(figsize=(4.5 * len(wds) + 0.5, 3.6), layout="constrained")
  axes = fig.subplots(1, len(wds), squeeze=False)[0]
  colors = [matplotlib.colormaps["plasma"](x) for x in np.linspace(0.0, 0.8, max(len(lrs), 1))]
  for name, (steps, values) in curves.items():
    row, col = cells[name]
    axes[row].plot(steps, values, marker="o", markersize=2, color=colors[col], label=f"lr {lrs[col]:g}")
  for row, ax in enumerate(axes):
    ax.set_title(f"weight decay {wds[row]:g}")
    ax.set_xlabel("training step")
    ax.grid(alpha=0.3)
    if ax.lines:
      ax.legend(fontsize="small")
  axes[0].set_ylabel("mean over layers of cos(h(θ), h(1000θ))")
  fig.suptitle("Saturation over training (eval/saturation/layer_l as the runs logged it)")
  fig.savefig(path, dpi=DPI)
  return path


def head_histogram_figure(saturation, members, path: str) -> str | None:
  wds, lrs, cells = grid_axes(members)
  if not any("saturated_head_histogram" in saturation.get(name, {}) for name in members):
    return None
  fig = Figure(figsize=(max(3.4 * len(lrs), 7.0) + 0.5, 2.6 * len(wds) + 0.9), layout="constrained")
  axes = fig.subplots(len(wds), len(lrs), squeeze=False, sharex=True)
  for name, (row, col) in cells.items():
    ax = axes[row, col]
    histogram = saturation.get(name, {}).get("saturated_head_histogram")
    ax.set_title(f"wd {wds[row]:g}, lr {lrs[col]:g}", fontsize="small")
    if not histogram:
      ax.text(0.5, 0.5, "no result", ha="center", va="center", transform=ax.transAxes)
      continue
    edges = np.asarray(histogram["edges"])
    ax.bar(edges[:-1], histogram["counts"], width=np.diff(edges), align="edge", color="tab:blue", edgecolor="white")
    ax.axvline(0.5, color="gray", linestyle=":", linewidth=0.8)
    seq_len = ((members[name].get("config") or {}).get("data") or {}).get("seq_len")
    if seq_len and seq_len > 1:  # where a head that attends to exactly one key lands: mean of 1/(t+1), t ≥ 1
      ax.axvline(float(np.mean(1.0 / np.arange(2, seq_len + 1))), color="tab:red", linestyle="--", linewidth=0.8)
    if row == len(wds) - 1:
      ax.set_xlabel("keys above 1e-5 / visible keys")
    if col == 0:
      ax.set_ylabel("heads")
  fig.suptitle("Heads of the saturated network (c = 1000) at the final checkpoint,\nby keys attended / keys visible: "
               "argmax heads at the dashed red line\n(one key per query), averaging heads near 1/2 (dotted) and above",
               fontsize="medium")
  fig.savefig(path, dpi=DPI)
  return path


def summary_table(records, reports, saturation, members) -> str:
  lines = ["| member | train s | final loss | ‖θ‖ first → last | best law | r² √t | r² linear | p | "
           "saturation (mean cos) | keys per query |", "|---|---|---|---|---|---|---|---|---|---|"]
  for name in members:
    losses = growth.series(records.get(name, []), "train/loss")[1]
    result = reports[name].get("norm/params", {})
    fits = result.get("fits", {})
    cell = lambda law: f"{fits[law]['r2']:.4f}" if law in fits else "–"
    norms = f"{result['initial']:.1f} → {result['final']:.1f}" if fits else "–"
    p = f"{result['exponent']['p']:.2f}" if fits else "–"
    sat = saturation.get(name, {})
    sat_text = f"{_mean_saturation(sat):.3f}" if "error" not in sat else "failed"
    lines.append(f"| {name} | {members[name].get('train_seconds', float('nan')):.0f} | "
                 f"{losses[-1] if losses.size else float('nan'):.3f} | {norms} | {result.get('best') or '–'} | "
                 f"{cell('sqrt')} | {cell('linear')} | {p} | {sat_text} | {_mean_head_count(sat):.2f} |")
  return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
  if len(argv) != 2:
    print(__doc__, file=sys.stderr)
    return 2
  results_dir, out_dir = argv
  os.makedirs(out_dir, exist_ok=True)
  records, saturation, members = load(results_dir)
  reports = {name: growth.growth_report(records.get(name, [])) for name in members}
  written = [sqrt_fits_figure(records, reports, members, os.path.join(out_dir, "norm_sqrt_fits.png")),
             grid_figure(reports, saturation, members, os.path.join(out_dir, "growth_grid.png")),
             saturation_over_training_figure(records, members, os.path.join(out_dir, "saturation_over_training.png")),
             head_histogram_figure(saturation, members, os.path.join(out_dir, "saturated_head_histogram.png"))]
  for name in members:
    if float(members[name]["overrides"]["optim.weight_decay"]) == 0.0 and "norm/params" in reports[name]:
      slug = re.sub(r"[^A-Za-z0-9.]+", "_", name)
      written.append(growth.growth_figure(records[name], os.path.join(out_dir, f"growth_{slug}.png"), title=name,
                                          report=reports[name]))
  table = summary_table(records, reports, saturation, members)
  with open(os.path.join(out_dir, "summary.md"), "w") as f:
    f.write(table)
  with open(os.path.join(out_dir, "growth_fits.json"), "w") as f:
    json.dump(reports, f)
  print(table)
  print("\n".join(p for p in written if p))
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
