"""Against model size: one point per model, parameter count on a log x axis, error bars over seed replicas."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np
from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

from lensjax.report.plotting import any_positive, finite, log_scale, new_figure, save, wrap


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
  fig, axes = new_figure(len(panels), panel_width=5.6, height=4.4)
  for ax, panel in zip(axes[0], panels):
    drawn = False
    for s in panel.series:
      x, y = np.asarray(s.x, np.float64), finite(s.y)
      keep = np.isfinite(y) & (x > 0)
      if not keep.any():
        continue
      err = np.nan_to_num(finite(s.err)[keep], nan=0.0)
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
      if panel.log_y and any(any_positive(s.y) for s in panel.series):
        log_scale(ax)
      elif panel.symlog_threshold:
        ax.set_yscale("symlog", linthresh=panel.symlog_threshold)
      # Below the axes: points on a ladder fill every corner the legend could take.
      ax.legend(fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, frameon=False)
    ax.set_xlabel("parameters (log)")
    ax.set_ylabel(wrap(panel.ylabel, 40))
    ax.set_title(wrap(panel.title, 48))
    ax.grid(alpha=0.3, which="both")
  fig.suptitle(wrap(title, 40 + 45 * len(panels)))
  return save(fig, path)
