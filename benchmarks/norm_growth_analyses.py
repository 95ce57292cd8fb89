"""Saturation of every member of a norm-growth ensemble, at initialisation and at its final checkpoint.

Usage: python3 benchmarks/norm_growth_analyses.py RUN_DIR OUT_JSON [--rows 8]

RUN_DIR is a `lensjax train` ensemble folder (member_<i>/ each with config.json and a checkpoint; a solo
run folder works too). For each member and for both its initial parameters (rebuilt from its seeds) and
its newest checkpoint, the `lensjax saturation --json` object (c = 1000) under the causal mask and under
Merrill et al.'s multiplicative mask (the reproduction control), plus the homogeneity check
cos(h_l(cθ), h_l(1000θ)), c = 1..10. One process for all members: the members share one model config,
so the run is built once (from member 0), every member's checkpoint restores into its layout, its initial
parameters come from one jitted initialiser fed the member's seed, and each statistic compiles once. All
members are measured on the same held-out rows (member 0's batch 0), so their head classes are compared on
the same inputs. Writes {"members": {name: {"lr", "weight_decay", "seed", "norm",
"init": {...}, "final": {...}}}} with, per state, {"step", "causal", "merrill_multiplicative",
"homogeneity"}.
"""

from __future__ import annotations

import argparse
import functools
import glob
import json
import os
import sys
import time

import jax
import numpy as np

from lensjax import config as config_lib
from lensjax.analysis import common, saturation
from lensjax.analysis.saturation_cli import heldout_rows, results_of
from lensjax.errors import InputError
from lensjax.io.checkpoints import abstract_like
from lensjax.train import loop
from lensjax.train.state import initial_params
from lensjax.train.step import model_for

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
  members = member_dirs(args.run_dir)
  configs = [loop.prepare(common.read_config(member)) for member in members]
  if len({config_lib.setting_key(config) for config in configs}) > 1:
    raise InputError(f"the members of {args.run_dir!r} differ in more than seeds, learning rate and weight decay; "
                     "analyse each with lensjax saturation --workdir instead.")
  t0 = time.perf_counter()
  first = common.load_checkpoint_run(members[0])
  batch = heldout_rows(first, args.rows)
  abstract = abstract_like(first.state)
  model_cfg = first.config.model
  init_params = jax.jit(functools.partial(initial_params, model_for(model_cfg, ()), first.config.data.seq_len))
  print(f"built the run in {time.perf_counter() - t0:.1f} s", flush=True)
  results = {}
  for member, cfg in zip(members, configs):
    t0 = time.perf_counter()
    step, state = (first.step, first.state) if member == members[0] else common.restore_checkpoint(member, abstract)
    name = os.path.basename(member)
    results[name] = {
        "lr": cfg.optim.lr, "weight_decay": cfg.optim.weight_decay, "seed": cfg.train.seed, "norm": cfg.model.norm,
        "init": {"step": 0, **state_results(model_cfg, init_params(cfg.train.seed), batch, args.rows)},
        "final": {"step": step, **state_results(model_cfg, state.params, batch, args.rows)}}
    del state
    cosines = [results[name]["final"]["causal"][f"eval/saturation/layer_{l}"] for l in range(model_cfg.num_layers)]
    print(f"{name}: step {step}, saturation cos {min(cosines):.3f}..{max(cosines):.3f}, "
          f"{time.perf_counter() - t0:.1f} s", flush=True)
  with open(args.out_json, "w") as f:
    json.dump({"members": results}, f)
  return 0


if __name__ == "__main__":
  try:
    sys.exit(main())
  except InputError as error:
    print(f"norm_growth_analyses.py: {error}", file=sys.stderr)
    sys.exit(2)
