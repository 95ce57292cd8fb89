"""Dead, dying and revived FFN units, tracked on every step; neuron events on logging steps.

The lens keeps, per unit, the last step it fired on a real token (-1: never)
and the dead set of the last logging step. A unit is dead at step s when it
fired on none of the last `window` steps. On logging steps it reports which
units entered or left the dead set since the previous logging step, which the
host half writes to `neuron_events.jsonl` with each unit's context.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from lensjax.ops.arrays import F32
from lensjax.ops.layers import map_layers
from lensjax.stats.lens import Lens
from lensjax.stats.sparsity import unit_active

EVENT_LOG = "neuron_events"
EVENT_CONTEXT = ("frequency", "steps_since_active", "adam_v")  # units/... values recorded with each event


def dead_units(last_active_LxF: jax.Array, step: jax.Array, window: int) -> jax.Array:
  """A unit is dead at `step` when it fired on none of the last `window` steps."""
  return (step - last_active_LxF) >= window


def track_dead_units(last_active_LxF, unit_active_LxF, step, window: int):
  """Updates the per-unit last-active step and reports dead / died / revived.

  Returns `(new_last_active_LxF, metrics)` where the metrics are [L] vectors.
  """
  if last_active_LxF is None:  # no FFN in this model
    return last_active_LxF, {}
  was_dead = dead_units(last_active_LxF, step - 1, window)
  new_last_active = jnp.where(unit_active_LxF, step, last_active_LxF)
  is_dead = dead_units(new_last_active, step, window)
  count = lambda x: jnp.sum(x, axis=-1).astype(F32)
  metrics = {
      "ffn/dead": jnp.mean(is_dead.astype(F32), axis=-1),
      "ffn/died": count(is_dead & ~was_dead),
      "ffn/revived": count(~is_dead & was_dead),
  }
  return new_last_active, metrics


def neuron_events(step: int, record: dict) -> list[dict]:
  """One event per unit that died or revived in `record`, with its EVENT_CONTEXT values."""
  events = []
  for event in ("died", "revived"):
    flags_LxF = record.get(f"units/{event}")
    if flags_LxF is None:
      continue
    for layer, unit in zip(*np.nonzero(np.asarray(flags_LxF))):
      layer, unit = int(layer), int(unit)
      event_record = {"step": step, "layer": layer, "unit": unit, "event": event}
      for key in EVENT_CONTEXT:
        if f"units/{key}" in record:
          event_record[key] = float(record[f"units/{key}"][layer][unit])
      events.append(event_record)
  return events


class DeadUnitsLens(Lens):
  """`ffn/dead`, `ffn/died`, `ffn/revived` [L] every step; `units/died`, `units/revived`,
  `units/steps_since_active` [L, F] on logging steps."""
  name = "dead_units"
  every_step = True
  stateful = True
  needs = frozenset({"ffn_hidden"})
  resume_keys = ("model.num_layers", "model.d_ff")
  event_logs = (EVENT_LOG,)

  def __init__(self, num_layers: int, d_ff: int, window: int, threshold: float):
    self.units_LxF, self.window, self.threshold = (num_layers, d_ff), window, threshold

  def init(self, params):
    return {"last_active": jnp.full(self.units_LxF, -1, jnp.int32),
            "dead_at_last_log": jnp.zeros(self.units_LxF, bool)}

  def update(self, state, view):
    mask_BxT = view.batch["mask"]
    active_LxF = map_layers(lambda a: unit_active(a, mask_BxT, self.threshold), view.captured["ffn_hidden"])
    last_active, metrics = track_dead_units(state["last_active"], active_LxF, view.step, self.window)
    state = {**state, "last_active": last_active}
    if view.logging:
      dead_LxF = dead_units(last_active, view.step, self.window)
      before = state["dead_at_last_log"]
      metrics.update({"units/died": dead_LxF & ~before, "units/revived": ~dead_LxF & before,
                      "units/steps_since_active": (view.step - last_active).astype(F32)})
      state["dead_at_last_log"] = dead_LxF
    return state, metrics

  def write(self, step, record, sink, prefix=""):
    if prefix:
      return
    for event in neuron_events(step, record):
      sink.event(EVENT_LOG, event.pop("step"), event)
    for layer, row in enumerate(record.get("units/steps_since_active", ())):
      sink.histogram(step, f"ffn/steps_since_active/layer_{layer}", row)
    if "ffn/dead" in record:
      sink.layer_history_heatmap(step, "ffn/dead", record["ffn/dead"], units="fraction of units dead")
