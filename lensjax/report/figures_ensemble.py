"""A seed ensemble over training: every member as a thin line, their mean with its 95% Student-t band."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from lensjax.report.ensemble import MemberBand
from lensjax.report.plotting import STEP_LABEL, finite, marker_for, new_figure, save, wrap

# One colour for every member: which line is which seed carries no meaning, and a legend of N colours would hide it.
MEMBER_COLOR = "tab:gray"
MEAN_COLOR = "black"
BAND_COLOR = "tab:blue"


def band_label(num_members: int) -> str:
  if num_members < 2:
    return "one member: no interval"
  return f"95% interval of the mean (Student t, {num_members - 1} df)"


def ensemble_curves(panels: Sequence[tuple[str, MemberBand]], ylabel: str, title: str, path: str) -> str:
  """One panel per (title, band): member curves, the mean over members and, with ≥2 members, its t band."""
  fig, axes = new_figure(len(panels), panel_width=5.6, height=4.2)
  for ax, (panel_title, band) in zip(axes[0], panels):
    num_members = len(band.members)
    for number, (steps, values) in enumerate(band.members):
      label = ("members, one line each" if number == 0 else None) if num_members > 1 else "the member"
      alone = num_members == 1  # a lone member is the whole figure: drawn as plainly as a run's loss
      ax.plot(steps, finite(values), color="tab:blue" if alone else MEMBER_COLOR, linewidth=1.4 if alone else 0.8,
              alpha=0.8, marker=marker_for(steps.size) if steps.size < 3 or alone else "", markersize=3, label=label)
    if num_members > 1:
      low, high = finite(band.mean - band.half_width), finite(band.mean + band.half_width)
      shown = np.isfinite(low) & np.isfinite(high)
      ax.fill_between(band.steps, np.where(shown, low, np.nan), np.where(shown, high, np.nan), color=BAND_COLOR,
                      alpha=0.25, linewidth=0, label=band_label(num_members))
      ax.plot(band.steps, finite(band.mean), color=MEAN_COLOR, linewidth=1.8, marker=marker_for(band.steps.size),
              markersize=3, label=f"mean of {num_members} members")
    ax.set_xlabel(STEP_LABEL)
    ax.set_ylabel(ylabel)
    ax.set_title(panel_title if num_members > 1 else f"{panel_title} ({band_label(1)})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
  fig.suptitle(wrap(title, 90))
  return save(fig, path)
