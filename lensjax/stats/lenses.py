"""Which lenses each step variant carries.

A lens is a pure function `StepView -> {metric name: array}` (see
`lensjax.train.step`). The plain step carries none; the logging step and the
held-out evaluation carry the ones listed here.
"""

from __future__ import annotations

from lensjax.config import Config
from lensjax.stats import attention, sparsity


def train_lenses(config: Config, source) -> tuple:
  return (sparsity.activity_lens, attention.attention_lens)


def eval_lenses(config: Config, source) -> tuple:
  return (sparsity.eval_activity_lens, attention.eval_attention_lens)
