"""The report's section against model size: H(Q) and H(P), the gap and KL, FFN activity and attention bypass.

One point per model (seed replicas folded, lensjax/report/sizes.py), drawn
against its parameter count. Models of another block (no FFN, no attention)
get their own markers and are not joined to the ladder.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from lensjax.report import figures_size, sizes
from lensjax.report.intervals import t_critical
from lensjax.report.page import Section, figure_entry

# How a model's block is drawn: (marker, line between the points of that block, legend suffix).
BLOCK_STYLES = {"attention+ffn": ("o", "-", ""), "attention_only": ("s", "none", ", no FFN"),
                "ffn_only": ("^", "none", ", no attention")}
REDUCTION_STYLES = {"mean": "tab:blue", "first": "tab:green", "last": "tab:red"}


def _by_block(points: Sequence[sizes.SizePoint]) -> list[tuple[str, list[sizes.SizePoint]]]:
  blocks = sorted({p.block for p in points}, key=lambda b: list(BLOCK_STYLES).index(b) if b in BLOCK_STYLES else 9)
  return [(block, [p for p in points if p.block == block]) for block in blocks]


def _series(points: Sequence[sizes.SizePoint], value, label: str, color: str, named: bool = True,
            linestyle: str | None = None, by_block: bool = True,
            block_legend: bool = True) -> list[figures_size.SizeSeries]:
  """One series per model block (each its own marker; only full blocks form a connected ladder).

  `by_block=False` draws one series over all points (a property of the target, not of the model);
  `block_legend=False` keeps the other blocks' series out of the legend (their markers say it).
  """
  groups = _by_block(points) if by_block else [("attention+ffn", list(points))]
  out = []
  for block, members in groups:
    marker, line, suffix = BLOCK_STYLES.get(block, ("D", "none", f", {block}"))
    estimates = [value(p) for p in members]
    legend = label + suffix if not suffix or block_legend else "_" + label + suffix  # "_": not in the legend
    out.append(figures_size.SizeSeries(
        legend, np.array([p.num_params for p in members], np.float64),
        np.array([e.mean for e in estimates]), np.array([e.err for e in estimates]), color=color, marker=marker,
        linestyle=linestyle if linestyle is not None and line != "none" else line,
        labels=tuple(p.label for p in members) if named else None))
  return out


# A model whose gap is this many times the typical one (an ablation that cannot fit) would flatten the rest.
SYMLOG_RATIO = 10.0


def symlog_threshold(values: Sequence[float]) -> float | None:
  """None (a linear axis) unless the largest |value| exceeds SYMLOG_RATIO times the median; then 2 × the median."""
  magnitudes = np.abs(np.asarray(values, np.float64))
  magnitudes = magnitudes[np.isfinite(magnitudes)]
  if magnitudes.size < 3:
    return None
  typical = float(np.median(magnitudes))
  if typical <= 0 or magnitudes.max() <= SYMLOG_RATIO * typical:
    return None
  return 2 * typical


def size_figures(points: Sequence[sizes.SizePoint], out_dir: str, last_n: int) -> Section:
  """H(Q) against H(P), gap and KL, FFN activity and attention bypass, each against the parameter count."""
  output = lambda what: os.path.join(out_dir, f"size_{what}.png")
  seq_len = points[0].seq_len
  seeds = max(len(p.runs) for p in points)
  bars = ("error bars: ± one standard error over seed replicas (and of the estimate itself when it is Monte "
          "Carlo; exact enumeration has none), not a 95% interval, which over "
          f"{seeds} seeds is ± {t_critical(seeds):.3f} standard errors (Student t, {seeds - 1} df)" if seeds > 1 else
          "one run per model, so the error bars show only the estimate's own standard error (none when exact)")
  sentence = bars[:1].upper() + bars[1:]  # str.capitalize would lower-case "Monte Carlo" and "Student"
  # Said on the figure itself too, so a copied PNG does not pass one standard error off as an interval.
  marks = "; bars: ± 1 standard error over seeds" if seeds > 1 else "; bars: the estimate's own standard error"
  entries = []
  path = figures_size.against_size([figures_size.SizePanel(
      "model H(Q) and target H(P)", f"entropy of the {seq_len} predicted tokens given x_0 (nats)",
      _series(points, lambda p: p.model_entropy, "model H(Q)", "tab:blue")
      + _series(points, lambda p: p.target_entropy, "target H(P)", "tab:gray", named=False, linestyle="--",
                by_block=False))],
      "Whole-sequence entropy against model size" + marks, output("entropy"))
  entries.append(figure_entry(path, "H(Q) and H(P) against size",
                        f"Exact whole-sequence entropy of each model's law Q and of the target P at the end of "
                        f"training: Q below P means the model learned a lower-entropy law than the data's (Ren & "
                        f"Liu 2025). {sentence}."))
  threshold = symlog_threshold([p.gap.mean for p in points])
  path = figures_size.against_size([
      figures_size.SizePanel("entropy gap H(Q) − H(P)", "H(Q) − H(P) (nats per sequence"
                             + (", symmetric log)" if threshold else ")"),
                             _series(points, lambda p: p.gap, "H(Q) − H(P)", "tab:blue"), zero_line=True,
                             symlog_threshold=threshold),
      figures_size.SizePanel("KL(P ‖ Q)", "KL(P ‖ Q) (nats per sequence, log)",
                             _series(points, lambda p: p.kl, "KL(P ‖ Q)", "tab:purple"), log_y=True)],
      "Entropy gap and fit against model size" + marks, output("gap_kl"))
  entries.append(figure_entry(path, "entropy gap and KL against size",
                        "Left: below zero, the model is more certain than the target. Right: how far Q is from P "
                        "at all; a gap much smaller than the KL is within the misfit. " + sentence + "."))
  panels = []
  for family, title, log_y in sizes.SIZE_FAMILIES:
    series = [s for key, label in sizes.LAYER_REDUCTIONS
              for s in _series(points, lambda p, f=family, k=key: p.layers[f][k], label, REDUCTION_STYLES[key],
                               named=key == "mean", linestyle="-" if key == "mean" else ":",
                               block_legend=key == "mean")]
    if any(np.isfinite(s.y).any() for s in series):
      panels.append(figures_size.SizePanel(title, f"{family}, mean of the last {last_n} logged steps"
                                           + (" (log)" if log_y else ""), series, log_y=log_y))
  if panels:
    path = figures_size.against_size(panels, "Dynamic sparsity against model size" + marks,
                                     output("sparsity"))
    entries.append(figure_entry(path, "FFN activity and attention bypass against size",
                          f"Per model, the last-{last_n} average of each layer, reduced to the mean over layers, "
                          "the first and the last layer: Ren & Liu 2025 report fewer active FFN units and more "
                          "attention bypass in larger models. " + sentence + "."))
  return Section("Against model size", entries)
