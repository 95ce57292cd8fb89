"""Parameter norm growth (Merrill et al. 2021): one run's norms with their fitted laws, and a sweep's members.

The fits are lensjax.analysis.growth's: √t, linear, t^¼ and a·e^{bt} + c, and
the growth exponent p of a·t^p + b. `growth_figure` is the one figure of a
run's norm growth (the report's `{run}_norm_growth.png`, `lensjax growth
--figure`, a sweep's `growth_<member>.png`); the others draw every member of a
weight decay × learning rate sweep (lensjax.report.growth_sweep) side by side.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure

from lensjax.analysis import growth
from lensjax.analysis.records import series
from lensjax.report import growth_sweep
from lensjax.report.plotting import LAYER_CMAP, STEP_LABEL, cos_distance, save, sequential_colors

_LAW_STYLES = {"sqrt": ("tab:red", "--"), "linear": ("tab:gray", ":"), "quarter": ("tab:purple", "-."),
               "exp": ("tab:orange", (0, (5, 1, 1, 1)))}
_LAW_LABELS = {"sqrt": "a√t + b", "linear": "at + b", "quarter": "at^¼ + b", "exp": "ae^{bt} + c"}
_COS_LABEL = "1 − cos(θ_t, θ_t+1)"
_ALIGNMENT_LABEL = "cos(δ_t, θ_t)"


# --------------------------------------------------------------------------
# One run.


def growth_figure(records: Sequence[dict], path: str, title: str | None = None,
                  report: dict | None = None) -> str | None:
  """A PNG at `path`: ‖θ_t‖ with its four fits; per-block norms with √t fits; cos_step and alignment.

  `report` is `growth.growth_report(records)`, computed when not given.
  Returns `path`, or None when `records` hold no `norm/params`.
  """
  report = growth.growth_report(records) if report is None else report
  if "norm/params" not in report:
    return None
  fig = Figure(figsize=(15.5, 4.2), layout="constrained")
  ax_total, ax_layers, ax_step = fig.subplots(1, 3)
  steps, values = series(records, "norm/params")
  dense = np.linspace(0.0, float(steps.max()) if steps.size else 1.0, 300)
  _total_panel(ax_total, steps, values, report["norm/params"], dense)
  _blocks_panel(ax_layers, records, report, dense)
  _direction_panel(ax_step, series(records, "norm/cos_step"), series(records, "norm/alignment"))
  if title:
    fig.suptitle(title)
  return save(fig, path)


def _total_panel(ax, steps, values, result: dict, dense) -> None:
  ax.plot(steps, values, "o", color="tab:blue", markersize=3, label="‖θ_t‖")
  for law, fit in result["fits"].items():
    color, style = _LAW_STYLES[law]
    marker = " (best)" if law == result["best"] else ""
    ax.plot(dense, growth.evaluate(fit, law, dense), color=color, linestyle=style,
            label=f"{_LAW_LABELS[law]}: r² {fit['r2']:.4f}{marker}")
  if values.size:  # keep the data in view: a fitted a·t^¼ + b can dive far below it near t = 0
    span = max(float(values.max() - values.min()), 1e-12)
    ax.set_ylim(float(values.min()) - 0.1 * span, float(values.max()) + 0.1 * span)
  if result["exponent"]:
    ax.set_title(f"‖θ‖₂ and fitted laws (a·t^p + b: p = {result['exponent']['p']:.2f})")
  else:
    ax.set_title("‖θ‖₂")
  ax.set_xlabel(STEP_LABEL)
  ax.set_ylabel("‖θ‖₂")
  ax.legend(fontsize="small")
  ax.grid(alpha=0.3)


def _blocks_panel(ax, records, report: dict, dense) -> None:
  layer_names = [n for n in report if growth.LAYER_NORM.match(n)]
  for color, name in zip(sequential_colors(len(layer_names), LAYER_CMAP), layer_names):
    layer_steps, layer_values = series(records, name)
    ax.plot(layer_steps, layer_values, "o", color=color, markersize=2, label=name.rsplit("/", 1)[-1])
    fit = report[name]["fits"].get("sqrt")
    if fit:
      ax.plot(dense, growth.evaluate(fit, "sqrt", dense), color=color, linestyle="--", linewidth=1)
  ax.set_title("‖θ_l‖₂ per block (dashed: a√t + b)")
  ax.set_xlabel(STEP_LABEL)
  if 0 < len(layer_names) <= 8:
    ax.legend(fontsize="small")
  ax.grid(alpha=0.3)


def _direction_panel(ax, cos_step, alignment) -> None:
  """1 − cos_step on a log axis and, on a twin axis, the alignment of the update with θ."""
  if cos_step[0].size:
    ax.semilogy(cos_step[0], cos_distance(cos_step[1]), color="tab:green", label=_COS_LABEL)
    ax.set_ylabel(f"{_COS_LABEL} (log)", color="tab:green")
  if alignment[0].size:
    ax_align = ax.twinx()
    ax_align.plot(alignment[0], alignment[1], color="tab:red", label=_ALIGNMENT_LABEL)
    ax_align.axhline(0.0, color="gray", linewidth=0.8)
    ax_align.set_ylabel(f"alignment {_ALIGNMENT_LABEL}", color="tab:red")
  ax.set_title("direction change per step and update alignment")
  ax.set_xlabel(STEP_LABEL)
  ax.grid(alpha=0.3)


# --------------------------------------------------------------------------
# Every member of a sweep.


def member_style(members: dict, name: str) -> tuple:
  """(colour by weight decay, line style by learning rate, label) of a member on a shared axis."""
  wds, lrs, cells = growth_sweep.grid_axes(members)
  styles = ["-", "--", ":", "-."]
  wd, lr = growth_sweep.member_wd_lr(members, name)
  style = styles[lrs.index(lr) % len(styles)] if lr in lrs else "-."
  if name not in cells:  # off the grid: weight decay on a different set of parameters
    return "tab:red", style, f"wd {wd:g}, lr {lr:g}, {growth_sweep.exemption(members, name)}"
  colors = [colormaps["viridis"](x) for x in np.linspace(0.0, 0.8, max(len(wds), 1))]
  return colors[cells[name][0]], style, f"wd {wd:g}, lr {lr:g}"


def norm_all_figure(records, members, path: str) -> str:
  """Every member on one axis: ‖θ‖, the blocks' ‖θ_blocks‖ and the embeddings' norm."""
  fig = Figure(figsize=(16, 4.3), layout="constrained")
  axes = fig.subplots(1, 3)
  for name in members:
    color, style, label = member_style(members, name)
    member = records.get(name, [])
    parts = (series(member, "norm/params"), growth_sweep.blocks_norm(member), series(member, "norm/params/embed"))
    for ax, (steps, values) in zip(axes, parts):
      if steps.size:
        ax.plot(steps, values, color=color, linestyle=style, label=label)
  titles = ("‖θ‖₂, all parameters", "‖θ_blocks‖₂ = (Σ_l ‖θ_l‖²)^½: the transformer blocks\n"
            "(matrices decayed; LayerNorm scales and biases exempt when decay_exempt)",
            "‖θ_embed‖₂: tied token and position embeddings\n(exempt from weight decay when decay_exempt)")
  for ax, title in zip(axes, titles):
    ax.set_title(title, fontsize="medium")
    ax.set_xlabel(STEP_LABEL)
    ax.grid(alpha=0.3)
  axes[0].set_ylabel("L2 norm")
  axes[0].legend(fontsize="small")
  fig.suptitle("Parameter norm of every member (colour: weight decay; line style: learning rate)")
  return save(fig, path)


def norm_dynamics_figure(records, members, path: str) -> str:
  """Every member: 1 − norm/cos_step (log) and norm/alignment over training."""
  fig = Figure(figsize=(12, 4.3), layout="constrained")
  ax_cos, ax_align = fig.subplots(1, 2)
  for name in members:
    color, style, label = member_style(members, name)
    steps, values = series(records.get(name, []), "norm/cos_step")
    if steps.size:
      ax_cos.semilogy(steps, cos_distance(values), color=color, linestyle=style, label=label)
    steps, values = series(records.get(name, []), "norm/alignment")
    if steps.size:
      ax_align.plot(steps, values, color=color, linestyle=style, label=label)
  ax_cos.set_title(f"{_COS_LABEL}: how far one step turns θ (log)")
  ax_align.set_title(f"{_ALIGNMENT_LABEL}: > 0 the update pushes θ outward, < 0 inward")
  ax_align.axhline(0.0, color="gray", linewidth=0.8)
  for ax in (ax_cos, ax_align):
    ax.set_xlabel(STEP_LABEL)
    ax.grid(alpha=0.3)
  ax_align.legend(fontsize="small")
  fig.suptitle("Direction of the updates (norm/cos_step, norm/alignment; logged every log_every steps)")
  return save(fig, path)


def sqrt_fits_figure(records, reports, members, path: str) -> str:
  """‖θ_t‖ of every grid member with its a√t + b fit, weight decay by row, learning rate by column."""
  wds, lrs, cells = growth_sweep.grid_axes(members)
  fig = Figure(figsize=(3.6 * len(lrs) + 0.5, 2.9 * len(wds) + 0.4), layout="constrained")
  axes = fig.subplots(len(wds), len(lrs), squeeze=False)
  for name, (row, col) in cells.items():
    ax = axes[row, col]
    steps, values = series(records.get(name, []), "norm/params")
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
      ax.set_xlabel(STEP_LABEL)
    if col == 0:
      ax.set_ylabel("‖θ‖₂")
  fig.suptitle("Parameter norm and its a√t + b fit (dashed), weight decay by row, learning rate by column")
  return save(fig, path)


def _grid_heatmap(ax, matrix, wds, lrs, title, fmt):
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
  """Weight decay × learning rate: the growth exponent p, the final ‖θ‖ and the final mean saturation."""
  wds, lrs, cells = growth_sweep.grid_axes(members)
  exponent, final, saturated = (np.full((len(wds), len(lrs)), np.nan) for _ in range(3))
  for name, (row, col) in cells.items():
    result = reports[name].get("norm/params", {})
    if result.get("exponent"):
      exponent[row, col] = result["exponent"]["p"]
      final[row, col] = result["final"]
    saturated[row, col] = growth_sweep.mean_saturation(saturation.get(name, {}))
  fig = Figure(figsize=(15, 3.8), layout="constrained")
  axes = fig.subplots(1, 3)
  for ax, matrix, title, fmt in ((axes[0], exponent, "growth exponent p (‖θ‖ ≈ a·t^p + b)", "{:.2f}"),
                                 (axes[1], final, "final ‖θ‖₂", "{:.0f}"),
                                 (axes[2], saturated, "saturation: mean over layers of\ncos(h(θ), h(1000θ)), final",
                                  "{:.3f}")):
    fig.colorbar(_grid_heatmap(ax, matrix, wds, lrs, title, fmt), ax=ax)
  return save(fig, path)
