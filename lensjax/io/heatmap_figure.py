"""Heat maps as figures people read: axes with round ticks, a colour bar with units, a range from the data.

Drawn with matplotlib's object API on an Agg canvas (no pyplot, so no global figure state): safe to call from
the run logger's figure thread. Pure: numbers in, PNG bytes out.
"""

from __future__ import annotations

import io

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

SIZE_INCHES, DPI = (6.4, 3.4), 100  # 640 x 340 pixels: readable in a TensorBoard card


def colour_range(matrix: np.ndarray) -> tuple[float, float]:
  """(low, high) over the finite entries; a constant (or empty) matrix gets a unit-wide range around its value,
  so that it reads as one colour in the middle of the bar instead of an arbitrary end of it."""
  finite = matrix[np.isfinite(matrix)]
  if not finite.size:
    return 0.0, 1.0
  low, high = float(finite.min()), float(finite.max())
  if high - low < 1e-12:
    return low - 0.5, high + 0.5
  return low, high


def heatmap_figure_png(matrix_RxC, title: str, row_label: str, column_label: str, units: str,
                       column_values=None) -> bytes:
  """A PNG of `matrix_RxC` (rows bottom to top), coloured over the data's own range.

  `column_values`: the value of each column (the logging steps of a history map) for the x ticks; default
  0..C-1. Non-finite entries are drawn grey.
  """
  matrix = np.asarray(matrix_RxC, np.float64)
  rows, columns = matrix.shape
  low, high = colour_range(matrix)
  figure = Figure(figsize=SIZE_INCHES, dpi=DPI, layout="constrained")
  FigureCanvasAgg(figure)
  axes = figure.add_subplot()
  if column_values is None:
    extent = (-0.5, columns - 0.5, -0.5, rows - 0.5)
  else:
    values = np.asarray(column_values, np.float64)
    half = (values[-1] - values[0]) / max(columns - 1, 1) / 2 or 0.5  # half a column, in column units
    extent = (values[0] - half, values[-1] + half, -0.5, rows - 0.5)
  colours = axes.imshow(np.ma.masked_invalid(matrix), origin="lower", aspect="auto", interpolation="nearest",
                        extent=extent, vmin=low, vmax=high,
                        cmap=colormaps["viridis"].with_extremes(bad="0.75"))
  axes.xaxis.set_major_locator(MaxNLocator(nbins=8, integer=True))  # round numbers, not every column
  axes.yaxis.set_major_locator(MaxNLocator(nbins=min(rows, 12), integer=True))
  axes.set_xlabel(column_label)
  axes.set_ylabel(row_label)
  axes.set_title(title, fontsize="medium")
  figure.colorbar(colours, ax=axes, label=units)
  buffer = io.BytesIO()
  figure.savefig(buffer, format="png")
  return buffer.getvalue()
