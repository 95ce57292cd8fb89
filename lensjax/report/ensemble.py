"""Seed ensembles on the page: replicas of one setting grouped, each scalar metric summarised with a t interval.

The groups are those of `sizes.seed_groups`: runs whose configs are equal
once their seeds are dropped (`sizes.SEED_KEYS`), so the members of an lr ×
wd grid fall into one group per (optim.lr, optim.weight_decay) setting. Each
member contributes the mean of its last N logged values of a metric (the
number the run tables use); a group's summary of that metric is the mean over
members with its 95% interval from Student's t with n − 1 degrees of freedom
(lensjax/report/intervals.py), the standard deviation, n and the range. One
member has no interval. Everything here is a pure function of read-back runs.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence

import numpy as np

from lensjax.analysis.records import series
from lensjax.report import runs as runs_lib
from lensjax.report import sizes
from lensjax.report.intervals import MeanInterval, column_intervals, mean_interval
from lensjax.report.plotting import Series
from lensjax.report.runs import RunRecord

# Shown first, in this order; the other scalars follow alphabetically.
FIRST_METRICS = ("train/loss", "eval/loss", "entropy/model_token", "entropy/target_token", "entropy/kl_token")
# A label names the setting by the keys in which the groups differ, when they differ in this few.
MAX_SETTING_KEYS = 4
_NOT_A_SETTING = ("logging.", "checkpoint.")


@dataclasses.dataclass(frozen=True)
class MetricSummary:
  """One metric over a group's members: each member's last-N mean (member order) and their t interval."""
  name: str
  member_values: tuple[float, ...]
  interval: MeanInterval


@dataclasses.dataclass(frozen=True)
class EnsembleGroup:
  """The replicas of one setting: their run indices and names, the setting's distinguishing keys, the summaries."""
  label: str
  members: tuple[int, ...]  # indices into the runs given to the report
  names: tuple[str, ...]
  setting: dict[str, str]  # dotted key -> value where the groups' configs differ (empty for one group)
  metrics: tuple[MetricSummary, ...]


@dataclasses.dataclass(frozen=True)
class MemberBand:
  """A metric of every member over steps, and at the steps all of them logged, their mean and t half-width."""
  members: tuple[Series, ...]
  steps: np.ndarray  # [S] steps every member logged
  mean: np.ndarray  # [S]
  half_width: np.ndarray  # [S] NaN where fewer than 2 members have a finite value


def summarised(groups: Sequence[EnsembleGroup], runs: Sequence[RunRecord]) -> list[EnsembleGroup]:
  """The groups the page summarises: two or more replicas, or members of an ensemble directory (even one)."""
  return [g for g in groups if len(g.members) > 1 or any(runs[i].ensemble for i in g.members)]


def scalar_metric_names(runs: Sequence[RunRecord]) -> list[str]:
  """Metrics every run logged that are one number per step (per-layer and per-head families left out)."""
  common = frozenset.intersection(*(run.names for run in runs)) if runs else frozenset()
  scalars = {name for name in common if "/layer_" not in name}
  return [name for name in FIRST_METRICS if name in scalars] + sorted(scalars - set(FIRST_METRICS))


def summarize_metric(runs: Sequence[RunRecord], name: str, last_n: int) -> MetricSummary:
  values = tuple(runs_lib.last_n_mean(run.records, name, last_n) for run in runs)
  return MetricSummary(name, values, mean_interval(values))


def flatten(config: dict, prefix: str = "") -> dict[str, object]:
  """{"optim": {"lr": 1e-3}} -> {"optim.lr": 1e-3}."""
  flat = {}
  for key, value in config.items():
    if isinstance(value, dict):
      flat.update(flatten(value, f"{prefix}{key}."))
    else:
      flat[prefix + key] = value
  return flat


def setting_keys(configs: Sequence[dict]) -> list[str]:
  """The dotted keys (seeds, logging and checkpointing aside) whose values differ among `configs`."""
  flat = [flatten(c) for c in configs if c]
  keys = sorted({k for f in flat for k in f})
  distinct = lambda key: len({json.dumps(f.get(key), sort_keys=True, default=str) for f in flat}) > 1
  return [k for k in keys if k not in sizes.SEED_KEYS and not k.startswith(_NOT_A_SETTING) and distinct(k)]


def ensemble_groups(runs: Sequence[RunRecord], last_n: int) -> list[EnsembleGroup]:
  """One group per setting (`sizes.seed_groups`, in the order given), every common scalar metric summarised."""
  groups = sizes.seed_groups(runs)
  keys = setting_keys([runs[group[0]].config for group in groups])
  keys = keys if len(keys) <= MAX_SETTING_KEYS else []
  out = []
  for group in groups:
    members = [runs[i] for i in group]
    flat = flatten(members[0].config)
    setting = {k: str(flat[k]) for k in keys if k in flat}
    label = sizes.group_label([run.name for run in members])
    if setting:
      label += " (" + ", ".join(f"{k} = {v}" for k, v in setting.items()) + ")"
    out.append(EnsembleGroup(label=label, members=tuple(group), names=tuple(run.name for run in members),
                             setting=setting,
                             metrics=tuple(summarize_metric(members, name, last_n)
                                           for name in scalar_metric_names(members))))
  return out


def member_band(runs: Sequence[RunRecord], name: str) -> MemberBand | None:
  """`name` of every member that logged it, with the mean and 95% t band at the steps all of them logged."""
  curves = tuple(series(run.records, name) for run in runs if runs_lib.has_metric(run, name))
  if not curves:
    return None
  steps = curves[0][0]
  for curve_steps, _ in curves[1:]:
    steps = np.intersect1d(steps, curve_steps)
  values_NxS = np.stack([values[np.searchsorted(curve_steps, steps)] for curve_steps, values in curves])
  mean, half = column_intervals(values_NxS)
  return MemberBand(curves, steps, mean, half)
