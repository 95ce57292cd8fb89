"""GPT-2 small as nanoGPT benchmarks it: `configs/gpt2_small.py` without biases.

nanoGPT's `bias=False` drops the biases of every linear layer and of the layer norms, which is
`model.use_bias=False` here; everything else (12 layers, d_model 768, 12 heads, d_ff 3072, T = 1024,
vocabulary padded to 50304, GELU, tied embeddings, no dropout, bfloat16 compute, AdamW) is the GPT-2 small
geometry of `configs/gpt2_small.py`, which keeps GPT-2's biases. This is the config to compare with nanoGPT's
step time (benchmarks/RESULTS.md); the one with biases is the GPT-2 model itself.
"""

import importlib.util
import os

_spec = importlib.util.spec_from_file_location("_gpt2_small", os.path.join(os.path.dirname(__file__), "gpt2_small.py"))
_gpt2_small = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_gpt2_small)


def get_config():
  return _gpt2_small.get_config().updated({"model.use_bias": False})
