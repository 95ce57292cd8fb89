"""FFN units that died and revived (neuron_events.jsonl), per layer over training."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.ticker import MaxNLocator

from lensjax.report.plotting import STEP_LABEL, finite, integer_ticks, log_scale, new_figure, save, step_ticks

DIED_COLOR, REVIVED_COLOR = "tab:red", "tab:blue"
MAX_EVENT_COLUMNS = 200
_FIELD_LABELS = {"frequency": "firing frequency of the unit", "adam_v": "Adam v̂ of the unit's weights"}
_FIELD_RANGES = {"frequency": (0.0, 1.0)}  # a histogram's bins never leave the values' possible range


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


def neuron_events_figure(events: Sequence[Mapping], logging_steps: np.ndarray, num_layers: int, path: str) -> str:
  """Died and revived units per layer over training; below, `frequency` and `adam_v` at death vs revival."""
  fields = [f for f in ("frequency", "adam_v") if any(f in e for e in events)]
  fig, axes = new_figure(2, panel_width=5.5, height=3.6, rows=2 if fields else 1)
  # Heat maps rather than one line per layer: a deep model's many all-zero lines would hide the few that are not.
  for ax, kind, cmap in zip(axes[0], ("died", "revived"), ("Reds", "Blues")):
    counts = event_counts(events, kind, logging_steps, num_layers)
    steps, binned, group = coarsen_columns(logging_steps, counts, MAX_EVENT_COLUMNS)
    image = ax.imshow(binned, aspect="auto", origin="lower", interpolation="nearest", cmap=cmap, vmin=0,
                      vmax=max(1, int(binned.max())), extent=(-0.5, steps.size - 0.5, -0.5, num_layers - 0.5))
    step_ticks(ax, steps)
    ax.set_yticks(integer_ticks(num_layers, most=12))
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
  return save(fig, path)


def _event_histogram(ax, events: Sequence[Mapping], field: str) -> None:
  by_kind = {kind: finite([e[field] for e in events if e.get("event") == kind and field in e])
             for kind in ("died", "revived")}
  every = np.concatenate(list(by_kind.values()))
  every = every[np.isfinite(every)]
  # v̂ spans orders of magnitude, so it gets logarithmic bins whenever it can.
  logarithmic = field == "adam_v" and every.size > 0 and bool(np.all(every > 0))
  bins = _histogram_bins(every, logarithmic, _FIELD_RANGES.get(field))
  for kind, color in (("died", DIED_COLOR), ("revived", REVIVED_COLOR)):
    values = by_kind[kind][np.isfinite(by_kind[kind])]
    if values.size:
      ax.hist(values, bins=bins, color=color, alpha=0.5, histtype="stepfilled", edgecolor=color,
              label=f"at {'death' if kind == 'died' else 'revival'} ({values.size})")
  if logarithmic:
    log_scale(ax, "x")
  ax.set_xlabel(_FIELD_LABELS.get(field, field))
  ax.set_ylabel("units")
  ax.yaxis.set_major_locator(MaxNLocator(integer=True))
  ax.set_title(f"{field} at death vs revival")
  ax.legend(fontsize="small")
  ax.grid(alpha=0.3)


def _histogram_bins(values: np.ndarray, logarithmic: bool, bounds: tuple[float, float] | None = None,
                    count: int = 30) -> np.ndarray:
  """`count` bins over the values' span; one value alone gets a narrow span around it, inside `bounds` (the
  quantity's possible range: a firing frequency of 0 is drawn over [0, 0.05], not over −0.5 to 0.5)."""
  if values.size == 0:
    return np.linspace(*(bounds or (0.0, 1.0)), count + 1)
  low, high = float(values.min()), float(values.max())
  if logarithmic:
    low, high = (low / 10, high * 10) if low == high else (low, high)
    return np.geomspace(low, high, count + 1)
  if low == high:
    half = max(abs(low) * 0.05, 0.025)
    low, high = low - half, high + half
    if bounds is not None:
      low, high = max(low, bounds[0]), min(high, bounds[1])
      low, high = (bounds[0], bounds[0] + 2 * half) if low == bounds[0] else (
          (bounds[1] - 2 * half, bounds[1]) if high == bounds[1] else (low, high))
  return np.linspace(low, high, count + 1)
