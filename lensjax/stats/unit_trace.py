"""A per-unit trace of the FFN on logging steps: what each unit looked like before it died (`lensjax deaths`).

On logging steps (with `stats.unit_trace`), per layer and unit, [L, F]:
`units/pre_mean` and `units/pre_std`, the mean and standard deviation of the
unit's pre-activation z over the batch's real tokens; `units/w_in_norm`, the
L2 norm of its input weights (its column of the FFN's `up` kernel, and its
bias when the model has biases) at θ_{t+1}; `units/w_in_update`, the norm of
this step's update δ_t on the same coordinates. The host half writes them,
with the activity lens's `units/frequency` and the dead-unit lens's
`units/steps_since_active` of the same step, to
RUNDIR/unit_trace/step_{step:08d}.npz.

Gated FFNs (SwiGLU) are refused: a unit there has two pre-activations and
two input columns, and no one of them decides alone whether it fires.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from lensjax.config import ModelConfig
from lensjax.errors import InputError
from lensjax.ops.arrays import F32
from lensjax.ops.layers import layer_trees, map_layers
from lensjax.stats.lens import Lens

TRACE_DIR = "unit_trace"
# The record's names -> the keys of a trace file.
TRACE_FIELDS = {"units/pre_mean": "pre_mean", "units/pre_std": "pre_std", "units/frequency": "frequency",
                "units/w_in_norm": "w_in_norm", "units/w_in_update": "w_in_update",
                "units/steps_since_active": "steps_since_active"}


def pre_activation_moments(z_BxTxF, mask_BxT) -> tuple[jax.Array, jax.Array]:
  """float32 [F] mean and (population) standard deviation of z over the real tokens; 0 and 0 without any."""
  real_BxTx1 = (mask_BxT > 0).astype(F32)[:, :, None]
  count = jnp.maximum(jnp.sum(real_BxTx1), 1.0)
  z_BxTxF = z_BxTxF.astype(F32)
  mean_F = jnp.sum(z_BxTxF * real_BxTx1, axis=(0, 1)) / count
  # Two passes: E[z²] − E[z]² cancels catastrophically for a unit whose |mean| ≫ std.
  var_F = jnp.sum(jnp.square(z_BxTxF - mean_F) * real_BxTx1, axis=(0, 1)) / count
  return mean_F, jnp.sqrt(var_F)


def input_weight_norms(ffn_tree) -> jax.Array:
  """float32 [F]: per unit, the L2 norm of its column of `up`'s kernel [D, F] and of its bias [F] if any."""
  up = ffn_tree["up"]
  squares_F = jnp.sum(jnp.square(up["kernel"].astype(F32)), axis=0)
  if "bias" in up:
    squares_F = squares_F + jnp.square(up["bias"].astype(F32))
  return jnp.sqrt(squares_F)


class UnitTraceLens(Lens):
  """`units/pre_mean`, `units/pre_std`, `units/w_in_norm`, `units/w_in_update` [L, F] on logging steps,
  written per step to RUNDIR/unit_trace/."""
  name = "unit_trace"
  needs = frozenset({"ffn_pre"})
  array_dirs = (TRACE_DIR,)

  def __init__(self, model_cfg: ModelConfig):
    if model_cfg.activation == "swiglu":
      raise InputError("stats.unit_trace traces one pre-activation per FFN unit, but model.activation=swiglu "
                       "gives each unit two (gate and up); train with model.activation=relu or gelu, or pass "
                       "--config.stats.unit_trace=false.")
    self.model_cfg = model_cfg

  def update(self, state, view):
    mask_BxT = view.batch["mask"]
    mean_LxF, std_LxF = map_layers(lambda z: pre_activation_moments(z, mask_BxT), view.captured["ffn_pre"])
    norms_of = lambda tree: jnp.stack([input_weight_norms(layer["ffn"]) for layer in layer_trees(tree, self.model_cfg)])
    metrics = {"units/pre_mean": mean_LxF, "units/pre_std": std_LxF, "units/w_in_norm": norms_of(view.new_params)}
    if view.updates is not None:
      metrics["units/w_in_update"] = norms_of(view.updates)
    return state, metrics

  def write(self, step, record, sink, prefix=""):
    if prefix:
      return
    arrays = {key: record[name] for name, key in TRACE_FIELDS.items() if name in record}
    if "pre_mean" in arrays:
      sink.arrays(step, TRACE_DIR, arrays)
