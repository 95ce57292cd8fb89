"""Figures and a summary table for a results page from a norm-growth sweep (Merrill et al. 2021).

Usage: python3 benchmarks/norm_growth_figures.py RESULTS_DIR OUT_DIR

RESULTS_DIR is either
  - the output of `benchmarks/gpu_norm_growth.sh`: norm_growth_metrics.jsonl,
    norm_growth_saturation.json and norm_growth_members.json; or
  - a `lensjax sweep` folder (e.g. of configs/norm_growth_cpu.py): one subfolder
    per member with its config.json and metrics.jsonl, and optionally the
    `lensjax saturation --json` output of its final checkpoint as saturation.json
    (and train_seconds.txt: one number, the member's wall time).
OUT_DIR receives:
  norm_sqrt_fits.png         ‖θ_t‖ of every member (weight decay by row, learning rate by column) with its a√t + b fit
  norm_all.png               every member on one axis: ‖θ‖, the decayed blocks' ‖θ_blocks‖, the exempt embeddings
  norm_dynamics.png          every member: 1 − norm/cos_step (log) and norm/alignment over training
  growth_grid.png            weight decay × learning rate: growth exponent p of a·t^p + b, final ‖θ‖, final saturation
  saturation_over_training.png  eval/saturation/layer_{l} over training, mean over layers and per layer
  saturated_head_histogram.png  per member, heads by keys / visible keys in the saturated network (final checkpoint)
  growth_<member>.png        lensjax.analysis.growth's figure (fits, per-block norms, cos_step, alignment) per member
  summary.md                 per member: loss, norms, best law, a and r² of √t and linear, p, saturation per layer,
                             argmax / averaging heads; then the best law of each block's and the embeddings' norm
  growth_fits.json           lensjax.analysis.growth's report of every member
"""

from __future__ import annotations

import json
import math
import os
import re
import sys

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from lensjax.analysis import growth  # noqa: E402

DPI = 120
_SATURATION = re.compile(r"^eval/saturation/layer_(\d+)$")


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
  saturation = json.load(open(saturation_path)) if os.path.exists(saturation_path) else {}
  return records, saturation, members


def load_sweep(sweep_dir: str):
  """The same triple from a `lensjax sweep` folder: members are the subfolders holding metrics.jsonl, by name."""
  records, saturation, members = {}, {}, {}
  for name in sorted(os.listdir(sweep_dir)):
    member_dir = os.path.join(sweep_dir, name)
    metrics_path, config_path = os.path.join(member_dir, "metrics.jsonl"), os.path.join(member_dir, "config.json")
    if not (os.path.isfile(metrics_path) and os.path.isfile(config_path)):
      continue
    with open(config_path) as f:
      config = json.load(f)
    seconds_path = os.path.join(member_dir, "train_seconds.txt")
    seconds = float(open(seconds_path).read().split()[0]) if os.path.exists(seconds_path) else float("nan")
    members[name] = {"overrides": {"optim.weight_decay": config["optim"]["weight_decay"],
                                   "optim.lr": config["optim"]["lr"]},
                     "config": config, "train_seconds": seconds,
                     "decay_exempt": bool(config["optim"].get("decay_exempt", True))}
    with open(metrics_path) as f:
      records[name] = [json.loads(line) for line in f if line.strip().endswith("}")]
    saturation_path = os.path.join(member_dir, "saturation.json")
    if os.path.exists(saturation_path):
      try:
        saturation[name] = json.loads(open(saturation_path).read().strip().splitlines()[-1])
      except (ValueError, IndexError):
        saturation[name] = {"error": f"{saturation_path} holds no JSON object"}
  if not members:
    raise SystemExit(f"{sweep_dir} holds neither norm_growth_members.json nor member folders with metrics.jsonl")
  # Weight decay, then learning rate: the grid's reading order.
  order = sorted(members, key=lambda m: (float(members[m]["overrides"]["optim.weight_decay"]),
                                         float(members[m]["overrides"]["optim.lr"])))
  return {m: records[m] for m in order}, saturation, {m: members[m] for m in order}


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


def _mean_saturation(result: dict) -> float:
  values = [v for k, v in result.items() if _SATURATION.match(k)]
  return float(np.mean(values)) if values else float("nan")


# Heads of the saturated network (c = 1000), by the mean number of keys per query with weight > 1e-5:
ARGMAX_KEYS = 1.5  # at most this many keys on average: an argmax head (one key; ties are rare)
AVERAGING_FRACTION = 0.5  # at least this share of the visible keys: an averaging head (uniform over a prefix)
_HEAD = re.compile(r"^eval/saturated_head/layer_(\d+)/head_(\d+)$")


def head_kinds(result: dict) -> dict[str, int] | None:
  """Counts of argmax, averaging and other heads in one saturation result (None when it has no heads)."""
  fraction_LxH = result.get("saturated_head_fraction")
  counts = {(int(m.group(1)), int(m.group(2))): v for k, v in result.items() if (m := _HEAD.match(k))}
  if not fraction_LxH or not counts:
    return None
  kinds = {"argmax": 0, "averaging": 0, "other": 0}
  for l, row in enumerate(fraction_LxH):
    for h, fraction in enumerate(row):
      kind = ("argmax" if counts.get((l, h), np.inf) <= ARGMAX_KEYS else
              "averaging" if fraction >= AVERAGING_FRACTION else "other")
      kinds[kind] += 1
  return kinds


def layer_saturation(result: dict) -> list[float]:
  """eval/saturation/layer_{l} by l."""
  by_layer = {int(m.group(1)): v for k, v in result.items() if (m := _SATURATION.match(k))}
  return [by_layer[l] for l in sorted(by_layer)]


def _member_style(members, name):
  """(colour by weight decay, line style by learning rate, label) of a member on a shared axis."""
  wds, lrs, cells = grid_axes(members)
  styles = ["-", "--", ":", "-."]
  wd, lr = member_wd_lr(members, name)
  style = styles[lrs.index(lr) % len(styles)] if lr in lrs else "-."
  if name not in cells:  # off the grid: weight decay on a different set of parameters
    return "tab:red", style, f"wd {wd:g}, lr {lr:g}, {_exemption(members, name)}"
  colors = [matplotlib.colormaps["viridis"](x) for x in np.linspace(0.0, 0.8, max(len(wds), 1))]
  return colors[cells[name][0]], style, f"wd {wd:g}, lr {lr:g}"


def _exemption(members, name) -> str:
  exempt = members[name].get("decay_exempt")
  return "decay on all parameters" if exempt is False else "embeddings, norms, biases exempt"


def blocks_norm(records) -> tuple[np.ndarray, np.ndarray]:
  """‖θ_blocks‖ = sqrt(Σ_l ‖θ_l‖²) over the steps where every block's norm was logged."""
  names = [n for n in growth.norm_names(records) if n.startswith("norm/params/layer_")]
  if not names:
    return np.array([], np.int64), np.array([])
  per_layer = [dict(zip(*growth.series(records, n))) for n in names]
  steps = sorted(set.intersection(*(set(d) for d in per_layer)))
  return np.array(steps, np.int64), np.array([math.sqrt(sum(d[t] ** 2 for d in per_layer)) for t in steps])


def norm_all_figure(records, members, path: str) -> str:
  fig = Figure(figsize=(16, 4.3), layout="constrained")
  axes = fig.subplots(1, 3)
  for name in members:
    color, style, label = _member_style(members, name)
    for ax, (steps, values) in zip(axes, (growth.series(records.get(name, []), "norm/params"),
                                          blocks_norm(records.get(name, [])),
                                          growth.series(records.get(name, []), "norm/params/embed"))):
      if steps.size:
        ax.plot(steps, values, color=color, linestyle=style, label=label)
  titles = ("‖θ‖₂, all parameters", "‖θ_blocks‖₂ = (Σ_l ‖θ_l‖²)^½: the transformer blocks\n"
            "(matrices decayed; LayerNorm scales and biases exempt when decay_exempt)",
            "‖θ_embed‖₂: tied token and position embeddings\n(exempt from weight decay when decay_exempt)")
  for ax, title in zip(axes, titles):
    ax.set_title(title, fontsize="medium")
    ax.set_xlabel("training step")
    ax.grid(alpha=0.3)
  axes[0].set_ylabel("L2 norm")
  axes[0].legend(fontsize="small")
  fig.suptitle("Parameter norm of every member (colour: weight decay; line style: learning rate)")
  fig.savefig(path, dpi=DPI)
  return path


def norm_dynamics_figure(records, members, path: str) -> str:
  fig = Figure(figsize=(12, 4.3), layout="constrained")
  ax_cos, ax_align = fig.subplots(1, 2)
  for name in members:
    color, style, label = _member_style(members, name)
    steps, values = growth.series(records.get(name, []), "norm/cos_step")
    if steps.size:
      ax_cos.semilogy(steps, np.clip(1.0 - values, 1e-12, None), color=color, linestyle=style, label=label)
    steps, values = growth.series(records.get(name, []), "norm/alignment")
    if steps.size:
      ax_align.plot(steps, values, color=color, linestyle=style, label=label)
  ax_cos.set_title("1 − cos(θ_t, θ_t+1): how far one step turns θ (log)")
  ax_align.set_title("cos(δ_t, θ_t): > 0 the update pushes θ outward, < 0 inward")
  ax_align.axhline(0.0, color="gray", linewidth=0.8)
  for ax in (ax_cos, ax_align):
    ax.set_xlabel("training step")
    ax.grid(alpha=0.3)
  ax_align.legend(fontsize="small")
  fig.suptitle("Direction of the updates (norm/cos_step, norm/alignment; logged every log_every steps)")
  fig.savefig(path, dpi=DPI)
  return path


def sqrt_fits_figure(records, reports, members, path: str) -> str:
  wds, lrs, cells = grid_axes(members)
  fig = Figure(figsize=(3.6 * len(lrs) + 0.5, 2.9 * len(wds) + 0.4), layout="constrained")
  axes = fig.subplots(len(wds), len(lrs), squeeze=False)
  for name, (row, col) in cells.items():
    ax = axes[row, col]
    steps, values = growth.series(records.get(name, []), "norm/params")
    ax.plot(steps, values, "o", markersize=2, color="tab:blue")
    result = reports[name].get("norm/params", {})
    fit = result.get("fits", {}).get("sqrt")
    if fit:
      dense = np.linspace(0, steps.max(), 200)
      ax.plot(dense, growth.evaluate(fit, "sqrt", dense), "--", color="tab:red")
      ax.set_title(f"wd {wds[row]:g}, lr {lrs[col]:g}\n√t r² {fit['r2']:.3f}, p {result['exponent']['p']:.2f}, "
                   f"best {result['best']}", fontsize="small")
    else:
      ax.set_title(f"wd {wds[row]:g}, lr {lrs[col]:g}: no norm logged", fontsize="small")
    ax.grid(alpha=0.3)
    if row == len(wds) - 1:
      ax.set_xlabel("training step")
    if col == 0:
      ax.set_ylabel("‖θ‖₂")
  fig.suptitle("Parameter norm and its a√t + b fit (dashed), weight decay by row, learning rate by column")
  fig.savefig(path, dpi=DPI)
  return path


def _heatmap(ax, matrix, wds, lrs, title, fmt):
  image = ax.imshow(matrix, cmap="viridis", aspect="auto")
  ax.set_xticks(range(len(lrs)), [f"{lr:g}" for lr in lrs])
  ax.set_yticks(range(len(wds)), [f"{wd:g}" for wd in wds])
  ax.set_xlabel("learning rate")
  ax.set_ylabel("weight decay")
  ax.set_title(title)
  finite = matrix[np.isfinite(matrix)]
  middle = (finite.max() + finite.min()) / 2 if finite.size else 0.0
  for (i, j), v in np.ndenumerate(matrix):
    ax.text(j, i, fmt.format(v) if np.isfinite(v) else "–", ha="center", va="center",
            color="black" if np.isfinite(v) and v > middle else "white")
  return image


def grid_figure(reports, saturation, members, path: str) -> str:
  wds, lrs, cells = grid_axes(members)
  exponent, final, saturated = (np.full((len(wds), len(lrs)), np.nan) for _ in range(3))
  for name, (row, col) in cells.items():
    result = reports[name].get("norm/params", {})
    if result.get("exponent"):
      exponent[row, col] = result["exponent"]["p"]
      final[row, col] = result["final"]
    saturated[row, col] = _mean_saturation(saturation.get(name, {}))
  fig = Figure(figsize=(15, 3.8), layout="constrained")
  axes = fig.subplots(1, 3)
  for ax, matrix, title, fmt in ((axes[0], exponent, "growth exponent p (‖θ‖ ≈ a·t^p + b)", "{:.2f}"),
                                 (axes[1], final, "final ‖θ‖₂", "{:.0f}"),
                                 (axes[2], saturated, "saturation: mean over layers of\ncos(h(θ), h(1000θ)), final",
                                  "{:.3f}")):
    fig.colorbar(_heatmap(ax, matrix, wds, lrs, title, fmt), ax=ax)
  fig.savefig(path, dpi=DPI)
  return path


def saturation_over_training_figure(records, members, path: str) -> str | None:
  """Per weight decay (columns): mean over layers, each layer, and the argmax heads, over training."""
  wds, lrs, cells = grid_axes(members)
  curves = {}  # name -> (steps, mean over layers [S], per layer [S, L], argmax heads [S])
  for name in members:
    rows = []
    for record in records.get(name, []):
      layers = layer_saturation(record)
      if layers:
        heads = [v for k, v in record.items() if _HEAD.match(k)]
        rows.append((record["step"], layers, sum(v <= ARGMAX_KEYS for v in heads) if heads else np.nan))
    if rows:
      rows.sort(key=lambda row: row[0])
      curves[name] = (np.array([r[0] for r in rows]), np.array([np.mean(r[1]) for r in rows]),
                      np.array([r[1] for r in rows]), np.array([r[2] for r in rows], np.float64))
  if not curves:
    return None
  fig = Figure(figsize=(4.5 * len(wds) + 0.5, 10.0), layout="constrained")
  axes = fig.subplots(3, len(wds), squeeze=False, sharey="row")
  colors = [matplotlib.colormaps["plasma"](x) for x in np.linspace(0.0, 0.8, max(len(lrs), 1))]
  layer_styles = ["-", "--", ":", "-.", (0, (5, 1)), (0, (1, 1)), (0, (3, 1, 1, 1)), (0, (5, 5))]
  for name, (steps, mean, per_layer, argmax) in curves.items():
    wd, lr = member_wd_lr(members, name)
    if wd not in wds:
      continue
    row = wds.index(wd)
    # Off-grid members go into their weight decay's panel, in red.
    color, label = ((colors[cells[name][1]], f"lr {lr:g}") if name in cells else
                    ("tab:red", f"lr {lr:g}, {_exemption(members, name)}"))
    axes[0, row].plot(steps, mean, marker="o", markersize=2, color=color, label=label)
    for l in range(per_layer.shape[1]):
      axes[1, row].plot(steps, per_layer[:, l], linestyle=layer_styles[l % len(layer_styles)], color=color,
                        label=f"{label}, layer {l}")
    axes[2, row].plot(steps, argmax, marker="o", markersize=2, color=color, label=label)
  for row, wd in enumerate(wds):
    axes[0, row].set_title(f"weight decay {wd:g}")
    for ax in axes[:, row]:
      ax.grid(alpha=0.3)
      if ax.lines:
        ax.legend(fontsize="x-small")
    axes[2, row].set_xlabel("training step")
  axes[0, 0].set_ylabel("mean over layers of\ncos(h_l(θ), h_l(1000θ))")
  axes[1, 0].set_ylabel("cos(h_l(θ), h_l(1000θ)) per layer")
  axes[2, 0].set_ylabel(f"argmax heads at 1000θ\n(≤ {ARGMAX_KEYS:g} keys per query)")
  fig.suptitle("Saturation over training (eval/saturation/layer_l and eval/saturated_head/*, held-out rows)")
  fig.savefig(path, dpi=DPI)
  return path


def head_histogram_figure(saturation, members, path: str) -> str | None:
  wds, lrs, cells = grid_axes(members)
  if not any("saturated_head_histogram" in saturation.get(name, {}) for name in members):
    return None
  fig = Figure(figsize=(max(3.4 * len(lrs), 7.0) + 0.5, 2.6 * len(wds) + 0.9), layout="constrained")
  axes = fig.subplots(len(wds), len(lrs), squeeze=False, sharex=True)
  for name, (row, col) in cells.items():
    ax = axes[row, col]
    histogram = saturation.get(name, {}).get("saturated_head_histogram")
    ax.set_title(f"wd {wds[row]:g}, lr {lrs[col]:g}", fontsize="small")
    if not histogram:
      ax.text(0.5, 0.5, "no result", ha="center", va="center", transform=ax.transAxes)
      continue
    edges = np.asarray(histogram["edges"])
    ax.bar(edges[:-1], histogram["counts"], width=np.diff(edges), align="edge", color="tab:blue", edgecolor="white")
    ax.axvline(0.5, color="gray", linestyle=":", linewidth=0.8)
    seq_len = ((members[name].get("config") or {}).get("data") or {}).get("seq_len")
    if seq_len and seq_len > 1:  # where a head that attends to exactly one key lands: mean of 1/(t+1), t ≥ 1
      ax.axvline(float(np.mean(1.0 / np.arange(2, seq_len + 1))), color="tab:red", linestyle="--", linewidth=0.8)
    if row == len(wds) - 1:
      ax.set_xlabel("keys above 1e-5 / visible keys")
    if col == 0:
      ax.set_ylabel("heads")
  fig.suptitle("Heads of the saturated network (c = 1000) at the final checkpoint,\nby keys attended / keys visible: "
               "argmax heads at the dashed red line\n(one key per query), averaging heads near 1/2 (dotted) and above",
               fontsize="medium")
  fig.savefig(path, dpi=DPI)
  return path


LATE_FIT_WARMUPS = 2  # the late fit starts at this many warm-up lengths


def late_fit(records, member: dict) -> dict:
  """growth.fit_laws of ‖θ_t‖ over the steps t ≥ LATE_FIT_WARMUPS · warmup_steps."""
  warmup = int((((member.get("config") or {}).get("optim") or {}).get("warmup_steps")) or 0)
  steps, values = growth.series(records, "norm/params")
  keep = steps >= LATE_FIT_WARMUPS * warmup
  return growth.fit_laws(steps[keep], values[keep])


def _law_cell(fit: dict | None) -> str:
  return f"{fit['a']:.3g} / {fit['r2']:.4f}" if fit else "–"


def _exp_cell(fit: dict | None, last_step: int | None) -> str:
  # b·t_last < 0: a curve that levels off towards c; > 0: one that accelerates.
  return f"{fit['b'] * last_step:+.2f} / {fit['r2']:.4f}" if fit and last_step else "–"


def summary_table(records, reports, saturation, members) -> str:
  lines = ["| member | wd | lr | train s | final loss (train / held-out) | ‖θ‖ first → last | best law (BIC) | "
           "√t: a / r² | linear: a / r² | exp: b·t_last / r² | p of a·t^p + b | saturation cos per layer (final) | "
           "heads argmax / averaging / other |", "|" + "---|" * 13]
  for name in members:
    wd, lr = member_wd_lr(members, name)
    train = growth.series(records.get(name, []), "train/loss")[1]
    held = growth.series(records.get(name, []), "eval/loss")[1]
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
                 f"{_exp_cell(fits.get('exp'), result.get('last_step'))} | {p} | {sat_text} | {kinds_text} |".replace("| nan |", "| – |"))
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
    cells_text = []
    for part in parts:
      result = reports[name].get(part, {})
      cells_text.append(f"{result['initial']:.1f} → {result['final']:.1f}, {result['best']}, p {result['exponent']['p']:.2f}"
                        if result.get("fits") else "–")
    steps, values = blocks_norm(records.get(name, []))
    result = growth.fit_laws(steps, values)
    cells_text.append(f"{result['initial']:.1f} → {result['final']:.1f}, {result['best']}, p {result['exponent']['p']:.2f}"
                      if result.get("fits") else "–")
    lines.append(f"| {name} | " + " | ".join(cells_text) + " |")
  return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
  if len(argv) != 2:
    print(__doc__, file=sys.stderr)
    return 2
  results_dir, out_dir = argv
  os.makedirs(out_dir, exist_ok=True)
  records, saturation, members = load(results_dir)
  reports = {name: growth.growth_report(records.get(name, [])) for name in members}
  written = [sqrt_fits_figure(records, reports, members, os.path.join(out_dir, "norm_sqrt_fits.png")),
             grid_figure(reports, saturation, members, os.path.join(out_dir, "growth_grid.png")),
             saturation_over_training_figure(records, members, os.path.join(out_dir, "saturation_over_training.png")),
             head_histogram_figure(saturation, members, os.path.join(out_dir, "saturated_head_histogram.png")),
             norm_all_figure(records, members, os.path.join(out_dir, "norm_all.png")),
             norm_dynamics_figure(records, members, os.path.join(out_dir, "norm_dynamics.png"))]
  for name in members:
    if "norm/params" in reports[name]:
      slug = re.sub(r"[^A-Za-z0-9.]+", "_", name)
      written.append(growth.growth_figure(records[name], os.path.join(out_dir, f"growth_{slug}.png"), title=name,
                                          report=reports[name]))
  table = summary_table(records, reports, saturation, members)
  with open(os.path.join(out_dir, "summary.md"), "w") as f:
    f.write(table)
  with open(os.path.join(out_dir, "growth_fits.json"), "w") as f:
    json.dump(reports, f)
  print(table)
  print("\n".join(p for p in written if p))
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
