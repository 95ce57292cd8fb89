"""Adam's state next to the gradient (Ren & Liu 2025; Molybog et al. 2023).

The lens reads the moments of optax's `ScaleByAdamState` wherever it sits in
the optimiser chain (after clipping, next to masked weight decay). The state
is the one after this step's update, so its `count` is the count this step's
bias correction used. Optimisers without Adam moments (sgd, adafactor) give {}.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from lensjax.config import ModelConfig, OptimConfig
from lensjax.ops.adam import bias_corrections, find_adam_state
from lensjax.ops.layers import layer_trees
from lensjax.ops.trees import tree_sum
from lensjax.stats.lens import Lens
from lensjax.stats.norms import group_sums


class _AdamStateLens(Lens):
  """A lens of Adam's moments in the optimiser state after this step's update."""

  def __init__(self, optim_cfg: OptimConfig, model_cfg: ModelConfig):
    self.optim_cfg, self.model_cfg = optim_cfg, model_cfg


class AdamLens(_AdamStateLens):
  """`adam/g2_over_v/layer_{l}`, `adam/update_grad_cos`, `adam/update_saturated`."""
  name = "adam"

  def update(self, state, view):
    adam = find_adam_state(view.opt_state)
    if adam is None:
      return state, {}
    model_cfg, eps = self.model_cfg, self.optim_cfg.eps
    c1, c2 = bias_corrections(adam.count, self.optim_cfg.b1, self.optim_cfg.b2)
    # g is the raw gradient (before clipping, as in train/grad_norm) against the
    # running v̂; when clipping bites the ratio carries the clip factor², e.g.
    # (grad_norm / clip_norm)² at count 1. Over one block mean(g²)/mean(v̂) = Σg²/Σv̂.
    g2 = group_sums(jnp.square, model_cfg, view.grads, scalars=True)
    v_L = group_sums(lambda nu: nu, model_cfg, adam.nu, scalars=True).blocks_L / c2
    ratio_L = g2.blocks_L / jnp.maximum(v_L, 1e-30)
    metrics = {f"adam/g2_over_v/layer_{l}": ratio_L[l] for l in range(model_cfg.num_layers)}
    ug = tree_sum(lambda u, g: -u * g, view.updates, view.grads)
    uu = tree_sum(jnp.square, view.updates)
    metrics["adam/update_grad_cos"] = ug / jnp.maximum(jnp.sqrt(uu) * jnp.sqrt(g2.total), 1e-30)
    saturated = lambda mu, nu: (jnp.abs((mu / c1) / (jnp.sqrt(nu / c2) + eps)) > 0.9).astype(jnp.float32)
    size = sum(x.size for x in jax.tree.leaves(adam.mu))
    metrics["adam/update_saturated"] = tree_sum(saturated, adam.mu, adam.nu) / size
    return state, metrics


class UnitSecondMomentLens(_AdamStateLens):
  """`units/adam_v` [L, F]: per FFN unit, the mean bias-corrected v̂ over its weights in and out."""
  name = "unit_adam_v"

  def update(self, state, view):
    adam = find_adam_state(view.opt_state)
    if adam is None or "ffn" not in layer_trees(adam.nu, self.model_cfg)[0]:
      return state, {}
    _, correction = bias_corrections(adam.count, self.optim_cfg.b1, self.optim_cfg.b2)
    per_layer = []
    for ffn in (layer["ffn"] for layer in layer_trees(adam.nu, self.model_cfg)):
      into = [ffn[name]["kernel"].mean(axis=0) for name in ("up", "gate") if name in ffn]  # [D, F] -> [F]
      out = ffn["down"]["kernel"].mean(axis=1)  # [F, D] -> [F]
      per_layer.append((sum(into) + out) / (len(into) + 1))
    return state, {"units/adam_v": jnp.stack(per_layer) / correction}
