"""Online loss-spike detection, on device, every step.

A loss is a spike when it exceeds the median of the previous W finite losses
by more than k median absolute deviations,

    spike(t)  ⇔  L_t > median(L_{t−W..t−1}) + k · max(MAD, MAD_FLOOR·|median|),

and a non-finite loss is always one. The window is a ring buffer of arrays in
the lens's state (`SpikeWindow`), so `update` is pure and jit-able and a
resumed run judges exactly as an uninterrupted one. Only finite losses enter
the window, and only once it holds W of them does anything count as a spike.
The offline detector (`lensjax.analysis.spikes`) runs this same `update` over
the logged losses, so the two agree by construction.
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp

from lensjax.ops.arrays import F32
from lensjax.stats.lens import Lens

# A constant loss has MAD 0; without a floor any rounding wobble above it would count as a spike.
MAD_FLOOR = 1e-3


@flax.struct.dataclass
class SpikeWindow:
  losses_W: jax.Array  # float32 [W]: the last W finite losses, a ring buffer (order does not matter to a median)
  count: jax.Array  # int32: finite losses seen so far; the next one goes to slot count % W
  k: jax.Array  # float32: the threshold in median absolute deviations


def spike_window(window: int = 20, k: float = 6.0) -> SpikeWindow:
  """An empty window of `window` losses (it lives in the train state and is checkpointed with it)."""
  return SpikeWindow(jnp.zeros((window,), F32), jnp.zeros((), jnp.int32), jnp.asarray(k, F32))


def threshold(window: SpikeWindow) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(median, MAD, threshold) of the losses in the window."""
  median = jnp.median(window.losses_W)
  mad = jnp.median(jnp.abs(window.losses_W - median))
  return median, mad, median + window.k * jnp.maximum(mad, MAD_FLOOR * jnp.abs(median))


def update(window: SpikeWindow, loss) -> tuple[SpikeWindow, jax.Array]:
  """Judges `loss` against the previous W losses, then adds it; returns `(window, detected)`."""
  W = window.losses_W.shape[0]
  loss = jnp.asarray(loss, F32)
  _, _, limit = threshold(window)
  finite = jnp.isfinite(loss)
  detected = (window.count >= W) & (~finite | (loss > limit))
  slot = window.count % W
  losses_W = jnp.where(finite, window.losses_W.at[slot].set(loss), window.losses_W)
  return window.replace(losses_W=losses_W, count=window.count + finite.astype(jnp.int32)), detected


class SpikeLens(Lens):
  """`spike/detected`, `spike/count`, `spike/last_step` on every step."""
  name = "spikes"
  every_step = True
  stateful = True
  resume_keys = ("stats.spike_window",)  # the window's length is an array shape in the state

  def __init__(self, window: int, k: float):
    self.window, self.k = window, k

  def init(self, params):
    return {"window": spike_window(self.window, self.k), "count": jnp.zeros((), jnp.int32),
            "last_step": jnp.full((), -1, jnp.int32)}

  def update(self, state, view):
    window, spiked = update(state["window"], view.loss)
    count = state["count"] + spiked.astype(jnp.int32)
    last_step = jnp.where(spiked, view.step, state["last_step"])
    metrics = {"spike/detected": spiked.astype(F32), "spike/count": count, "spike/last_step": last_step}
    return {"window": window, "count": count, "last_step": last_step}, metrics
