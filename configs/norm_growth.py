"""Merrill et al. 2021: parameter norm growth and saturation, on text.

A four-layer ReLU language model on raw bytes (V = 256): by default the
English documentation text that every CPython ships in `pydoc_data.topics`,
so nothing needs downloading; pass `--config.data.path=FILE` for any other
file. Weight decay is 0 and the learning rate constant after warm-up, the
setting in which ‖θ_t‖ grows like √t; `norm/params`, `norm/cos_step` and
`norm/alignment` are logged every `log_every` steps, and the saturation
statistics (`eval/saturation/layer_{l}`, `eval/saturated_head/...`, c = 1000)
every `stats.saturation_every` steps. Fit the growth laws afterwards with
`lensjax growth --workdir WORKDIR` and look at the final checkpoint
with `lensjax saturation --workdir WORKDIR`.

SWEEP is the weight decay × learning rate grid of the experiment, in the
format `lensjax sweep` reads: a list of members, each a dict with a "name"
(letters, digits, '.', '_', '-'; it names the member's folder) and dotted
config keys mapped to Python values, applied to `get_config()` exactly as
`--config.KEY=str(VALUE)` would be on the command line. So a member is
reproducible by hand, e.g. `wd0.1_lr0.001` is
`lensjax train --config configs/norm_growth.py --workdir runs/wd0.1_lr0.001
--config.optim.weight_decay=0.1 --config.optim.lr=0.001`.
"""

from lensjax.config import Config

WEIGHT_DECAYS = (0.0, 0.1, 1.0)  # AdamW's decoupled decay: per step θ ← θ − lr·wd·θ
LEARNING_RATES = (3e-4, 1e-3, 3e-3)

SWEEP = [{"name": f"wd{wd:g}_lr{lr:g}", "optim.weight_decay": wd, "optim.lr": lr}
         for wd in WEIGHT_DECAYS for lr in LEARNING_RATES]


def get_config() -> Config:
  return Config().updated({
      "model.num_layers": 4,
      "model.d_model": 256,
      "model.num_heads": 8,
      "model.d_ff": 1024,
      "model.max_len": 128,
      "model.activation": "relu",  # positively homogeneous: at c·θ the FFN changes by scale (up to biases); attention saturates
      "model.dropout": 0.0,
      "data.source": "bytes",
      "data.path": "",  # the built-in corpus
      "data.seq_len": 128,
      "train.steps": 2000,
      "train.batch_size": 64,
      "optim.name": "adamw",
      "optim.lr": 1e-3,
      "optim.schedule": "constant",  # a decaying rate would bend the growth curve on its own
      "optim.warmup_steps": 100,
      "optim.weight_decay": 0.0,
      "optim.decay_exempt": True,
      "stats.dead_window": 100,
      "stats.saturation_every": 100,
      "logging.log_every": 20,
      "logging.eval_every": 250,
      "checkpoint.save_every": 1000,
  })
