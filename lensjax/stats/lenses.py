"""Which lenses each step variant carries.

A lens is a pure function `StepView -> {metric name: array}` (see
`lensjax.train.step`). The plain step carries none; the logging step and the
held-out evaluation carry the ones listed here.
"""

from __future__ import annotations

from lensjax.config import Config
from lensjax.stats import adam, attention, entropy, norms, sparsity


def train_lenses(config: Config, source) -> tuple:
  return (sparsity.activity_lens, attention.attention_lens, entropy.token_entropy_lens,
          norms.norm_lens_for(config.model), adam.adam_lens_for(config.optim, config.model),
          adam.unit_second_moment_lens_for(config.optim, config.model)) + _cudnn_attention(config)


def eval_lenses(config: Config, source) -> tuple:
  return (sparsity.eval_activity_lens, attention.eval_attention_lens, entropy.eval_token_entropy_lens)


def probe_lenses(config: Config, source) -> tuple:
  """Activity and attention statistics of the fixed probe batch, under `probe/` names."""
  rename = lambda lens: lambda view: {"probe/" + k: v for k, v in lens(view).items()}
  return (rename(sparsity.activity_lens), rename(attention.attention_lens))


def _cudnn_attention(config: Config) -> tuple:
  if config.model.attention != "cudnn":
    return ()
  return (attention.sub_batch_attention_lens_for(config.model, config.stats.attention_sub_batch),)
