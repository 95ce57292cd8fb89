"""Eigenvalues, spectral densities and traces of an operator v ↦ Av, from its products alone.

  power_iteration     λ of largest magnitude (sign kept), its vector, ‖Av − λv‖
  extreme_pairs       the top (algebraic) eigenvalue next to the largest-magnitude
                      one, by a power iteration shifted by the latter
  lanczos + slq       Ritz values (top-k eigenvalues) and a stochastic Lanczos
                      quadrature spectral density (nodes, weights)
  hutchinson_trace    tr(A) with Rademacher probes, and its standard error

`extreme_eigenpairs` (`top_eigenpair`), `slq` and `trace` apply them to the Hessian of a plain loss
(lensjax.hessian.operators), optionally preconditioned or restricted to a block.
"""

from __future__ import annotations

import functools
import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from lensjax.hessian.operators import (LossFn, MatVec, Tree, check_micro, explain_trace_errors, hessian_operator,
                                       hvps, masked, preconditioned, restrict, scaled)
from lensjax.ops.arrays import F32
from lensjax.ops.trees import (accumulate_dtype, tree_add, tree_dot, tree_norm, tree_normalize, tree_rademacher,
                               tree_scale, tree_size)


# --------------------------------------------------------------------------
# Power iteration.


class PowerResult(NamedTuple):
  eigenvalue: jax.Array  # Rayleigh quotient vᵀAv of the final unit vector: largest |λ|, sign kept
  vector: Tree  # unit vector, warm start of the next call
  residual: jax.Array  # ‖Av − λv‖: 0 at an exact eigenpair; ≈ |λ| when two |λ| compete


def power_iterations(matvecs: Callable[[tuple], tuple], v0s: tuple, num_iters) -> tuple[PowerResult, ...]:
  """Independent power iterations whose products are computed together (`matvecs`: tuple of vectors -> images).

  `num_iters` steps of v <- Av/||Av|| in `lax.fori_loop`, then lambda = v.Av with
  the last product (num_iters + 1 products in all). The loop applies the
  operator once per turn, to the normalised start vectors on turn 0, so that
  the traced program holds a single copy of it: compile time is that of one
  product.
  """
  def body(_, carry):
    _, images = carry
    vs = tuple(tree_normalize(image) for image in images)
    # Images in the start vectors' dtypes, so that the loop carry keeps its type.
    return vs, tuple(jax.tree.map(lambda y, x: y.astype(x.dtype), image, v) for image, v in zip(matvecs(vs), v0s))

  # The carry starts with the start vectors as "images": turn 0 normalises and applies A to them.
  vs, images = jax.lax.fori_loop(0, num_iters + 1, body, (tuple(v0s), tuple(v0s)))
  results = []
  for v, image in zip(vs, images):
    eigenvalue = tree_dot(v, image)
    results.append(PowerResult(eigenvalue, v, tree_norm(tree_add(image, v, -eigenvalue))))
  return tuple(results)


def power_iteration(matvec: MatVec, v0: Tree, num_iters) -> PowerResult:
  """Power iteration on one operator: largest |lambda| with its sign, the unit vector, the residual."""
  return power_iterations(lambda vs: (matvec(vs[0]),), (v0,), num_iters)[0]


class Extremes(NamedTuple):
  top: PowerResult  # the largest (algebraic) eigenvalue: the one a stability threshold is compared with
  magnitude: PowerResult  # the eigenvalue of largest |λ|, sign kept (negative when H is indefinite enough)


def extreme_pairs(matvecs: Callable[[tuple], tuple], magnitude_v0s: tuple, top_v0s: tuple,
                  num_iters) -> tuple[Extremes, ...]:
  """For each of n operators, its top eigenvalue and its largest-magnitude one, from 2n products per turn.

  Plain power iteration finds the largest |λ|; on an indefinite Hessian that can
  be a negative λ (a saddle direction), which says nothing about stability.
  The top eigenvalue is found by a second power iteration on A − σI, σ =
  min(λ_|max|, 0) from the first one's current Rayleigh quotient: A − σI has
  eigenvalues λ − σ ≥ 0 (up to the first iteration's error), the largest being
  λ_top − σ. Both iterations run in one loop, their products in one call of
  `matvecs` (for the Hessian: one primal pass with 2n tangents), so the top
  eigenvalue costs tangents, not passes. Lanczos would give both ends too, but
  keeps K copies of the parameters, too many inside training. When σ = 0 (λ_|max|
  ≥ 0, so it is the top) the second iteration is a plain one from another start.
  The reported top is the larger of the two Rayleigh quotients: every Rayleigh
  quotient is a lower bound of λ_top, so the larger is the better estimate.

  `matvecs` maps a tuple of 2n vectors to their images (the magnitude vectors
  first); returns one `Extremes` per operator.
  """
  n = len(magnitude_v0s)

  def body(_, carry):
    vs, images = carry
    magnitude_vs = tuple(tree_normalize(image) for image in images[:n])
    # The shift is this turn's estimate of the largest |λ| when negative, 0 otherwise; shifted images
    # are formed from the raw ones here, so the carry keeps A·v and the Rayleigh quotients stay those of A.
    shifts = tuple(jnp.minimum(tree_dot(v, image), 0.0) for v, image in zip(vs[:n], images[:n]))
    top_vs = tuple(tree_normalize(tree_add(image, v, -shift)) for v, image, shift in zip(vs[n:], images[n:], shifts))
    new_vs = magnitude_vs + top_vs
    new_images = matvecs(new_vs)
    return new_vs, tuple(jax.tree.map(lambda y, x: y.astype(x.dtype), image, v) for image, v in zip(new_images, new_vs))

  # Turn 0 sees the start vectors as their own images: the shift is min(‖v0‖², 0) = 0, each start is normalised.
  v0s = tuple(magnitude_v0s) + tuple(top_v0s)
  vs, images = jax.lax.fori_loop(0, num_iters + 1, body, (v0s, v0s))

  def result(v, image):
    eigenvalue = tree_dot(v, image)
    return PowerResult(eigenvalue, v, tree_norm(tree_add(image, v, -eigenvalue)))

  out = []
  for i in range(n):
    magnitude, shifted = result(vs[i], images[i]), result(vs[n + i], images[n + i])
    better = shifted.eigenvalue >= magnitude.eigenvalue
    top = jax.tree.map(lambda a, b: jnp.where(better, a, b), shifted, magnitude)
    out.append(Extremes(top, magnitude))
  return tuple(out)


# --------------------------------------------------------------------------
# Lanczos and stochastic Lanczos quadrature.


def lanczos(matvec: MatVec, v0: Tree, num_steps: int):
  """Lanczos tridiagonalisation with full reorthogonalisation, in `lax.scan`.

  Returns `(alphas_K, betas_K)`: the diagonal and the off-diagonal (betas_K[j]
  couples steps j and j+1; the last one is unused) of T = QᵀAQ. The K basis
  vectors are kept ([K, ...] per leaf), so memory is K copies of the
  parameters: fine for K of a few tens. Reorthogonalising against all of them
  (twice) keeps Ritz values free of ghost copies.
  """
  acc = accumulate_dtype
  q0 = tree_normalize(v0)
  basis = jax.tree.map(lambda x: jnp.zeros((num_steps,) + x.shape, x.dtype), q0)

  # The projections are matmuls: precision highest keeps them float32 whatever the precision of the operator
  # (at the default, a GPU would take them in TF32 and leave the basis orthogonal to 1e-3 only).
  dot = functools.partial(jnp.tensordot, precision=jax.lax.Precision.HIGHEST)

  def project_out(w, basis):
    coeffs_K = sum(dot(acc(b), acc(x), axes=x.ndim) for b, x in zip(jax.tree.leaves(basis), jax.tree.leaves(w)))
    return jax.tree.map(lambda x, b: (x - dot(coeffs_K, acc(b), axes=1)).astype(x.dtype), w, basis)

  def step(carry, j):
    q, q_prev, beta_prev, scale, basis = carry
    basis = jax.tree.map(lambda b, x: jax.lax.dynamic_update_index_in_dim(b, x, j, 0), basis, q)
    w = matvec(q)
    alpha = tree_dot(q, w)
    w = tree_add(tree_add(w, q, -alpha), q_prev, -beta_prev)
    w = project_out(project_out(w, basis), basis)
    beta = tree_norm(w)
    scale = jnp.maximum(scale, jnp.maximum(jnp.abs(alpha), beta))
    # A remainder at rounding level means the Krylov space is exhausted (K > rank):
    # normalising it would inject a direction that is not orthogonal to the basis.
    # Stop instead: beta = 0 and zero vectors from here on, dropped on the host.
    beta = jnp.where(beta > 100 * jnp.finfo(beta.dtype).eps * scale, beta, 0.0)
    q_next = tree_scale(w, jnp.where(beta > 0, 1.0 / jnp.where(beta > 0, beta, 1.0), 0.0))
    return (q_next, q, beta, scale, basis), (alpha, beta)

  zero = tree_dot(q0, q0) * 0.0
  carry = (q0, tree_scale(q0, 0.0), zero, zero, basis)
  _, (alphas_K, betas_K) = jax.lax.scan(step, carry, jnp.arange(num_steps))
  return alphas_K, betas_K


def tridiagonal_eigh(alphas_K, betas_K) -> tuple[np.ndarray, np.ndarray]:
  """Ritz values (ascending) and the squared first components of their vectors, in float64 on the host.

  The squared first components are the quadrature weights of the start
  vector's spectral measure (they sum to 1).
  """
  alphas, betas = np.asarray(alphas_K, np.float64), np.asarray(betas_K, np.float64)
  size = len(alphas)
  zero = np.flatnonzero(betas[:-1] == 0.0)
  if zero.size:  # breakdown: the rows after it are the zero padding of an exhausted Krylov space
    size = int(zero[0]) + 1
  T = np.diag(alphas[:size]) + np.diag(betas[:size - 1], 1) + np.diag(betas[:size - 1], -1)
  eigenvalues, vectors = np.linalg.eigh(T)
  return eigenvalues, vectors[0] ** 2


class Spectrum(NamedTuple):
  top_eigenvalues: np.ndarray  # [top_k] largest Ritz values of the first probe, descending
  nodes: np.ndarray  # SLQ quadrature nodes (Ritz values of every probe)
  weights: np.ndarray  # their weights: sum 1, the spectral density is Σ w δ(λ − node)
  trace: float  # n · Σ w·node: the SLQ estimate of tr(H)
  # Its standard error over the probes (NaN for one probe). With a Rademacher probe z (‖z‖² = n) the quadrature is
  # exact for degree 1, so each probe's n·Σ w·node is zᵀHz: the SLQ trace is Hutchinson's estimator on these few
  # probes, and its error is the spread of zᵀHz over them divided by √probes.
  trace_stderr: float


def _operator(loss_fn, params, batch, scale, mask, num_micro) -> MatVec:
  return restrict(preconditioned(hessian_operator(loss_fn, params, batch, num_micro), scale), mask)


def _full_scale_and_mask(params, scale, mask):
  """Identity scale and mask made explicit, as full arrays, so that H, S H S and a block
  of H are one compiled program (multiplying by 1 and selecting with True are exact)."""
  scale = jax.tree.map(lambda x: jnp.ones(x.shape, F32), params) if scale is None else scale
  mask = jax.tree.map(lambda x: True, params) if mask is None else mask
  mask = jax.tree.map(lambda m, x: jnp.broadcast_to(jnp.asarray(m, bool), x.shape), mask, params)
  return scale, mask


@functools.partial(jax.jit, static_argnames=("loss_fn", "num_steps", "num_micro"))
def _lanczos_jit(loss_fn, params, batch, key, scale, mask, *, num_steps, num_micro):
  v0 = masked(tree_rademacher(key, params), mask)
  return lanczos(_operator(loss_fn, params, batch, scale, mask, num_micro), v0, num_steps)


def slq(loss_fn: LossFn, params: Tree, batch: dict, key, num_steps: int = 30, num_probes: int = 1, top_k: int = 5,
        num_micro: int = 1, scale: Tree | None = None, mask: Tree | None = None) -> Spectrum:
  """Top-k eigenvalues and the stochastic Lanczos quadrature density (Ghorbani et al. 2019).

  Each probe is a Lanczos run of `num_steps` from a Rademacher vector; the
  density averages the probes' quadratures with equal weight.
  """
  check_micro(batch, num_micro)
  n = tree_size(params) if mask is None else int(sum(np.sum(np.broadcast_to(np.asarray(m), x.shape))
                                                     for m, x in zip(jax.tree.leaves(mask), jax.tree.leaves(params))))
  scale, mask = _full_scale_and_mask(params, scale, mask)
  nodes, weights, top, per_probe = [], [], None, []
  for probe in range(num_probes):
    alphas, betas = _lanczos_jit(loss_fn, params, batch, jax.random.fold_in(key, probe), scale, mask,
                                 num_steps=num_steps, num_micro=num_micro)
    ritz, tau2 = tridiagonal_eigh(alphas, betas)
    nodes.append(ritz)
    weights.append(tau2 / num_probes)
    per_probe.append(n * float(np.sum(tau2 * ritz)))
    if top is None:
      top = ritz[::-1][:top_k]
  nodes, weights = np.concatenate(nodes), np.concatenate(weights)
  stderr = float(np.std(per_probe, ddof=1) / math.sqrt(num_probes)) if num_probes > 1 else math.nan
  return Spectrum(top, nodes, weights, float(n * np.sum(weights * nodes)), stderr)


# --------------------------------------------------------------------------
# On the Hessian of a plain loss.


@functools.partial(jax.jit, static_argnames=("loss_fn", "num_micro"))
def _extreme_eigenpairs_jit(loss_fn, params, batch, v0, num_iters, scale, mask, *, num_micro):
  # Both vectors through one primal pass (`hvps`): one copy of the operator in the traced loop.
  outer = lambda v: masked(scaled(v, scale), mask)  # M S: the operator is (M S) H (S M), M and S diagonal
  products = lambda vs: tuple(outer(hv) for hv in hvps(loss_fn, params, batch, tuple(outer(v) for v in vs), num_micro))
  start = masked(v0, mask)
  (extremes,) = extreme_pairs(products, (start,), (start,), num_iters)
  return extremes


@explain_trace_errors
def extreme_eigenpairs(loss_fn: LossFn, params: Tree, batch: dict, v0: Tree, num_iters, scale: Tree | None = None,
                       mask: Tree | None = None, num_micro: int = 1) -> Extremes:
  """Top and largest-magnitude eigenpairs of H (S H S with `scale` = P^{-1/2}; the block of H on `mask`),
  both iterations warm-started from `v0` (`extreme_pairs`)."""
  check_micro(batch, num_micro)
  scale, mask = _full_scale_and_mask(params, scale, mask)
  return _extreme_eigenpairs_jit(loss_fn, params, batch, v0, num_iters, scale, mask, num_micro=num_micro)


def top_eigenpair(loss_fn: LossFn, params: Tree, batch: dict, v0: Tree, num_iters, scale: Tree | None = None,
                  mask: Tree | None = None, num_micro: int = 1) -> PowerResult:
  """The top (algebraic) eigenpair of `extreme_eigenpairs`."""
  return extreme_eigenpairs(loss_fn, params, batch, v0, num_iters, scale, mask, num_micro).top


def hutchinson_trace(matvec: MatVec, like: Tree, key, num_probes: int):
  """(tr A, standard error) from E[zᵀAz] = tr A over Rademacher z, probes in `lax.scan`."""
  def probe(_, k):
    z = tree_rademacher(k, like)
    return None, tree_dot(z, matvec(z))

  _, samples_N = jax.lax.scan(probe, None, jax.random.split(key, num_probes))
  stderr = jnp.std(samples_N, ddof=1) / math.sqrt(num_probes) if num_probes > 1 else jnp.full((), jnp.nan)
  return jnp.mean(samples_N), stderr


@explain_trace_errors
@functools.partial(jax.jit, static_argnames=("loss_fn", "num_probes", "num_micro"))
def trace(loss_fn: LossFn, params: Tree, batch: dict, key, num_probes: int = 16, num_micro: int = 1):
  """Hutchinson estimate of tr(H) of the plain loss and its standard error."""
  return hutchinson_trace(hessian_operator(loss_fn, params, batch, num_micro), params, key, num_probes)
