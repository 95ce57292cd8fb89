"""Saturation and the homogeneity check at initialisation for each norm placement of configs/norm_growth.py.

Usage: python3 benchmarks/norm_growth_init.py OUT_JSON [--seeds 0 1] [--rows 8]

Runs on a CPU in minutes (float64, 8 held-out rows): the initial parameters depend only on the seed, so
these are the initial states of the GPU runs' members. Writes {norm: {seed: state_results}} in the format
of benchmarks/norm_growth_analyses.py.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import types

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from lensjax import config as config_lib  # noqa: E402
from lensjax.analysis.saturation_cli import heldout_rows  # noqa: E402
from lensjax.train import loop  # noqa: E402
from norm_growth_analyses import state_results  # noqa: E402

NORMS = ("pre", "post", "branch")


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("out_json")
  parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
  parser.add_argument("--rows", type=int, default=8)
  args = parser.parse_args(argv)
  base = config_lib.load_config_file("configs/norm_growth.py")
  results = {}
  for norm in NORMS:
    for seed in args.seeds:
      t0 = time.perf_counter()
      config = loop.prepare(base.updated({"model.norm": norm, "train.members": 1, "train.seed": seed,
                                          "data.seed": seed, "optim.lr_per_member": (),
                                          "optim.weight_decay_per_member": ()}))
      run = loop.build(config)
      batch = heldout_rows(types.SimpleNamespace(run=run), args.rows)
      results.setdefault(norm, {})[str(seed)] = state_results(config.model, run.state.params, batch, args.rows)
      cos = results[norm][str(seed)]["homogeneity"]["cosine"]
      print(f"{norm} seed {seed}: homogeneity c=1 {min(cos[0]):.3f}..{max(cos[0]):.3f}, "
            f"c=10 {min(cos[-1]):.3f}..{max(cos[-1]):.3f} ({time.perf_counter() - t0:.0f} s)", flush=True)
  with open(args.out_json, "w") as f:
    json.dump(results, f)
  return 0


if __name__ == "__main__":
  sys.exit(main())
