"""Saturation (Merrill et al. 2021) across a norm-growth sweep: over training, and the saturated heads at the end."""

from __future__ import annotations

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure

from lensjax.report import growth_sweep
from lensjax.report.growth_sweep import ARGMAX_KEYS, SATURATED_HEAD
from lensjax.report.plotting import STEP_LABEL, save

_LAYER_STYLES = ["-", "--", ":", "-.", (0, (5, 1)), (0, (1, 1)), (0, (3, 1, 1, 1)), (0, (5, 5))]


def _saturation_curves(records, members) -> dict:
  """name -> (steps [S], mean over layers [S], per layer [S, L], argmax heads [S]) of the records logging saturation."""
  curves = {}
  for name in members:
    rows = []
    for record in records.get(name, []):
      layers = growth_sweep.layer_saturation(record)
      if layers:
        heads = [v for k, v in record.items() if SATURATED_HEAD.match(k)]
        rows.append((record["step"], layers, sum(v <= ARGMAX_KEYS for v in heads) if heads else np.nan))
    if rows:
      rows.sort(key=lambda row: row[0])
      curves[name] = (np.array([r[0] for r in rows]), np.array([np.mean(r[1]) for r in rows]),
                      np.array([r[1] for r in rows]), np.array([r[2] for r in rows], np.float64))
  return curves


def saturation_over_training_figure(records, members, path: str) -> str | None:
  """Per weight decay (columns): mean over layers, each layer, and the argmax heads, over training."""
  wds, lrs, cells = growth_sweep.grid_axes(members)
  curves = _saturation_curves(records, members)
  if not curves:
    return None
  fig = Figure(figsize=(4.5 * len(wds) + 0.5, 10.0), layout="constrained")
  axes = fig.subplots(3, len(wds), squeeze=False, sharey="row")
  colors = [colormaps["plasma"](x) for x in np.linspace(0.0, 0.8, max(len(lrs), 1))]
  for name, (steps, mean, per_layer, argmax) in curves.items():
    wd, lr = growth_sweep.member_wd_lr(members, name)
    if wd not in wds:
      continue
    row = wds.index(wd)
    # Off-grid members go into their weight decay's panel, in red.
    color, label = ((colors[cells[name][1]], f"lr {lr:g}") if name in cells else
                    ("tab:red", f"lr {lr:g}, {growth_sweep.exemption(members, name)}"))
    axes[0, row].plot(steps, mean, marker="o", markersize=2, color=color, label=label)
    for l in range(per_layer.shape[1]):
      axes[1, row].plot(steps, per_layer[:, l], linestyle=_LAYER_STYLES[l % len(_LAYER_STYLES)], color=color,
                        label=f"{label}, layer {l}")
    axes[2, row].plot(steps, argmax, marker="o", markersize=2, color=color, label=label)
  for row, wd in enumerate(wds):
    axes[0, row].set_title(f"weight decay {wd:g}")
    for ax in axes[:, row]:
      ax.grid(alpha=0.3)
      if ax.lines:
        ax.legend(fontsize="x-small")
    axes[2, row].set_xlabel(STEP_LABEL)
  axes[0, 0].set_ylabel("mean over layers of\ncos(h_l(θ), h_l(1000θ))")
  axes[1, 0].set_ylabel("cos(h_l(θ), h_l(1000θ)) per layer")
  axes[2, 0].set_ylabel(f"argmax heads at 1000θ\n(≤ {ARGMAX_KEYS:g} keys per query)")
  fig.suptitle("Saturation over training (eval/saturation/layer_l and eval/saturated_head/*, held-out rows)")
  return save(fig, path)


def head_histogram_figure(saturation, members, path: str) -> str | None:
  """Per grid member, the heads of the saturated network at the final checkpoint by keys attended / keys visible."""
  wds, lrs, cells = growth_sweep.grid_axes(members)
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
  return save(fig, path)
