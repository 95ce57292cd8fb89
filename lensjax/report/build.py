"""`lensjax report`: which figures a run gets, their file names, and the page that shows them.

Each run's figures are named `{run}_{what}.png` (or .pdf / .svg with `--format`, for papers) in one flat output
folder, so
`index.md` links them with bare file names and the folder can be moved or
zipped whole. A figure is drawn only when its metrics were logged. Runs that
`lensjax sweep` trained carry an entropy.json; when two or more models do,
`size_*.png` draws H(Q) against H(P), the gap, KL and sparsity against the
parameter count (lensjax/report/sizes.py). What `lensjax hessian`, `entropy`, `saturation`
and `spikes` left in a run directory, and the in-training `hessian/*`, make
its "Analyses" section (lensjax/report/analyses_section.py). An ensemble directory stands for
its members; replicas of one setting get a seed-ensemble section, each scalar
with its 95% Student-t interval over members (lensjax/report/ensemble.py).
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Sequence

import numpy as np

from lensjax.analysis.records import family_layers, series
from lensjax.errors import InputError
from lensjax.report import ensemble, ensemble_section, figures_events, figures_growth, figures_layers, figures_scalars
from lensjax.report import page
from lensjax.report.analyses_section import analyses_section
from lensjax.report import runs as runs_lib
from lensjax.report import sizes
from lensjax.report.page import FigureEntry, Section, figure_entry
from lensjax.report.plotting import Series, log_color_norm
from lensjax.report.runs import RunRecord
from lensjax.report.size_section import size_figures
from lensjax.report.tokens_section import tokens_markdown

DEFAULT_LAST_N = 5
# Figure file formats: PNG for the page, PDF or SVG (vector) for papers; matplotlib picks the writer by extension.
FORMATS = ("png", "pdf", "svg")
# Where a per-layer statistic was measured: (metric prefix, panel title).
VARIANTS = (("", "training batch"), ("probe/", "fixed probe batch"), ("eval/", "held-out batches"))


@dataclasses.dataclass(frozen=True)
class FamilyView:
  """How to draw a per-layer family `family/layer_{l}`."""
  family: str
  title: str
  ylabel: str
  caption: str
  log_y: bool = False
  heatmap: bool = False
  compare: bool = False  # drawn across runs when several are given
  unit_interval: bool = False  # a fraction: heat maps span [0, 1]
  short: str = ""  # colour-bar label of the heat map; `ylabel` when empty
  log_color: bool = False  # the heat map's colours on a log scale when its values span decades


FRACTION_OF_UNITS = "fraction of FFN units"
FFN_VIEWS = (
    FamilyView("ffn/active_token", "FFN units active per token", f"{FRACTION_OF_UNITS} active on a token",
               "Token-level activity: does it fall during training, and do the first and last layers move in "
               "opposite directions (Wild & Anderson 2024)?", heatmap=True, compare=True, unit_interval=True,
               short="fraction of units active per token"),
    FamilyView("ffn/active_seq", "FFN units active in a sequence",
               f"{FRACTION_OF_UNITS} active on ≥1 token of a sequence",
               "Sequence-level activity: its gap above token-level activity is how many different units one "
               "sequence recruits.", compare=True, unit_interval=True),
    FamilyView("ffn/active_batch", "FFN units active in a batch",
               f"{FRACTION_OF_UNITS} active on ≥1 token of the batch",
               "Batch-level activity: one minus it is the share of units that no token of the batch uses — the "
               "candidates for dying.", compare=True, unit_interval=True),
    FamilyView("ffn/dead", "Dead FFN units", f"{FRACTION_OF_UNITS} silent for stats.dead_window steps",
               "Dead units: look for sudden jumps, and whether they line up with loss spikes (Ren & Liu 2025).",
               heatmap=True, compare=True, unit_interval=True, short="fraction of units dead"),
    FamilyView("ffn/active_overlap_heldout", "Active units shared with held-out data",
               "Jaccard overlap of active-unit sets (train vs held-out)",
               "Near 1: the same units fire on held-out inputs, so the sparsity pattern belongs to the weights, "
               "not to the batch.", unit_interval=True),
)
ATTENTION_VIEWS = (
    FamilyView("attn/bypass", "Attention bypass", "‖attention output‖ / ‖residual stream‖ (ratio)",
               "Small values: tokens pass attention by through the residual; larger models bypass it more "
               "(Ren & Liu 2025).", heatmap=True, compare=True, short="‖attn out‖ / ‖residual‖",
               # The first layer adds to a bare embedding (ratios of 10 and more), later ones to a grown stream.
               log_color=True),
    FamilyView("attn/max_logit", "Largest attention logit", "max q·k/√d_h (logit units)",
               "Growing logits push attention towards hard, argmax-like attention (Merrill et al. 2021); a sudden "
               "climb often comes before instability."),
    FamilyView("attn/sink", "Attention sink", "mean attention mass on key position 0",
               "How much attention parks on the first token (an attention sink)."),
)
OPTIMISER_VIEWS = (
    FamilyView("norm/params", "Parameter norm per block", "‖θ_l‖₂ (L2 norm of block l)",
               "Which blocks' weights grow fastest."),
    FamilyView("adam/g2_over_v", "Gradient² against Adam's v̂ per block", "mean g² / mean v̂ (ratio, log)",
               "Values far above 1 mean Adam's second-moment estimate is stale: the setting for Adam-driven loss "
               "spikes.", log_y=True),
)
# Scalar names that appear as one number per step when the model logs them unstacked.
ATTENTION_SCALARS = (("attn/max_logit", "largest attention logit"), ("attn/sink", "attention mass on position 0"))


def build_report(run_dirs: Sequence[str], out_dir: str, last_n: int = DEFAULT_LAST_N,
                 figure_format: str = "png") -> str:
  """Loads every run, draws its figures into `out_dir` and writes `out_dir/index.md`; returns its path."""
  if figure_format not in FORMATS:
    raise InputError(f"--format {figure_format} is not one of {', '.join(FORMATS)}; pass e.g. --format pdf.")
  if last_n < 1:
    raise InputError(f"--last must be at least 1, got {last_n}; pass e.g. --last {DEFAULT_LAST_N}.")
  if not run_dirs:
    raise InputError("no run directory given; pass one or more --workdir directories of `lensjax train`.")
  runs = runs_lib.read_runs(list(run_dirs))  # all read, ensembles expanded, before anything is written
  _make_output_dir(out_dir)
  prefixes = unique_prefixes([run.name for run in runs])
  # Seed replicas (configs equal but for their seeds) get one set of per-run figures, the first given's: the
  # others would repeat it. All of them are in the tables and in the figures against model size.
  groups = sizes.seed_groups(runs)
  shown = [group[0] for group in groups]
  replicas = {prefixes[group[0]]: [prefixes[i] for i in group[1:]] for group in groups if len(group) > 1}
  run_sections = [run_figures(runs[i], out_dir, prefixes[i], last_n, figure_format) for i in shown]
  comparison = (comparison_figures([runs[i] for i in shown], [prefixes[i] for i in shown], out_dir, last_n,
                                   figure_format) if len(shown) > 1 else None)
  summaries = [dataclasses.replace(page.summarize_run(run, last_n), name=prefix)
               for run, prefix in zip(runs, prefixes)]
  points = sizes.size_points(runs, last_n)
  by_size = size_figures(points, out_dir, last_n) if len(points) > 1 else None
  ensembles = ensemble_part(runs, prefixes, out_dir, last_n)
  markdown = page.page_markdown(summaries, run_sections, comparison, shown=shown, replicas=replicas,
                                points=points, by_size=by_size, ensembles=ensembles)
  held_out_text = tokens_markdown(runs, prefixes)
  return page.write_page(out_dir, markdown + ("\n" + held_out_text if held_out_text else ""))


def ensemble_part(runs: Sequence[RunRecord], prefixes: Sequence[str], out_dir: str, last_n: int) -> str:
  """The seed-ensemble section (lensjax/report/ensemble.py), runs named by their file prefixes; "" when none."""
  groups = [dataclasses.replace(g, names=tuple(prefixes[i] for i in g.members))
            for g in ensemble.summarised(ensemble.ensemble_groups(runs, last_n), runs)]
  if not groups:
    return ""
  files = unique_prefixes([group.label for group in groups])
  figures = [ensemble_section.ensemble_figures(group, runs, ensemble_section.figure_path(out_dir, file))
             for group, file in zip(groups, files)]
  return ensemble_section.ensemble_markdown(groups, figures, last_n)


def _make_output_dir(out_dir: str) -> None:
  if os.path.exists(out_dir) and not os.path.isdir(out_dir):
    raise InputError(f"--out {out_dir} is a file; pass a directory for the report.")
  try:
    os.makedirs(out_dir, exist_ok=True)
  except OSError as e:
    raise InputError(f"cannot create the report directory {out_dir} ({e.strerror}); pass a writable --out.") from None


def slug(text: str) -> str:
  """A file-name-safe version of a run or metric name."""
  return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_.") or "run"


def unique_prefixes(names: Sequence[str]) -> list[str]:
  """File prefixes per run; runs sharing a basename (seed0/run, seed1/run) get _2, _3, ..."""
  prefixes, seen = [], {}
  for name in names:
    base = slug(name)
    seen[base] = seen.get(base, 0) + 1
    prefixes.append(base if seen[base] == 1 else f"{base}_{seen[base]}")
  return prefixes


# --------------------------------------------------------------------------
# One run.


def run_figures(run: RunRecord, out_dir: str, prefix: str, last_n: int, figure_format: str = "png") -> list[Section]:
  """Every figure a run's metrics and analyses allow, grouped into the page's sections."""
  output = lambda what: os.path.join(out_dir, f"{prefix}_{what}.{figure_format}")
  sections = [
      Section("Loss and entropy", _loss_figures(run, output)),
      Section("FFN sparsity", [f for view in FFN_VIEWS for f in _family_figures(run, view, output)]
              + _neuron_event_figures(run, output)),
      Section("Attention", [f for view in ATTENTION_VIEWS for f in _family_figures(run, view, output)]
              + _attention_scalar_figures(run, output) + _head_entropy_figures(run, output, last_n)),
      Section("Parameter norm and optimiser", _norm_figures(run, output)
              + [f for view in OPTIMISER_VIEWS for f in _family_figures(run, view, output)]),
  ]
  analysed = analyses_section(run, output)
  if analysed is not None:
    sections.append(analysed)
  return [section for section in sections if section.figures]


def _optional_series(run: RunRecord, name: str) -> Series | None:
  return series(run.records, name) if runs_lib.has_metric(run, name) else None


def _loss_figures(run: RunRecord, output) -> list[FigureEntry]:
  entries = []
  train, evaluation = _optional_series(run, "train/loss"), _optional_series(run, "eval/loss")
  if train is not None or evaluation is not None:
    target = (runs_lib.last_n_mean(run.records, "entropy/target_token", 10 ** 9)
              if runs_lib.has_metric(run, "entropy/target_token") else None)
    path = figures_scalars.loss_figure(train, evaluation, output("loss"), target_entropy=target)
    entries.append(figure_entry(path, "loss", "Train and held-out loss; the dashed line, when shown, is the target's "
                                              "entropy, the lowest loss any model can reach."))
  model, target = _optional_series(run, "entropy/model_token"), _optional_series(run, "entropy/target_token")
  if model is not None or target is not None:
    kl = _optional_series(run, "entropy/kl_token")
    path = figures_scalars.entropy_figure(model, target, kl, output("entropy"))
    entries.append(figure_entry(path, "entropy", "Model entropy falling below the target's means the model is "
                                                 "more certain than the data warrant (Ren & Liu 2025); KL is the gap "
                                                 "in fit."))
  model, target = _optional_series(run, "eval/entropy_model_seq"), _optional_series(run, "eval/entropy_target_seq")
  if model is not None and target is not None:  # logging.entropy_every
    path = figures_scalars.sequence_entropy_figure(model, target, _optional_series(run, "eval/kl_seq"),
                                                   output("sequence_entropy"))
    entries.append(figure_entry(path, "whole-sequence entropy", "Whole-sequence H(Q) against H(P) during training "
                                                                "(logging.entropy_every): when the model's entropy "
                                                                "crosses below the target's, and how the gap compares "
                                                                "with the misfit KL(P ‖ Q)."))
  return entries


def _family_figures(run: RunRecord, view: FamilyView, output) -> list[FigureEntry]:
  panels = []
  for prefix, label in VARIANTS:
    if runs_lib.has_family(run, prefix + view.family):
      steps, values = runs_lib.layer_family(run.records, prefix + view.family,
                                            family_layers(run.names, prefix + view.family))
      panels.append(figures_layers.LayerPanel(label, steps, values))
  if not panels:
    return []
  name = slug(view.family.replace("/", "_"))
  path = figures_layers.layer_curves(panels, view.title, view.ylabel, output(name), log_y=view.log_y,
                                     floor_zero=view.unit_interval)
  panels_named = f" Panels: {', '.join(p.label for p in panels)}." if len(panels) > 1 else ""
  entries = [figure_entry(path, view.family, f"{view.caption} One line per layer.{panels_named}")]
  if view.heatmap and panels[0].label == VARIANTS[0][1]:
    steps, values = panels[0].steps, panels[0].values
    top = 1.0 if view.unit_interval else None
    path = figures_layers.layer_heatmap(steps, values, f"{view.title}, layer × step", view.short or view.ylabel,
                                        output(name + "_heatmap"), vmin=0.0, vmax=top, log_color=view.log_color)
    entries.append(figure_entry(path, view.family + " heat map",
                          "The same on the training batch as a heat map: bands show layers that differ, "
                          "vertical edges show sudden changes."))
  return entries


def _neuron_event_figures(run: RunRecord, output) -> list[FigureEntry]:
  if not run.events:
    return []
  name = "train/loss" if runs_lib.has_metric(run, "train/loss") else None
  steps = series(run.records, name)[0] if name else np.unique([r["step"] for r in run.records])
  num_layers = max(run.num_layers, 1 + max(int(e.get("layer", 0)) for e in run.events))
  path = figures_events.neuron_events_figure(run.events, steps, num_layers, output("neuron_events"))
  return [figure_entry(path, "neuron events", "Units that died or revived per layer between logging steps; below, "
                                              "how often they fired and Adam's v̂ at that moment — bursts of deaths "
                                              "with tiny v̂ point to optimiser-driven dying.")]


def _attention_scalar_figures(run: RunRecord, output) -> list[FigureEntry]:
  # Some runs log these as one scalar per step rather than per layer.
  entries = []
  for name, ylabel in ATTENTION_SCALARS:
    if runs_lib.has_metric(run, name) and not runs_lib.has_family(run, name):
      path = figures_scalars.scalar_curves({name: series(run.records, name)}, name, ylabel,
                                           output(slug(name.replace("/", "_"))))
      entries.append(figure_entry(path, name, f"{ylabel.capitalize()} over training, over all layers."))
  return entries


def _head_entropy_figures(run: RunRecord, output, last_n: int) -> list[FigureEntry]:
  entries = []
  for prefix, label in VARIANTS:
    family = prefix + "attn/entropy"
    if not any(name.startswith(family + "/layer_") for name in run.names):
      continue
    matrix = runs_lib.last_n_head_means(run.records, family, last_n)
    if matrix.size:
      path = figures_layers.head_heatmap(matrix, f"Attention entropy per head, {label}, last {last_n} logged steps",
                                         "entropy / log(visible keys)",
                                         output(slug(family.replace("/", "_")) + "_heads"))
      entries.append(figure_entry(path, family, "Normalised attention entropy per head: near 0 = the head attends to "
                                                "one key (argmax head), near 1 = it averages over all it sees."))
  return entries


def _norm_figures(run: RunRecord, output) -> list[FigureEntry]:
  path = figures_growth.growth_figure(run.records, output("norm_growth"))
  if path is None:
    return []
  entries = [figure_entry(path, "norm growth",
                          "Parameter norm with the laws fitted to it (√t, linear, t^¼, exponential; best by BIC) and the "
                          "growth exponent p of a·t^p + b: √t growth (Merrill et al. 2021) gives p = 0.5. Beside it each "
                          "block's norm, how far each step turns θ and whether updates push along θ (> 0) or against it.")]
  if runs_lib.has_metric(run, "adam/update_grad_cos"):
    path = figures_scalars.scalar_curves({"cos(update, −gradient)": series(run.records, "adam/update_grad_cos")},
                                         "Adam update against the gradient", "cosine", output("adam_update_grad_cos"))
    entries.append(figure_entry(path, "adam/update_grad_cos", "Near 1: Adam steps along the negative gradient; low "
                                                              "values mean the preconditioner rotates the step away "
                                                              "from it."))
  return entries


# --------------------------------------------------------------------------
# Several runs.


def comparison_figures(runs: Sequence[RunRecord], prefixes: Sequence[str], out_dir: str, last_n: int,
                       figure_format: str = "png") -> Section:
  """Losses over training and last-N per-layer statistics, one line per run, in the order given."""
  output = lambda what: os.path.join(out_dir, f"compare_{what}.{figure_format}")
  entries = []
  for name, title in (("train/loss", "Train loss"), ("eval/loss", "Held-out loss")):
    curves = {prefix: series(run.records, name)
              for run, prefix in zip(runs, prefixes) if runs_lib.has_metric(run, name)}
    if len(curves) > 1:
      path = figures_scalars.scalar_curves(curves, f"{title} by run", "cross-entropy (nats per token)",
                                           output(slug(name.replace("/", "_"))), legend_title="run", ordered=True)
      entries.append(figure_entry(path, name, f"{title} of every run on one axis."))
  for view in FFN_VIEWS + ATTENTION_VIEWS + OPTIMISER_VIEWS:
    per_run = {prefix: runs_lib.last_n_layer_means(run.records, view.family, last_n,
                                                   family_layers(run.names, view.family))
               for run, prefix in zip(runs, prefixes) if runs_lib.has_family(run, view.family)}
    if view.compare and len(per_run) > 1:
      spans_decades = view.log_color and log_color_norm(np.concatenate(list(per_run.values()))) is not None
      path = figures_layers.runs_by_layer(per_run, f"{view.title}: mean of the last {last_n} logged steps",
                                          view.ylabel + (" (log)" if spans_decades else ""),
                                          output(slug(view.family.replace("/", "_"))),
                                          log_y=view.log_y or spans_decades)
      entries.append(figure_entry(path, view.family, f"{view.title} per layer for each run: across a model-size "
                                                     "ladder, look for the trend with size and for where in depth it "
                                                     "happens."))
  return Section("Side by side", entries)
