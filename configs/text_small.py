"""A small ReLU Transformer on real text: the corpus `scripts/fetch_corpus.sh` prepares.

Shakespeare (with the First Folio editions) and the King James Bible, ~3.7M training tokens of a byte-level
BPE of 8,192, evaluated on val.bin: whole works the model never trains on (docs/data.md). The vocabulary
size and the id dtype come from the directory's meta.json. Prepare the corpus once, then:

    lensjax train --config configs/text_small.py --workdir runs/text_small

and pass --config.data.path=DIR for a corpus prepared elsewhere.
"""

from lensjax.config import Config


def get_config() -> Config:
  return Config().updated({
      "model.num_layers": 4,
      "model.d_model": 256,
      "model.num_heads": 4,
      "model.d_ff": 1024,
      "model.max_len": 256,
      "model.activation": "relu",
      "model.vocab_size": 0,  # the prepared directory's vocabulary (meta.json)
      "data.source": "tokens",
      "data.path": "data/shakespeare_kjv",
      "data.seq_len": 256,
      "train.steps": 5000,
      "train.batch_size": 32,
      "optim.lr": 1e-3,
      "optim.warmup_steps": 200,
      "optim.weight_decay": 0.1,
      "logging.log_every": 50,
      "logging.eval_every": 250,
      "logging.eval_batches": 8,
      "checkpoint.save_every": 500,
      "stats.dead_window": 100,
  })
