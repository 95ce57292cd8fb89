"""The page's seed-ensemble section: per setting, every scalar metric over its members, and their losses drawn.

The groups and their numbers come from lensjax/report/ensemble.py; this
module only writes them out (a markdown table per setting) and draws the
loss of every member with the mean's 95% t band (figures_ensemble.py).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from lensjax.report import ensemble, figures_ensemble
from lensjax.report.ensemble import EnsembleGroup
from lensjax.report.intervals import MeanInterval, t_critical
from lensjax.report.page import MISSING, FigureEntry, figure_entry, format_number, markdown_table
from lensjax.report.runs import RunRecord

LOSS_METRICS = (("train/loss", "Train loss"), ("eval/loss", "Held-out loss"))
LOSS_UNIT = "cross-entropy (nats per token)"
ONE_MEMBER = "one member: no interval"
DIGITS = 4


def ensemble_figures(group: EnsembleGroup, runs: Sequence[RunRecord], path: str) -> list[FigureEntry]:
  """The group's train (and held-out) loss: every member, their mean and its 95% t band."""
  members = [runs[i] for i in group.members]
  panels = [(title, band) for name, title in LOSS_METRICS if (band := ensemble.member_band(members, name)) is not None]
  if not panels:
    return []
  n = len(members)
  path = figures_ensemble.ensemble_curves(panels, LOSS_UNIT, f"{group.label}: loss of {n} member"
                                          + ("s" if n > 1 else ""), path)
  spread = (f"the black line is their mean at each step every member logged, the band its 95% interval "
            f"(± t_{{0.975, {n - 1}}} · s/√{n}, t = {t_critical(n):.3f}, s the standard deviation over members)"
            if n > 1 else "a single member has no spread to draw an interval from")
  return [figure_entry(path, f"{group.label} losses", f"Each thin line is one member; {spread}.")]


def interval_text(interval: MeanInterval) -> str:
  """ "[0.7032, 1.697] (± 0.4968)"; the one-member sentence; "–" when no member has the value."""
  if interval.n == 0:
    return MISSING
  if interval.n == 1:
    return ONE_MEMBER
  return (f"[{format_number(interval.low, DIGITS)}, {format_number(interval.high, DIGITS)}] "
          f"(± {format_number(interval.half_width, DIGITS)})")


def summary_table(group: EnsembleGroup) -> str:
  """One row per scalar metric: n, mean, 95% t interval, standard deviation, range over members."""
  header = ["metric", "n", "mean", "95% interval of the mean (Student t, n − 1 df)", "std over members",
            "range (min – max)"]
  rows = []
  for metric in group.metrics:
    i = metric.interval
    spread = "–" if i.n == 0 else f"{format_number(i.minimum, DIGITS)} – {format_number(i.maximum, DIGITS)}"
    rows.append([f"`{metric.name}`", str(i.n), format_number(i.mean, DIGITS), interval_text(i),
                 format_number(i.std, 3), spread])
  return markdown_table(header, rows)


def intro(groups: Sequence[EnsembleGroup], last_n: int) -> str:
  sizes_given = sorted({len(g.members) for g in groups if len(g.members) > 1})
  critical = "; ".join(f"t = {t_critical(n):.3f} for n = {n}" for n in sizes_given)
  return ("Runs that are replicas of one setting (configs equal but for their seeds: `train.seed`, `data.seed`, "
          "`data.order_seed`) are summarised together; a per-member `optim.lr` or `optim.weight_decay`, like any "
          f"other key, makes a separate setting. Each member contributes its mean of the last {last_n} logged values "
          "of a metric; over the n members the table gives their mean m, the 95% confidence interval of the mean "
          "m ± t_{0.975, n−1} · s/√n (Student's t with n − 1 degrees of freedom, s the sample standard deviation"
          + (f"; here {critical}" if critical else "") + "), s, n and the range. "
          "With one member there is no interval.\n")


def ensemble_markdown(groups: Sequence[EnsembleGroup], figures: Sequence[Sequence[FigureEntry]], last_n: int) -> str:
  """The section: what the numbers are, then per setting its members, its table and its loss figure."""
  parts = ["## Seed ensembles\n", intro(groups, last_n)]
  for group, entries in zip(groups, figures):
    n = len(group.members)
    parts.append(f"### `{group.label}`\n")
    members = ", ".join(f"`{name}`" for name in group.names)
    parts.append(f"{n} member{'s' if n > 1 else ''}: {members}." + ("" if n > 1 else f" {ONE_MEMBER.capitalize()}.")
                 + "\n")
    parts.append(summary_table(group) if group.metrics else "No metric was logged by every member.\n")
    for entry in entries:
      parts.append(f"![{entry.title}]({entry.file})\n\n*{entry.caption}*\n")
  return "\n".join(parts)


def figure_path(out_dir: str, prefix: str) -> str:
  return os.path.join(out_dir, f"ensemble_{prefix}_loss.png")
