"""What every report figure shares: the Agg backend, colour maps, log axes, ticks, saving.

Figures are built on `matplotlib.figure.Figure` with the Agg backend, never
through pyplot's global state, so they draw headless and leak no windows.
Depth is always the same sequential colour map (dark = first layer, light =
last), so one figure can be read against another; runs get another map.
"""

from __future__ import annotations

import math
import textwrap

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
from matplotlib import colormaps  # noqa: E402
from matplotlib.cm import ScalarMappable  # noqa: E402
from matplotlib.colors import BoundaryNorm, ListedColormap, LogNorm  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import LogFormatter, MaxNLocator  # noqa: E402

DPI = 120
STEP_LABEL = "training step"
LAYER_CMAP = "viridis"
RUN_CMAP = "plasma"
# Beyond this many lines a legend hides the data; a colour bar scales to any depth.
MAX_LEGEND_ENTRIES = 8
# Markers make sparse logs (a few logging steps) readable and clutter dense ones.
MAX_MARKED_POINTS = 40
# A heat map asked for log colours gets them only when its positive values span at least this ratio.
LOG_COLOR_MIN_SPAN = 100.0

Series = tuple[np.ndarray, np.ndarray]  # (steps [S], values [S])


def finite(values) -> np.ndarray:
  """`values` as float64 with every non-finite entry NaN (matplotlib leaves NaN out; inf breaks its limits)."""
  values = np.asarray(values, dtype=np.float64)
  return np.where(np.isfinite(values), values, np.nan)


def any_positive(values) -> bool:
  values = finite(values)
  return bool(np.any(values[np.isfinite(values)] > 0))


def sequential_colors(count: int, cmap: str) -> list:
  # Stop short of the map's palest end, which vanishes on a white background.
  return [colormaps[cmap](x) for x in np.linspace(0.0, 0.85, max(count, 1))][:count]


def wrap(text: str, width: int) -> str:
  """Breaks a long title or colour-bar label into lines instead of letting the figure edge cut it."""
  return "\n".join(textwrap.wrap(text, width=max(width, 12))) or text


class PlainLogFormatter(LogFormatter):
  """matplotlib's choice of which log ticks to label, written as 0.6 or 4e-05 instead of 6×10⁻¹."""

  def __call__(self, value: float, position=None) -> str:
    return f"{value:g}" if super().__call__(value, position) else ""


def log_scale(ax, axis: str = "y") -> None:
  """A log axis whose ticks read as plain numbers (0.5, 2, 1e-05) rather than 5×10⁻¹."""
  getattr(ax, f"set_{axis}scale")("log")
  target = ax.xaxis if axis == "x" else ax.yaxis
  target.set_major_formatter(PlainLogFormatter())
  target.set_minor_formatter(PlainLogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.5)))


def marker_for(num_points: int) -> str:
  return "o" if num_points <= MAX_MARKED_POINTS else ""


def save(fig: Figure, path: str, dpi: int = DPI) -> str:
  fig.savefig(path, dpi=dpi)
  return path


def new_figure(num_panels: int = 1, panel_width: float = 5.0, height: float = 4.0,
               rows: int = 1) -> tuple[Figure, np.ndarray]:
  fig = Figure(figsize=(panel_width * num_panels + 0.8, height * rows), layout="constrained")
  axes = fig.subplots(rows, num_panels, squeeze=False)
  return fig, axes


def depth_key(fig: Figure, axes, num_layers: int) -> None:
  """A legend "layer l" for shallow models, a colour bar of depth for deep ones."""
  if num_layers <= MAX_LEGEND_ENTRIES:
    axes[0].legend(title="layer", fontsize="small", loc="best")
    return
  bounds = np.arange(num_layers + 1) - 0.5
  colors = ListedColormap(sequential_colors(num_layers, LAYER_CMAP))
  mappable = ScalarMappable(norm=BoundaryNorm(bounds, colors.N), cmap=colors)
  bar = fig.colorbar(mappable, ax=list(axes), pad=0.01)
  bar.set_label("layer (0 = first)")
  bar.set_ticks(integer_ticks(num_layers))


def step_ticks(ax, steps: np.ndarray) -> None:
  """Ticks on round training steps (0, 100, 200, ...) of image columns laid out at 0, 1, 2, ...: each at the
  column position its step falls on (interpolated between the logged steps, which need not be evenly spaced)."""
  positions, labels = round_step_ticks(np.asarray(steps))
  if positions:
    ax.set_xticks(positions, labels)


def round_step_ticks(steps: np.ndarray, most: int = 8) -> tuple[list[float], list[str]]:
  """(column positions, labels) of at most about `most` round steps within the logged `steps` (increasing)."""
  if steps.size == 0:
    return [], []
  if steps.size == 1 or steps[0] == steps[-1]:
    return [0.0], [str(int(steps[0]))]
  values = MaxNLocator(nbins=most, integer=True, steps=[1, 2, 2.5, 5, 10]).tick_values(steps[0], steps[-1])
  values = [v for v in values if steps[0] <= v <= steps[-1]]
  columns = np.interp(values, steps, np.arange(steps.size))
  return [float(c) for c in columns], [f"{int(v):,}" for v in values]


def integer_ticks(count: int, most: int = 12) -> list[int]:
  """About `most` evenly spaced indices of 0..count-1, the first and the last always among them."""
  stride = max(1, math.ceil(count / most))
  ticks = list(range(0, count, stride))
  if ticks[-1] != count - 1:
    if len(ticks) > 1 and 2 * (count - 1 - ticks[-1]) < stride:
      ticks.pop()  # too close to the last index: their labels would overprint each other
    ticks.append(count - 1)
  return ticks


def log_color_norm(values: np.ndarray, min_span: float = LOG_COLOR_MIN_SPAN) -> LogNorm | None:
  """A log colour scale over the positive values when they span `min_span` or more; None (linear) otherwise."""
  positive = finite(values)
  positive = positive[np.isfinite(positive) & (positive > 0)]
  if positive.size == 0 or positive.max() < min_span * positive.min():
    return None
  return LogNorm(vmin=float(positive.min()), vmax=float(positive.max()))


def cos_distance(cos_S) -> np.ndarray:
  """1 − cos, floored for a log axis: cos(θ_t, θ_t+1) sits a hair below 1, and its distance from 1 is what moves."""
  return np.clip(1.0 - finite(cos_S), 1e-12, None)
