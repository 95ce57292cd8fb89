"""Tables and figures of docs/results/norm_growth.md from the raw files of benchmarks/gpu_norm_growth.sh.

Usage:
  python3 benchmarks/norm_growth_summary.py --unpack ARCHIVE... RAW_DIR   # norm_growth_NAME.tar.xz -> RAW_DIR/NAME/
  python3 benchmarks/norm_growth_summary.py RAW_DIR OUT_DIR               # summary.md, summary.json, figures

Unpacking keeps each member's config.json and metrics.jsonl (compressed to .xz), the run's analyses.json
(.xz) and the train and analyses logs. The summary, per run (one norm placement) and per cell (lr, weight decay; its two
members are two seeds):
  - growth of the non-embedding norm, `norm/params/non_embedding`: the exponent p of a·t^p + b fitted
    from the end of warm-up and from step 0, the r² of a·√t + b from the end of warm-up, and the mean p of
    the cell with its 95% t-interval over seeds (n = 2: t = 12.71); the embeddings' p separately;
  - the relative change of the non-embedding norm over the second half of the run (its sign per seed);
  - the final training loss (mean of the last 5 logged steps);
  - the in-training saturation cosine per layer at every `stats.saturation_every` step (the trainer's
    `eval/saturation/layer_<l>`, causal mask), drawn over training with the norm in growth_NAME.png;
  - from analyses.json: per layer the saturation cosine at initialisation and at the end, and the
    histogram over heads of attended keys / visible keys under the causal and the multiplicative mask.
"""

from __future__ import annotations

import argparse
import glob
import json
import lzma
import math
import os
import shutil
import sys
import tarfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from lensjax.analysis import growth  # noqa: E402

T_CRIT_95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571}  # two-sided 95%, by degrees of freedom
NON_EMBEDDING, EMBED, LOSS = "norm/params/non_embedding", "norm/params/embed", "train/loss"


def unpack(archives: list[str], raw_dir: str) -> None:
  for archive in archives:
    name = os.path.basename(archive).removeprefix("norm_growth_").removesuffix(".tar.xz")
    dest = os.path.join(raw_dir, name)
    shutil.rmtree(dest, ignore_errors=True)
    os.makedirs(dest)
    with tarfile.open(archive) as tar:
      tar.extractall(dest, filter="data")
    for path in glob.glob(os.path.join(dest, "member_*", "metrics.jsonl")) + glob.glob(os.path.join(dest,
                                                                                                    "analyses.json")):
      with open(path, "rb") as src, lzma.open(path + ".xz", "wb", preset=9) as dst:
        shutil.copyfileobj(src, dst)
      os.remove(path)
    print(f"{archive} -> {dest}")


def read_text(path: str) -> str:
  if os.path.exists(path + ".xz"):
    with lzma.open(path + ".xz", "rt") as f:
      return f.read()
  with open(path) as f:
    return f.read()


def series(records: list[dict], name: str) -> tuple[np.ndarray, np.ndarray]:
  # A resumed run may log a step again; its last record counts.
  points = sorted({r["step"]: (r["step"], r[name]) for r in records if name in r and r[name] is not None}.values())
  if not points:
    return np.zeros(0), np.zeros(0)
  t, y = np.asarray(points, np.float64).T
  return t, y


def interval(values) -> dict:
  v = np.asarray([x for x in values if x is not None and math.isfinite(x)], np.float64)
  if v.size == 0:
    return {"mean": None, "lo": None, "hi": None, "n": 0}
  if v.size == 1:
    return {"mean": float(v[0]), "lo": None, "hi": None, "n": 1}
  half = T_CRIT_95.get(v.size - 1, 1.96) * v.std(ddof=1) / math.sqrt(v.size)
  return {"mean": float(v.mean()), "lo": float(v.mean() - half), "hi": float(v.mean() + half), "n": int(v.size)}


def exponent_from(t, y, start: float):
  keep = t >= start
  if keep.sum() < growth.MIN_POINTS:
    return None, None
  # Steps counted from `start`: a power law in the time since the fit begins.
  tt, yy = t[keep] - start + 1.0, y[keep]
  fit = growth.fit_growth_exponent(tt, yy)
  return float(fit["p"]), float(growth.fit_power(tt, yy, 0.5)["r2"])


def member_summary(member_dir: str) -> dict:
  config = json.loads(read_text(os.path.join(member_dir, "config.json")))
  records = [json.loads(line) for line in read_text(os.path.join(member_dir, "metrics.jsonl")).splitlines()
             if line.strip()]
  warmup = config["optim"]["warmup_steps"]
  t, y = series(records, NON_EMBEDDING)
  te, ye = series(records, EMBED)
  tl, loss = series(records, LOSS)
  p_late, r2_late = exponent_from(t, y, warmup)
  p_zero, r2_zero = exponent_from(t, y, 0.0)
  p_embed, _ = exponent_from(te, ye, warmup)
  half = t >= t[-1] / 2 if t.size else t
  change = float(y[-1] / y[half][0] - 1.0) if t.size else None
  layers = config["model"]["num_layers"]
  saturation_steps = [r["step"] for r in records if "eval/saturation/layer_0" in r]
  saturation_LxS = [[r[f"eval/saturation/layer_{l}"] for r in records if "eval/saturation/layer_0" in r]
                    for l in range(layers)]
  return {"lr": config["optim"]["lr"], "weight_decay": config["optim"]["weight_decay"],
          "seed": config["train"]["seed"], "warmup": warmup, "last_step": float(t[-1]) if t.size else None,
          "p_after_warmup": p_late, "sqrt_r2_after_warmup": r2_late, "p_from_0": p_zero, "sqrt_r2_from_0": r2_zero,
          "p_embed_after_warmup": p_embed, "norm_first": float(y[0]) if y.size else None,
          "norm_last": float(y[-1]) if y.size else None, "embed_last": float(ye[-1]) if ye.size else None,
          "second_half_change": change, "final_loss": float(np.mean(loss[-5:])) if loss.size else None,
          "saturation_steps": saturation_steps, "saturation_LxS": saturation_LxS}


def saturation_summary(analyses: dict) -> dict:
  out = {}
  for name, member in analyses["members"].items():
    entry = {}
    for state in ("init", "final"):
      s = member[state]
      L = len(s["homogeneity"]["cosine"][0])
      entry[state] = {"step": s["step"],
                      "cosine_L": [s["causal"][f"eval/saturation/layer_{l}"] for l in range(L)],
                      "fraction_causal": s["causal"]["saturated_head_fraction"],
                      "fraction_multiplicative": s["merrill_multiplicative"]["saturated_head_fraction"],
                      "homogeneity_SxL": s["homogeneity"]["cosine"]}
    out[name] = entry
  return out


def bimodality(fractions) -> dict:
  v = np.asarray(fractions, np.float64).reshape(-1)
  return {"below_0.1": float(np.mean(v < 0.1)), "above_0.3": float(np.mean(v > 0.3)), "heads": int(v.size)}


def summarise(raw_dir: str) -> dict:
  runs = {}
  for run_dir in sorted(d for d in glob.glob(os.path.join(raw_dir, "*")) if os.path.isdir(d)):
    members = sorted(glob.glob(os.path.join(run_dir, "member_*")), key=lambda d: int(d.rsplit("_", 1)[1]))
    per_member = {os.path.basename(m): member_summary(m) for m in members}
    cells = {}
    for name, m in per_member.items():
      cells.setdefault(f"lr{m['lr']:g}_wd{m['weight_decay']:g}", []).append(name)
    cell_stats = {}
    for cell, names in cells.items():
      ms = [per_member[n] for n in names]
      cell_stats[cell] = {"members": names, "p_after_warmup": interval([m["p_after_warmup"] for m in ms]),
                          "p_from_0": interval([m["p_from_0"] for m in ms]),
                          "sqrt_r2_after_warmup": interval([m["sqrt_r2_after_warmup"] for m in ms]),
                          "second_half_change": [m["second_half_change"] for m in ms],
                          "final_loss": interval([m["final_loss"] for m in ms])}
    run = {"members": per_member, "cells": cell_stats}
    analyses_path = os.path.join(run_dir, "analyses.json")
    if os.path.exists(analyses_path) or os.path.exists(analyses_path + ".xz"):
      saturation = saturation_summary(json.loads(read_text(analyses_path)))
      run["saturation"] = saturation
      for state in ("init", "final"):
        for mask in ("causal", "multiplicative"):
          run[f"heads_{state}_{mask}"] = bimodality([s[state][f"fraction_{mask}"] for s in saturation.values()])
    runs[os.path.basename(run_dir)] = run
  return runs


def fmt(x, digits=3):
  return "n/a" if x is None else f"{x:.{digits}f}"


def fmt_interval(i, digits=3):
  if i["mean"] is None:
    return "n/a"
  if i["lo"] is None:
    return fmt(i["mean"], digits)
  return f"{i['mean']:.{digits}f} [{i['lo']:.{digits}f}, {i['hi']:.{digits}f}]"


def markdown(runs: dict) -> str:
  lines = []
  for run_name, run in runs.items():
    lines += [f"## {run_name}", "", "| cell | members | final loss | p after warm-up (95% t, n=2) | p from step 0 | "
              "√t r² after warm-up | 2nd-half change of ‖θ_non-emb‖ |", "|---|---|---|---|---|---|---|"]
    for cell, c in run["cells"].items():
      changes = ", ".join(f"{x:+.3f}" if x is not None else "n/a" for x in c["second_half_change"])
      lines.append(f"| {cell} | {', '.join(c['members'])} | {fmt_interval(c['final_loss'])} | "
                   f"{fmt_interval(c['p_after_warmup'])} | {fmt_interval(c['p_from_0'])} | "
                   f"{fmt_interval(c['sqrt_r2_after_warmup'], 4)} | {changes} |")
    if "saturation" in run:
      lines += ["", "| member | lr | wd | saturation cos at init (min..max over layers) | at the end | "
                "heads < 0.1 / > 0.3 of keys, causal | multiplicative |", "|---|---|---|---|---|---|---|"]
      for name, s in run["saturation"].items():
        m = run["members"][name]
        i, f = s["init"]["cosine_L"], s["final"]["cosine_L"]
        bc, bm = bimodality(s["final"]["fraction_causal"]), bimodality(s["final"]["fraction_multiplicative"])
        lines.append(f"| {name} | {m['lr']:g} | {m['weight_decay']:g} | {min(i):.3f}..{max(i):.3f} | "
                     f"{min(f):.3f}..{max(f):.3f} | {bc['below_0.1']:.2f} / {bc['above_0.3']:.2f} | "
                     f"{bm['below_0.1']:.2f} / {bm['above_0.3']:.2f} |")
      for state in ("init", "final"):
        for mask in ("causal", "multiplicative"):
          b = run[f"heads_{state}_{mask}"]
          lines.append(f"\nAll members, {state}, {mask} mask: {b['below_0.1']:.3f} of {b['heads']} heads attend to "
                       f"< 0.1 of their visible keys, {b['above_0.3']:.3f} to > 0.3.")
    lines.append("")
  return "\n".join(lines)


def saturation_over_training(run: dict, name: str) -> tuple[list, np.ndarray]:
  """Steps and cosine_LxS of one member: step 0 from analyses.json (where it ran), then the trainer's."""
  m = run["members"][name]
  steps, columns = list(m["saturation_steps"]), [list(c) for c in zip(*m["saturation_LxS"])]
  if name in run.get("saturation", {}):
    steps, columns = [0] + steps, [run["saturation"][name]["init"]["cosine_L"]] + columns
  return steps, np.asarray(columns, np.float64).T


def growth_figure(plt, run_name: str, run: dict, raw_dir: str, out_path: str) -> None:
  """Norms and in-training saturation over steps: colour is weight decay, line style learning rate."""
  fig, axes = plt.subplots(1, 4, figsize=(19, 4))
  decays = sorted({m["weight_decay"] for m in run["members"].values()})
  colors = {wd: f"C{i}" for i, wd in enumerate(decays)}
  for name, m in run["members"].items():
    records = [json.loads(line) for line in read_text(os.path.join(raw_dir, name, "metrics.jsonl")).splitlines()
               if line.strip()]
    style = "-" if m["lr"] >= 1e-3 else "--"
    label = f"lr {m['lr']:g} wd {m['weight_decay']:g}" if m["seed"] % 2 == 0 else None
    for ax, metric in ((axes[0], NON_EMBEDDING), (axes[1], EMBED)):
      t, y = series(records, metric)
      ax.plot(t + 1, y, style, color=colors[m["weight_decay"]], alpha=0.7, lw=1, label=label)
    steps, layers_LxS = saturation_over_training(run, name)
    if steps:
      axes[2].plot(steps, layers_LxS.mean(axis=0), style + "o", ms=3, color=colors[m["weight_decay"]], alpha=0.7,
                   label=label)
  axes[0].set(xscale="log", yscale="log", xlabel="step + 1", ylabel="‖θ‖₂ outside the embeddings",
              title=f"{run_name}: non-embedding norm")
  axes[1].set(xscale="log", yscale="log", xlabel="step + 1", ylabel="‖θ_embed‖₂ (token + position)",
              title=f"{run_name}: embedding norm")
  axes[2].set(xlabel="step", ylabel="mean over layers of cos(h_l(θ), h_l(1000θ)) (1)", ylim=(0, 1.02),
              title=f"{run_name}: saturation over training")
  # Layers told apart for one member: the first member with the highest learning rate and no decay.
  chosen = min((n for n, m in run["members"].items() if m["saturation_steps"]),
               key=lambda n: (-run["members"][n]["lr"], run["members"][n]["weight_decay"],
                              int(n.rsplit("_", 1)[1])), default=None)
  if chosen is not None:
    m = run["members"][chosen]
    steps, layers_LxS = saturation_over_training(run, chosen)
    cmap = plt.get_cmap("viridis")
    for l, row in enumerate(layers_LxS):
      axes[3].plot(steps, row, "-o", ms=2, color=cmap(l / max(len(layers_LxS) - 1, 1)),
                   label=f"layer {l}" if l in (0, len(layers_LxS) - 1) or l % 3 == 0 else None)
    axes[3].set(xlabel="step", ylabel="cos(h_l(θ), h_l(1000θ)) (1)", ylim=(0, 1.02),
                title=f"{chosen} (lr {m['lr']:g}, wd {m['weight_decay']:g}) per layer")
  for ax in axes:
    if ax.get_legend_handles_labels()[0]:
      ax.legend(fontsize=6)
  fig.tight_layout()
  fig.savefig(out_path, dpi=120)
  plt.close(fig)


def figures(runs: dict, raw_dir: str, out_dir: str) -> None:
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  for run_name, run in runs.items():
    growth_figure(plt, run_name, run, os.path.join(raw_dir, run_name), os.path.join(out_dir, f"growth_{run_name}.png"))
    if "saturation" not in run:
      continue
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    sat = run["saturation"]
    L = len(next(iter(sat.values()))["init"]["cosine_L"])
    for name, s in sat.items():
      m = run["members"][name]
      style = "-" if m["lr"] >= 1e-3 else "--"
      axes[0].plot(range(L), s["final"]["cosine_L"], style, alpha=0.6,
                   label=f"lr {m['lr']:g} wd {m['weight_decay']:g}" if m["seed"] % 2 == 0 else None)
    init = np.mean([s["init"]["cosine_L"] for s in sat.values()], axis=0)
    axes[0].plot(range(L), init, "k:", lw=2, label="initialisation (mean)")
    axes[0].set(xlabel="layer l", ylabel="cos(h_l(θ), h_l(1000θ)) (1)", ylim=(0, 1.02),
                title=f"{run_name}: saturation cosine at the end")
    axes[0].legend(fontsize=6)
    bins = np.linspace(0, 1, 21)
    for ax, state in zip(axes[1:], ("init", "final")):
      for mask, color in (("causal", "C0"), ("multiplicative", "C3")):
        values = np.concatenate([np.asarray(s[state][f"fraction_{mask}"]).reshape(-1) for s in sat.values()])
        ax.hist(values, bins=bins, alpha=0.5, color=color, label=f"{mask} mask")
      ax.set(xlabel="attended keys / visible keys at 1000θ (1)", ylabel="heads (all members)",
             title=f"{run_name}: heads at {state}")
      ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, f"saturation_{run_name}.png"), dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  if argv and argv[0] == "--unpack":
    unpack(argv[1:-1], argv[-1])
    return 0
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("raw_dir")
  parser.add_argument("out_dir")
  args = parser.parse_args(argv)
  os.makedirs(args.out_dir, exist_ok=True)
  runs = summarise(args.raw_dir)
  with open(os.path.join(args.out_dir, "summary.json"), "w") as f:
    json.dump(runs, f, indent=1)
  text = markdown(runs)
  with open(os.path.join(args.out_dir, "summary.md"), "w") as f:
    f.write(text)
  figures(runs, args.raw_dir, args.out_dir)
  print(text)
  return 0


if __name__ == "__main__":
  sys.exit(main())
