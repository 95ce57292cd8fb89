"""Ren & Liu 2025, low entropy, at CPU scale: configs/entropy_ladder.py and configs/ffn_ablation.py made small.

The GPU ladder (T = 10, 0.1M..14M parameters, 3,000 steps of batch 256) needs
a GPU. This file keeps its target (order-2 Markov chain, V = 4, Dirichlet(0.5)
rows, stationary start, fresh draws every step) and its member shapes, and
shrinks everything else so that ladder and ablation together fit about half
an hour of one CPU core:

  T = 8 predicted tokens   4^8 = 65,536 prefixes: exact H(Q), H(P), KL in seconds
  1,000 steps of batch 64  64k fresh sequences (the GPU ladder: 768k)
  lr 3e-3                  3x the GPU ladder's, for the 12x fewer sequences
  eval_batches 16          8,192 held-out tokens per evaluation: the final eval
                           loss is compared with H(P)/T, so it must not be noisy

SWEEP, in the order it trains (the sweep skips finished members, so an
interrupted run is resumed by running it again):

  L2_D32_s0 .. L4_D128_s0   the ladder, seed 0: 2 layers x 32 wide (0.03M) to
                            4 x 128 (0.8M, the GPU ladder's base member)
  abl_*                     the FFN ablation of configs/ffn_ablation.py around
                            the 2 x 64 member (its "full" model is L2_D64_s*):
                            no FFN, no attention, FFN widths D/4, D, 8D, 16D
  L*_s1, L*_s2              the ladder again with train.seed 1 and 2 (the
                            target and the data stay the same; only the
                            initialisation changes): error bars across seeds
  abl_*_s1, abl_*_s2        the same for the ablation (abl_* is seed 0),
                            but for ffn_only

`lensjax sweep --config configs/entropy_ladder_cpu.py --workdir runs/entropy_cpu`
"""

import importlib.util
import os


def _load(name: str):
  spec = importlib.util.spec_from_file_location(f"_{name}", os.path.join(os.path.dirname(__file__), f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


_ladder = _load("entropy_ladder")
_ablation = _load("ffn_ablation")

SEQ_LEN = 8
SEEDS = (0, 1, 2)
LADDER = [(2, 32), (2, 48), (2, 64), (3, 96), (4, 128)]  # (layers, width), d_ff = 4 x width as on the GPU
ABLATION_BASE = (2, 64)  # the member the ablation varies (the GPU ablation's base is 4 x 128)
_GPU_ABLATION_WIDTH = 128  # d_model of the GPU ablation, whose FFN widths are scaled to ABLATION_BASE


def get_config():
  return _ladder.get_config().updated({
      "data.seq_len": SEQ_LEN,
      "train.steps": 1000,
      "train.batch_size": 64,
      "optim.lr": 3e-3,
      "optim.warmup_steps": 50,
      "logging.log_every": 20,
      "logging.eval_every": 250,
      "logging.eval_batches": 16,
      "checkpoint.save_every": 1000,  # one checkpoint, at the end
      "stats.dead_window": 100,
  })


def _ladder_members(seed: int) -> list[dict]:
  return [{**_ladder._member(layers, width), "name": f"L{layers}_D{width}_s{seed}", "train.seed": seed}
          for layers, width in LADDER]


def _ablation_members() -> list[dict]:
  """configs/ffn_ablation.py's members on the ABLATION_BASE shape; its "full" member is the ladder's."""
  base = _ladder._member(*ABLATION_BASE)
  members = []
  for entry in _ablation.SWEEP:
    if entry["name"] == "full":
      continue
    member = {**base, **entry, "name": f"abl_{entry['name']}"}
    if entry["name"].startswith("ffn_") and "model.d_ff" in entry:  # FFN width in proportion to d_model
      width = entry["model.d_ff"] * ABLATION_BASE[1] // _GPU_ABLATION_WIDTH
      member.update({"name": f"abl_ffn_{width}", "model.d_ff": width})
    members.append(member)
  return members


def _ablation_replicas(seed: int) -> list[dict]:
  # ffn_only cannot read the token before it: its misfit is three orders above the seed spread, so one seed does.
  return [{**m, "name": f"{m['name']}_s{seed}", "train.seed": seed}
          for m in _ablation_members() if m["name"] != "abl_ffn_only"]


SWEEP = (_ladder_members(0) + _ablation_members() + [m for seed in SEEDS[1:] for m in _ladder_members(seed)]
         + [m for seed in SEEDS[1:] for m in _ablation_replicas(seed)])
