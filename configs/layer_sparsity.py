"""Wild & Anderson's layer-dependent activation sparsity, at their scale, on real text.

Six pre-LN ReLU layers, d_model 512, on the byte-level BPE corpus (vocabulary 8,192) that
`scripts/fetch_corpus.sh` prepares, 1,100 steps of 64 × 256 tokens (4.9 passes over its 3.70M
training tokens), three seeds trained as one ensemble (`train.members`; each member varies its
initialisation and data order). Set the width with `--config.model.d_ff=` (2048 by default; the
experiment runs 2,048, 8,192 and 32,768: `benchmarks/gpu_layer_sparsity.sh`).

Sequence- and batch-level statistics are measured on two fixed probes of exactly 8,192 tokens
(32 sequences), one held-out (`probe/`) and one from the training split (`probe_train/`), the same
sequences at every evaluation, for every member and every width; `persist/*` compares them against
random sets of the same sizes. `stats.unit_trace` writes per-unit pre-activation, firing and
update statistics on every logging step, which `lensjax deaths` reads.
"""

from lensjax.config import Config


def get_config() -> Config:
  return Config().updated({
      "model.num_layers": 6,
      "model.d_model": 512,
      "model.num_heads": 8,
      "model.d_ff": 2048,
      "model.max_len": 256,
      "model.activation": "relu",
      "model.dropout": 0.0,
      "model.dtype": "bfloat16",
      "model.attention": "xla",  # an ensemble's vmapped step needs the explicit-softmax path
      "model.vocab_size": 0,  # the prepared directory's vocabulary (meta.json)
      "data.source": "tokens",
      "data.path": "data/shakespeare_kjv",
      "data.seq_len": 256,
      "train.steps": 1100,
      "train.batch_size": 64,
      "train.members": 3,
      "train.vary": "init+data",
      "optim.lr": 1e-3,
      "optim.warmup_steps": 100,
      "optim.weight_decay": 0.1,
      "stats.dead_window": 100,
      "stats.probe_tokens": 8192,
      "stats.unit_trace": True,
      "logging.log_every": 10,
      "logging.eval_every": 100,
      "logging.eval_batches": 8,
      "checkpoint.save_every": 100_000,  # the final step only: a 32,768-wide ensemble's state is 7.5 GB
  })
