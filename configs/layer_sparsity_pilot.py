"""The CPU-sized pilot of Wild & Anderson's layer-dependent activation sparsity (docs/results/layer_sparsity.md, "Pilot").

A six-layer ReLU decoder trained on raw bytes (V = 256): by default the
English documentation text that every CPython ships in `pydoc_data.topics`,
so nothing needs downloading; pass `--config.data.path=FILE` for any other
file. Token-, sequence- and batch-level activity per layer is logged on the
training batch and, so that values are comparable over training, on a fixed
held-out probe batch of 8,192 tokens (`probe/ffn/...`).
"""

from lensjax.config import Config


def get_config() -> Config:
  return Config().updated({
      "model.num_layers": 6,
      "model.d_model": 256,
      "model.num_heads": 8,
      "model.d_ff": 1024,
      "model.max_len": 256,
      "model.activation": "relu",
      "model.dropout": 0.0,
      "data.source": "bytes",
      "data.path": "",  # the built-in corpus
      "data.seq_len": 256,
      "train.steps": 4000,
      "train.batch_size": 64,
      "optim.lr": 1e-3,
      "optim.warmup_steps": 200,
      "optim.weight_decay": 0.1,
      "stats.dead_window": 100,
      "stats.probe_tokens": 8192,
      "logging.log_every": 50,
      "logging.eval_every": 250,
      "checkpoint.save_every": 1000,
  })
