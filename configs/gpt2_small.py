"""GPT-2 small geometry: 12 layers, d_model 768, 12 heads, T = 1024.

Vocabulary padded to 50304 (GPT-2's 50257 tokens rounded up to a multiple of
128), bfloat16 compute with float32 parameters, cuDNN attention on a GPU
(`auto` falls back to the explicit-softmax path elsewhere), AdamW.
Data: a nanoGPT-style uint16 token file, --config.data.path=train.bin; without
one, the built-in byte corpus (vocabulary 256) runs the same geometry.
"""

from lensjax.config import Config


def get_config() -> Config:
  return Config().updated({
      "model.num_layers": 12,
      "model.d_model": 768,
      "model.num_heads": 12,
      "model.d_ff": 3072,
      "model.vocab_size": 50257,
      "model.vocab_multiple": 128,
      "model.max_len": 1024,
      "model.activation": "gelu",
      "model.dtype": "bfloat16",
      "model.attention": "auto",
      "model.scan_layers": False,
      "data.source": "tokens",
      "data.seq_len": 1024,
      "train.steps": 5000,
      "train.batch_size": 64,
      "optim.name": "adamw",
      "optim.lr": 6e-4,
      "optim.warmup_steps": 200,
      "optim.weight_decay": 0.1,
      "optim.b2": 0.95,
      "logging.log_every": 100,
      "logging.eval_every": 1000,
      "checkpoint.save_every": 1000,
  })
