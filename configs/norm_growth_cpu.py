"""Merrill et al. 2021 on one CPU core: the pilot of docs/results/norm_growth.md (its appendix).

A pre-LN byte-level LM of 2 layers, d_model 64, 4 heads, d_ff 256, T = 64,
batch 16, 2,000 steps, saturation every 250 steps, and a 3 × 2 grid (weight
decay 0, 0.1, 1.0 × learning rate 1e-3, 3e-3): ReLU, a constant rate after
warm-up, AdamW with decay-exempt embeddings, norms and biases. About half an
hour on one core; configs/norm_growth.py is the experiment at the paper's scale.

`lensjax sweep --config configs/norm_growth_cpu.py --workdir runs/norm_growth_cpu`;
results in docs/results/norm_growth.md.
"""

from lensjax.config import Config

WEIGHT_DECAYS = (0.0, 0.1, 1.0)  # AdamW's decoupled decay: per step θ ← θ − lr·wd·θ
LEARNING_RATES = (1e-3, 3e-3)  # faster growth in few steps

SWEEP = [{"name": f"wd{wd:g}_lr{lr:g}", "optim.weight_decay": wd, "optim.lr": lr}
         for wd in WEIGHT_DECAYS for lr in LEARNING_RATES]


def get_config() -> Config:
  return Config().updated({
      "model.num_layers": 2,
      "model.d_model": 64,
      "model.num_heads": 4,
      "model.d_ff": 256,
      "model.max_len": 64,
      "model.activation": "relu",
      "model.dropout": 0.0,
      "data.source": "bytes",
      "data.path": "",  # the built-in corpus
      "data.seq_len": 64,
      "train.steps": 2000,
      "train.batch_size": 16,
      "optim.name": "adamw",
      "optim.lr": 1e-3,
      "optim.schedule": "constant",
      "optim.warmup_steps": 100,
      "optim.weight_decay": 0.0,
      "optim.decay_exempt": True,
      "stats.dead_window": 100,
      "stats.saturation_every": 250,
      "logging.log_every": 20,
      "logging.eval_every": 250,
      "checkpoint.save_every": 1000,
      "checkpoint.keep": 1,
      "logging.progress": "lines",
  })
