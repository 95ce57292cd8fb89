"""Algebra on parameter pytrees, accumulated in at least float32 (float64 trees stay float64)."""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from lensjax.ops.arrays import F32

Tree = Any


def accumulate_dtype(x):
  """`x` in a dtype wide enough to accumulate in: float32, or wider if it already is."""
  return x.astype(jnp.promote_types(x.dtype, F32))


def tree_sum(fn: Callable, *trees: Tree) -> jax.Array:
  """Σ over every coordinate of the elementwise `fn(*leaves)`."""
  leaves = zip(*(jax.tree.leaves(tree) for tree in trees))
  return sum(jnp.sum(fn(*(accumulate_dtype(x) for x in xs))) for xs in leaves)


def tree_dot(a: Tree, b: Tree) -> jax.Array:
  return tree_sum(jnp.multiply, a, b)


def tree_norm(a: Tree) -> jax.Array:
  """‖a‖₂ over every coordinate."""
  return jnp.sqrt(tree_sum(jnp.square, a))


def tree_scale(a: Tree, c) -> Tree:
  return jax.tree.map(lambda x: (x * c).astype(x.dtype), a)


def tree_add(a: Tree, b: Tree, c=1.0) -> Tree:
  """a + c·b."""
  return jax.tree.map(lambda x, y: (x + c * y).astype(x.dtype), a, b)


def tree_sub(a: Tree, b: Tree) -> Tree:
  return jax.tree.map(lambda x, y: x - y, a, b)


def tree_normalize(a: Tree) -> Tree:
  return tree_scale(a, 1.0 / jnp.maximum(tree_norm(a), 1e-30))


def tree_size(a: Tree) -> int:
  return sum(int(x.size) for x in jax.tree.leaves(a))


def stack_trees(trees) -> Tree:
  """Trees of equal structure stacked leaf by leaf along a new leading axis."""
  return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def _flat_draw(draw, key, like: Tree) -> Tree:
  """One random draw for all coordinates, cut into the leaves: a threefry graph per leaf
  would make the program (and its compile time) grow with the number of leaves."""
  leaves, treedef = jax.tree.flatten(like)
  sizes = [int(x.size) for x in leaves]
  flat = draw(key, (sum(sizes),))
  pieces = jnp.split(flat, np.cumsum(sizes)[:-1].tolist()) if len(sizes) > 1 else [flat]
  return jax.tree.unflatten(treedef, [p.reshape(x.shape).astype(x.dtype) for p, x in zip(pieces, leaves)])


def tree_random_normal(key, like: Tree) -> Tree:
  return _flat_draw(lambda k, shape: jax.random.normal(k, shape, F32), key, like)


def tree_rademacher(key, like: Tree) -> Tree:
  return _flat_draw(lambda k, shape: jax.random.rademacher(k, shape, F32), key, like)


def match_shardings(tree: Tree, like: Tree) -> Tree:
  """`tree` placed like `like`, leaf by leaf (a no-op where it already is).

  Vectors that come back from a compiled call have shardings of XLA's choosing;
  passed back as they are, they would compile the next call afresh.
  """
  return jax.tree.map(lambda x, y: jax.device_put(x, y.sharding) if hasattr(y, "sharding") else x, tree, like)
