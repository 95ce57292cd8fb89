"""Wild & Anderson's layer-dependent activation sparsity, on text.

A six-layer ReLU decoder trained on raw bytes (V = 256): by default the
English documentation text that every CPython ships in `pydoc_data.topics`,
so nothing needs downloading; pass `--config.data.path=FILE` for any other
file. Token-, sequence- and batch-level activity per layer is logged on the
training batch and, so that values are comparable over training, on a fixed
held-out probe batch of 8,192 tokens (`probe/ffn/...`).
"""

from lensjax.config import Config


def get_config() -> Config:
  config = Config()
  m = config.model
  m.num_layers, m.d_model, m.num_heads, m.d_ff, m.max_len = 6, 256, 8, 1024, 256
  m.activation = "relu"
  m.dropout = 0.0
  config.data.source = "bytes"
  config.data.path = ""  # the built-in corpus
  config.data.seq_len = 256
  config.train.steps = 4000
  config.train.batch_size = 64
  config.optim.lr = 1e-3
  config.optim.warmup_steps = 200
  config.optim.weight_decay = 0.1
  config.stats.dead_window = 100
  config.stats.probe_tokens = 8192
  config.logging.log_every = 50
  config.logging.eval_every = 250
  config.checkpoint.save_every = 1000
  return config
