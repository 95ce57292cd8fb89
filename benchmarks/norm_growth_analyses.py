"""Saturation of every member of a norm-growth ensemble, at initialisation and at its final checkpoint.

Usage: python3 benchmarks/norm_growth_analyses.py RUN_DIR OUT_JSON [--rows 8]

RUN_DIR is a `lensjax train` ensemble folder (member_<i>/ each with config.json and a checkpoint; a solo
run folder works too). For each member and for both its initial parameters (rebuilt from its seeds) and
its newest checkpoint, the `lensjax saturation --json` object (c = 1000) under the causal mask and under
Merrill et al.'s multiplicative mask (the reproduction control), plus the homogeneity check
cos(h_l(cθ), h_l(1000θ)), c = 1..10. One process for all members: the members share one model config,
so each statistic compiles once. Writes {"members": {name: {"lr", "weight_decay", "seed", "norm",
"init": {...}, "final": {...}}}} with, per state, {"step", "causal", "merrill_multiplicative",
"homogeneity"}.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import time

import jax
import numpy as np

from lensjax.analysis import common, saturation
from lensjax.analysis.saturation_cli import heldout_rows, results_of

MASKS = ("causal", "merrill_multiplicative")


def state_results(model_cfg, params, batch, rows: int) -> dict:
  out = {}
  for mask in MASKS:
    arrays = jax.device_get(saturation.jit_saturation_arrays(model_cfg, mask)(params, batch, saturation.SCALE))
    out[mask] = results_of(arrays, saturation.SCALE, rows, mask) | {"in_range": bool(arrays["in_range"])}
  cosine_SxL = jax.device_get(saturation.jit_homogeneity_cosines(model_cfg)(params, batch))
  out["homogeneity"] = {"scales": list(saturation.HOMOGENEITY_SCALES), "reference": saturation.SCALE,
                        "cosine": np.asarray(cosine_SxL, np.float64).tolist()}
  return out


def member_dirs(run_dir: str) -> list[str]:
  members = sorted(glob.glob(os.path.join(run_dir, "member_*")), key=lambda d: int(d.rsplit("_", 1)[1]))
  return members or [run_dir]


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("run_dir")
  parser.add_argument("out_json")
  parser.add_argument("--rows", type=int, default=8, help="held-out rows of batch 0 (default 8)")
  args = parser.parse_args(argv)
  results = {}
  for member in member_dirs(args.run_dir):
    t0 = time.perf_counter()
    loaded = common.load_checkpoint_run(member, None)
    batch = heldout_rows(loaded, args.rows)
    cfg = loaded.config
    results[os.path.basename(member)] = {
        "lr": cfg.optim.lr, "weight_decay": cfg.optim.weight_decay, "seed": cfg.train.seed, "norm": cfg.model.norm,
        "init": {"step": 0, **state_results(cfg.model, loaded.run.state.params, batch, args.rows)},
        "final": {"step": loaded.step, **state_results(cfg.model, loaded.params, batch, args.rows)}}
    final = results[os.path.basename(member)]["final"]
    cosines = [final["causal"][f"eval/saturation/layer_{l}"] for l in range(cfg.model.num_layers)]
    print(f"{os.path.basename(member)}: step {loaded.step}, saturation cos {min(cosines):.3f}..{max(cosines):.3f}, "
          f"{time.perf_counter() - t0:.1f} s", flush=True)
  with open(args.out_json, "w") as f:
    json.dump({"members": results}, f)
  return 0


if __name__ == "__main__":
  sys.exit(main())
