"""Merrill et al. 2021 on one CPU core: configs/norm_growth.py scaled down.

The GPU experiment (configs/norm_growth.py, a 4-layer d_model 256 byte LM, a
3 × 3 weight decay × learning rate grid) rescaled to fit about half an hour on
one CPU core: 2 layers, d_model 64, 4 heads, d_ff 256, T = 64, batch 16,
2,000 steps, saturation every 250 steps, and a 3 × 2 grid (weight decay 0, 0.1,
1.0 × learning rate 1e-3, 3e-3). Everything else (data, ReLU, constant rate
after warm-up, AdamW with decay-exempt embeddings, norms and biases, logging
of norm/*) is the GPU config's, loaded from it rather than copied.

`lensjax sweep --config configs/norm_growth_cpu.py --workdir runs/norm_growth_cpu`;
results in docs/results/norm_growth.md.
"""

import importlib.util
import os

_spec = importlib.util.spec_from_file_location("_norm_growth", os.path.join(os.path.dirname(__file__),
                                                                              "norm_growth.py"))
_gpu = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_gpu)

WEIGHT_DECAYS = _gpu.WEIGHT_DECAYS  # 0 (none), 0.1 (small), 1.0 (strong): the GPU grid's rows
LEARNING_RATES = (1e-3, 3e-3)  # the GPU grid's two larger rates: faster growth in few steps

SWEEP = [{"name": f"wd{wd:g}_lr{lr:g}", "optim.weight_decay": wd, "optim.lr": lr}
         for wd in WEIGHT_DECAYS for lr in LEARNING_RATES]


def get_config():
  return _gpu.get_config().updated({
      "model.num_layers": 2,
      "model.d_model": 64,
      "model.num_heads": 4,
      "model.d_ff": 256,
      "model.max_len": 64,
      "data.seq_len": 64,
      "train.batch_size": 16,
      "train.steps": 2000,
      "stats.saturation_every": 250,
      "logging.log_every": 20,
      "logging.eval_every": 250,
      "checkpoint.save_every": 1000,
      "checkpoint.keep": 1,
      "logging.progress": "lines",
  })
