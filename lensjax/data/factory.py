"""The data source named by a config."""

from __future__ import annotations

from lensjax.config import Config
from lensjax.data.targets import MarkovTarget
from lensjax.data.teacher import TeacherTarget
from lensjax.data.prepared import is_prepared_dir
from lensjax.data.text import ByteText, PreparedTokens, TokenFile


def make_source(config: Config):
  d = config.data
  order = d.seed if d.order_seed < 0 else d.order_seed  # text has no target: its one seed is the order's
  if d.source == "markov":
    return MarkovTarget(d.vocab_size, d.markov_order, d.markov_alpha, d.seq_len, d.seed, d.num_sequences or None,
                        initial=d.markov_initial, order_seed=order)
  if d.source == "teacher":
    return TeacherTarget(d.vocab_size, d.seq_len, d.seed, num_layers=d.teacher_layers, d_model=d.teacher_d_model,
                         num_heads=d.teacher_heads, temperature=d.teacher_temperature, order_seed=order)
  seed = order
  if d.source == "bytes":
    if not d.path:
      return ByteText.from_default_corpus(d.seq_len, seed, d.heldout_fraction)
    return ByteText(d.path, d.seq_len, seed, d.heldout_fraction)
  if is_prepared_dir(d.path):
    return PreparedTokens(d.path, d.seq_len, seed, config.model.vocab_size)
  return TokenFile(d.path, d.seq_len, seed, config.model.vocab_size, d.token_dtype, d.heldout_fraction)
