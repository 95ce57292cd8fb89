"""Ren & Liu 2025, low entropy: does H(Q) fall below H(P), more so as models grow?

One controlled target, small enough that the whole-sequence law of the target
and of every model can be enumerated exactly: an order-2 Markov chain over
V = 4 symbols with Dirichlet(0.5) rows, started from its stationary law, and
sequences of T = 10 predicted tokens (V^T = 2^20 prefixes). Order 2 means a
position must read the token before it, so attention is needed, not only the
FFN. Training data are fresh draws at every step (data.num_sequences = 0), so
no finite training set can be memorised: a lower H(Q) is the model's bias,
not the data's.

`lensjax sweep --config configs/entropy_ladder.py --workdir runs/ladder`
trains the SWEEP ladder below (depth and width grow together, about 0.1M to
14M parameters) and writes runs/ladder/<member>/entropy.json with H(Q), H(P),
KL(P||Q) per member; `lensjax train --config configs/entropy_ladder.py`
trains the base (the 0.8M member).
"""

from lensjax.config import Config


def get_config() -> Config:
  config = Config()
  m = config.model
  m.num_layers, m.d_model, m.num_heads, m.d_ff, m.max_len = 4, 128, 4, 512, 16
  m.activation = "relu"
  d = config.data
  d.source, d.vocab_size, d.markov_order, d.markov_alpha, d.seq_len = "markov", 4, 2, 0.5, 10
  d.markov_initial = "stationary"
  d.num_sequences = 0
  config.train.steps = 3000
  config.train.batch_size = 256
  config.optim.lr = 1e-3
  config.optim.warmup_steps = 100
  # Weight decay shrinks logits, i.e. pushes every model towards higher entropy: off, so as not to mask the effect.
  config.optim.weight_decay = 0.0
  config.logging.log_every = 100
  config.logging.eval_every = 500
  config.checkpoint.save_every = 1000
  config.stats.dead_window = 200
  return config


def _member(layers: int, width: int) -> dict:
  heads = max(2, width // 32)
  return {"name": f"L{layers}_D{width}", "model.num_layers": layers, "model.d_model": width,
          "model.num_heads": heads, "model.d_ff": 4 * width}


# Non-embedding parameters ≈ 12·L·D²: 0.1M, 0.33M, 0.79M, 1.8M, 4.7M, 14M.
SWEEP = [_member(2, 64), _member(3, 96), _member(4, 128), _member(4, 192), _member(6, 256), _member(8, 384)]
