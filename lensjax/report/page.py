"""The report's `index.md`: a table per run, then the figures with one-line captions.

Numbers on the page come from `summarize_run`, a pure function of the run's
records, so the page can be checked against hand-computed averages. Sections
appear only when their data exist: a run without a probe batch or without
evaluation simply has fewer lines.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Sequence

import numpy as np

from lensjax.analysis.growth import growth_exponent
from lensjax.analysis.records import series
from lensjax.report import runs as runs_lib
from lensjax.report.intervals import t_critical
from lensjax.report.runs import RunRecord
from lensjax.report.sizes import Estimate, SizePoint

INDEX_FILE = "index.md"
# Per-layer families shown as numbers in each run's table: (metric family, column title).
TABLE_FAMILIES = (
    ("ffn/active_token", "FFN active per token"),
    ("ffn/dead", "FFN dead"),
    ("attn/bypass", "attention bypass"),
)
# Deep models would make the per-layer table a page long; the figures carry every layer.
MAX_TABLE_LAYERS = 16
MISSING = "–"


@dataclasses.dataclass(frozen=True)
class FigureEntry:
  """A figure file (relative to the report directory), its alt text and what to look at."""
  file: str
  title: str
  caption: str


def figure_entry(path: str, title: str, caption: str) -> FigureEntry:
  """The page's entry of the figure at `path`, linked by its bare file name."""
  return FigureEntry(file=os.path.basename(path), title=title, caption=caption)


@dataclasses.dataclass(frozen=True)
class Section:
  heading: str
  figures: list[FigureEntry]


@dataclasses.dataclass(frozen=True)
class RunSummary:
  """What the page says about one run in numbers and short phrases."""
  name: str
  path: str
  last_n: int
  settings: dict[str, str]  # column title -> value, in table order
  per_layer: dict[str, np.ndarray]  # metric family -> [L] mean over the last N logged steps
  facts: list[str]  # one-line observations, only those whose data exist


# --------------------------------------------------------------------------
# Numbers.


def format_number(value: float, digits: int = 3) -> str:
  """Short and stable: `digits` significant figures, thousands separators for big values, "–" for NaN."""
  if value is None or not math.isfinite(value):
    return MISSING
  if abs(value) >= 10 ** digits:
    return f"{value:,.0f}"
  return f"{value:.{digits}g}"


def data_description(data: dict) -> str:
  """The data source in a few words, e.g. "markov (order 1, V 16, T 64)"."""
  source = data.get("source")
  if source is None:
    return MISSING
  details = {
      "markov": [f"order {data.get('markov_order', '?')}", f"V {data.get('vocab_size', '?')}"],
      "teacher": [f"{data.get('teacher_layers', '?')}-layer teacher", f"V {data.get('vocab_size', '?')}"],
      "bytes": [os.path.basename(data.get("path") or "") or "built-in corpus"],
      "tokens": [os.path.basename(data.get("path") or "") or "?"],
  }.get(source, [])
  if "seq_len" in data:
    details.append(f"T {data['seq_len']}")
  return f"{source} ({', '.join(details)})" if details else str(source)


def config_settings(config: dict, records: list[dict]) -> dict[str, str]:
  """The run table's columns: model shape, data, steps and final losses."""
  model, data, train = config.get("model", {}), config.get("data", {}), config.get("train", {})
  text = lambda value: MISSING if value is None else str(value)
  return {
      "layers": text(model.get("num_layers")),
      "d_model": text(model.get("d_model")),
      "heads": text(model.get("num_heads")),
      "d_ff": text(model.get("d_ff")),
      "activation": text(model.get("activation")),
      "data": data_description(data),
      "steps": text(train.get("steps")),
      "final train loss": format_number(runs_lib.last_value(records, "train/loss"), 4),
      "final eval loss": format_number(runs_lib.last_value(records, "eval/loss"), 4),
  }


def summarize_run(run: RunRecord, last_n: int) -> RunSummary:
  """Everything the page writes about `run`, averages taken over its last `last_n` logged steps."""
  per_layer = {family: runs_lib.last_n_layer_means(run.records, family, last_n, run.num_layers)
               for family, _ in TABLE_FAMILIES if runs_lib.has_family(run, family)}
  return RunSummary(name=run.name, path=run.path, last_n=last_n, settings=config_settings(run.config, run.records),
                    per_layer=per_layer, facts=run_facts(run, last_n))


def run_facts(run: RunRecord, last_n: int) -> list[str]:
  """One-line observations about the run, each only when its metrics were logged."""
  records, facts = run.records, []
  steps = [r["step"] for r in records]
  facts.append(f"{len(records)} logged records, steps {min(steps)}–{max(steps)}; "
               f"“last {last_n}” means the last {last_n} logged values of a metric.")
  if runs_lib.has_metric(run, "train/loss"):
    facts.append(f"train loss, mean of the last {last_n}: "
                 f"{format_number(runs_lib.last_n_mean(records, 'train/loss', last_n), 4)} nats per token.")
  if runs_lib.has_metric(run, "entropy/model_token") and runs_lib.has_metric(run, "entropy/target_token"):
    model = runs_lib.last_n_mean(records, "entropy/model_token", last_n)
    target = runs_lib.last_n_mean(records, "entropy/target_token", last_n)
    kl = runs_lib.last_n_mean(records, "entropy/kl_token", last_n)
    side = "below" if model < target else "above"
    facts.append(f"next-token entropy, last {last_n}: model {format_number(model)} vs target {format_number(target)} "
                 f"nats ({side} the target), KL {format_number(kl)} nats.")
  if runs_lib.has_metric(run, "norm/params"):
    exponent = growth_exponent(*series(records, "norm/params"))
    if math.isfinite(exponent):
      facts.append(f"parameter norm grows like a·t^{exponent:.2f} + b (the growth exponent p of a·t^p + b, "
                   "least squares over every logged step; √t is t^0.50).")
  if runs_lib.has_metric(run, "perf/tokens_per_s"):
    facts.append(f"throughput, last {last_n}: "
                 f"{format_number(runs_lib.last_n_mean(records, 'perf/tokens_per_s', last_n))} tokens/s.")
  if run.events:
    died = sum(e.get("event") == "died" for e in run.events)
    revived = sum(e.get("event") == "revived" for e in run.events)
    facts.append(f"FFN unit events (neuron_events.jsonl): {died} died, {revived} revived.")
  return facts


def shown_layers(num_layers: int) -> list[int]:
  """All layers when few; else about `MAX_TABLE_LAYERS` evenly spaced ones, first and last always included."""
  if num_layers <= MAX_TABLE_LAYERS:
    return list(range(num_layers))
  return sorted(set(np.linspace(0, num_layers - 1, MAX_TABLE_LAYERS).round().astype(int).tolist()))


def first_last_phrase(values: np.ndarray) -> str:
  """ "first layer: 0.41, last layer: 0.12" """
  return f"first layer: {format_number(values[0])}, last layer: {format_number(values[-1])}"


# --------------------------------------------------------------------------
# Markdown.


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
  escape = lambda cell: str(cell).replace("|", "\\|")
  lines = ["| " + " | ".join(map(escape, header)) + " |", "|" + "---|" * len(header)]
  lines += ["| " + " | ".join(map(escape, row)) + " |" for row in rows]
  return "\n".join(lines) + "\n"


def settings_table(summaries: Sequence[RunSummary]) -> str:
  """One row per run: shape, data, steps, final losses."""
  header = ["run", *summaries[0].settings]
  return markdown_table(header, [[s.name, *s.settings.values()] for s in summaries])


def per_layer_markdown(summary: RunSummary) -> str:
  """The last-N per-layer table plus a first-vs-last line per family."""
  families = [(family, title) for family, title in TABLE_FAMILIES if family in summary.per_layer]
  if not families:
    return ""
  num_layers = max(summary.per_layer[family].size for family, _ in families)
  if num_layers == 0:
    return ""
  rows = []
  for layer in shown_layers(num_layers):
    label = f"{layer} (first)" if layer == 0 else f"{layer} (last)" if layer == num_layers - 1 else str(layer)
    rows.append([label] + [format_number(summary.per_layer[f][layer]) if layer < summary.per_layer[f].size
                           else MISSING for f, _ in families])
  lines = [f"Per layer, mean of the last {summary.last_n} logged steps"
           + (" (evenly spaced layers; the figures show all):" if num_layers > MAX_TABLE_LAYERS else ":"), ""]
  lines.append(markdown_table(["layer", *(f"{title} (`{family}`)" for family, title in families)], rows))
  lines += [f"- **{title}** — {first_last_phrase(summary.per_layer[family])}" for family, title in families]
  return "\n".join(lines) + "\n"


def run_markdown(summary: RunSummary, sections: Sequence[Section]) -> str:
  """A run's heading, its settings table, facts, per-layer numbers and figure sections."""
  parts = [f"## Run `{summary.name}`\n", f"Directory: `{summary.path}`\n", settings_table([summary])]
  parts.append("\n".join(f"- {fact}" for fact in summary.facts) + "\n")
  per_layer = per_layer_markdown(summary)
  if per_layer:
    parts.append(per_layer)
  parts += [section_markdown(section, level=3) for section in sections if section.figures]
  return "\n".join(parts)


def section_markdown(section: Section, level: int) -> str:
  lines = ["#" * level + " " + section.heading, ""]
  for figure in section.figures:
    # Markdown viewers show PNG and SVG inline; a PDF (for papers) is linked instead.
    shown = f"[{figure.title} (PDF)]" if figure.file.endswith(".pdf") else f"![{figure.title}]"
    lines += [f"{shown}({figure.file})", "", f"*{figure.caption}*", ""]
  return "\n".join(lines)


def page_markdown(summaries: Sequence[RunSummary], run_sections: Sequence[Sequence[Section]],
                  comparison: Section | None, shown: Sequence[int] | None = None,
                  replicas: dict[str, list[str]] | None = None, points: Sequence[SizePoint] = (),
                  by_size: Section | None = None, ensembles: str = "") -> str:
  """The whole page: title, (when several runs) a comparison, seed ensembles, the models against size, then one
  part per run.

  `summaries` covers every run; `run_sections` only the runs `shown` (indices into `summaries`, all by
  default); `replicas` maps a shown run to the seed replicas it stands for.
  """
  shown = list(range(len(summaries))) if shown is None else list(shown)
  names = ", ".join(f"`{s.name}`" for s in summaries)
  subject = summaries[0].name if len(summaries) == 1 else f"{len(summaries)} runs"
  title = f"# lensjax report: {subject}"
  intro = (f"Runs: {names}. Averages are over the last {summaries[0].last_n} logged steps; "
           "step numbers are training steps; losses and entropies are in nats per token "
           "unless marked as whole-sequence; "
           "colour darkens towards the first layer in every per-layer figure.\n")
  parts = [title + "\n", intro]
  if len(summaries) > 1:
    parts += ["## Comparison across runs\n", settings_table(summaries)]
    if replicas:
      stands = "; ".join(f"`{run}` for {', '.join(f'`{r}`' for r in others)}" for run, others in replicas.items())
      parts.append(f"Seed replicas (runs whose configs differ only in their seeds: `train.seed`, `data.seed`, "
                   f"`data.order_seed`) get one set of per-run and "
                   f"side-by-side figures, the first one's: {stands}. Every run is in the table above and in the "
                   "figures against model size.\n")
    if comparison is not None and comparison.figures:
      parts.append(section_markdown(dataclasses.replace(comparison, heading="Side by side"), level=3))
  if ensembles:
    parts.append(ensembles)
  if points:
    parts.append(size_markdown(points, by_size))
  parts += [run_markdown(summaries[i], sections) for i, sections in zip(shown, run_sections)]
  return "\n".join(parts).rstrip() + "\n"


def format_estimate(estimate: Estimate, decimals: int = 4) -> str:
  """ "7.1724 ± 0.0031" (one standard error); the bare value when it has no spread; "–" when missing."""
  if estimate.n == 0 or not math.isfinite(estimate.mean):
    return MISSING
  value = f"{estimate.mean:.{decimals}f}"
  return value if not estimate.err or not math.isfinite(estimate.err) else f"{value} ± {estimate.err:.{decimals}f}"


def layer_summary(reductions: dict[str, Estimate]) -> str:
  """ "0.185 ± 0.006 (0.135 / 0.235)": the mean over layers with its error, then the first and last layer."""
  mean = format_estimate(reductions["mean"], 3)
  if mean == MISSING:
    return MISSING
  return f"{mean} ({format_number(reductions['first'].mean)} / {format_number(reductions['last'].mean)})"


def size_table(points: Sequence[SizePoint]) -> str:
  """One row per model (seed replicas together): whole-sequence entropies, fit, final loss and sparsity."""
  header = ["model", "runs", "parameters", "H(P)", "H(Q)", "H(Q) − H(P)", "KL(P‖Q)", "eval loss per token",
            "H(P)/T", "FFN active per token: layer mean (first / last layer)",
            "attention bypass: layer mean (first / last layer)"]
  rows = []
  for p in points:
    rate = p.target_entropy.mean / p.seq_len if p.seq_len else math.nan
    rows.append([p.label, str(len(p.runs)), f"{p.num_params:,}", format_estimate(p.target_entropy),
                 format_estimate(p.model_entropy), format_estimate(p.gap), format_estimate(p.kl),
                 format_estimate(p.eval_loss), format_number(rate, 4),
                 layer_summary(p.layers["ffn/active_token"]), layer_summary(p.layers["attn/bypass"])])
  return markdown_table(header, rows)


def size_markdown(points: Sequence[SizePoint], figures_section: Section | None) -> str:
  """The models against size: what the numbers are, the table, the figures."""
  seq_len = points[0].seq_len
  parts = ["## Against model size\n",
           f"From each run's entropy.json (written by `lensjax sweep` at the final step): H(P), H(Q), their "
           f"difference and KL(P‖Q) are whole-sequence values in nats, over the {seq_len} predicted tokens given "
           "x_0; H(P)/T is the target's entropy per predicted token, the expected held-out loss of a perfect "
           "model. Seed replicas are averaged; ± is one standard error over them (and of the estimate itself when "
           f"it is Monte Carlo), not a 95% interval{_interval_hint(points)}.\n", size_table(points)]
  if figures_section is not None and figures_section.figures:
    parts.append(section_markdown(dataclasses.replace(figures_section, heading="Figures against size"), level=3))
  return "\n".join(parts)


def _interval_hint(points: Sequence[SizePoint]) -> str:
  """How many standard errors a 95% interval spans for the largest replica count here (Student t, n − 1 df)."""
  n = max(len(p.runs) for p in points)
  if n < 2:
    return ""
  return f" (over {n} seeds the 95% interval of the seed spread is ± t_{{0.975, {n - 1}}} = {t_critical(n):.3f} of them)"


def write_page(out_dir: str, markdown: str) -> str:
  path = os.path.join(out_dir, INDEX_FILE)
  with open(path, "w", encoding="utf-8") as f:
    f.write(markdown)
  return path
