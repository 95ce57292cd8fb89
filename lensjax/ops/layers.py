"""Where each residual block's parameters sit, in both layouts.

Unrolled models keep block l under `layer_{l}`; scanned ones (`scan_layers`)
keep every block's leaves stacked along a leading L axis under `layers`. The
functions take anything with `num_layers` and `scan_layers` attributes (a
ModelConfig), so this floor imports nothing above it.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

Tree = Any
SCANNED = "layers"


def top_name(path) -> str:
  """The top-level module name of a leaf's key path."""
  return str(getattr(path[0], "key", path[0]))


def layer_trees(tree: Tree, cfg) -> list:
  """The subtree of each block (of params, grads or an optimiser moment), L of them."""
  if cfg.scan_layers:
    return [jax.tree.map(lambda x, i=i: x[i], tree[SCANNED]) for i in range(cfg.num_layers)]
  return [tree[f"layer_{i}"] for i in range(cfg.num_layers)]


def unrolled(tree: Tree, cfg) -> Tree:
  """`tree` in the unrolled layout (`layer_{l}` subtrees) whatever `cfg.scan_layers` says."""
  if not cfg.scan_layers:
    return tree
  out = {k: v for k, v in tree.items() if k != SCANNED}
  out.update({f"layer_{l}": sub for l, sub in enumerate(layer_trees(tree, cfg))})
  return out


def layer_mask(tree: Tree, cfg, layer: int) -> Tree:
  """Per leaf, True (or a broadcastable boolean array) on the coordinates of block `layer`."""
  def one(path, x):
    if not cfg.scan_layers:
      return top_name(path) == f"layer_{layer}"
    if top_name(path) != SCANNED:
      return False
    return (jnp.arange(x.shape[0]) == layer).reshape((-1,) + (1,) * (x.ndim - 1))
  return jax.tree_util.tree_map_with_path(one, tree)


def map_layers(fn, *per_layer):
  """`fn` applied to each layer's tensors, results stacked along a leading L axis.

  Each argument is what the model captured under one name: a tuple of L arrays
  (unrolled layers) or one array with a leading L axis (scanned layers).
  """
  if isinstance(per_layer[0], (tuple, list)):
    results = [fn(*tensors) for tensors in zip(*per_layer)]
    return jax.tree.map(lambda *xs: jnp.stack(xs), *results)
  return jax.vmap(fn)(*per_layer)
