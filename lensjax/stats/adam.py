"""Adam's state next to the gradient (Ren & Liu 2025; Molybog et al. 2023).

The lens reads the moments of optax's `ScaleByAdamState` wherever it sits in
the optimiser chain (after clipping, next to masked weight decay). The state
is the one after this step's update, so its `count` is the count this step's
bias correction used. Optimisers without Adam moments (sgd, adafactor) give {}.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from lensjax.config import ModelConfig, OptimConfig
from lensjax.stats.norms import group_sums

F32 = jnp.float32


def find_adam_state(opt_state):
  """The first `ScaleByAdamState` in the optimiser state, or None."""
  is_adam = lambda x: isinstance(x, optax.ScaleByAdamState)
  found = [s for s in jax.tree_util.tree_leaves(opt_state, is_leaf=is_adam) if is_adam(s)]
  return found[0] if found else None


def _tree_sum(fn, *trees):
  """Σ over every coordinate of the elementwise `fn(*leaves)`, in float32."""
  leaves = zip(*(jax.tree.leaves(tree) for tree in trees))
  return sum(jnp.sum(fn(*(x.astype(F32) for x in xs)), dtype=F32) for xs in leaves)


def adam_lens_for(optim_cfg: OptimConfig, model_cfg: ModelConfig):
  """A lens giving `adam/g2_over_v/layer_{l}`, `adam/update_grad_cos`, `adam/update_saturated`."""
  b1, b2, eps = optim_cfg.b1, optim_cfg.b2, optim_cfg.eps

  def adam_lens(view) -> dict:
    adam = find_adam_state(view.opt_state)
    if adam is None:
      return {}
    count = adam.count.astype(F32)
    c1, c2 = 1.0 - b1 ** count, 1.0 - b2 ** count
    # g is the raw gradient (before clipping, as in train/grad_norm) against the
    # running v̂; when clipping bites the ratio carries the clip factor², e.g.
    # (grad_norm / clip_norm)² at count 1. Over one block mean(g²)/mean(v̂) = Σg²/Σv̂.
    g2 = group_sums(jnp.square, model_cfg, view.grads, scalars=True)
    v_L = group_sums(lambda nu: nu, model_cfg, adam.nu, scalars=True).blocks_L / c2
    ratio_L = g2.blocks_L / jnp.maximum(v_L, 1e-30)
    metrics = {f"adam/g2_over_v/layer_{l}": ratio_L[l] for l in range(model_cfg.num_layers)}
    ug = _tree_sum(lambda u, g: -u * g, view.updates, view.grads)
    uu = _tree_sum(jnp.square, view.updates)
    metrics["adam/update_grad_cos"] = ug / jnp.maximum(jnp.sqrt(uu) * jnp.sqrt(g2.total), 1e-30)
    saturated = lambda mu, nu: jnp.abs((mu / c1) / (jnp.sqrt(nu / c2) + eps)) > 0.9
    size = sum(x.size for x in jax.tree.leaves(adam.mu))
    metrics["adam/update_saturated"] = _tree_sum(saturated, adam.mu, adam.nu) / size
    return metrics

  return adam_lens


def unit_second_moment_lens_for(optim_cfg: OptimConfig, model_cfg: ModelConfig):
  """`units/adam_v` [L, F]: per FFN unit, the mean bias-corrected v̂ over its weights in and out."""
  from lensjax.model import layer_params  # model imports nothing from stats; keep it that way

  def lens(view) -> dict:
    adam = find_adam_state(view.opt_state)
    if adam is None or "ffn" not in layer_params(adam.nu, model_cfg)[0]:
      return {}
    correction = 1.0 - optim_cfg.b2 ** adam.count.astype(F32)
    per_layer = []
    for ffn in (layer["ffn"] for layer in layer_params(adam.nu, model_cfg)):
      into = [ffn[name]["kernel"].mean(axis=0) for name in ("up", "gate") if name in ffn]  # [D, F] -> [F]
      out = ffn["down"]["kernel"].mean(axis=1)  # [F, D] -> [F]
      per_layer.append((sum(into) + out) / (len(into) + 1))
    return {"units/adam_v": jnp.stack(per_layer) / correction}

  return lens
