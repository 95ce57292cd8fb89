"""The `hessian/*` and `spike/dloss_*` metrics of docs/metrics.md.

`hessian_metrics` is what the train loop calls every `stats.hessian_every`
steps; `hessian_core` is its compiled body, which the spike replay and
`lensjax hessian` call too (they also want the power-iteration residuals);
`update_terms` is the Taylor expansion of one update on its own batch.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from lensjax.config import Config
from lensjax.hessian.operators import (LossFn, MatVec, Tree, explain_trace_errors, hessian_operator, hvps,
                                       make_loss_fn, over_micro_batches, plain_batch, preconditioner_scale, scaled,
                                       stability_threshold)
from lensjax.hessian.spectrum import extreme_pairs, hutchinson_trace
from lensjax.ops.adam import find_adam_state
from lensjax.ops.arrays import F32
from lensjax.ops.trees import match_shardings, tree_dot, tree_normalize, tree_random_normal, tree_sub

# Defaults of the in-training metrics: warm-started power iterations converge in
# a few steps once training is under way, so few iterations per call suffice.
POWER_ITERS = 10
TRACE_PROBES = 4


# --------------------------------------------------------------------------
# Along the step actually taken.


def update_curvature(matvec: MatVec, delta: Tree) -> jax.Array:
  """δᵀHδ / ‖δ‖²: the curvature along the update."""
  return tree_dot(delta, matvec(delta)) / jnp.maximum(tree_dot(delta, delta), 1e-30)


def loss_change_terms(grads: Tree, delta: Tree, hdelta: Tree) -> tuple[jax.Array, jax.Array]:
  """(g·δ, ½δᵀHδ): the first- and second-order terms of L(θ + δ) − L(θ)."""
  return tree_dot(grads, delta), 0.5 * tree_dot(delta, hdelta)


@explain_trace_errors
@functools.partial(jax.jit, static_argnames=("loss_fn", "num_micro"))
def update_terms(loss_fn: LossFn, params: Tree, new_params: Tree, batch: dict, num_micro: int = 1) -> dict:
  """The Taylor expansion of one update δ = new − old on its own batch, next to the actual change.

  One forward-over-reverse pass gives all of it: the jvp of (L, ∇L) along δ is
  (g·δ, Hδ).
  """
  delta = tree_sub(new_params, params)

  def one(micro):
    (loss, grads), (_, hdelta) = jax.jvp(jax.value_and_grad(lambda p: loss_fn(p, micro)), (params,), (delta,))
    return loss, loss_fn(new_params, micro), grads, hdelta
  loss, new_loss, grads, hdelta = over_micro_batches(one, plain_batch(batch), num_micro)
  first, second = loss_change_terms(grads, delta, hdelta)
  return {"hessian/update_curvature": 2.0 * second / jnp.maximum(tree_dot(delta, delta), 1e-30),
          "spike/dloss_first_order": first, "spike/dloss_second_order": second,
          "spike/dloss_actual": new_loss - loss}


# --------------------------------------------------------------------------
# The in-training metrics.


class OptimSpec(NamedTuple):
  """The part of OptimConfig that the preconditioner and the threshold read: runs that differ
  only elsewhere (learning rate, weight decay) share one compiled `hessian_core`."""
  name: str
  b1: float
  b2: float
  eps: float


def optim_spec(optim_cfg) -> OptimSpec:
  return OptimSpec(optim_cfg.name, float(optim_cfg.b1), float(optim_cfg.b2), float(optim_cfg.eps))


# The power iterations' vectors, warm starts of the next call: the top eigenvector and the largest-magnitude one,
# of H and of the preconditioned operator.
VECTOR_KEYS = ("hessian", "precond", "hessian_magnitude", "precond_magnitude")


@jax.jit
def initial_vectors(params: Tree, key) -> dict:
  """Random unit start vectors of the power iterations (`VECTOR_KEYS`).

  Jitted: op by op, the per-leaf random draws and sums would each compile separately.
  """
  return {name: tree_normalize(tree_random_normal(jax.random.fold_in(key, i), params))
          for i, name in enumerate(VECTOR_KEYS)}


# What each of `hessian_core`'s residuals ‖Av − λv‖ is called in the analyses' records.
RESIDUAL_NAMES = {"hessian": "lambda_max_residual", "hessian_magnitude": "lambda_maxabs_residual",
                  "precond": "lambda_max_precond_residual", "precond_magnitude": "lambda_maxabs_precond_residual"}


def vector_shardings_like(params: Tree) -> dict:
  """The `like` argument of `match_shardings` for the vectors: each laid out as the parameters."""
  return {name: params for name in VECTOR_KEYS}


def hessian_metrics(params: Tree, batch: dict, opt_state, cfg: Config, lr, key, prev_vector: dict | None = None, *,
                    power_iters: int = POWER_ITERS, trace_probes: int = TRACE_PROBES, num_micro: int = 1,
                    loss_fn: LossFn | None = None):
  """`hessian/*` of docs/metrics.md at θ = `params` on `batch`; returns `(metrics, vector)`.

  Pass `params` and `opt_state` of the same train state (before the step that
  consumes `batch`), `lr` = the schedule at that step, and the previous call's
  `vector` (None the first time: a random start from `key`) so that the power
  iterations are warm-started. Metrics are device scalars; nothing is fetched.
  Cost: power_iters + 1 passes that each give four Hessian-vector products
  from one primal pass (the top and the largest-magnitude iterations of H and
  of the preconditioned operator, `spectrum.extreme_pairs`), and trace_probes
  products. `hessian/lambda_max_precond` and `_maxabs_precond` are present for
  Adam and NaN before its first update. `loss_fn` defaults to the plain loss at `stats.hessian_precision`.
  """
  loss_fn = loss_fn or make_loss_fn(cfg.model, cfg.stats.hessian_precision)
  if prev_vector is None:
    prev_vector = initial_vectors(params, jax.random.fold_in(key, 1))
  prev_vector = match_shardings(prev_vector, vector_shardings_like(params))
  metrics, vector, _ = hessian_core(loss_fn, params, plain_batch(batch), opt_state, lr, key, prev_vector,
                                    optim=optim_spec(cfg.optim), power_iters=power_iters, trace_probes=trace_probes,
                                    num_micro=num_micro)
  return metrics, vector


@explain_trace_errors
@functools.partial(jax.jit, static_argnames=("loss_fn", "optim", "trace_probes", "num_micro"))
def hessian_core(loss_fn, params, batch, opt_state, lr, key, vectors, *, optim, power_iters, trace_probes,
                 num_micro=1):
  """`hessian_metrics` for a given loss and `optim_spec(optim_cfg)`; also returns the power-iteration residuals.

  `power_iters` is traced (a while loop), so a cold start with more iterations compiles nothing new.
  """
  products = lambda vs: hvps(loss_fn, params, batch, vs, num_micro)
  scale = preconditioner_scale(opt_state, optim)
  if scale is None:
    (plain,) = extreme_pairs(products, (vectors["hessian_magnitude"],), (vectors["hessian"],), power_iters)
  else:
    # H v and S H S v for the four vectors in one pass: the iterations share the primal forward and backward.
    def both(vs):
      hv_mag, hsv_mag, hv_top, hsv_top = products((vs[0], scaled(vs[1], scale), vs[2], scaled(vs[3], scale)))
      return hv_mag, scaled(hsv_mag, scale), hv_top, scaled(hsv_top, scale)
    plain, precond = extreme_pairs(both, (vectors["hessian_magnitude"], vectors["precond_magnitude"]),
                                   (vectors["hessian"], vectors["precond"]), power_iters)
  metrics = {"hessian/lambda_max": plain.top.eigenvalue, "hessian/lambda_maxabs": plain.magnitude.eigenvalue,
             "hessian/stability_threshold": stability_threshold(optim, lr)}
  out = {"hessian": plain.top.vector, "hessian_magnitude": plain.magnitude.vector, "precond": vectors["precond"],
         "precond_magnitude": vectors["precond_magnitude"]}
  residuals = {"hessian": plain.top.residual, "hessian_magnitude": plain.magnitude.residual}
  if scale is not None:
    started = find_adam_state(opt_state).count > 0
    metrics["hessian/lambda_max_precond"] = jnp.where(started, precond.top.eigenvalue, jnp.nan)
    metrics["hessian/lambda_maxabs_precond"] = jnp.where(started, precond.magnitude.eigenvalue, jnp.nan)
    out["precond"], residuals["precond"] = precond.top.vector, precond.top.residual
    out["precond_magnitude"], residuals["precond_magnitude"] = precond.magnitude.vector, precond.magnitude.residual
  matvec = hessian_operator(loss_fn, params, batch, num_micro)
  if trace_probes:
    metrics["hessian/trace"], metrics["hessian/trace_stderr"] = hutchinson_trace(
        matvec, params, jax.random.fold_in(key, 2), trace_probes)
  as_f32 = lambda tree: jax.tree.map(lambda x: jnp.asarray(x).astype(F32), tree)
  return as_f32(metrics), out, as_f32(residuals)
