"""Merrill et al. 2021 at their small LM's scale: norm growth, saturation and head classes of a 38M model.

Twelve ReLU layers, d_model 768, d_ff 512, 12 heads (38.0M parameters outside the embeddings; 44.4M with
the 8,192 × 768 tied embedding and the learned positions) on the byte-level BPE corpus that
`scripts/fetch_corpus.sh` prepares, sequences of 80 tokens (Merrill et al. used 83 on PTB), batches of
64, 3,600 steps (five passes over the 3.70M training tokens). No biases: with `model.norm=branch`
(x + LN(f(x)), Merrill et al.'s "pre_norm") the block outputs are then positively homogeneous of degree 1
in θ, the property the saturation statistic relies on (see `lensjax.analysis.saturation`).

One run is one norm placement (`--config.model.norm=pre|post|branch`) and trains the whole
learning rate × weight decay grid as one ensemble of 16 members: member i has learning rate
`GRID[i][0]` and weight decay `GRID[i][1]` (AdamW, decoupled, on every parameter: θ ← θ − lr·wd·θ per
step), and its own initialisation and data order (seeds base + i), so the two members of a cell are two
seeds. The rate is constant after a linear warm-up, the setting of the growth laws; `optim.schedule=rsqrt`
gives η ∝ 1/√t, the schedule under which the paper derives √t growth. `benchmarks/gpu_norm_growth.sh` runs
it; results in docs/results/norm_growth.md.
"""

from lensjax.config import Config

LEARNING_RATES = (1e-4, 1e-3)
WEIGHT_DECAYS = (0.0, 1e-3, 1e-2, 1e-1)
SEEDS_PER_CELL = 2
GRID = tuple((lr, wd) for lr in LEARNING_RATES for wd in WEIGHT_DECAYS for _ in range(SEEDS_PER_CELL))


def get_config() -> Config:
  return Config().updated({
      "model.num_layers": 12,
      "model.d_model": 768,
      "model.num_heads": 12,
      "model.d_ff": 512,
      "model.max_len": 80,
      "model.activation": "relu",  # positively homogeneous
      "model.use_bias": False,  # a bias is not scaled along with c·x and would break homogeneity
      "model.norm": "branch",
      "model.dropout": 0.0,
      "model.dtype": "bfloat16",
      "model.attention": "xla",  # an ensemble's vmapped step needs the explicit-softmax path
      "model.vocab_size": 0,  # the prepared directory's vocabulary (meta.json)
      "data.source": "tokens",
      "data.path": "data/shakespeare_kjv",
      "data.seq_len": 80,
      "train.steps": 3600,
      "train.batch_size": 64,
      "train.members": len(GRID),
      "train.vary": "init+data",
      "optim.name": "adamw",
      "optim.lr": 1e-3,
      "optim.lr_per_member": tuple(lr for lr, _ in GRID),
      "optim.weight_decay_per_member": tuple(wd for _, wd in GRID),
      "optim.schedule": "constant",  # a decaying rate would bend the growth curve on its own
      "optim.warmup_steps": 100,
      "optim.decay_exempt": False,  # decay every parameter, as torch's AdamW does by default
      "stats.dead_window": 100,
      "stats.saturation_every": 600,
      "logging.log_every": 20,
      "logging.eval_every": 600,
      "logging.eval_batches": 4,
      "checkpoint.save_every": 100_000,  # the final step only
      "checkpoint.keep": 1,
  })
