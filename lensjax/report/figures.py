"""PNG figures of a run's statistics; every function takes arrays and a path and returns the path.

Figures are built on `matplotlib.figure.Figure` with the Agg backend, never
through pyplot's global state, so they draw headless and leak no windows.
Depth is always the same sequential colour map (dark = first layer, light =
last), so one figure can be read against another; runs get another map.
"""

from __future__ import annotations

import dataclasses
import math
import textwrap
from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
from matplotlib import colormaps  # noqa: E402
from matplotlib.cm import ScalarMappable  # noqa: E402
from matplotlib.colors import BoundaryNorm, ListedColormap, LogNorm  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import FixedLocator, FuncFormatter, LogFormatter, MaxNLocator, NullFormatter  # noqa: E402

DPI = 120
STEP_LABEL = "training step"
LAYER_CMAP = "viridis"
RUN_CMAP = "plasma"
# Beyond this many lines a legend hides the data; a colour bar scales to any depth.
MAX_LEGEND_ENTRIES = 8
# Markers make sparse logs (a few logging steps) readable and clutter dense ones.
MAX_MARKED_POINTS = 40
DIED_COLOR, REVIVED_COLOR = "tab:red", "tab:blue"
MAX_EVENT_COLUMNS = 200

Series = tuple[np.ndarray, np.ndarray]  # (steps [S], values [S])


@dataclasses.dataclass(frozen=True)
class LayerPanel:
  """One panel of per-layer curves: a subtitle, steps [S] and values [L, S]."""
  label: str
  steps: np.ndarray
  values: np.ndarray


# --------------------------------------------------------------------------
# Shared helpers.


def _finite(values) -> np.ndarray:
  values = np.asarray(values, dtype=np.float64)
  return np.where(np.isfinite(values), values, np.nan)


def _any_positive(values) -> bool:
  values = _finite(values)
  return bool(np.any(values[np.isfinite(values)] > 0))


def _sequential_colors(count: int, cmap: str) -> list:
  # Stop short of the map's palest end, which vanishes on a white background.
  return [colormaps[cmap](x) for x in np.linspace(0.0, 0.85, max(count, 1))][:count]


def _wrap(text: str, width: int) -> str:
  """Breaks a long title or colour-bar label into lines instead of letting the figure edge cut it."""
  return "\n".join(textwrap.wrap(text, width=max(width, 12))) or text


class _PlainLogFormatter(LogFormatter):
  """matplotlib's choice of which log ticks to label, written as 0.6 or 4e-05 instead of 6×10⁻¹."""

  def __call__(self, value: float, position=None) -> str:
    return f"{value:g}" if super().__call__(value, position) else ""


def _log_scale(ax, axis: str = "y") -> None:
  """A log axis whose ticks read as plain numbers (0.5, 2, 1e-05) rather than 5×10⁻¹."""
  getattr(ax, f"set_{axis}scale")("log")
  target = ax.xaxis if axis == "x" else ax.yaxis
  target.set_major_formatter(_PlainLogFormatter())
  target.set_minor_formatter(_PlainLogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.5)))


def _marker(num_points: int) -> str:
  return "o" if num_points <= MAX_MARKED_POINTS else ""


def _save(fig: Figure, path: str) -> str:
  fig.savefig(path, dpi=DPI)
  return path


def _new_figure(num_panels: int = 1, panel_width: float = 5.0, height: float = 4.0,
                rows: int = 1) -> tuple[Figure, np.ndarray]:
  fig = Figure(figsize=(panel_width * num_panels + 0.8, height * rows), layout="constrained")
  axes = fig.subplots(rows, num_panels, squeeze=False)
  return fig, axes


def _depth_key(fig: Figure, axes, num_layers: int) -> None:
  """A legend "layer l" for shallow models, a colour bar of depth for deep ones."""
  if num_layers <= MAX_LEGEND_ENTRIES:
    axes[0].legend(title="layer", fontsize="small", loc="best")
    return
  bounds = np.arange(num_layers + 1) - 0.5
  colors = ListedColormap(_sequential_colors(num_layers, LAYER_CMAP))
  mappable = ScalarMappable(norm=BoundaryNorm(bounds, colors.N), cmap=colors)
  bar = fig.colorbar(mappable, ax=list(axes), pad=0.01)
  bar.set_label("layer (0 = first)")
  bar.set_ticks(_integer_ticks(num_layers))


def _step_ticks(ax, steps: np.ndarray) -> None:
  """Ticks naming the training step of image columns laid out at 0, 1, 2, ..."""
  if steps.size:
    columns = _integer_ticks(steps.size, most=8)
    ax.set_xticks(columns, [str(int(steps[c])) for c in columns])


def _integer_ticks(count: int, most: int = 12) -> list[int]:
  """About `most` evenly spaced indices of 0..count-1, the first and the last always among them."""
  stride = max(1, math.ceil(count / most))
  ticks = list(range(0, count, stride))
  if ticks[-1] != count - 1:
    if len(ticks) > 1 and 2 * (count - 1 - ticks[-1]) < stride:
      ticks.pop()  # too close to the last index: their labels would overprint each other
    ticks.append(count - 1)
  return ticks


# --------------------------------------------------------------------------
# Per-layer families.


def layer_curves(panels: Sequence[LayerPanel], title: str, ylabel: str, path: str, log_y: bool = False,
                 floor_zero: bool = False) -> str:
  """One line per layer over training, coloured by depth; one panel per variant (train, probe, ...).

  `floor_zero` starts the y axis at 0, for fractions, so that a flat zero line
  does not sit in the middle of a made-up negative range.
  """
  fig, axes = _new_figure(len(panels))
  axes = axes[0]
  num_layers = max(panel.values.shape[0] for panel in panels)
  colors = _sequential_colors(num_layers, LAYER_CMAP)
  for ax, panel in zip(axes, panels):
    for layer, row in enumerate(_finite(panel.values)):
      ax.plot(panel.steps, row, color=colors[layer], marker=_marker(panel.steps.size), markersize=3,
              linewidth=1.4, label=f"layer {layer}")
    if log_y and _any_positive(panel.values):
      _log_scale(ax)
    elif floor_zero:
      ax.set_ylim(bottom=0.0)
    # One panel carries the figure's title itself; several share it above their own.
    ax.set_title(f"{title} ({panel.label})" if len(panels) == 1 else panel.label)
    ax.set_xlabel(STEP_LABEL)
    ax.grid(alpha=0.3, which="both" if log_y else "major")
  axes[0].set_ylabel(_wrap(ylabel, int(fig.get_size_inches()[1] * 9)))
  if len(panels) > 1:
    _share_y_limits(axes)
    fig.suptitle(title)
  _depth_key(fig, axes, num_layers)
  return _save(fig, path)


def _share_y_limits(axes) -> None:
  # Variants of one statistic (train vs probe) compare only on a common scale.
  lows, highs = zip(*(ax.get_ylim() for ax in axes))
  for ax in axes:
    ax.set_ylim(min(lows), max(highs))


# A heat map asked for log colours gets them only when its positive values span at least this ratio.
LOG_COLOR_MIN_SPAN = 100.0


def log_color_norm(values: np.ndarray, min_span: float = LOG_COLOR_MIN_SPAN) -> LogNorm | None:
  """A log colour scale over the positive values when they span `min_span` or more; None (linear) otherwise."""
  positive = _finite(values)
  positive = positive[np.isfinite(positive) & (positive > 0)]
  if positive.size == 0 or positive.max() < min_span * positive.min():
    return None
  return LogNorm(vmin=float(positive.min()), vmax=float(positive.max()))


def layer_heatmap(steps: np.ndarray, values: np.ndarray, title: str, colorbar_label: str, path: str,
                  vmin: float | None = None, vmax: float | None = None, log_color: bool = False) -> str:
  """Layers on y (first layer at the bottom), logging steps on x, value as colour.

  `log_color` puts the colours on a log scale when the values span decades (see `log_color_norm`); then
  `vmin`/`vmax` are ignored and cells of zero are left blank.
  """
  values = _finite(values)
  num_layers, num_steps = values.shape
  fig, axes = _new_figure(1, panel_width=7.0, height=max(2.6, 1.2 + 0.3 * num_layers))
  ax = axes[0, 0]
  norm = log_color_norm(values) if log_color else None
  scale = dict(norm=norm) if norm is not None else dict(vmin=vmin, vmax=vmax)
  # Columns are logging steps, which need not be evenly spaced (the last step
  # rarely is), so the image is indexed by column and the ticks name the step.
  image = ax.imshow(values, aspect="auto", origin="lower", interpolation="nearest", cmap=LAYER_CMAP,
                    extent=(-0.5, num_steps - 0.5, -0.5, num_layers - 0.5), **scale)
  _step_ticks(ax, steps)
  ax.set_yticks(_integer_ticks(num_layers, most=16))
  ax.set_xlabel(STEP_LABEL)
  ax.set_ylabel("layer")
  ax.set_title(_wrap(title, 70))
  bar_height_chars = int(fig.get_size_inches()[1] * 9)  # about 9 characters of label per inch at this font
  label = colorbar_label + (" (log)" if norm is not None else "")
  fig.colorbar(image, ax=ax, pad=0.01).set_label(_wrap(label, bar_height_chars))
  return _save(fig, path)


def head_heatmap(matrix: np.ndarray, title: str, colorbar_label: str, path: str,
                 vmin: float | None = 0.0, vmax: float | None = 1.0) -> str:
  """A layer × head matrix (e.g. normalised attention entropy), values written in the cells when few."""
  matrix = _finite(matrix)
  num_layers, num_heads = matrix.shape
  width = max(5.0, 0.6 * num_heads + 2.0)
  fig, axes = _new_figure(1, panel_width=width, height=max(3.0, 0.45 * num_layers + 1.6))
  ax = axes[0, 0]
  image = ax.imshow(matrix, aspect="auto", origin="lower", interpolation="nearest", cmap=LAYER_CMAP,
                    vmin=vmin, vmax=vmax)
  if matrix.size <= 96:
    middle = np.nanmean([vmin, vmax]) if vmin is not None and vmax is not None else np.nanmean(matrix)
    for (layer, head), value in np.ndenumerate(matrix):
      if np.isfinite(value):
        ax.text(head, layer, f"{value:.2f}", ha="center", va="center", fontsize="small",
                color="white" if value < middle else "black")
  ax.set_xticks(_integer_ticks(num_heads, most=16))
  ax.set_yticks(_integer_ticks(num_layers, most=16))
  ax.set_xlabel("head")
  ax.set_ylabel("layer")
  ax.set_title(_wrap(title, int(width * 8)))
  bar_height_chars = int(fig.get_size_inches()[1] * 9)
  fig.colorbar(image, ax=ax, pad=0.02).set_label(_wrap(colorbar_label, bar_height_chars))
  return _save(fig, path)


# --------------------------------------------------------------------------
# Neuron events.


def event_counts(events: Sequence[Mapping], kind: str, logging_steps: np.ndarray, num_layers: int) -> np.ndarray:
  """[L, S] number of `kind` events ("died"/"revived") per layer, binned onto the logging steps.

  An event belongs to the first logging step at or after it, so the count at a
  logging step is what happened since the previous one.
  """
  counts = np.zeros((num_layers, logging_steps.size), dtype=np.int64)
  if logging_steps.size == 0:
    return counts
  for event in events:
    if (event.get("event") == kind and isinstance(event.get("step"), int)
        and 0 <= int(event.get("layer", -1)) < num_layers):
      column = min(int(np.searchsorted(logging_steps, event["step"], side="left")), logging_steps.size - 1)
      counts[int(event["layer"]), column] += 1
  return counts


def neuron_events_figure(events: Sequence[Mapping], logging_steps: np.ndarray, num_layers: int, path: str) -> str:
  """Died and revived units per layer over training; below, `frequency` and `adam_v` at death vs revival."""
  fields = [f for f in ("frequency", "adam_v") if any(f in e for e in events)]
  fig, axes = _new_figure(2, panel_width=5.5, height=3.6, rows=2 if fields else 1)
  # Heat maps rather than one line per layer: a deep model's many all-zero lines would hide the few that are not.
  for ax, kind, cmap in zip(axes[0], ("died", "revived"), ("Reds", "Blues")):
    counts = event_counts(events, kind, logging_steps, num_layers)
    steps, binned, group = coarsen_columns(logging_steps, counts, MAX_EVENT_COLUMNS)
    image = ax.imshow(binned, aspect="auto", origin="lower", interpolation="nearest", cmap=cmap, vmin=0,
                      vmax=max(1, int(binned.max())), extent=(-0.5, steps.size - 0.5, -0.5, num_layers - 0.5))
    _step_ticks(ax, steps)
    ax.set_yticks(_integer_ticks(num_layers, most=12))
    ax.set_title(f"units that {kind}, per layer (total {int(counts.sum())})")
    ax.set_xlabel(STEP_LABEL)
    ax.set_ylabel("layer")
    bar = fig.colorbar(image, ax=ax, pad=0.01)
    bar.ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    bar.set_label("units per logging interval" if group == 1 else f"units per {group} logging intervals")
  if fields:
    for ax, field in zip(axes[1], fields):
      _event_histogram(ax, events, field)
    if len(fields) == 1:
      axes[1, 1].set_visible(False)
  fig.suptitle("FFN units that died and revived")
  return _save(fig, path)


def coarsen_columns(steps: np.ndarray, counts: np.ndarray, most: int) -> tuple[np.ndarray, np.ndarray, int]:
  """Sums groups of consecutive columns so at most `most` remain; returns (last step of each group, sums, group size).

  A heat map with more columns than pixels would drop single events when drawn.
  """
  group = max(1, math.ceil(steps.size / most))
  if group == 1:
    return steps, counts, 1
  starts = np.arange(0, steps.size, group)
  ends = np.minimum(starts + group, steps.size) - 1
  return steps[ends], np.add.reduceat(counts, starts, axis=1), group


_FIELD_LABELS = {"frequency": "firing frequency of the unit", "adam_v": "Adam v̂ of the unit's weights"}


def _event_histogram(ax, events: Sequence[Mapping], field: str) -> None:
  by_kind = {kind: _finite([e[field] for e in events if e.get("event") == kind and field in e])
             for kind in ("died", "revived")}
  every = np.concatenate(list(by_kind.values()))
  every = every[np.isfinite(every)]
  # v̂ spans orders of magnitude, so it gets logarithmic bins whenever it can.
  log_scale = field == "adam_v" and every.size > 0 and bool(np.all(every > 0))
  bins = _histogram_bins(every, log_scale)
  for kind, color in (("died", DIED_COLOR), ("revived", REVIVED_COLOR)):
    values = by_kind[kind][np.isfinite(by_kind[kind])]
    if values.size:
      ax.hist(values, bins=bins, color=color, alpha=0.5, histtype="stepfilled", edgecolor=color,
              label=f"at {'death' if kind == 'died' else 'revival'} ({values.size})")
  if log_scale:
    _log_scale(ax, "x")
  ax.set_xlabel(_FIELD_LABELS.get(field, field))
  ax.set_ylabel("units")
  ax.yaxis.set_major_locator(MaxNLocator(integer=True))
  ax.set_title(f"{field} at death vs revival")
  ax.legend(fontsize="small")
  ax.grid(alpha=0.3)


def _histogram_bins(values: np.ndarray, log_scale: bool, count: int = 30) -> np.ndarray:
  if values.size == 0:
    return np.linspace(0.0, 1.0, count + 1)
  low, high = float(values.min()), float(values.max())
  if log_scale:
    low, high = (low / 10, high * 10) if low == high else (low, high)
    return np.geomspace(low, high, count + 1)
  low, high = (low - 0.5, high + 0.5) if low == high else (low, high)
  return np.linspace(low, high, count + 1)


# --------------------------------------------------------------------------
# Scalars over training.


def loss_figure(train: Series | None, evaluation: Series | None, path: str, target_entropy: float | None = None) -> str:
  """Train and held-out loss; the target's entropy, when known, is the floor the loss can reach."""
  fig, axes = _new_figure(1, panel_width=7.0)
  ax = axes[0, 0]
  if train is not None:
    ax.plot(train[0], _finite(train[1]), color="tab:blue", linewidth=1.4, marker=_marker(train[0].size),
            markersize=3, label="train loss")
  if evaluation is not None and evaluation[0].size:
    ax.plot(evaluation[0], _finite(evaluation[1]), color="tab:orange", linewidth=1.8, marker="s", markersize=5,
            label="held-out loss")
  if target_entropy is not None and math.isfinite(target_entropy):
    ax.axhline(target_entropy, color="gray", linestyle="--", linewidth=1.2,
               label=f"target entropy {target_entropy:.3f} (the floor)")
  ax.set_xlabel(STEP_LABEL)
  ax.set_ylabel("cross-entropy (nats per token)")
  ax.set_title("Loss")
  ax.grid(alpha=0.3)
  ax.legend()
  return _save(fig, path)


def entropy_figure(model: Series | None, target: Series | None, kl: Series | None, path: str) -> str:
  """Entropy of the model's next-token distribution against the target's; KL(target ‖ model) beside it."""
  fig, axes = _new_figure(2 if kl is not None else 1, panel_width=5.5)
  ax = axes[0, 0]
  for data, label, color in ((model, "model H(q)", "tab:blue"), (target, "target H(p)", "tab:gray")):
    if data is not None:
      ax.plot(data[0], _finite(data[1]), color=color, marker=_marker(data[0].size), markersize=3, label=label)
  ax.set_xlabel(STEP_LABEL)
  ax.set_ylabel("entropy (nats per token)")
  ax.set_title("Next-token entropy: model vs target")
  ax.grid(alpha=0.3)
  ax.legend()
  if kl is not None:
    ax = axes[0, 1]
    ax.plot(kl[0], _finite(kl[1]), color="tab:purple", marker=_marker(kl[0].size), markersize=3)
    if _any_positive(kl[1]):
      _log_scale(ax)
    ax.set_xlabel(STEP_LABEL)
    ax.set_ylabel("KL(p ‖ q) (nats per token)")
    ax.set_title("KL from target to model")
    ax.grid(alpha=0.3, which="both")
  return _save(fig, path)


def sequence_entropy_figure(model: Series, target: Series, kl: Series | None, path: str) -> str:
  """Whole-sequence H(Q) and H(P) over training; beside it their difference, with −KL(P ‖ Q) for scale.

  The difference spans decades (nats at the start, hundredths at the end) and changes sign, so it is drawn on
  a symmetric log axis, linear within ±0.01 nats.
  """
  fig, axes = _new_figure(2, panel_width=5.5)
  ax = axes[0, 0]
  for data, label, color in ((model, "model H(Q)", "tab:blue"), (target, "target H(P)", "tab:gray")):
    ax.plot(data[0], _finite(data[1]), color=color, marker=_marker(data[0].size), markersize=3, label=label)
  ax.set_xlabel(STEP_LABEL)
  ax.set_ylabel("entropy of the predicted tokens given x_0 (nats)")
  ax.set_title("Whole-sequence entropy: model vs target")
  ax.grid(alpha=0.3)
  ax.legend()
  ax = axes[0, 1]
  steps = np.intersect1d(model[0], target[0])
  gap = _finite(model[1][np.isin(model[0], steps)]) - _finite(target[1][np.isin(target[0], steps)])
  ax.plot(steps, gap, color="tab:blue", marker=_marker(steps.size), markersize=3, label="H(Q) − H(P)")
  if kl is not None:
    ax.plot(kl[0], -_finite(kl[1]), color="tab:purple", linestyle="--", marker=_marker(kl[0].size), markersize=3,
            label="−KL(P ‖ Q)")
  ax.axhline(0.0, color="gray", linewidth=0.9)
  ax.set_yscale("symlog", linthresh=0.01)
  ax.set_xlabel(STEP_LABEL)
  ax.set_ylabel("nats per sequence (symmetric log)")
  ax.set_title("Entropy gap over training")
  ax.grid(alpha=0.3, which="both")
  ax.legend()
  return _save(fig, path)


def norm_growth_figure(norm: Series, cos_step: Series | None, alignment: Series | None, path: str,
                       exponent: float | None = None) -> str:
  """‖θ_t‖ on log-log axes with a √t guide; step-to-step cosine and update alignment beside it."""
  fig, axes = _new_figure(1 + (cos_step is not None) + (alignment is not None), panel_width=4.6)
  axes = list(axes[0])
  ax = axes.pop(0)
  positive = (norm[0] > 0) & np.isfinite(norm[1]) & (norm[1] > 0)  # log axes cannot show step 0
  steps, values = norm[0][positive], norm[1][positive]
  label = "‖θ_t‖" if exponent is None or not math.isfinite(exponent) else f"‖θ_t‖ (fit: ∝ t^{exponent:.2f})"
  ax.plot(steps, values, color="tab:blue", marker=_marker(steps.size), markersize=3, label=label)
  if steps.size:
    # The guide passes through the middle point so it crosses the data rather than hanging off one end.
    middle = steps.size // 2
    guide = values[middle] * np.sqrt(steps / steps[middle])
    ax.plot(steps, guide, color="gray", linestyle="--", label="∝ √t guide")
    _log_scale(ax, "x")
    _log_scale(ax, "y")
  ax.set_xlabel(f"{STEP_LABEL} (log)")
  ax.set_ylabel("parameter norm ‖θ‖₂ (log)")
  ax.set_title("Parameter norm growth")
  ax.grid(alpha=0.3, which="both")
  ax.legend(fontsize="small")
  if cos_step is not None:
    ax = axes.pop(0)
    # cos(θ_t, θ_t+1) sits a hair below 1; its distance from 1 is what moves.
    ax.plot(cos_step[0], 1.0 - _finite(cos_step[1]), color="tab:green", marker=_marker(cos_step[0].size),
            markersize=3)
    if _any_positive(1.0 - _finite(cos_step[1])):
      _log_scale(ax)
    ax.set_xlabel(STEP_LABEL)
    ax.set_ylabel("1 − cos(θ_t, θ_t+1)")
    ax.set_title("Direction change per step")
    ax.grid(alpha=0.3, which="both")
  if alignment is not None:
    ax = axes.pop(0)
    ax.plot(alignment[0], _finite(alignment[1]), color="tab:red", marker=_marker(alignment[0].size), markersize=3)
    ax.axhline(0.0, color="gray", linewidth=0.8)
    ax.set_xlabel(STEP_LABEL)
    ax.set_ylabel("cos(δ_t, θ_t)")
    ax.set_title("Update alignment with θ")
    ax.grid(alpha=0.3)
  return _save(fig, path)


# --------------------------------------------------------------------------
# Several runs.


def runs_by_layer(per_run: Mapping[str, np.ndarray], title: str, ylabel: str, path: str, log_y: bool = False) -> str:
  """One line per run of a per-layer value (e.g. last-N mean activity); x = layer index."""
  fig, axes = _new_figure(1, panel_width=7.0)
  ax = axes[0, 0]
  colors = _sequential_colors(len(per_run), RUN_CMAP)
  deepest = 0
  for color, (name, values) in zip(colors, per_run.items()):
    values = _finite(values)
    deepest = max(deepest, values.size)
    ax.plot(np.arange(values.size), values, color=color, marker="o", markersize=4, linewidth=1.6, label=name)
  if log_y and any(_any_positive(values) for values in per_run.values()):
    _log_scale(ax)
  ax.set_xticks(_integer_ticks(max(deepest, 1), most=16))
  ax.set_xlabel("layer (0 = first)")
  ax.set_ylabel(ylabel)
  ax.set_title(title)
  ax.grid(alpha=0.3)
  ax.legend(title="run", fontsize="small")
  return _save(fig, path)


def scalar_curves(curves: Mapping[str, Series], title: str, ylabel: str, path: str, legend_title: str | None = None,
                  ordered: bool = False, log_y: bool = False) -> str:
  """One line per named scalar series over training.

  `ordered` colours the lines along a sequential map, for series that form a
  ladder (runs of growing size); otherwise they get distinct categorical colours.
  """
  fig, axes = _new_figure(1, panel_width=7.0)
  ax = axes[0, 0]
  colors = (_sequential_colors(len(curves), RUN_CMAP) if ordered
            else [colormaps["tab10"](i % 10) for i in range(len(curves))])
  for color, (label, (steps, values)) in zip(colors, curves.items()):
    ax.plot(steps, _finite(values), color=color, linewidth=1.4, marker=_marker(steps.size), markersize=3, label=label)
  if log_y and any(_any_positive(values) for _, values in curves.values()):
    _log_scale(ax)
  ax.set_xlabel(STEP_LABEL)
  ax.set_ylabel(ylabel)
  ax.set_title(title)
  ax.grid(alpha=0.3)
  if len(curves) > 1 or legend_title:
    ax.legend(title=legend_title, fontsize="small")
  return _save(fig, path)


# --------------------------------------------------------------------------
# Against model size: one point per model, error bars over seed replicas.


@dataclasses.dataclass(frozen=True)
class SizeSeries:
  """Points against parameter count: x [P], y [P], one-standard-error bars [P] (NaN = none), their style.

  `labels`, when given, names each point beside it (model names on a ladder).
  `linestyle="none"` leaves points unconnected (models that are not a ladder).
  """
  label: str
  x: np.ndarray
  y: np.ndarray
  err: np.ndarray
  color: str = "tab:blue"
  marker: str = "o"
  linestyle: str = "-"
  labels: tuple[str, ...] | None = None


@dataclasses.dataclass(frozen=True)
class SizePanel:
  title: str
  ylabel: str
  series: Sequence[SizeSeries]
  zero_line: bool = False  # a reference line at y = 0 (a difference)
  log_y: bool = False
  symlog_threshold: float | None = None  # a symmetric log y axis, linear within ± this (signed values over decades)


def parameter_label(count: float) -> str:
  """ "800", "50k", "1.5M": a parameter count short enough for a crowded axis."""
  for scale, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
    if count >= scale:
      return f"{count / scale:g}{suffix}"
  return f"{count:g}"


def parameter_ticks(low: float, high: float) -> list[float]:
  """1-2-5 steps per decade covering [low, high] (ticks only at these: labels never overprint)."""
  ticks = []
  for exponent in range(int(math.floor(math.log10(low))), int(math.ceil(math.log10(high))) + 1):
    ticks += [m * 10.0**exponent for m in (1, 2, 5) if low <= m * 10.0**exponent <= high]
  return ticks


def _parameter_axis(ax, counts: np.ndarray) -> None:
  """A log x axis of parameter counts, ticked 1-2-5 and labelled 20k, 50k, 1M."""
  counts = counts[np.isfinite(counts) & (counts > 0)]
  ax.set_xscale("log")
  if counts.size:
    low, high = counts.min() / 1.25, counts.max() * 1.25
    ax.set_xlim(low, high)
    ticks = parameter_ticks(low, high)
    if len(ticks) < 2:  # a narrow range: name the points themselves
      ticks = sorted({float(c) for c in counts})
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: parameter_label(value)))
  ax.xaxis.set_minor_formatter(NullFormatter())


def against_size(panels: Sequence[SizePanel], title: str, path: str) -> str:
  """Panels side by side, parameter count on a log x axis, values with error bars."""
  fig, axes = _new_figure(len(panels), panel_width=5.6, height=4.4)
  for ax, panel in zip(axes[0], panels):
    drawn = False
    for s in panel.series:
      x, y = np.asarray(s.x, np.float64), _finite(s.y)
      keep = np.isfinite(y) & (x > 0)
      if not keep.any():
        continue
      err = np.nan_to_num(_finite(s.err)[keep], nan=0.0)
      ax.errorbar(x[keep], y[keep], yerr=err, color=s.color, marker=s.marker, markersize=5, linestyle=s.linestyle,
                  linewidth=1.4, capsize=3, label=s.label)
      drawn = True
      if s.labels is not None:
        for xi, yi, text in zip(x[keep], y[keep], np.asarray(s.labels, dtype=object)[keep]):
          ax.annotate(str(text), (xi, yi), textcoords="offset points", xytext=(4, 5), fontsize="x-small",
                      color=s.color)
    if panel.zero_line:
      ax.axhline(0.0, color="gray", linewidth=0.9)
    ax.margins(y=0.12)  # room for the names written above the points
    if drawn:
      _parameter_axis(ax, np.concatenate([np.asarray(s.x, np.float64) for s in panel.series]))
      if panel.log_y and any(_any_positive(s.y) for s in panel.series):
        _log_scale(ax)
      elif panel.symlog_threshold:
        ax.set_yscale("symlog", linthresh=panel.symlog_threshold)
      # Below the axes: points on a ladder fill every corner the legend could take.
      ax.legend(fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, frameon=False)
    ax.set_xlabel("parameters (log)")
    ax.set_ylabel(_wrap(panel.ylabel, 40))
    ax.set_title(_wrap(panel.title, 48))
    ax.grid(alpha=0.3, which="both")
  fig.suptitle(title)
  return _save(fig, path)
