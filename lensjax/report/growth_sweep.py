"""A norm-growth sweep read back (Merrill et al. 2021): members on a weight decay × learning rate grid.

Two layouts are read: the output of `benchmarks/gpu_norm_growth.sh`
(norm_growth_metrics.jsonl, norm_growth_saturation.json,
norm_growth_members.json) and a `lensjax sweep` folder, one subfolder per
member with its config.json and metrics.jsonl, optionally the `lensjax
saturation --json` output of its final checkpoint as saturation.json and
train_seconds.txt (one number, the member's wall time). Everything after
`load` is a pure function of what was read: the grid, the heads' kinds, the
late fits and the summary table of docs/results/norm_growth.md.
"""

from __future__ import annotations

import json
import math
import os
import re

import numpy as np

from lensjax.analysis import growth
from lensjax.analysis.records import series

SATURATION = re.compile(r"^eval/saturation/layer_(\d+)$")
SATURATED_HEAD = re.compile(r"^eval/saturated_head/layer_(\d+)/head_(\d+)$")
# Heads of the saturated network (c = 1000), by the mean number of keys per query with weight > 1e-5:
ARGMAX_KEYS = 1.5  # at most this many keys on average: an argmax head (one key; ties are rare)
AVERAGING_FRACTION = 0.5  # at least this share of the visible keys: an averaging head (uniform over a prefix)
LATE_FIT_WARMUPS = 2  # the late fit starts at this many warm-up lengths


# --------------------------------------------------------------------------
# Reading.


def load(results_dir: str):
  """(records by member, saturation by member, members) in the members' file order."""
  if not os.path.exists(os.path.join(results_dir, "norm_growth_members.json")):
    return load_sweep(results_dir)
  with open(os.path.join(results_dir, "norm_growth_members.json")) as f:
    members = json.load(f)
  records = {name: [] for name in members}
  with open(os.path.join(results_dir, "norm_growth_metrics.jsonl")) as f:
    for line in f:
      if line.strip():
        record = json.loads(line)
        records.setdefault(record.pop("member"), []).append(record)
  saturation_path = os.path.join(results_dir, "norm_growth_saturation.json")
  saturation = {}
  if os.path.exists(saturation_path):
    with open(saturation_path) as f:
      saturation = json.load(f)
  return records, saturation, members


def _read_text(path: str) -> str:
  with open(path) as f:
    return f.read()


def load_sweep(sweep_dir: str):
  """The same triple from a `lensjax sweep` folder: members are the subfolders holding metrics.jsonl, by name."""
  records, saturation, members = {}, {}, {}
  for name in sorted(os.listdir(sweep_dir)):
    member_dir = os.path.join(sweep_dir, name)
    metrics_path, config_path = os.path.join(member_dir, "metrics.jsonl"), os.path.join(member_dir, "config.json")
    if not (os.path.isfile(metrics_path) and os.path.isfile(config_path)):
      continue
    config = json.loads(_read_text(config_path))
    seconds_path = os.path.join(member_dir, "train_seconds.txt")
    seconds = float(_read_text(seconds_path).split()[0]) if os.path.exists(seconds_path) else float("nan")
    members[name] = {"overrides": {"optim.weight_decay": config["optim"]["weight_decay"],
                                   "optim.lr": config["optim"]["lr"]},
                     "config": config, "train_seconds": seconds,
                     "decay_exempt": bool(config["optim"].get("decay_exempt", True))}
    records[name] = [json.loads(line) for line in _read_text(metrics_path).splitlines() if line.strip().endswith("}")]
    saturation_path = os.path.join(member_dir, "saturation.json")
    if os.path.exists(saturation_path):
      try:
        saturation[name] = json.loads(_read_text(saturation_path).strip().splitlines()[-1])
      except (ValueError, IndexError):
        saturation[name] = {"error": f"{saturation_path} holds no JSON object"}
  if not members:
    raise SystemExit(f"{sweep_dir} holds neither norm_growth_members.json nor member folders with metrics.jsonl")
  # Weight decay, then learning rate: the grid's reading order.
  order = sorted(members, key=lambda m: (float(members[m]["overrides"]["optim.weight_decay"]),
                                         float(members[m]["overrides"]["optim.lr"])))
  return {m: records[m] for m in order}, saturation, {m: members[m] for m in order}


# --------------------------------------------------------------------------
# The grid.


def member_wd_lr(members: dict, name: str) -> tuple[float, float]:
  overrides = members[name]["overrides"]
  return float(overrides["optim.weight_decay"]), float(overrides["optim.lr"])


def off_grid(members: dict, name: str) -> bool:
  """A member with a `decay_exempt` other than the grid's (the most common one): drawn beside the grid, not in it."""
  values = [member.get("decay_exempt") for member in members.values()]
  return members[name].get("decay_exempt") != max(set(values), key=values.count)


def grid_axes(members: dict) -> tuple[list[float], list[float], dict[str, tuple[int, int]]]:
  """Weight decays (rows), learning rates (columns) and each grid member's cell (off-grid members have none)."""
  grid = [m for m in members if not off_grid(members, m)]
  wds = sorted({member_wd_lr(members, m)[0] for m in grid})
  lrs = sorted({member_wd_lr(members, m)[1] for m in grid})
  cells = {m: (wds.index(member_wd_lr(members, m)[0]), lrs.index(member_wd_lr(members, m)[1])) for m in grid}
  return wds, lrs, cells


def exemption(members: dict, name: str) -> str:
  exempt = members[name].get("decay_exempt")
  return "decay on all parameters" if exempt is False else "embeddings, norms, biases exempt"


# --------------------------------------------------------------------------
# Norms, fits and saturated heads of one member.


def blocks_norm(records) -> tuple[np.ndarray, np.ndarray]:
  """‖θ_blocks‖ = sqrt(Σ_l ‖θ_l‖²) over the steps where every block's norm was logged."""
  names = [n for n in growth.norm_names(records) if n.startswith("norm/params/layer_")]
  if not names:
    return np.array([], np.int64), np.array([])
  per_layer = [dict(zip(*series(records, n))) for n in names]
  steps = sorted(set.intersection(*(set(d) for d in per_layer)))
  return np.array(steps, np.int64), np.array([math.sqrt(sum(d[t] ** 2 for d in per_layer)) for t in steps])


def late_fit(records, member: dict) -> dict:
  """growth.fit_laws of ‖θ_t‖ over the steps t ≥ LATE_FIT_WARMUPS · warmup_steps."""
  warmup = int((((member.get("config") or {}).get("optim") or {}).get("warmup_steps")) or 0)
  steps, values = series(records, "norm/params")
  keep = steps >= LATE_FIT_WARMUPS * warmup
  return growth.fit_laws(steps[keep], values[keep])


def layer_saturation(result: dict) -> list[float]:
  """eval/saturation/layer_{l} by l."""
  by_layer = {int(m.group(1)): v for k, v in result.items() if (m := SATURATION.match(k))}
  return [by_layer[l] for l in sorted(by_layer)]


def mean_saturation(result: dict) -> float:
  values = [v for k, v in result.items() if SATURATION.match(k)]
  return float(np.mean(values)) if values else float("nan")


def head_kinds(result: dict) -> dict[str, int] | None:
  """Counts of argmax, averaging and other heads in one saturation result (None when it has no heads)."""
  fraction_LxH = result.get("saturated_head_fraction")
  counts = {(int(m.group(1)), int(m.group(2))): v for k, v in result.items() if (m := SATURATED_HEAD.match(k))}
  if not fraction_LxH or not counts:
    return None
  kinds = {"argmax": 0, "averaging": 0, "other": 0}
  for l, row in enumerate(fraction_LxH):
    for h, fraction in enumerate(row):
      kind = ("argmax" if counts.get((l, h), np.inf) <= ARGMAX_KEYS else
              "averaging" if fraction >= AVERAGING_FRACTION else "other")
      kinds[kind] += 1
  return kinds


# --------------------------------------------------------------------------
# The summary table.


def _law_cell(fit: dict | None) -> str:
  return f"{fit['a']:.3g} / {fit['r2']:.4f}" if fit else "–"


def _exp_cell(fit: dict | None, last_step: int | None) -> str:
  # b·t_last < 0: a curve that levels off towards c; > 0: one that accelerates.
  return f"{fit['b'] * last_step:+.2f} / {fit['r2']:.4f}" if fit and last_step else "–"


def _part_cell(result: dict) -> str:
  if not result.get("fits"):
    return "–"
  return f"{result['initial']:.1f} → {result['final']:.1f}, {result['best']}, p {result['exponent']['p']:.2f}"


def summary_table(records, reports, saturation, members) -> str:
  """summary.md: per member loss, norms, fits and saturation; the fits after warm-up; the best law per part of θ."""
  lines = ["| member | wd | lr | train s | final loss (train / held-out) | ‖θ‖ first → last | best law (BIC) | "
           "√t: a / r² | linear: a / r² | exp: b·t_last / r² | p of a·t^p + b | saturation cos per layer (final) | "
           "heads argmax / averaging / other |", "|" + "---|" * 13]
  for name in members:
    wd, lr = member_wd_lr(members, name)
    train = series(records.get(name, []), "train/loss")[1]
    held = series(records.get(name, []), "eval/loss")[1]
    result = reports[name].get("norm/params", {})
    fits = result.get("fits", {})
    norms = f"{result['initial']:.1f} → {result['final']:.1f}" if fits else "–"
    p = f"{result['exponent']['p']:.2f}" if fits else "–"
    sat = saturation.get(name, {})
    if "error" in sat:
      sat_text, kinds_text = "failed", "–"
    else:
      layers = layer_saturation(sat)
      sat_text = " / ".join(f"{v:.3f}" for v in layers) if layers else "–"
      kinds = head_kinds(sat)
      kinds_text = f"{kinds['argmax']} / {kinds['averaging']} / {kinds['other']}" if kinds else "–"
    seconds = members[name].get("train_seconds", float("nan"))
    loss = lambda v: f"{v[-1]:.3f}" if v.size else "–"
    lines.append(f"| {name} | {wd:g} | {lr:g} | {seconds:.0f} | {loss(train)} / {loss(held)} | {norms} | "
                 f"{result.get('best') or '–'} | {_law_cell(fits.get('sqrt'))} | {_law_cell(fits.get('linear'))} | "
                 f"{_exp_cell(fits.get('exp'), result.get('last_step'))} | {p} | {sat_text} | {kinds_text} |"
                 .replace("| nan |", "| – |"))
  lines += ["", f"‖θ‖ fitted again from step {LATE_FIT_WARMUPS}·warmup_steps on (past warm-up and the first "
            "transient), t still counted from step 0: r² per law, best law (BIC), p of a·t^p + b.", "",
            "| member | from step | √t r² | linear r² | t^¼ r² | exp r² | best law | p |", "|" + "---|" * 8]
  for name in members:
    result = late_fit(records.get(name, []), members[name])
    fits = result.get("fits", {})
    r2 = lambda law: f"{fits[law]['r2']:.4f}" if law in fits else "–"
    lines.append(f"| {name} | {result.get('first_step', '–')} | {r2('sqrt')} | {r2('linear')} | {r2('quarter')} | "
                 f"{r2('exp')} | {result.get('best') or '–'} | "
                 f"{result['exponent']['p']:.2f} |" if fits else f"| {name} | – | – | – | – | – | – | – |")
  parts = sorted({n for name in members for n in reports[name] if n != "norm/params"},
                 key=lambda n: (n == "norm/params/embed", n))
  lines += ["", "Per part of θ: first → last norm, best law (BIC), p of a·t^p + b.", "",
            "| member | " + " | ".join(n.replace("norm/params/", "") for n in parts + ["blocks"]) + " |",
            "|" + "---|" * (len(parts) + 2)]
  for name in members:
    cells_text = [_part_cell(reports[name].get(part, {})) for part in parts]
    cells_text.append(_part_cell(growth.fit_laws(*blocks_norm(records.get(name, [])))))
    lines.append(f"| {name} | " + " | ".join(cells_text) + " |")
  return "\n".join(lines) + "\n"
