"""A randomly initialised "teacher" Transformer as a target of known conditionals.

The teacher's parameters depend on the data seed alone. A sequence starts with
a uniform token; each next token is drawn from softmax(logits / temperature),
so the true conditional p(x_{t+1} | x<=t) of every position is known exactly.
The temperature sets the target's entropy. Each process draws the whole global
batch (one jitted call; the teacher is small) and keeps its rows, so the batch
does not depend on the number of processes.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from lensjax import sampling
from lensjax.config import ModelConfig
from lensjax.data import base
from lensjax.data.law import TargetLaw
from lensjax.model import Transformer

STREAM_TEACHER_INIT = 200


def teacher_config(vocab_size: int, seq_len: int, num_layers: int, d_model: int, num_heads: int) -> ModelConfig:
  # Weights of std 1/sqrt(d) give logits of order one, so that the temperature
  # spans peaked to flat conditionals rather than near-uniform ones only.
  return ModelConfig(num_layers=num_layers, d_model=d_model, num_heads=num_heads, d_ff=4 * d_model,
                     vocab_size=vocab_size, max_len=seq_len, init_std=1.0 / math.sqrt(d_model))


@functools.partial(jax.jit, static_argnames=("cfg", "seq_len"))
def sample_teacher(params, key, first_B, temperature, *, cfg: ModelConfig, seq_len: int):
  """Ancestral samples of T+1 tokens from x_0 = `first_B`: tokens [B, T+1] and their conditionals [B, T, V].

  x_{t+1} is drawn from softmax(logits_t / temperature) with the key fold_in(key, t): the teacher's batches
  have always been drawn so, one step ahead of `lensjax.sampling`'s schedule, and stay as they were.
  """
  model = Transformer(cfg)
  tokens_BxTp1 = jnp.zeros((first_B.shape[0], seq_len + 1), jnp.int32).at[:, 0].set(first_B)

  def next_token(t, tokens_BxTp1):
    logits_BxTxV, _ = model.apply({"params": params}, tokens_BxTp1[:, :seq_len])
    draw_B = jax.random.categorical(jax.random.fold_in(key, t), logits_BxTxV[:, t] / temperature)
    return tokens_BxTp1.at[:, t + 1].set(draw_B)

  tokens_BxTp1 = jax.lax.fori_loop(0, seq_len, next_token, tokens_BxTp1)
  logits_BxTxV, _ = model.apply({"params": params}, tokens_BxTp1[:, :seq_len])
  return tokens_BxTp1, jax.nn.softmax(logits_BxTxV / temperature, axis=-1)


class TeacherTarget:
  knows_conditionals = True

  def __init__(self, vocab_size: int, seq_len: int, seed: int, *, num_layers: int = 2, d_model: int = 64,
               num_heads: int = 4, temperature: float = 1.0, order_seed: int | None = None):
    self.vocab_size, self.seq_len, self.seed = int(vocab_size), int(seq_len), int(seed)
    self.order_seed = self.seed if order_seed is None else int(order_seed)  # the batches' draws; `seed`: the teacher
    self.temperature = float(temperature)
    self.model = Transformer(teacher_config(vocab_size, seq_len, num_layers, d_model, num_heads))
    init_key = jax.random.PRNGKey(int(base.make_rng(seed, STREAM_TEACHER_INIT).integers(2**31)))
    self.params = self.model.init(init_key, jnp.zeros((1, seq_len), jnp.int32))["params"]
    # The law's conditionals: what the batches are drawn from and what `law` hands the analyses.
    self.log_probs = sampling.TransformerLogProbs(self.model.cfg, self.temperature)

  def token_conditionals(self, inputs_BxT: np.ndarray) -> np.ndarray:
    """The true p(x_{t+1} | x<=t) for arbitrary given inputs [B, T'] with T' <= seq_len."""
    logits, _ = self.model.apply({"params": self.params}, jnp.asarray(inputs_BxT, jnp.int32))
    return np.asarray(jax.nn.softmax(logits / self.temperature, axis=-1), np.float32)

  def law(self) -> TargetLaw:
    """The teacher as a sequence law: a uniform x_0, then its tempered conditionals; no closed-form entropy."""
    uniform_V = np.full(self.vocab_size, -math.log(self.vocab_size))
    return TargetLaw("teacher", self.vocab_size, self.seq_len, uniform_V, self.params, self.log_probs, None, None)

  def batch(self, step: int, batch_size: int, *, split: str = "train", process_index: int = 0,
            process_count: int = 1) -> dict[str, np.ndarray]:
    rows = base.process_rows(batch_size, process_index, process_count)
    return self._drawn(base.make_rng(self.order_seed, base.split_stream_id(split), base.check_step(step)),
                       batch_size, rows)

  def probe(self, batch_size: int, *, split: str = "train", process_index: int = 0,
            process_count: int = 1) -> dict[str, np.ndarray]:
    """This process's rows of the split's fixed probe (the teacher's draws from the probe's own stream)."""
    rows = base.process_rows(batch_size, process_index, process_count)
    return self._drawn(base.probe_rng(split), batch_size, rows)

  def _drawn(self, rng: np.random.Generator, batch_size: int, rows: slice) -> dict[str, np.ndarray]:
    first_B = rng.integers(0, self.vocab_size, size=batch_size)
    key = jax.random.PRNGKey(int(rng.integers(2**31)))
    tokens_BxTp1, probs_BxTxV = sample_teacher(self.params, key, jnp.asarray(first_B, jnp.int32), self.temperature,
                                               cfg=self.model.cfg, seq_len=self.seq_len)
    batch = base.next_token_batch(np.asarray(tokens_BxTp1)[rows])
    batch["target_probs"] = np.asarray(probs_BxTxV, np.float32)[rows]
    return batch
