"""The train state: everything a resumed run needs to continue bit for bit."""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp

from lensjax.config import ModelConfig
from lensjax.model import has_ffn
from lensjax.stats.spikes import SpikeWindow, spike_window


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # int32 scalar: the number of updates applied so far
  params: Any
  opt_state: Any
  rng: jax.Array  # base key; step t uses fold_in(rng, t)
  # None in a model without FFN (Orbax saves no zero-size arrays).
  unit_last_active: jax.Array | None  # int32 [L, F]: last step each FFN unit fired (-1: never)
  dead_at_last_log: jax.Array | None  # bool [L, F]: the dead set at the last logging step
  skipped_steps: jax.Array  # int32: updates skipped for a non-finite loss or gradient
  first_bad_step: jax.Array  # int32: first step with a non-finite loss or gradient (-1: none)
  loss_window: SpikeWindow  # the last stats.spike_window finite losses, for online spike detection
  spike_count: jax.Array  # int32: steps detected as loss spikes so far
  last_spike_step: jax.Array  # int32: the latest of them (-1: none)


def create_state(model, tx, cfg: ModelConfig, seq_len: int, seed: int, spike_window_size: int = 20,
                 spike_k: float = 6.0) -> TrainState:
  """Pure initialisation from the seed (jit it with output shardings)."""
  root = jax.random.PRNGKey(seed)
  init_key, run_key = jax.random.split(root)
  tokens_1xT = jnp.zeros((1, seq_len), jnp.int32)
  params = model.init(init_key, tokens_1xT)["params"]
  units_LxF = (cfg.num_layers, cfg.d_ff)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params), rng=run_key,
                    unit_last_active=jnp.full(units_LxF, -1, jnp.int32) if has_ffn(cfg) else None,
                    dead_at_last_log=jnp.zeros(units_LxF, bool) if has_ffn(cfg) else None,
                    skipped_steps=jnp.zeros((), jnp.int32), first_bad_step=jnp.full((), -1, jnp.int32),
                    loss_window=spike_window(spike_window_size, spike_k), spike_count=jnp.zeros((), jnp.int32),
                    last_spike_step=jnp.full((), -1, jnp.int32))
