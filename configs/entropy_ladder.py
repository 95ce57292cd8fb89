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
  return Config().updated({
      "model.num_layers": 4,
      "model.d_model": 128,
      "model.num_heads": 4,
      "model.d_ff": 512,
      "model.max_len": 16,
      "model.activation": "relu",
      "data.source": "markov",
      "data.vocab_size": 4,
      "data.markov_order": 2,
      "data.markov_alpha": 0.5,
      "data.seq_len": 10,
      "data.markov_initial": "stationary",
      "data.num_sequences": 0,
      "train.steps": 3000,
      "train.batch_size": 256,
      "optim.lr": 1e-3,
      "optim.warmup_steps": 100,
      # Weight decay shrinks logits, i.e. pushes every model towards higher entropy: off, so as not to mask the effect.
      "optim.weight_decay": 0.0,
      "logging.log_every": 100,
      "logging.eval_every": 500,
      "checkpoint.save_every": 1000,
      "stats.dead_window": 200,
  })


def _member(layers: int, width: int) -> dict:
  heads = max(2, width // 32)
  return {"name": f"L{layers}_D{width}", "model.num_layers": layers, "model.d_model": width,
          "model.num_heads": heads, "model.d_ff": 4 * width}


# Non-embedding parameters ≈ 12·L·D²: 0.1M, 0.33M, 0.79M, 1.8M, 4.7M, 14M.
SWEEP = [_member(2, 64), _member(3, 96), _member(4, 128), _member(4, 192), _member(6, 256), _member(8, 384)]
