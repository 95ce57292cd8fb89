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
  growth_<member>.png        per member, the norm growth figure of lensjax/report/figures_growth.py (fits, per-block
                             norms, cos_step, alignment)
  summary.md                 per member: loss, norms, best law, a and r² of √t and linear, p, saturation per layer,
                             argmax / averaging heads; then the best law of each block's and the embeddings' norm
  growth_fits.json           lensjax.analysis.growth's report of every member
"""

from __future__ import annotations

import json
import os
import re
import sys

from lensjax.analysis import growth
from lensjax.report import figures_growth, figures_saturation, growth_sweep


def main(argv: list[str]) -> int:
  if len(argv) != 2:
    print(__doc__, file=sys.stderr)
    return 2
  results_dir, out_dir = argv
  os.makedirs(out_dir, exist_ok=True)
  records, saturation, members = growth_sweep.load(results_dir)
  reports = {name: growth.growth_report(records.get(name, [])) for name in members}
  output = lambda name: os.path.join(out_dir, name)
  written = [figures_growth.sqrt_fits_figure(records, reports, members, output("norm_sqrt_fits.png")),
             figures_growth.grid_figure(reports, saturation, members, output("growth_grid.png")),
             figures_saturation.saturation_over_training_figure(records, members,
                                                                output("saturation_over_training.png")),
             figures_saturation.head_histogram_figure(saturation, members, output("saturated_head_histogram.png")),
             figures_growth.norm_all_figure(records, members, output("norm_all.png")),
             figures_growth.norm_dynamics_figure(records, members, output("norm_dynamics.png"))]
  for name in members:
    if "norm/params" in reports[name]:
      slug = re.sub(r"[^A-Za-z0-9.]+", "_", name)
      written.append(figures_growth.growth_figure(records[name], output(f"growth_{slug}.png"), title=name,
                                                  report=reports[name]))
  table = growth_sweep.summary_table(records, reports, saturation, members)
  with open(output("summary.md"), "w") as f:
    f.write(table)
  with open(output("growth_fits.json"), "w") as f:
    json.dump(reports, f)
  print(table)
  print("\n".join(p for p in written if p))
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
