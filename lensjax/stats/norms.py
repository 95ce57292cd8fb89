"""Parameter norm growth (Merrill et al. 2021): ‖θ‖ in total, per block, for embeddings; the step δ.

Everything here follows from float32 sums over the parameter leaves: θ·θ per
group, and δ·δ, θ·δ in total. Since θ_{t+1} = θ_t + δ_t, ‖θ_{t+1}‖² and
θ_t·θ_{t+1} come from those three sums without touching θ_{t+1}.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from lensjax.config import ModelConfig
from lensjax.ops.arrays import F32
from lensjax.ops.layers import SCANNED, top_name
from lensjax.stats.lens import Lens

EMBEDDINGS = ("embed", "pos_embed", "unembed")  # top-level modules counted as embeddings


class GroupSums(NamedTuple):
  blocks_L: jax.Array  # per residual block
  embed: jax.Array
  total: jax.Array  # every counted leaf, blocks and embeddings included


def group_sums(fn, cfg: ModelConfig, *trees, scalars: bool = False) -> GroupSums:
  """Σ over coordinates of the elementwise `fn(*leaves)`, in float32, grouped by block.

  Works for both layouts: unrolled blocks are `layer_{l}` subtrees, scanned ones
  are leaves of `layers` with a leading L axis. A leaf is scalar by its per-layer
  shape (the L axis does not count); scalars are left out unless `scalars`.
  """
  L = cfg.num_layers
  scanned_L, embed, total = jnp.zeros(L, F32), jnp.zeros((), F32), jnp.zeros((), F32)
  unrolled = [jnp.zeros((), F32)] * L  # unrolled blocks: one running sum each
  paths_and_leaves = jax.tree_util.tree_leaves_with_path(trees[0])
  other_leaves = [jax.tree.leaves(tree) for tree in trees[1:]]
  for i, (path, leaf) in enumerate(paths_and_leaves):
    top = top_name(path)
    scanned = cfg.scan_layers and top == SCANNED
    if not scalars and leaf.ndim - scanned == 0:
      continue
    value = fn(leaf.astype(F32), *(leaves[i].astype(F32) for leaves in other_leaves))
    if scanned:
      per_layer_L = jnp.sum(value.reshape(L, -1), axis=1)
      scanned_L, leaf_sum = scanned_L + per_layer_L, jnp.sum(per_layer_L)
    else:
      leaf_sum = jnp.sum(value)
      if top.startswith("layer_"):
        l = int(top[len("layer_"):])
        unrolled[l] = unrolled[l] + leaf_sum
      elif top in EMBEDDINGS:
        embed = embed + leaf_sum
    total = total + leaf_sum
  blocks_L = scanned_L + jnp.stack(unrolled)
  return GroupSums(blocks_L, embed, total)


def _cos(dot, sq_a, sq_b):
  return dot / jnp.maximum(jnp.sqrt(sq_a) * jnp.sqrt(sq_b), 1e-30)


class NormLens(Lens):
  """`norm/params` (total, `/layer_{l}`, `/embed`, `/non_embedding`), `norm/update`, `norm/cos_step`, `norm/alignment`."""
  name = "norms"

  def __init__(self, cfg: ModelConfig):
    self.cfg = cfg

  def update(self, state, view):
    cfg = self.cfg
    tt = group_sums(lambda t: t * t, cfg, view.params)
    dd = group_sums(lambda d: d * d, cfg, view.updates).total
    td = group_sums(lambda t, d: t * d, cfg, view.params, view.updates).total
    new_sq = tt.total + 2.0 * td + dd  # ‖θ + δ‖²
    metrics = {"norm/params": jnp.sqrt(tt.total), "norm/params/embed": jnp.sqrt(tt.embed),
               # Merrill et al. fit the encoder's parameters: everything but the embeddings.
               "norm/params/non_embedding": jnp.sqrt(jnp.maximum(tt.total - tt.embed, 0.0)),
               "norm/update": jnp.sqrt(dd), "norm/cos_step": _cos(tt.total + td, tt.total, new_sq),
               "norm/alignment": _cos(td, dd, tt.total)}
    # Separate scalar keys: an [L] vector under `norm/params` would clash with the total.
    metrics.update({f"norm/params/layer_{l}": jnp.sqrt(tt.blocks_L[l]) for l in range(cfg.num_layers)})
    return state, metrics
