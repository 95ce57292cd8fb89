"""Runs against model size: H(Q) vs H(P), the entropy gap, KL and sparsity, one point per model, with error bars.

A sweep (`lensjax sweep`) leaves an `entropy.json` in each member's folder:
whole-sequence H(Q), H(P), KL(P ‖ Q) at the final step and the parameter
count. Runs whose configs differ only in their seeds (`SEED_KEYS`) are *seed
replicas* of one model (lensjax/report/ensemble.py summarises the same groups
with t intervals); they make one point, whose value is their mean and whose
error bar is one standard error:

    err = sqrt( s² / n  +  Σ_i e_i² / n² )

with s the sample standard deviation over the n replicas (0 when n = 1) and
e_i each replica's own standard error (0 for exact enumeration, the Monte
Carlo error otherwise). A standard error is not a 95% interval: over n seeds
that is t_{0.975, n−1} of them (4.30 for 3 seeds; lensjax/report/intervals.py).
Everything here is a pure function of the runs read back by `runs.read_run`,
so it can be tested on hand-written records.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Sequence

import numpy as np

from lensjax.analysis.records import family_layers
from lensjax.report import runs as runs_lib
from lensjax.report.runs import RunRecord

# Config sections that do not change what is trained: replicas may differ in them.
_NOT_THE_MODEL = ("logging", "checkpoint")
# The keys replicas of one setting differ in: every seed, and how many members trained beside it. A per-member
# optim.lr or optim.weight_decay (an ensemble's grid) is a separate setting, like any other key.
SEED_KEYS = ("train.seed", "data.seed", "data.order_seed", "train.members")
# A replica's own part of its name: `_s3`, `-seed3`, or the `/member_3` of an ensemble's member.
_SEED_SUFFIX = re.compile(r"(?:[_.-]?(?:s|seed)\d+|/member_\d+)$")
# Per-layer families drawn against size: (family, what the figure calls it, log y axis). The bypass ratio spans
# decades (the first layer adds to a bare embedding, later layers to a grown residual stream).
SIZE_FAMILIES = (("ffn/active_token", "FFN units active per token", False),
                 ("attn/bypass", "attention bypass ‖attn out‖ / ‖residual‖", True))
# Reductions over layers of a family's last-N means: (key, label).
LAYER_REDUCTIONS = (("mean", "mean over layers"), ("first", "first layer"), ("last", "last layer"))


@dataclasses.dataclass(frozen=True)
class Estimate:
  """A value over seed replicas: mean, one standard error, and how many replicas had it."""
  mean: float
  err: float
  n: int


NO_ESTIMATE = Estimate(math.nan, math.nan, 0)


@dataclasses.dataclass(frozen=True)
class SizePoint:
  """One model (all its seed replicas) in the figures against size."""
  label: str
  runs: tuple[str, ...]  # run names, in the order given
  num_params: int
  seq_len: int
  block: str  # model.block: attention+ffn | attention_only | ffn_only
  target_entropy: Estimate  # H(P), nats per sequence of seq_len predicted tokens
  model_entropy: Estimate  # H(Q)
  gap: Estimate  # H(Q) − H(P)
  kl: Estimate  # KL(P ‖ Q)
  eval_loss: Estimate  # last logged held-out loss, nats per token
  layers: dict[str, dict[str, Estimate]]  # family -> reduction (mean / first / last) -> last-N value


def seed_key(run: RunRecord) -> str:
  """Runs with equal keys are seed replicas: equal configs once `SEED_KEYS`, logging and checkpointing are dropped.

  A run without config.json is its own group (its path is the key).
  """
  if not run.config:
    return "path:" + run.path
  config = {section: values for section, values in run.config.items() if section not in _NOT_THE_MODEL}
  for key in SEED_KEYS:
    section, name = key.split(".")
    if isinstance(config.get(section), dict):
      config[section] = {k: v for k, v in config[section].items() if k != name}
  return json.dumps(config, sort_keys=True, default=str)


def seed_groups(runs: Sequence[RunRecord]) -> list[list[int]]:
  """Indices of `runs` grouped into seed replicas, groups and members in the order given."""
  groups: dict[str, list[int]] = {}
  for index, run in enumerate(runs):
    groups.setdefault(seed_key(run), []).append(index)
  return list(groups.values())


def group_label(names: Sequence[str]) -> str:
  """The replicas' shared name: `L2_D64_s0, L2_D64_s1` -> `L2_D64`; the first name when they share none."""
  stripped = {_SEED_SUFFIX.sub("", name) or name for name in names}
  return stripped.pop() if len(stripped) == 1 else names[0]


def combine(values: Sequence[float], stderrs: Sequence[float] | None = None) -> Estimate:
  """Mean and standard error over replicas (see the module docstring); non-finite values are left out."""
  values = np.asarray(values, np.float64)
  stderrs = np.zeros_like(values) if stderrs is None else np.asarray(stderrs, np.float64)
  keep = np.isfinite(values)
  values, stderrs = values[keep], np.where(np.isfinite(stderrs[keep]), stderrs[keep], 0.0)
  n = int(values.size)
  if n == 0:
    return NO_ESTIMATE
  spread = float(np.var(values, ddof=1)) / n if n > 1 else 0.0
  own = float(np.sum(stderrs**2)) / n**2
  return Estimate(float(values.mean()), math.sqrt(spread + own), n)


def layer_reductions(run: RunRecord, family: str, last_n: int) -> dict[str, float]:
  """The family's per-layer last-N means reduced to one number each: mean over layers, first, last."""
  if not runs_lib.has_family(run, family):
    return {key: math.nan for key, _ in LAYER_REDUCTIONS}
  per_layer = runs_lib.last_n_layer_means(run.records, family, last_n,
                                          family_layers(run.names, family))
  finite = per_layer[np.isfinite(per_layer)]
  return {"mean": float(finite.mean()) if finite.size else math.nan,
          "first": float(per_layer[0]), "last": float(per_layer[-1])}


def _entropy_values(runs: Sequence[RunRecord], name: str) -> tuple[list[float], list[float]]:
  values = [float(run.entropy.get(name, math.nan)) for run in runs]
  errors = [float(run.entropy.get(name + "_stderr", 0.0)) for run in runs]
  return values, errors


def size_point(runs: Sequence[RunRecord], last_n: int) -> SizePoint:
  """The point of one group of seed replicas, each with an entropy.json."""
  estimate = lambda name: combine(*_entropy_values(runs, name))
  layers = {}
  for family, _, _ in SIZE_FAMILIES:
    reduced = [layer_reductions(run, family, last_n) for run in runs]
    layers[family] = {key: combine([r[key] for r in reduced]) for key, _ in LAYER_REDUCTIONS}
  return SizePoint(
      label=group_label([run.name for run in runs]), runs=tuple(run.name for run in runs),
      num_params=int(runs[0].entropy.get("num_params", 0)), seq_len=int(runs[0].entropy.get("seq_len", 0)),
      block=str(runs[0].config.get("model", {}).get("block", "attention+ffn")),
      target_entropy=estimate("eval/entropy_target_seq"), model_entropy=estimate("eval/entropy_model_seq"),
      gap=estimate("entropy_gap_seq"), kl=estimate("eval/kl_seq"),
      eval_loss=combine([runs_lib.last_value(run.records, "eval/loss") for run in runs]), layers=layers)


def size_points(runs: Sequence[RunRecord], last_n: int) -> list[SizePoint]:
  """One point per group of seed replicas that have an entropy.json, in order of size (then of appearance)."""
  measured = [run for run in runs if run.entropy is not None]
  points = [size_point([measured[i] for i in group], last_n) for group in seed_groups(measured)]
  return sorted(points, key=lambda p: p.num_params)
