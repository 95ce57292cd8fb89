"""Per-layer figures: one line per layer over training, layer × step and layer × head heat maps, runs by layer.

Every function takes arrays and a path and returns the path.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np

from lensjax.report.plotting import (LAYER_CMAP, RUN_CMAP, STEP_LABEL, any_positive, depth_key, finite,
                                     integer_ticks, log_color_norm, log_scale, marker_for, new_figure, save,
                                     sequential_colors, step_ticks, wrap)


@dataclasses.dataclass(frozen=True)
class LayerPanel:
  """One panel of per-layer curves: a subtitle, steps [S] and values [L, S]."""
  label: str
  steps: np.ndarray
  values: np.ndarray


def layer_curves(panels: Sequence[LayerPanel], title: str, ylabel: str, path: str, log_y: bool = False,
                 floor_zero: bool = False) -> str:
  """One line per layer over training, coloured by depth; one panel per variant (train, probe, ...).

  `floor_zero` starts the y axis at 0, for fractions, so that a flat zero line
  does not sit in the middle of a made-up negative range.
  """
  fig, axes = new_figure(len(panels))
  axes = axes[0]
  num_layers = max(panel.values.shape[0] for panel in panels)
  colors = sequential_colors(num_layers, LAYER_CMAP)
  for ax, panel in zip(axes, panels):
    for layer, row in enumerate(finite(panel.values)):
      ax.plot(panel.steps, row, color=colors[layer], marker=marker_for(panel.steps.size), markersize=3,
              linewidth=1.4, label=f"layer {layer}")
    if log_y and any_positive(panel.values):
      log_scale(ax)
    elif floor_zero:
      ax.set_ylim(bottom=0.0)
    # One panel carries the figure's title itself; several share it above their own.
    ax.set_title(f"{title} ({panel.label})" if len(panels) == 1 else panel.label)
    ax.set_xlabel(STEP_LABEL)
    ax.grid(alpha=0.3, which="both" if log_y else "major")
  axes[0].set_ylabel(wrap(ylabel, int(fig.get_size_inches()[1] * 9)))
  if len(panels) > 1:
    _share_y_limits(axes)
    fig.suptitle(title)
  depth_key(fig, axes, num_layers)
  return save(fig, path)


def _share_y_limits(axes) -> None:
  # Variants of one statistic (train vs probe) compare only on a common scale.
  lows, highs = zip(*(ax.get_ylim() for ax in axes))
  for ax in axes:
    ax.set_ylim(min(lows), max(highs))


def layer_heatmap(steps: np.ndarray, values: np.ndarray, title: str, colorbar_label: str, path: str,
                  vmin: float | None = None, vmax: float | None = None, log_color: bool = False) -> str:
  """Layers on y (first layer at the bottom), logging steps on x, value as colour.

  `log_color` puts the colours on a log scale when the values span decades (see `log_color_norm`); then
  `vmin`/`vmax` are ignored and cells of zero are left blank.
  """
  values = finite(values)
  num_layers, num_steps = values.shape
  fig, axes = new_figure(1, panel_width=7.0, height=max(2.6, 1.2 + 0.3 * num_layers))
  ax = axes[0, 0]
  norm = log_color_norm(values) if log_color else None
  scale = dict(norm=norm) if norm is not None else dict(vmin=vmin, vmax=vmax)
  # Columns are logging steps, which need not be evenly spaced (the last step
  # rarely is), so the image is indexed by column and the ticks name the step.
  image = ax.imshow(values, aspect="auto", origin="lower", interpolation="nearest", cmap=LAYER_CMAP,
                    extent=(-0.5, num_steps - 0.5, -0.5, num_layers - 0.5), **scale)
  step_ticks(ax, steps)
  ax.set_yticks(integer_ticks(num_layers, most=16))
  ax.set_xlabel(STEP_LABEL)
  ax.set_ylabel("layer")
  ax.set_title(wrap(title, 70))
  bar_height_chars = int(fig.get_size_inches()[1] * 9)  # about 9 characters of label per inch at this font
  label = colorbar_label + (" (log)" if norm is not None else "")
  fig.colorbar(image, ax=ax, pad=0.01).set_label(wrap(label, bar_height_chars))
  return save(fig, path)


def head_heatmap(matrix: np.ndarray, title: str, colorbar_label: str, path: str,
                 vmin: float | None = 0.0, vmax: float | None = 1.0) -> str:
  """A layer × head matrix (e.g. normalised attention entropy), values written in the cells when few."""
  matrix = finite(matrix)
  num_layers, num_heads = matrix.shape
  width = max(5.0, 0.6 * num_heads + 2.0)
  fig, axes = new_figure(1, panel_width=width, height=max(3.0, 0.45 * num_layers + 1.6))
  ax = axes[0, 0]
  image = ax.imshow(matrix, aspect="auto", origin="lower", interpolation="nearest", cmap=LAYER_CMAP,
                    vmin=vmin, vmax=vmax)
  if matrix.size <= 96:
    middle = np.nanmean([vmin, vmax]) if vmin is not None and vmax is not None else np.nanmean(matrix)
    for (layer, head), value in np.ndenumerate(matrix):
      if np.isfinite(value):
        ax.text(head, layer, f"{value:.2f}", ha="center", va="center", fontsize="small",
                color="white" if value < middle else "black")
  ax.set_xticks(integer_ticks(num_heads, most=16))
  ax.set_yticks(integer_ticks(num_layers, most=16))
  ax.set_xlabel("head")
  ax.set_ylabel("layer")
  ax.set_title(wrap(title, int(width * 8)))
  bar_height_chars = int(fig.get_size_inches()[1] * 9)
  fig.colorbar(image, ax=ax, pad=0.02).set_label(wrap(colorbar_label, bar_height_chars))
  return save(fig, path)


def runs_by_layer(per_run: Mapping[str, np.ndarray], title: str, ylabel: str, path: str, log_y: bool = False) -> str:
  """One line per run of a per-layer value (e.g. last-N mean activity); x = layer index."""
  fig, axes = new_figure(1, panel_width=7.0)
  ax = axes[0, 0]
  colors = sequential_colors(len(per_run), RUN_CMAP)
  deepest = 0
  for color, (name, values) in zip(colors, per_run.items()):
    values = finite(values)
    deepest = max(deepest, values.size)
    ax.plot(np.arange(values.size), values, color=color, marker="o", markersize=4, linewidth=1.6, label=name)
  if log_y and any(any_positive(values) for values in per_run.values()):
    log_scale(ax)
  ax.set_xticks(integer_ticks(max(deepest, 1), most=16))
  ax.set_xlabel("layer (0 = first)")
  ax.set_ylabel(ylabel)
  ax.set_title(title)
  ax.grid(alpha=0.3)
  ax.legend(title="run", fontsize="small")
  return save(fig, path)
