"""A run directory read back into memory (`RunRecord`), and the per-layer and last-N views the report draws.

A run directory holds `config.json`, `metrics.jsonl`, when units died or
revived `neuron_events.jsonl` (formats in lensjax/io), and, when `lensjax
sweep` trained it, `entropy.json` (whole-sequence entropies at the end).
An ensemble directory (`lensjax train --config.train.members=N`) holds no
run of its own but `ensemble.json` and one complete run directory per
member; `read_runs` expands it into its members, in member order.
Everything here is a pure function of what was read, so figures and tables
can be tested on hand-written records without training anything.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import re

import numpy as np

from lensjax.analysis.records import family_layers, metric_names, series
from lensjax.errors import InputError
from lensjax.io.metrics_log import read_metrics

METRICS_FILE = "metrics.jsonl"
CONFIG_FILE = "config.json"
EVENTS_FILE = "neuron_events.jsonl"
ENTROPY_FILE = "entropy.json"  # written by `lensjax sweep` (lensjax/sweep.py)
ENSEMBLE_FILE = "ensemble.json"  # {"members": N, "member_dirs": [...], "config": {...}} of an ensemble directory

_LAYER_SUFFIX = re.compile(r"/layer_(\d+)$")
_HEAD_SUFFIX = re.compile(r"/layer_(\d+)/head_(\d+)$")


@dataclasses.dataclass(frozen=True)
class RunRecord:
  """What one run directory logged, read back: its name (the directory's basename), config and records."""
  name: str
  path: str
  config: dict
  records: list[dict]
  events: list[dict]
  entropy: dict | None = None  # entropy.json: H(Q), H(P), KL(P||Q), num_params at the final step
  ensemble: str | None = None  # the ensemble directory this run is a member of, when it was read through one

  @functools.cached_property
  def names(self) -> frozenset[str]:
    """Every metric name the run logged; computed once, since long runs have many records."""
    return frozenset(metric_names(self.records))

  @property
  def num_layers(self) -> int:
    """Layers from the config; from the metric names when the config is missing."""
    configured = self.config.get("model", {}).get("num_layers")
    if isinstance(configured, int) and configured > 0:
      return configured
    layers = [int(m.group(1)) for name in self.names if (m := _LAYER_SUFFIX.search(name))]
    return max(layers) + 1 if layers else 0


def read_run(path: str) -> RunRecord:
  """Reads a run directory; raises InputError naming the path and what is missing."""
  if not os.path.exists(path):
    raise InputError(f"run directory {path} does not exist; pass the --workdir of a `lensjax train` run.")
  if not os.path.isdir(path):
    raise InputError(f"{path} is not a directory; pass the --workdir of a `lensjax train` run.")
  metrics_path = os.path.join(path, METRICS_FILE)
  if not os.path.isfile(metrics_path):
    raise InputError(f"{path} has no {METRICS_FILE}, so it is not a lensjax run directory (or the run logged nothing "
                     f"yet), nor an ensemble directory with {ENSEMBLE_FILE}; pass the --workdir of a `lensjax train` "
                     "run.")
  records = _valid_records(metrics_path, read_metrics(metrics_path))
  if not records:
    raise InputError(f"{metrics_path} holds no complete record yet; wait for the run's first logging step.")
  events_path = os.path.join(path, EVENTS_FILE)
  events = read_metrics(events_path) if os.path.isfile(events_path) else []
  name = os.path.basename(os.path.normpath(os.path.abspath(path)))
  return RunRecord(name=name, path=path, config=_read_config(path), records=records, events=events,
                   entropy=_read_entropy(path))


def is_ensemble(path: str) -> bool:
  return os.path.isfile(os.path.join(path, ENSEMBLE_FILE))


def ensemble_member_dirs(path: str) -> list[str]:
  """The member run directories of the ensemble directory `path`, in member order, from its ensemble.json."""
  ensemble_path = os.path.join(path, ENSEMBLE_FILE)
  fix = "restore it from the ensemble's training run, or pass the member directories (W/member_*) instead"
  try:
    with open(ensemble_path, encoding="utf-8") as f:
      ensemble = json.load(f)
  except ValueError as e:
    raise InputError(f"{ensemble_path} is not valid JSON ({e}); {fix}.") from None
  members = ensemble.get("members") if isinstance(ensemble, dict) else None
  if not isinstance(members, int) or isinstance(members, bool) or members < 1:
    raise InputError(f"{ensemble_path} has no positive integer 'members'; {fix}.")
  member_dirs = ensemble.get("member_dirs", [f"member_{i}" for i in range(members)])
  if (not isinstance(member_dirs, list) or len(member_dirs) != members
      or not all(isinstance(d, str) and d for d in member_dirs)):
    raise InputError(f"{ensemble_path} lists {member_dirs!r} as 'member_dirs', not {members} directory names; "
                     f"{fix}.")
  paths = [os.path.join(path, d) for d in member_dirs]
  missing = [p for p in paths if not os.path.isdir(p)]
  if missing:
    raise InputError(f"ensemble {path} lacks its member directory {missing[0]} ({len(missing)} of {members} "
                     "missing); wait for the ensemble to write its members, or pass the members that exist.")
  return paths


def read_runs(paths: list[str]) -> list[RunRecord]:
  """Every run of `paths`, an ensemble directory expanded into its members, named `ensemble/member_i`."""
  runs = []
  for path in paths:
    if not is_ensemble(path):
      runs.append(read_run(path))
      continue
    ensemble_name = os.path.basename(os.path.normpath(os.path.abspath(path)))
    for member in ensemble_member_dirs(path):
      run = read_run(member)
      runs.append(dataclasses.replace(run, name=f"{ensemble_name}/{run.name}", ensemble=path))
  return runs


def _read_config(path: str) -> dict:
  # A run without config.json still has metrics worth drawing; the tables then show "?".
  config_path = os.path.join(path, CONFIG_FILE)
  if not os.path.isfile(config_path):
    return {}
  try:
    with open(config_path, encoding="utf-8") as f:
      config = json.load(f)
  except ValueError as e:
    raise InputError(f"{config_path} is not valid JSON ({e}); restore it from the run or delete it.") from None
  if not isinstance(config, dict):
    raise InputError(f"{config_path} is not a JSON object; restore it from the run or delete it.")
  return config


def _read_entropy(path: str) -> dict | None:
  entropy_path = os.path.join(path, ENTROPY_FILE)
  if not os.path.isfile(entropy_path):
    return None
  try:
    with open(entropy_path, encoding="utf-8") as f:
      entropy = json.load(f)
  except ValueError as e:
    raise InputError(f"{entropy_path} is not valid JSON ({e}); delete it and run `lensjax sweep` again to "
                     "rewrite it.") from None
  if not isinstance(entropy, dict) or not all(
      isinstance(entropy.get(k), (int, float)) for k in ("eval/entropy_model_seq", "eval/entropy_target_seq")):
    raise InputError(f"{entropy_path} holds no eval/entropy_model_seq and eval/entropy_target_seq numbers; delete it "
                     "and run `lensjax sweep` again to rewrite it.")
  return entropy


def _valid_records(path: str, records: list[dict]) -> list[dict]:
  for number, record in enumerate(records, start=1):
    if not isinstance(record.get("step"), int):
      raise InputError(f"{path} record {number} has no integer 'step'; fix or delete that line.")
  return records


# --------------------------------------------------------------------------
# Per-layer and per-head families.


def has_metric(run: RunRecord, name: str) -> bool:
  return name in run.names


def has_family(run: RunRecord, family: str) -> bool:
  return family_layers(run.names, family) > 0


def layer_family(records: list[dict], family: str, num_layers: int | None = None) -> tuple[np.ndarray, np.ndarray]:
  """(steps [S], values [L, S]) of `family/layer_{l}`, NaN where a layer was not logged at a step."""
  num_layers = family_layers(metric_names(records), family) if num_layers is None else num_layers
  per_layer = [series(records, f"{family}/layer_{l}") for l in range(num_layers)]
  steps = np.unique(np.concatenate([s for s, _ in per_layer])) if per_layer else np.zeros(0, np.int64)
  values = np.full((num_layers, steps.size), np.nan)
  for layer, (layer_steps, layer_values) in enumerate(per_layer):
    values[layer, np.searchsorted(steps, layer_steps)] = layer_values
  return steps, values


def head_family(records: list[dict], family: str) -> tuple[np.ndarray, np.ndarray]:
  """(steps [S], values [L, H, S]) of `family/layer_{l}/head_{h}`, NaN where missing."""
  indices = [tuple(int(g) for g in m.groups()) for name in metric_names(records)
             if name.startswith(family + "/") and (m := _HEAD_SUFFIX.search(name))
             and name[:m.start()] == family]
  if not indices:
    return np.zeros(0, np.int64), np.zeros((0, 0, 0))
  num_layers, num_heads = (max(i[0] for i in indices) + 1), (max(i[1] for i in indices) + 1)
  per_head = {(l, h): series(records, f"{family}/layer_{l}/head_{h}") for l, h in indices}
  steps = np.unique(np.concatenate([s for s, _ in per_head.values()]))
  values = np.full((num_layers, num_heads, steps.size), np.nan)
  for (layer, head), (head_steps, head_values) in per_head.items():
    values[layer, head, np.searchsorted(steps, head_steps)] = head_values
  return steps, values


# --------------------------------------------------------------------------
# Averages over the end of training.


def last_n_mean(records: list[dict], name: str, last_n: int) -> float:
  """Mean of the last `last_n` logged values of `name` (fewer if fewer exist).

  Non-finite values (a diverged step) are left out so one spike does not
  turn the whole average into NaN; NaN when nothing finite was logged.
  """
  _, values = series(records, name)
  return _nanmean(values[-last_n:])


def last_n_layer_means(records: list[dict], family: str, last_n: int,
                       num_layers: int | None = None) -> np.ndarray:
  """[L]: per layer, the mean of that layer's last `last_n` logged values (see `last_n_mean`)."""
  num_layers = family_layers(metric_names(records), family) if num_layers is None else num_layers
  return np.array([last_n_mean(records, f"{family}/layer_{l}", last_n) for l in range(num_layers)])


def last_n_head_means(records: list[dict], family: str, last_n: int) -> np.ndarray:
  """[L, H]: per layer and head, the mean of that head's last `last_n` logged values (see `last_n_mean`)."""
  _, values = head_family(records, family)
  num_layers, num_heads = values.shape[:2]
  return np.array([[last_n_mean(records, f"{family}/layer_{l}/head_{h}", last_n) for h in range(num_heads)]
                   for l in range(num_layers)]).reshape(num_layers, num_heads)


def last_value(records: list[dict], name: str) -> float:
  """The value of `name` at the latest step that logged it; NaN when never logged."""
  _, values = series(records, name)
  return float(values[-1]) if values.size else math.nan


def _nanmean(values: np.ndarray) -> float:
  finite = values[np.isfinite(values)]
  return float(finite.mean()) if finite.size else math.nan
