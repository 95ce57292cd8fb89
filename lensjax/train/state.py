"""The train state: everything a resumed run needs to continue bit for bit."""

from __future__ import annotations

from typing import Any, Sequence

import flax.struct
import jax
import jax.numpy as jnp

from lensjax.stats import lens as lens_lib


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # int32 scalar: the number of updates applied so far
  params: Any
  opt_state: Any
  rng: jax.Array  # base key; step t uses fold_in(rng, t)
  skipped_steps: jax.Array  # int32: updates skipped for a non-finite loss or gradient
  first_bad_step: jax.Array  # int32: first step with a non-finite loss or gradient (-1: none)
  lens_state: dict  # {lens name: its state}, for the lenses that keep one


def create_state(model, tx, seq_len: int, seed: int, lenses: Sequence[lens_lib.Lens] = ()) -> TrainState:
  """Pure initialisation from the seed (jit it with output shardings)."""
  params = initial_params(model, seq_len, seed)
  run_key = jax.random.split(jax.random.PRNGKey(seed))[1]
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params), rng=run_key,
                    skipped_steps=jnp.zeros((), jnp.int32), first_bad_step=jnp.full((), -1, jnp.int32),
                    lens_state=lens_lib.init_states(lenses, params))


def initial_params(model, seq_len: int, seed) -> dict:
  """The parameters `create_state` starts from with this seed (a Python or a traced integer)."""
  init_key = jax.random.split(jax.random.PRNGKey(seed))[0]
  return model.init(init_key, jnp.zeros((1, seq_len), jnp.int32))["params"]


# Checkpoints written before the lenses owned their state kept it in fields of their own.
LEGACY_FIELDS = {"unit_last_active": ("dead_units", "last_active"),
                 "dead_at_last_log": ("dead_units", "dead_at_last_log"),
                 "loss_window": ("spikes", "window"), "spike_count": ("spikes", "count"),
                 "last_spike_step": ("spikes", "last_step")}


def legacy_layout(abstract_state: TrainState) -> dict:
  """The pre-lens layout of the same state (a dict), for restoring an older checkpoint into it."""
  layout = {"step": abstract_state.step, "params": abstract_state.params, "opt_state": abstract_state.opt_state,
            "rng": abstract_state.rng, "skipped_steps": abstract_state.skipped_steps,
            "first_bad_step": abstract_state.first_bad_step}
  for field, (lens, key) in LEGACY_FIELDS.items():
    if lens in abstract_state.lens_state:
      value = abstract_state.lens_state[lens][key]
      layout[field] = dict(vars(value)) if key == "window" else value  # a struct dataclass saves as a dict
  return layout


def from_legacy(restored: dict, abstract_state: TrainState) -> TrainState:
  """A TrainState from a checkpoint restored with `legacy_layout`."""
  lens_state = jax.tree.map(lambda x: x, abstract_state.lens_state)  # a copy of the structure to fill
  lens_state = {name: dict(state) for name, state in lens_state.items()}
  for field, (lens, key) in LEGACY_FIELDS.items():
    if lens in lens_state:
      value = restored[field]
      lens_state[lens][key] = type(abstract_state.lens_state[lens][key])(**value) if key == "window" else value
  return TrainState(step=restored["step"], params=restored["params"], opt_state=restored["opt_state"],
                    rng=restored["rng"], skipped_steps=restored["skipped_steps"],
                    first_bad_step=restored["first_bad_step"], lens_state=lens_state)


# `Checkpoints(..., migrate=MIGRATE)` restores checkpoints of either layout.
MIGRATE = (legacy_layout, from_legacy)
