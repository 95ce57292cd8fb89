"""One loss spike replayed (`lensjax spikes`): loss, curvature, Taylor terms and dead units on one step axis."""

from __future__ import annotations

import math

from matplotlib import colormaps
from matplotlib.figure import Figure

from lensjax.analysis.records import family_layers, metric_names, series
from lensjax.report.plotting import STEP_LABEL, save

SPIKE_DPI = 100


def spike_timeline_figure(entry: dict, timeline: list[dict], logged_losses, optimiser: str, path: str) -> str:
  """Four panels over the measured steps of one event.

  `entry` is the event's report entry ("step", "checkpoint", "measured",
  "detections", and "median"/"threshold" when it was detected), `timeline` its
  per-step records, `logged_losses` the run's (steps, train/loss) from
  metrics.jsonl and `optimiser` the optim.name whose stability threshold is drawn.
  """
  fig = Figure(figsize=(9, 11), layout="constrained")
  ax_loss, ax_curv, ax_taylor, ax_dead = fig.subplots(4, 1, sharex=True)
  lo, hi = entry["measured"]
  near = [(s, l) for s, l in zip(*logged_losses) if lo - (hi - lo) <= s <= hi]
  if near:
    ax_loss.plot(*zip(*near), color="0.7", lw=1, label="logged train/loss")
  ax_loss.plot(*series(timeline, "train/loss"), "o-", ms=3, color="k", label="replayed train/loss")
  if entry.get("threshold") is not None:
    ax_loss.axhline(entry["median"], color="tab:green", ls=":", label="rolling median")
    ax_loss.axhline(entry["threshold"], color="tab:red", ls=":", label="spike threshold")
  ax_loss.set_ylabel("loss")
  ax_loss.set_title(f"spike at step {entry['step']} (replayed from checkpoint {entry['checkpoint']})")

  ax_curv.plot(*series(timeline, "hessian/lambda_max"), "o-", ms=3, label=r"$\lambda_{max}(H)$")
  if any("hessian/lambda_max_precond" in r for r in timeline):
    ax_curv.plot(*series(timeline, "hessian/lambda_max_precond"), "o-", ms=3,
                 label=r"$\lambda_{max}(P^{-1/2} H P^{-1/2})$")
  ax_curv.plot(*series(timeline, "hessian/stability_threshold"), "--", color="tab:red",
               label="threshold " + (r"$2/\eta$" if optimiser == "sgd" else r"$(2+2\beta_1)/((1-\beta_1)\eta)$"))
  ax_curv.set_yscale("symlog", linthresh=1.0)
  ax_curv.set_ylabel("curvature")

  ax_taylor.plot(*series(timeline, "spike/dloss_actual"), "o-", ms=3, color="k", label=r"actual $\Delta L$")
  ax_taylor.plot(*series(timeline, "spike/dloss_first_order"), "--", label=r"$g\cdot\delta$")
  first = {r["step"]: r.get("spike/dloss_first_order", math.nan) for r in timeline}
  taylor = [(r["step"], first[r["step"]] + r["spike/dloss_second_order"]) for r in timeline
            if "spike/dloss_second_order" in r]
  if taylor:
    ax_taylor.plot(*zip(*taylor), "-", label=r"$g\cdot\delta + \frac{1}{2}\delta^T H \delta$")
  ax_taylor.axhline(0.0, color="0.8", lw=0.8)
  ax_taylor.set_ylabel("loss change on batch t")

  layers = family_layers(metric_names(timeline), "ffn/dead")
  colors = colormaps["viridis"]
  for l in range(layers):
    ax_dead.plot(*series(timeline, f"ffn/dead/layer_{l}"), "o-", ms=2, color=colors(l / max(layers - 1, 1)),
                 label=f"layer {l}")
  ax_dead.set_ylabel("dead FFN units (fraction)")
  ax_dead.set_xlabel(STEP_LABEL)
  for ax in (ax_loss, ax_curv, ax_taylor, ax_dead):
    for step in entry["detections"]:
      ax.axvline(step, color="tab:red", alpha=0.25, lw=3)
    if ax.get_legend_handles_labels()[0]:
      ax.legend(fontsize=7, loc="upper left")
  return save(fig, path, dpi=SPIKE_DPI)
