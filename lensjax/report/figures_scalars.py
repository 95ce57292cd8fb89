"""Scalars over training: loss, next-token and whole-sequence entropy, any named curves.

Every function takes (steps, values) series and a path and returns the path.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
from matplotlib import colormaps

from lensjax.report.plotting import (RUN_CMAP, STEP_LABEL, Series, any_positive, finite, log_scale, marker_for,
                                     new_figure, save, sequential_colors)


def loss_figure(train: Series | None, evaluation: Series | None, path: str, target_entropy: float | None = None) -> str:
  """Train and held-out loss; the target's entropy, when known, is the floor the loss can reach."""
  fig, axes = new_figure(1, panel_width=7.0)
  ax = axes[0, 0]
  if train is not None:
    ax.plot(train[0], finite(train[1]), color="tab:blue", linewidth=1.4, marker=marker_for(train[0].size),
            markersize=3, label="train loss")
  if evaluation is not None and evaluation[0].size:
    ax.plot(evaluation[0], finite(evaluation[1]), color="tab:orange", linewidth=1.8, marker="s", markersize=5,
            label="held-out loss")
  if target_entropy is not None and math.isfinite(target_entropy):
    ax.axhline(target_entropy, color="gray", linestyle="--", linewidth=1.2,
               label=f"target entropy {target_entropy:.3f} (the floor)")
  ax.set_xlabel(STEP_LABEL)
  ax.set_ylabel("cross-entropy (nats per token)")
  ax.set_title("Loss")
  ax.grid(alpha=0.3)
  ax.legend()
  return save(fig, path)


def _model_against_target(ax, model: Series | None, target: Series | None, symbols: tuple[str, str], ylabel: str,
                          title: str) -> None:
  """The model's and the target's entropy over training on one axis (either may be missing)."""
  for data, label, color in ((model, f"model {symbols[0]}", "tab:blue"), (target, f"target {symbols[1]}", "tab:gray")):
    if data is not None:
      ax.plot(data[0], finite(data[1]), color=color, marker=marker_for(data[0].size), markersize=3, label=label)
  ax.set_xlabel(STEP_LABEL)
  ax.set_ylabel(ylabel)
  ax.set_title(title)
  ax.grid(alpha=0.3)
  ax.legend()


def entropy_figure(model: Series | None, target: Series | None, kl: Series | None, path: str) -> str:
  """Entropy of the model's next-token distribution against the target's; KL(target ‖ model) beside it."""
  fig, axes = new_figure(2 if kl is not None else 1, panel_width=5.5)
  _model_against_target(axes[0, 0], model, target, ("H(q)", "H(p)"), "entropy (nats per token)",
                        "Next-token entropy: model vs target")
  if kl is not None:
    ax = axes[0, 1]
    ax.plot(kl[0], finite(kl[1]), color="tab:purple", marker=marker_for(kl[0].size), markersize=3)
    if any_positive(kl[1]):
      log_scale(ax)
    ax.set_xlabel(STEP_LABEL)
    ax.set_ylabel("KL(p ‖ q) (nats per token)")
    ax.set_title("KL from target to model")
    ax.grid(alpha=0.3, which="both")
  return save(fig, path)


def sequence_entropy_figure(model: Series, target: Series, kl: Series | None, path: str) -> str:
  """Whole-sequence H(Q) and H(P) over training; beside it their difference, with −KL(P ‖ Q) for scale.

  The difference spans decades (nats at the start, hundredths at the end) and changes sign, so it is drawn on
  a symmetric log axis, linear within ±0.01 nats.
  """
  fig, axes = new_figure(2, panel_width=5.5)
  _model_against_target(axes[0, 0], model, target, ("H(Q)", "H(P)"), "entropy of the predicted tokens given x_0 (nats)",
                        "Whole-sequence entropy: model vs target")
  ax = axes[0, 1]
  steps = np.intersect1d(model[0], target[0])
  gap = finite(model[1][np.isin(model[0], steps)]) - finite(target[1][np.isin(target[0], steps)])
  ax.plot(steps, gap, color="tab:blue", marker=marker_for(steps.size), markersize=3, label="H(Q) − H(P)")
  if kl is not None:
    ax.plot(kl[0], -finite(kl[1]), color="tab:purple", linestyle="--", marker=marker_for(kl[0].size), markersize=3,
            label="−KL(P ‖ Q)")
  ax.axhline(0.0, color="gray", linewidth=0.9)
  ax.set_yscale("symlog", linthresh=0.01)
  ax.set_xlabel(STEP_LABEL)
  ax.set_ylabel("nats per sequence (symmetric log)")
  ax.set_title("Entropy gap over training")
  ax.grid(alpha=0.3, which="both")
  ax.legend()
  return save(fig, path)


def scalar_curves(curves: Mapping[str, Series], title: str, ylabel: str, path: str, legend_title: str | None = None,
                  ordered: bool = False, log_y: bool = False) -> str:
  """One line per named scalar series over training.

  `ordered` colours the lines along a sequential map, for series that form a
  ladder (runs of growing size); otherwise they get distinct categorical colours.
  """
  fig, axes = new_figure(1, panel_width=7.0)
  ax = axes[0, 0]
  colors = (sequential_colors(len(curves), RUN_CMAP) if ordered
            else [colormaps["tab10"](i % 10) for i in range(len(curves))])
  for color, (label, (steps, values)) in zip(colors, curves.items()):
    ax.plot(steps, finite(values), color=color, linewidth=1.4, marker=marker_for(steps.size), markersize=3, label=label)
  if log_y and any(any_positive(values) for _, values in curves.values()):
    log_scale(ax)
  ax.set_xlabel(STEP_LABEL)
  ax.set_ylabel(ylabel)
  ax.set_title(title)
  ax.grid(alpha=0.3)
  if len(curves) > 1 or legend_title:
    ax.legend(title=legend_title, fontsize="small")
  return save(fig, path)
