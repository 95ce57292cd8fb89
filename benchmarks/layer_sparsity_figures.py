"""Tables and figures of docs/results/layer_sparsity.md from the raw archives the GPU runs wrote.

Usage:
  python3 benchmarks/layer_sparsity_figures.py RAW_DIR OUT_DIR
  python3 benchmarks/layer_sparsity_figures.py --unpack ARCHIVE... RAW_DIR
  python3 benchmarks/layer_sparsity_figures.py --pilot RUN_DIR

RAW_DIR holds dff<F>/member_<i>/ folders of config.json, metrics.jsonl.xz, neuron_events.jsonl.xz,
deaths.json.xz, deaths_extract.npz and unit_trace_last.npz; `--unpack` makes them from the archives
`benchmarks/gpu_layer_sparsity.sh` writes (layer_sparsity_dff<F>.tar.xz, or one per member, or the parts
of one it split: pass them all).
OUT_DIR receives summary.md (every number of the page's tables), claims.json (the same, machine-readable)
and the figures. "End of training" is the mean of a member's last END_POINTS logged values; intervals are
95% t intervals across the members (seeds), lensjax.report.intervals.
`--pilot` prints the two corrected numbers of the pilot run (held-out overlap minimum, distinct deaths).
"""

from __future__ import annotations

import io
import json
import lzma
import os
import re
import sys
import tarfile

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from lensjax.analysis.deaths import first_deaths  # noqa: E402
from lensjax.report.intervals import mean_interval  # noqa: E402

END_POINTS = 5  # logged values averaged for "end of training" (steps 1,060 to 1,099 at log_every 10)
LAYER_STYLES = [("#1f77b4", "-", "o"), ("#d62728", "--", "s"), ("#2ca02c", "-.", "^"), ("#9467bd", ":", "D"),
                ("#ff7f0e", "-", "v"), ("#17becf", "--", "x")]  # layer 0 and 1 in blue and red: never one shade
QUANTILES = ("p10", "p50", "p90", "p99")
DEATH_FEATURES = ("pre_mean_slope", "frequency_slope", "update_ratio")
EARLY_STEP = 500  # "stopped firing early": the last step a dying unit fired (s_last) is before this one


# ----------------------------------------------------------------------------------------------------------
# Loading.


RAW_FILES = ("config.json", "metrics.jsonl", "neuron_events.jsonl", "deaths.json", "deaths_extract.npz",
             "unit_trace_last.npz")
COMPRESSED = ("metrics.jsonl", "neuron_events.jsonl", "deaths.json")  # kept as NAME.xz in RAW_DIR


def parse_member_file(name: str, data: bytes, slot: dict) -> None:
  if name == "config.json":
    slot["config"] = json.loads(data)
  elif name == "metrics.jsonl":
    slot["metrics"] = [json.loads(line) for line in data.decode().splitlines() if line.strip()]
  elif name == "neuron_events.jsonl":
    slot["events"] = [json.loads(line) for line in data.decode().splitlines() if line.strip()]
  elif name == "deaths.json":
    slot["deaths"] = json.loads(data)
  elif name == "unit_trace_last.npz":
    slot["trace"] = dict(np.load(io.BytesIO(data)))


def load_widths(raw_dir: str) -> dict[int, dict]:
  """{d_ff: {member: {"config", "metrics", "events", "deaths", "trace"}}} from RAW_DIR/dff<F>/member_<i>/."""
  widths: dict[int, dict] = {}
  for width_dir in sorted(os.listdir(raw_dir)):
    match = re.match(r"dff(\d+)$", width_dir)
    if not match:
      continue
    members = widths.setdefault(int(match.group(1)), {})
    for member_dir in sorted(os.listdir(os.path.join(raw_dir, width_dir))):
      member_match = re.match(r"member_(\d+)$", member_dir)
      if not member_match:
        continue
      slot = members.setdefault(int(member_match.group(1)), {})
      folder = os.path.join(raw_dir, width_dir, member_dir)
      for name in os.listdir(folder):
        data = open(os.path.join(folder, name), "rb").read()
        if name.endswith(".xz"):
          name, data = name[:-3], lzma.decompress(data)
        parse_member_file(name, data, slot)
  if not widths:
    raise SystemExit(f"no dff<F>/member_<i>/ folders in {raw_dir}; unpack the GPU archives with --unpack")
  return {width: dict(sorted(members.items())) for width, members in sorted(widths.items())}


def unpack(archives: list[str], raw_dir: str) -> int:
  """The GPU script's archives (one per width, or one per member, or the .part0, .part1, ... of one it split)
  into RAW_DIR/dff<F>/member_<i>/."""
  joined: dict[str, list[str]] = {}
  for path in sorted(archives):  # split -d -a 1: part0 ... part9, in order
    joined.setdefault(re.sub(r"\.part\d$", "", path), []).append(path)
  for stem, parts in joined.items():
    width = int(re.search(r"dff(\d+)", os.path.basename(stem)).group(1))
    whole = b"".join(open(part, "rb").read() for part in parts)
    with tarfile.open(fileobj=io.BytesIO(whole)) as archive:
      for entry in archive.getmembers():
        match = re.match(r"member_(\d+)/(.+)$", entry.name)
        if not match or not entry.isfile() or match.group(2) not in RAW_FILES:
          continue
        folder = os.path.join(raw_dir, f"dff{width}", f"member_{match.group(1)}")
        os.makedirs(folder, exist_ok=True)
        data, name = archive.extractfile(entry).read(), match.group(2)
        if name in COMPRESSED:
          data, name = lzma.compress(data, preset=9), name + ".xz"
        with open(os.path.join(folder, name), "wb") as f:
          f.write(data)
  return 0


def num_layers(member: dict) -> int:
  return int(member["config"]["model"]["num_layers"])


def series(records: list[dict], name: str, layers: int) -> tuple[np.ndarray, np.ndarray]:
  """(steps [S], values [S, L]) of the per-layer metric `name` over the records that hold it."""
  rows = [r for r in records if f"{name}/layer_0" in r]
  steps = np.array([r["step"] for r in rows], np.int64)
  values = np.array([[r.get(f"{name}/layer_{l}", np.nan) for l in range(layers)] for r in rows], np.float64)
  return steps, values.reshape(len(rows), layers)


def end_value(member: dict, name: str) -> np.ndarray:
  """[L]: the mean of the last END_POINTS logged values of `name`."""
  _, values = series(member["metrics"], name, num_layers(member))
  return np.nanmean(values[-END_POINTS:], axis=0) if len(values) else np.full(num_layers(member), np.nan)


def across_members(members: dict, fn) -> list:
  """Per layer, the mean interval across members of fn(member) [L]."""
  values_NxL = np.array([fn(member) for member in members.values()], np.float64)
  return [mean_interval(values_NxL[:, l]) for l in range(values_NxL.shape[1])]


def distinct_deaths(member: dict) -> np.ndarray:
  """[L]: units that died at least once, and [L] of those that came back."""
  layers = num_layers(member)
  died = [set() for _ in range(layers)]
  for event in member.get("events", []):
    if event["event"] == "died":
      died[event["layer"]].add(event["unit"])
  return np.array([len(d) for d in died], np.float64)


def fmt(interval) -> str:
  if not np.isfinite(interval.mean):
    return "n/a"
  digits = 3 if abs(interval.mean) < 10 else 1
  return f"{interval.mean:.{digits}f} [{interval.low:.{digits}f}, {interval.high:.{digits}f}]"


# ----------------------------------------------------------------------------------------------------------
# Tables.

TABLE_COLUMNS = (
    ("active per token (training batch)", lambda m: end_value(m, "ffn/active_token")),
    ("active per sequence (held-out probe)", lambda m: end_value(m, "probe/ffn/active_seq")),
    ("used in the batch (held-out probe)", lambda m: end_value(m, "probe/ffn/active_batch")),
    ("used in the batch (training probe)", lambda m: end_value(m, "probe_train/ffn/active_batch")),
    ("dead (fraction)", lambda m: end_value(m, "ffn/dead")),
    ("units that died", distinct_deaths),
)
QUANTILE_COLUMNS = tuple((f"active per token {q} (held-out probe)", lambda m, q=q: end_value(
    m, f"probe/ffn/active_token_{q}")) for q in QUANTILES) + tuple(
    (f"unit firing frequency {q} (held-out probe)", lambda m, q=q: end_value(m, f"probe/ffn/unit_frequency_{q}"))
    for q in QUANTILES)
PERSISTENCE_COLUMNS = (
    ("sequence Jaccard", lambda m: end_value(m, "persist/seq_jaccard")),
    ("random sets of the same sizes", lambda m: end_value(m, "persist/seq_jaccard_null")),
    ("sequence lift", lambda m: end_value(m, "persist/seq_lift")),
    ("batch Jaccard", lambda m: end_value(m, "persist/batch_jaccard")),
    ("batch null", lambda m: end_value(m, "persist/batch_jaccard_null")),
    ("frequency correlation", lambda m: end_value(m, "persist/frequency_corr")),
)


def table(widths: dict, columns) -> tuple[str, dict]:
  header = "| d_ff | layer | " + " | ".join(name for name, _ in columns) + " |"
  lines = [header, "|" + "---|" * (len(columns) + 2)]
  numbers: dict = {}
  for width, members in widths.items():
    intervals = {name: across_members(members, fn) for name, fn in columns}
    layers = len(next(iter(intervals.values())))
    for l in range(layers):
      lines.append(f"| {width:,} | {l} | " + " | ".join(fmt(intervals[name][l]) for name, _ in columns) + " |")
    numbers[str(width)] = {name: [vars(i) for i in values] for name, values in intervals.items()}
  return "\n".join(lines), numbers


def loss_table(widths: dict) -> tuple[str, dict]:
  lines = ["| d_ff | members | final training loss | final held-out loss | best held-out loss (step) |",
           "|---|---|---|---|---|"]
  numbers = {}
  for width, members in widths.items():
    train, heldout, best = [], [], []
    for member in members.values():
      records = member["metrics"]
      train.append(np.mean([r["train/loss"] for r in records if "train/loss" in r][-END_POINTS:]))
      evals = [(r["step"], r["eval/loss"]) for r in records if "eval/loss" in r]
      heldout.append(evals[-1][1])
      best.append(min(evals, key=lambda e: e[1]))
    lines.append(f"| {width:,} | {len(members)} | {fmt(mean_interval(train))} | {fmt(mean_interval(heldout))} | "
                 + ", ".join(f"{b[1]:.3f} ({b[0]})" for b in best) + " |")
    numbers[str(width)] = {"train": train, "heldout": heldout, "best": best}
  return "\n".join(lines), numbers


def death_table(widths: dict) -> tuple[str, dict]:
  """Per width and member (pooled over layers): deaths analysed, per feature the paired difference from
  matched survivors with Cohen's d_z and the permutation p-value, `lensjax deaths`' reading, and the fraction of
  first deaths whose unit last fired before EARLY_STEP (from neuron_events.jsonl)."""
  lines = ["| d_ff | member | deaths (analysed) | " + " | ".join(
      f"{f}: dying − matched, d_z | {f}: p" for f in DEATH_FEATURES) + f" | reading | last fired before step "
      f"{EARLY_STEP} |", "|" + "---|" * (5 + 2 * len(DEATH_FEATURES))]
  numbers = {}
  for width, members in widths.items():
    for index, member in members.items():
      pooled = member.get("deaths", {}).get("pooled", {})
      counts = pooled.get("counts", {})
      cells = []
      for feature in DEATH_FEATURES:
        result = pooled.get("features", {}).get(feature, {})
        matched, null = result.get("matched", {}), result.get("null", {})
        diff, d, p = matched.get("mean_difference"), matched.get("cohens_d"), null.get("p_value")
        cells.append("n/a" if diff is None else f"{diff:.3g}, " + ("n/a" if d is None else f"{d:.2f}"))
        cells.append("n/a" if p is None else f"{p:.3g}")
      last_fired = first_deaths(member.get("events", [])).last_fired_D
      early = float(np.mean((last_fired >= 0) & (last_fired < EARLY_STEP))) if len(last_fired) else None
      lines.append(f"| {width:,} | {index} | {counts.get('deaths', 0)} ({counts.get('included', 0)}) | "
                   + " | ".join(cells) + f" | {pooled.get('reading', 'n/a')} | "
                   + ("n/a" if early is None else f"{early:.3f}") + " |")
      numbers[f"{width}/{index}"] = {"counts": counts, "reading": pooled.get("reading"),
                                     "last_fired_before_early_step": early, "features": {
          f: {k: v for k, v in pooled.get("features", {}).get(f, {}).items() if k != "null"}
          | {"null": {k: v for k, v in pooled.get("features", {}).get(f, {}).get("null", {}).items()
                      if k != "samples"}} for f in DEATH_FEATURES}}
  return "\n".join(lines), numbers


# ----------------------------------------------------------------------------------------------------------
# Figures.


def plot_over_training(widths: dict, name: str, ylabel: str, path: str, ylim=(0.0, None)) -> None:
  """One panel per width, one line per layer (mean across members, shaded t interval)."""
  fig, axes = plt.subplots(1, len(widths), figsize=(4.2 * len(widths), 3.4), sharey=True, squeeze=False)
  for ax, (width, members) in zip(axes[0], widths.items()):
    stacked = [series(m["metrics"], name, num_layers(m)) for m in members.values()]
    steps = stacked[0][0]
    count = min(len(s) for s, _ in stacked)
    values_NxSxL = np.array([v[:count] for _, v in stacked])
    for l in range(values_NxSxL.shape[2]):
      colour, style, marker = LAYER_STYLES[l % len(LAYER_STYLES)]
      column = [mean_interval(values_NxSxL[:, s, l]) for s in range(count)]
      mean = np.array([c.mean for c in column])
      half = np.nan_to_num(np.array([c.half_width for c in column]))
      ax.plot(steps[:count], mean, color=colour, linestyle=style, marker=marker, markevery=max(count // 8, 1),
              markersize=4, label=f"layer {l}")
      ax.fill_between(steps[:count], mean - half, mean + half, color=colour, alpha=0.15, linewidth=0)
    ax.set_title(f"d_ff {width:,} ({len(members)} seeds)")
    ax.set_xlabel("training step")
    ax.set_ylim(*ylim)
    ax.grid(alpha=0.3)
  axes[0][0].set_ylabel(ylabel)
  axes[0][-1].legend(fontsize=8, loc="best")
  fig.tight_layout()
  fig.savefig(path, dpi=130)
  plt.close(fig)


def plot_end_by_layer(widths: dict, columns, ylabel: str, path: str) -> None:
  """End-of-training values per layer, one marker series per column, one panel per width."""
  fig, axes = plt.subplots(1, len(widths), figsize=(4.2 * len(widths), 3.4), sharey=True, squeeze=False)
  for ax, (width, members) in zip(axes[0], widths.items()):
    for k, (label, fn) in enumerate(columns):
      intervals = across_members(members, fn)
      x = np.arange(len(intervals)) + (k - (len(columns) - 1) / 2) * 0.12
      ax.errorbar(x, [i.mean for i in intervals], yerr=np.nan_to_num([i.half_width for i in intervals]),
                  fmt="os^Dvx"[k % 6], capsize=3, label=label)
    ax.set_title(f"d_ff {width:,}")
    ax.set_xlabel("layer")
    ax.set_xticks(range(len(intervals)))
    ax.set_ylim(0.0, None)
    ax.grid(alpha=0.3)
  axes[0][0].set_ylabel(ylabel)
  axes[0][-1].legend(fontsize=7, loc="best")
  fig.tight_layout()
  fig.savefig(path, dpi=130)
  plt.close(fig)


def plot_unit_frequency(widths: dict, path: str) -> None:
  """Distribution over units of the firing frequency at the last logged step (training batch), every member."""
  fig, axes = plt.subplots(1, len(widths), figsize=(4.2 * len(widths), 3.4), sharey=True, squeeze=False)
  bins = np.concatenate([[0.0], np.logspace(-4.5, 0, 28)])
  for ax, (width, members) in zip(axes[0], widths.items()):
    traces = [m["trace"] for m in members.values() if "trace" in m]
    if not traces:
      continue
    key = "frequency" if "frequency" in traces[0] else next(k for k in traces[0] if "frequency" in k)
    frequency_NxLxF = np.array([t[key] for t in traces], np.float64)
    for l in range(frequency_NxLxF.shape[1]):
      colour, style, _ = LAYER_STYLES[l % len(LAYER_STYLES)]
      values = frequency_NxLxF[:, l].ravel()
      counts, edges = np.histogram(np.maximum(values, 10 ** -4.5), bins=bins[1:])
      ax.step(edges[:-1], counts / values.size, where="post", color=colour, linestyle=style, label=f"layer {l}")
    ax.set_xscale("log")
    ax.set_title(f"d_ff {width:,}")
    ax.set_xlabel("firing frequency (leftmost bin: never fired)")
    ax.grid(alpha=0.3)
  axes[0][0].set_ylabel("fraction of units")
  axes[0][-1].legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=130)
  plt.close(fig)


def plot_death_nulls(widths: dict, path: str) -> None:
  """Per width (rows) and feature (columns): member 0's shuffled-time null with its observed mean."""
  fig, axes = plt.subplots(len(widths), len(DEATH_FEATURES), figsize=(4.0 * len(DEATH_FEATURES),
                                                                       2.8 * len(widths)), squeeze=False)
  for row, (width, members) in zip(axes, widths.items()):
    pooled = next(iter(members.values())).get("deaths", {}).get("pooled", {})
    for ax, feature in zip(row, DEATH_FEATURES):
      result = pooled.get("features", {}).get(feature, {})
      null = np.asarray(result.get("null", {}).get("samples", []), np.float64)
      null = null[np.isfinite(null)]
      if null.size and result.get("observed_mean") is not None:
        ax.hist(null, bins=40, color="0.6", label="null: shuffled death times")
        ax.axvline(result["observed_mean"], color="#d62728",
                   label=f"observed, p = {result['null']['p_value']:.3g} ({result['null']['direction']})")
        ax.legend(fontsize=7)
      ax.set_title(f"d_ff {width:,}, member 0: {feature}", fontsize=9)
      ax.set_xlabel(f"mean {feature} of the dying units")
      ax.set_ylabel("permutations")
  fig.tight_layout()
  fig.savefig(path, dpi=130)
  plt.close(fig)


def pilot(run_dir: str) -> int:
  records = [json.loads(line) for line in open(os.path.join(run_dir, "metrics.jsonl"))]
  overlaps = [(value, r["step"], key) for r in records for key, value in r.items()
              if key.startswith("ffn/active_overlap_heldout")]
  value, step, key = min(overlaps)
  events = [json.loads(line) for line in open(os.path.join(run_dir, "neuron_events.jsonl"))]
  died = {(e["layer"], e["unit"]) for e in events if e["event"] == "died"}
  revived = {(e["layer"], e["unit"]) for e in events if e["event"] == "revived"}
  print(f"held-out overlap: minimum {value:.3f} ({key}, step {step}) over {len(overlaps)} values")
  print(f"deaths: {sum(e['event'] == 'died' for e in events)} death events, {len(died)} distinct units died, "
        f"{len(died & revived)} of them came back")
  return 0


def main(argv: list[str]) -> int:
  if len(argv) == 2 and argv[0] == "--pilot":
    return pilot(argv[1])
  if len(argv) >= 3 and argv[0] == "--unpack":
    return unpack(argv[1:-1], argv[-1])
  if len(argv) != 2:
    print(__doc__, file=sys.stderr)
    return 2
  widths = load_widths(argv[0])
  out = argv[1]
  os.makedirs(out, exist_ok=True)
  sections, claims = [], {}
  for title, build in (("Loss", loss_table), ("Sparsity per layer, end of training", lambda w: table(w, TABLE_COLUMNS)),
                       ("Distributions, end of training", lambda w: table(w, QUANTILE_COLUMNS)),
                       ("Persistence between the training and the held-out probe, end of training",
                        lambda w: table(w, PERSISTENCE_COLUMNS)),
                       ("Neuron death (lensjax deaths, pooled over layers)", death_table)):
    text, numbers = build(widths)
    sections.append(f"## {title}\n\n{text}\n")
    claims[title] = numbers
  with open(os.path.join(out, "summary.md"), "w") as f:
    f.write("# Tables of the layer-sparsity runs\n\nWritten by benchmarks/layer_sparsity_figures.py; the claims, "
            "predictions and the verdict table are on docs/results/layer_sparsity.md.\n\n" + "\n".join(sections))
  with open(os.path.join(out, "claims.json"), "w") as f:
    json.dump(claims, f, indent=1, default=float)
  plot_over_training(widths, "ffn/active_token", "fraction of units active per token", f"{out}/active_token.png")
  plot_over_training(widths, "probe/ffn/active_seq", "fraction used per held-out sequence",
                     f"{out}/active_seq.png", ylim=(0.0, 1.02))
  plot_over_training(widths, "probe/ffn/active_batch", "fraction used in 8,192 held-out tokens",
                     f"{out}/active_batch.png", ylim=(0.0, 1.02))
  plot_over_training(widths, "ffn/dead", "fraction of units dead", f"{out}/dead.png")
  plot_over_training(widths, "persist/seq_lift", "sequence overlap above chance (lift)", f"{out}/persistence.png",
                     ylim=(None, None))
  plot_end_by_layer(widths, QUANTILE_COLUMNS[:4], "fraction active per held-out token",
                    f"{out}/token_quantiles.png")
  plot_unit_frequency(widths, f"{out}/unit_frequency.png")
  plot_death_nulls(widths, f"{out}/death_nulls.png")
  print(open(os.path.join(out, "summary.md")).read())
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
