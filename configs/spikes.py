"""Loss spikes on demand: full-batch Adam at the edge of stability (Cohen et al. 2022; Ren & Liu 2025).

A 2-layer ReLU Transformer (d_model 128, d_ff 512) memorises a finite set of
32 Markov sequences (V = 16, T = 32), and every step's batch is the whole set,
so that the loss of step t and its Hessian are those of the full objective.
Adam runs at a high constant learning rate (1e-2 after 10 warmup steps) with
a slow second moment (β₂ = 0.999), a negligible ε (1e-12) and no gradient
clipping: the preconditioned sharpness climbs to Adam's threshold 38/η and,
the preconditioner being stale, overshoots it; the loss then spikes (2-7×
within a few steps) and recovers. With seeds 0, 1 and 2 the first spikes come
between steps 60 and 180, and more follow. On 2 CPU cores the 250 steps take
a minute or two, and `lensjax spikes` then a minute or two more:

  lensjax train --config configs/spikes.py --workdir runs/spikes
  lensjax spikes --workdir runs/spikes

Every step is logged (`log_every = 1`), so the detector sees every loss, and
every 25th checkpoint is kept (`keep_every`), so that replay starts at most
25 steps before a spike.

GPU size (one H100, about a minute of training; used by benchmarks/gpu_spikes.sh):

  --config.model.num_layers=4 --config.model.d_model=512 --config.model.num_heads=8
  --config.model.d_ff=2048 --config.model.max_len=64 --config.data.seq_len=64
  --config.data.vocab_size=64 --config.data.num_sequences=128 --config.train.batch_size=128
  --config.train.steps=400
"""

from lensjax.config import Config


def get_config() -> Config:
  return Config().updated({
      "model.num_layers": 2,
      "model.d_model": 128,
      "model.num_heads": 4,
      "model.d_ff": 512,
      "model.max_len": 32,
      "model.activation": "relu",
      "data.source": "markov",
      "data.vocab_size": 16,
      "data.markov_order": 1,
      "data.markov_alpha": 0.1,
      "data.seq_len": 32,
      "data.num_sequences": 32,  # = train.batch_size: every batch is the whole training set
      "train.steps": 250,
      "train.batch_size": 32,
      "train.nan_policy": "skip",  # a non-finite step is part of the story, not the end of it
      "optim.name": "adam",
      "optim.lr": 0.01,
      "optim.schedule": "constant",
      "optim.warmup_steps": 10,
      "optim.b1": 0.9,
      "optim.b2": 0.999,
      "optim.eps": 1e-12,
      "optim.clip_norm": 0.0,
      "optim.weight_decay": 0.0,
      "stats.dead_window": 20,
      "logging.log_every": 1,
      "logging.eval_every": 0,
      "checkpoint.save_every": 25,
      "checkpoint.keep": 2,
      "checkpoint.keep_every": 25,
  })
