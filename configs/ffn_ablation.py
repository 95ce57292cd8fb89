"""Ren & Liu 2025: is the FFN what drives a Transformer towards low entropy?

The target and training of configs/entropy_ladder.py (order-2 Markov chain,
V = 4, T = 10, stationary start, fresh data), one model geometry (4 layers,
d_model 128, 4 heads), and SWEEP members that change only the sublayers:

  full            attention + FFN (d_ff 512), the ladder's 0.8M member
  attention_only  no FFN: the model is attention and the residual stream
  ffn_only        no attention: each position sees only its own token, so it
                  cannot read the token before it (an order-2 chain needs it)
  ffn_32 .. ffn_2048   attention fixed, FFN width 32, 128, 1024, 2048

`lensjax sweep --config configs/ffn_ablation.py --workdir runs/ffn_ablation`.
"""

import importlib.util
import os

_spec = importlib.util.spec_from_file_location("_entropy_ladder", os.path.join(os.path.dirname(__file__),
                                                                                 "entropy_ladder.py"))
_ladder = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_ladder)


def get_config():
  return _ladder.get_config()


SWEEP = [
    {"name": "full"},
    {"name": "attention_only", "model.block": "attention_only"},
    {"name": "ffn_only", "model.block": "ffn_only"},
] + [{"name": f"ffn_{width}", "model.d_ff": width} for width in (32, 128, 1024, 2048)]
