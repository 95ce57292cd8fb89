"""GPT-2 small geometry: 12 layers, d_model 768, 12 heads, T = 1024.

Vocabulary padded to 50304 (GPT-2's 50257 tokens rounded up to a multiple of
128), bfloat16 compute with float32 parameters, cuDNN attention on a GPU
(`auto` falls back to the explicit-softmax path elsewhere), AdamW.
Data: a nanoGPT-style uint16 token file, --config.data.path=train.bin; without
one, the built-in byte corpus (vocabulary 256) runs the same geometry.
"""

from lensjax.config import Config


def get_config() -> Config:
  config = Config()
  m = config.model
  m.num_layers, m.d_model, m.num_heads, m.d_ff = 12, 768, 12, 3072
  m.vocab_size, m.vocab_multiple, m.max_len = 50257, 128, 1024
  m.activation, m.dtype, m.attention = "gelu", "bfloat16", "auto"
  m.scan_layers = False
  config.data.source = "tokens"
  config.data.seq_len = 1024
  config.train.steps = 5000
  config.train.batch_size = 64
  config.optim.name = "adamw"
  config.optim.lr = 6e-4
  config.optim.warmup_steps = 200
  config.optim.weight_decay = 0.1
  config.optim.b2 = 0.95
  config.logging.log_every = 100
  config.logging.eval_every = 1000
  config.checkpoint.save_every = 1000
  return config
