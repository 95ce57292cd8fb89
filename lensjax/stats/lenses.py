"""Which lenses each step variant carries: one registration line per lens.

The plain step runs the `every_step` ones of `train_lenses`; the logging step
all of them; the held-out evaluation and the two fixed probes theirs, under
`eval/`, `probe/` (held out) and `probe_train/` (training split) names.
"""

from __future__ import annotations

from lensjax.config import Config
from lensjax.model import has_attention, has_ffn
from lensjax.stats.activity_distribution import ActivityDistributionLens
from lensjax.stats.adam import AdamLens, UnitSecondMomentLens
from lensjax.stats.attention import AttentionLens
from lensjax.stats.dead_units import DeadUnitsLens
from lensjax.stats.entropy import TokenEntropyLens
from lensjax.stats.lens import Lens, Renamed
from lensjax.stats.norms import NormLens
from lensjax.stats.sparsity import ActivityLens
from lensjax.stats.spikes import SpikeLens
from lensjax.stats.unit_trace import UnitTraceLens


def train_lenses(config: Config) -> tuple[Lens, ...]:
  m, s, o = config.model, config.stats, config.optim
  lenses = [SpikeLens(s.spike_window, s.spike_k)]
  if has_ffn(m):
    lenses += [DeadUnitsLens(m.num_layers, m.d_ff, s.dead_window, m.active_threshold),
               ActivityLens(m.active_threshold)]
    lenses.append(ActivityDistributionLens(m.active_threshold))
    lenses += [UnitTraceLens(m)] if s.unit_trace else []  # its files carry ActivityLens's units/frequency
  if has_attention(m):
    lenses.append(AttentionLens(m, s.attention_sub_batch))
  lenses += [TokenEntropyLens(), NormLens(m), AdamLens(o, m), UnitSecondMomentLens(o, m)]
  return tuple(lenses)


def eval_lenses(config: Config) -> tuple[Lens, ...]:
  return tuple(Renamed("eval/", lens) for lens in _activity_and_attention(config) + (TokenEntropyLens(),))


def probe_lenses(config: Config, prefix: str = "probe/") -> tuple[Lens, ...]:
  """Activity (means and distributions) and attention statistics of a fixed probe: the held-out one under
  `probe/` names, the training one under `probe_train/`."""
  distribution = (ActivityDistributionLens(config.model.active_threshold),) if has_ffn(config.model) else ()
  return tuple(Renamed(prefix, lens) for lens in _activity_and_attention(config) + distribution)


def _activity_and_attention(config: Config) -> tuple[Lens, ...]:
  m = config.model
  return ((ActivityLens(m.active_threshold, with_units=False),) if has_ffn(m) else ()) + (
      (AttentionLens(m),) if has_attention(m) else ())
