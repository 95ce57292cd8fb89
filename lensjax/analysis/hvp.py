"""Second-order information of the training loss, from Hessian-vector products.

Everything here works on parameter pytrees as they are (no flattening) and is
traceable, so that it runs inside `jax.jit` next to a train state of any
layout or sharding. The building block is the Hessian-vector product of a
*plain* loss (docs/metrics.md): float32 master parameters, explicit logits,
the explicit-softmax attention path, no dropout, `jax.default_matmul_precision
("highest")`, one fixed batch. Then the operator v ↦ Hv feeds

  power_iteration     λ of largest magnitude (sign kept), its vector, ‖Hv − λv‖
  lanczos + slq       Ritz values (top-k eigenvalues) and a stochastic Lanczos
                      quadrature spectral density (nodes, weights)
  hutchinson_trace    tr(H) with Rademacher probes, and its standard error
  preconditioned      v ↦ P^{-1/2} H P^{-1/2} v, P = diag(√v̂ + ε) from Adam
  restrict            H on a parameter subset (a pytree mask), e.g. one block
  update_terms        δᵀHδ/‖δ‖², g·δ, ½δᵀHδ and the actual loss change

`hessian_metrics` bundles the `hessian/*` names of docs/metrics.md for the
training loop (every `stats.hessian_every` steps).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from lensjax.config import Config, ModelConfig
from lensjax.errors import InputError
from lensjax.stats.adam import find_adam_state

F32 = jnp.float32
BATCH_KEYS = ("inputs", "targets", "mask")  # what the plain loss reads; target_probs stays behind

# Defaults of the in-training metrics: warm-started power iterations converge in
# a few steps once training is under way, so few iterations per call suffice.
POWER_ITERS = 10
TRACE_PROBES = 4

Tree = Any
MatVec = Callable[[Tree], Tree]
LossFn = Callable[[Tree, dict], jax.Array]


# --------------------------------------------------------------------------
# Tree algebra (accumulated in at least float32; float64 trees stay float64).


def _acc(x):
  return x.astype(jnp.promote_types(x.dtype, F32))


def tree_dot(a: Tree, b: Tree) -> jax.Array:
  return sum(jnp.sum(_acc(x) * _acc(y)) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def tree_norm(a: Tree) -> jax.Array:
  return jnp.sqrt(tree_dot(a, a))


def tree_scale(a: Tree, c) -> Tree:
  return jax.tree.map(lambda x: (x * c).astype(x.dtype), a)


def tree_add(a: Tree, b: Tree, c=1.0) -> Tree:
  """a + c·b."""
  return jax.tree.map(lambda x, y: (x + c * y).astype(x.dtype), a, b)


def tree_sub(a: Tree, b: Tree) -> Tree:
  return jax.tree.map(lambda x, y: x - y, a, b)


def tree_normalize(a: Tree) -> Tree:
  return tree_scale(a, 1.0 / jnp.maximum(tree_norm(a), 1e-30))


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

  The warm-start vectors come back from a compiled call with shardings of XLA's
  choosing; passed back as they are, they would compile the next call afresh.
  """
  return jax.tree.map(lambda x, y: jax.device_put(x, y.sharding) if hasattr(y, "sharding") else x, tree, like)


def tree_size(a: Tree) -> int:
  return sum(int(x.size) for x in jax.tree.leaves(a))


# --------------------------------------------------------------------------
# The plain loss and its Hessian-vector product.


def plain_model_config(model_cfg: ModelConfig, compute_dtype: str = "float32") -> ModelConfig:
  """The model of the run, on the path that forward-over-reverse can differentiate."""
  return dataclasses.replace(model_cfg, attention="xla", dtype=compute_dtype, dropout=0.0)


def make_loss_fn(model_cfg: ModelConfig, *, attention: str = "xla", compute_dtype: str = "float32") -> LossFn:
  """`loss_fn(params, batch) -> scalar`: mean next-token cross-entropy of the plain model.

  The run's model is rebuilt with explicit-softmax attention whatever it trained
  with: cuDNN's fused attention is a `custom_vjp` whose backward pass has no
  derivative, so its HVP cannot be traced. Asking for it anyway is an input
  error. `compute_dtype="float64"` (under `jax.enable_x64`) is for tests.
  """
  if attention != "xla":
    raise InputError(f"a Hessian-vector product needs the explicit-softmax attention path, not attention={attention!r}: "
                     "cuDNN's fused attention has no forward-over-reverse derivative; leave attention at 'xla' "
                     "(the run's parameters are unchanged, only the attention kernel differs).")
  cfg = plain_model_config(model_cfg, compute_dtype)
  return _cached_loss_fn(json.dumps(dataclasses.asdict(cfg), sort_keys=True))


@functools.lru_cache(maxsize=32)
def _cached_loss_fn(cfg_json: str) -> LossFn:
  # One function object per plain config, so that jitted callers that take the
  # loss as a static argument compile once per model, not once per call.
  from lensjax.model import Transformer
  from lensjax.train.step import cross_entropy
  model = Transformer(ModelConfig(**json.loads(cfg_json)))

  def loss_fn(params, batch):
    logits_BxTxV, _ = model.apply({"params": params}, batch["inputs"], batch["mask"])
    return cross_entropy(logits_BxTxV, batch["targets"], batch["mask"])

  return loss_fn


def plain_batch(batch: dict) -> dict:
  return {k: batch[k] for k in BATCH_KEYS}


def _micro_batches(batch: dict, num_micro: int) -> dict:
  """[B, ...] -> [num_micro, B/num_micro, ...], micro-batch j holding rows j, j+n, j+2n, ...

  Strided rather than contiguous: the batch is split over devices along its
  rows, so every micro-batch keeps rows on every device.
  """
  def split(x):
    rows = x.shape[0] // num_micro
    return jnp.swapaxes(x.reshape((rows, num_micro) + x.shape[1:]), 0, 1)
  return jax.tree.map(split, batch)


def _check_micro(batch: dict, num_micro: int) -> None:
  rows = batch["inputs"].shape[0]
  if num_micro < 1 or rows % num_micro:
    raise InputError(f"{num_micro} micro-batches do not divide the batch of {rows} rows; pick a divisor of {rows}.")


def _over_micro_batches(fn, batch: dict, num_micro: int):
  """Mean over micro-batches of the pytree `fn(micro_batch)`, by `lax.scan` (one micro-batch in memory).

  It equals `fn(batch)` for a mean loss when every micro-batch has the same
  number of real tokens (no padding: always).
  """
  if num_micro == 1:
    return fn(batch)

  def body(total, micro):
    return jax.tree.map(jnp.add, total, fn(micro)), None

  micro = _micro_batches(batch, num_micro)
  zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype),
                       jax.eval_shape(fn, jax.tree.map(lambda x: x[0], micro)))
  total, _ = jax.lax.scan(body, zeros, micro)
  return jax.tree.map(lambda x: (x / num_micro).astype(x.dtype), total)


def _explain_trace_errors(fn):
  """Turns the trace error of a loss that forward-mode cannot pass into an InputError."""
  @functools.wraps(fn)
  def wrapped(*args, **kwargs):
    try:
      return fn(*args, **kwargs)
    except (TypeError, NotImplementedError) as e:
      text = str(e)
      if "custom_vjp" in text or "Differentiation rule for" in text:
        raise InputError("this loss cannot be differentiated forward-over-reverse: it calls a custom_vjp function "
                         "(cuDNN fused attention, model.attention=cudnn, is one) or a primitive without a JVP rule; "
                         "build it with lensjax.analysis.hvp.make_loss_fn, which takes the explicit-softmax path "
                         f"({type(e).__name__}: {text.splitlines()[0]})") from e
      raise
  return wrapped


def _hvp(loss_fn: LossFn, params: Tree, batch: dict, v: Tree, num_micro: int = 1) -> Tree:
  with jax.default_matmul_precision("highest"):
    one = lambda micro: jax.jvp(jax.grad(lambda p: loss_fn(p, micro)), (params,), (v,))[1]
    return _over_micro_batches(one, plain_batch(batch), num_micro)


def _value_and_grad(loss_fn: LossFn, params: Tree, batch: dict, num_micro: int = 1):
  with jax.default_matmul_precision("highest"):
    one = lambda micro: jax.value_and_grad(loss_fn)(params, micro)
    return _over_micro_batches(one, plain_batch(batch), num_micro)


def _hvps(loss_fn: LossFn, params: Tree, batch: dict, vs: tuple, num_micro: int = 1) -> tuple:
  """H·v for a few vectors at once. The tangents are vmapped around one primal
  forward and backward pass, so k products cost less than k single ones."""
  if len(vs) == 1:
    return (_hvp(loss_fn, params, batch, vs[0], num_micro),)
  stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *vs)
  with jax.default_matmul_precision("highest"):
    def one(micro):
      grad_fn = jax.grad(lambda p: loss_fn(p, micro))
      return jax.vmap(lambda t: jax.jvp(grad_fn, (params,), (t,))[1])(stacked)
    images = _over_micro_batches(one, plain_batch(batch), num_micro)
  return tuple(jax.tree.map(lambda x, i=i: x[i], images) for i in range(len(vs)))


_hvp_jit = jax.jit(_hvp, static_argnames=("loss_fn", "num_micro"))
_value_and_grad_jit = jax.jit(_value_and_grad, static_argnames=("loss_fn", "num_micro"))


@_explain_trace_errors
def hvp(loss_fn: LossFn, params: Tree, batch: dict, v: Tree, num_micro: int = 1) -> Tree:
  """H v = ∂/∂ε ∇L(θ + εv) at ε = 0 (jax.jvp over jax.grad), averaged over `num_micro` micro-batches."""
  _check_micro(batch, num_micro)
  return _hvp_jit(loss_fn, params, batch, v, num_micro=num_micro)


def value_and_grad(loss_fn: LossFn, params: Tree, batch: dict, num_micro: int = 1):
  """(L, ∇L) of the plain loss, with the same precision and micro-batching as `hvp`."""
  _check_micro(batch, num_micro)
  return _value_and_grad_jit(loss_fn, params, batch, num_micro=num_micro)


def hessian_operator(loss_fn: LossFn, params: Tree, batch: dict, num_micro: int = 1) -> MatVec:
  """v ↦ Hv at `params` on `batch`, for use inside a traced function."""
  return lambda v: _hvp(loss_fn, params, batch, v, num_micro)


# --------------------------------------------------------------------------
# Operators built from H.


def preconditioner_scale(opt_state, optim_cfg) -> Tree | None:
  """P^{-1/2} = 1/√(√v̂ + ε) per coordinate, v̂ = ν/(1 − β₂^count) from the optax Adam state; None without one.

  Before the first update (count 0) ν is empty and v̂ is taken as 0.
  """
  adam = find_adam_state(opt_state)
  if adam is None:
    return None
  count = adam.count.astype(F32)
  correction = 1.0 - optim_cfg.b2 ** count
  v_hat = lambda nu: jnp.where(count > 0, nu.astype(F32) / jnp.maximum(correction, 1e-30), 0.0)
  return jax.tree.map(lambda nu: jax.lax.rsqrt(jnp.sqrt(v_hat(nu)) + optim_cfg.eps), adam.nu)


def preconditioned(matvec: MatVec, scale: Tree) -> MatVec:
  """v ↦ S H S v with S = P^{-1/2}: symmetric, with the eigenvalues of P^{-1} H."""
  mul = lambda a: jax.tree.map(lambda x, s: (x * s).astype(x.dtype), a, scale)
  return lambda v: mul(matvec(mul(v)))


def restrict(matvec: MatVec, mask: Tree) -> MatVec:
  """v ↦ M H M v for a 0/1 pytree mask M: the Hessian block of the masked parameters (zero elsewhere)."""
  mul = lambda a: jax.tree.map(lambda x, m: jnp.where(m, x, jnp.zeros_like(x)), a, mask)
  return lambda v: mul(matvec(mul(v)))


def path_mask(params: Tree, select: Callable[[tuple[str, ...]], bool]) -> Tree:
  """A boolean per leaf: `select(names)` of its path (("layer_0", "ffn", "up", "kernel"), ...)."""
  names = lambda path: tuple(str(getattr(k, "key", k)) for k in path)
  return jax.tree_util.tree_map_with_path(lambda path, _: bool(select(names(path))), params)


def layer_mask(params: Tree, model_cfg: ModelConfig, layer: int) -> Tree:
  """The parameters of residual block `layer`, for unrolled (`layer_{l}`) and scanned (`layers`, axis 0) layouts."""
  if not model_cfg.scan_layers:
    return path_mask(params, lambda names: names[0] == f"layer_{layer}")

  def one(path, x):
    if getattr(path[0], "key", None) != "layers":
      return False
    return (jnp.arange(x.shape[0]) == layer).reshape((-1,) + (1,) * (x.ndim - 1))
  return jax.tree_util.tree_map_with_path(one, params)


def stability_threshold(optim_cfg, lr):
  """Largest curvature a step of size η tolerates (Cohen et al. 2021, 2022).

  2/η for SGD (compared against λ_max(H)); (2 + 2β₁)/((1 − β₁)η) for Adam
  (compared against λ_max of the preconditioned operator). NaN for adafactor.
  """
  if optim_cfg.name == "sgd":
    return 2.0 / lr
  if optim_cfg.name in ("adam", "adamw"):
    return (2.0 + 2.0 * optim_cfg.b1) / ((1.0 - optim_cfg.b1) * lr)
  return lr * float("nan")


# --------------------------------------------------------------------------
# Eigenvalues, spectra, traces.


class PowerResult(NamedTuple):
  eigenvalue: jax.Array  # Rayleigh quotient vᵀHv of the final unit vector: largest |λ|, sign kept
  vector: Tree  # unit vector, warm start of the next call
  residual: jax.Array  # ‖Hv − λv‖: 0 at an exact eigenpair; ≈ |λ| when two |λ| compete


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


def lanczos(matvec: MatVec, v0: Tree, num_steps: int):
  """Lanczos tridiagonalisation with full reorthogonalisation, in `lax.scan`.

  Returns `(alphas_K, betas_K)`: the diagonal and the off-diagonal (betas_K[j]
  couples steps j and j+1; the last one is unused) of T = QᵀHQ. The K basis
  vectors are kept ([K, ...] per leaf), so memory is K copies of the
  parameters: fine for K of a few tens. Reorthogonalising against all of them
  (twice) keeps Ritz values free of ghost copies.
  """
  q0 = tree_normalize(v0)
  basis = jax.tree.map(lambda x: jnp.zeros((num_steps,) + x.shape, x.dtype), q0)

  def project_out(w, basis):
    coeffs_K = sum(jnp.tensordot(_acc(b), _acc(x), axes=x.ndim) for b, x in
                   zip(jax.tree.leaves(basis), jax.tree.leaves(w)))
    return jax.tree.map(lambda x, b: (x - jnp.tensordot(coeffs_K, _acc(b), axes=1)).astype(x.dtype), w, basis)

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


def slq(loss_fn: LossFn, params: Tree, batch: dict, key, num_steps: int = 30, num_probes: int = 1, top_k: int = 5,
        num_micro: int = 1, scale: Tree | None = None, mask: Tree | None = None) -> Spectrum:
  """Top-k eigenvalues and the stochastic Lanczos quadrature density (Ghorbani et al. 2019).

  Each probe is a Lanczos run of `num_steps` from a Rademacher vector; the
  density averages the probes' quadratures with equal weight.
  """
  _check_micro(batch, num_micro)
  n = tree_size(params) if mask is None else int(sum(np.sum(np.broadcast_to(np.asarray(m), x.shape))
                                                     for m, x in zip(jax.tree.leaves(mask), jax.tree.leaves(params))))
  scale, mask = _full_scale_and_mask(params, scale, mask)
  nodes, weights, top = [], [], None
  for probe in range(num_probes):
    alphas, betas = _lanczos_jit(loss_fn, params, batch, jax.random.fold_in(key, probe), scale, mask,
                                 num_steps=num_steps, num_micro=num_micro)
    ritz, tau2 = tridiagonal_eigh(alphas, betas)
    nodes.append(ritz)
    weights.append(tau2 / num_probes)
    if top is None:
      top = ritz[::-1][:top_k]
  nodes, weights = np.concatenate(nodes), np.concatenate(weights)
  return Spectrum(top, nodes, weights, float(n * np.sum(weights * nodes)))


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
  v0 = _masked(tree_rademacher(key, params), mask)
  return lanczos(_operator(loss_fn, params, batch, scale, mask, num_micro), v0, num_steps)


@functools.partial(jax.jit, static_argnames=("loss_fn", "num_micro"))
def _top_eigenpair_jit(loss_fn, params, batch, v0, num_iters, scale, mask, *, num_micro):
  return power_iteration(_operator(loss_fn, params, batch, scale, mask, num_micro), _masked(v0, mask), num_iters)


@_explain_trace_errors
def top_eigenpair(loss_fn: LossFn, params: Tree, batch: dict, v0: Tree, num_iters, scale: Tree | None = None,
                  mask: Tree | None = None, num_micro: int = 1) -> PowerResult:
  """Power iteration on H (S H S with `scale` = P^{-1/2}; the block of H on `mask`), warm-started from `v0`."""
  _check_micro(batch, num_micro)
  scale, mask = _full_scale_and_mask(params, scale, mask)
  return _top_eigenpair_jit(loss_fn, params, batch, v0, num_iters, scale, mask, num_micro=num_micro)


def _masked(v, mask):
  return jax.tree.map(lambda x, m: jnp.where(m, x, jnp.zeros_like(x)), v, mask)


def hutchinson_trace(matvec: MatVec, like: Tree, key, num_probes: int):
  """(tr H, standard error) from E[zᵀHz] = tr H over Rademacher z, probes in `lax.scan`."""
  def probe(_, k):
    z = tree_rademacher(k, like)
    return None, tree_dot(z, matvec(z))

  _, samples_N = jax.lax.scan(probe, None, jax.random.split(key, num_probes))
  stderr = jnp.std(samples_N, ddof=1) / math.sqrt(num_probes) if num_probes > 1 else jnp.full((), jnp.nan)
  return jnp.mean(samples_N), stderr


@_explain_trace_errors
@functools.partial(jax.jit, static_argnames=("loss_fn", "num_probes", "num_micro"))
def trace(loss_fn: LossFn, params: Tree, batch: dict, key, num_probes: int = 16, num_micro: int = 1):
  """Hutchinson estimate of tr(H) of the plain loss and its standard error."""
  return hutchinson_trace(hessian_operator(loss_fn, params, batch, num_micro), params, key, num_probes)


# --------------------------------------------------------------------------
# Along the step actually taken.


def update_curvature(matvec: MatVec, delta: Tree) -> jax.Array:
  """δᵀHδ / ‖δ‖²: the curvature along the update."""
  return tree_dot(delta, matvec(delta)) / jnp.maximum(tree_dot(delta, delta), 1e-30)


def loss_change_terms(grads: Tree, delta: Tree, hdelta: Tree) -> tuple[jax.Array, jax.Array]:
  """(g·δ, ½δᵀHδ): the first- and second-order terms of L(θ + δ) − L(θ)."""
  return tree_dot(grads, delta), 0.5 * tree_dot(delta, hdelta)


@_explain_trace_errors
@functools.partial(jax.jit, static_argnames=("loss_fn", "num_micro"))
def update_terms(loss_fn: LossFn, params: Tree, new_params: Tree, batch: dict, num_micro: int = 1) -> dict:
  """The Taylor expansion of one update δ = new − old on its own batch, next to the actual change.

  One forward-over-reverse pass gives all of it: the jvp of (L, ∇L) along δ is
  (g·δ, Hδ).
  """
  delta = tree_sub(new_params, params)
  with jax.default_matmul_precision("highest"):
    def one(micro):
      (loss, grads), (_, hdelta) = jax.jvp(jax.value_and_grad(lambda p: loss_fn(p, micro)), (params,), (delta,))
      return loss, loss_fn(new_params, micro), grads, hdelta
    loss, new_loss, grads, hdelta = _over_micro_batches(one, plain_batch(batch), num_micro)
  first, second = loss_change_terms(grads, delta, hdelta)
  return {"hessian/update_curvature": 2.0 * second / jnp.maximum(tree_dot(delta, delta), 1e-30),
          "spike/dloss_first_order": first, "spike/dloss_second_order": second,
          "spike/dloss_actual": new_loss - loss}


# --------------------------------------------------------------------------
# The in-training metrics.


class _OptimSpec(NamedTuple):
  """The hashable part of OptimConfig that the preconditioner and the threshold read."""
  name: str
  b1: float
  b2: float
  eps: float


def _spec(optim_cfg) -> _OptimSpec:
  return _OptimSpec(optim_cfg.name, float(optim_cfg.b1), float(optim_cfg.b2), float(optim_cfg.eps))


@jax.jit
def initial_vectors(params: Tree, key) -> dict:
  """Random unit start vectors of the power iterations (H and, for Adam, the preconditioned operator).

  Jitted: op by op, the per-leaf random draws and sums would each compile separately.
  """
  return {"hessian": tree_normalize(tree_random_normal(jax.random.fold_in(key, 0), params)),
          "precond": tree_normalize(tree_random_normal(jax.random.fold_in(key, 1), params))}


def hessian_metrics(params: Tree, batch: dict, opt_state, cfg: Config, lr, key, prev_vector: dict | None = None, *,
                    power_iters: int = POWER_ITERS, trace_probes: int = TRACE_PROBES, num_micro: int = 1,
                    loss_fn: LossFn | None = None):
  """`hessian/*` of docs/metrics.md at θ = `params` on `batch`; returns `(metrics, vector)`.

  Pass `params` and `opt_state` of the same train state (before the step that
  consumes `batch`), `lr` = the schedule at that step, and the previous call's
  `vector` (None the first time: a random start from `key`) so that the power
  iterations are warm-started. Metrics are device scalars; nothing is fetched.
  Cost: power_iters + 1 passes that each give two Hessian-vector products
  from one primal pass (H and the preconditioned operator), and trace_probes
  products. `hessian/lambda_max_precond` is present for Adam and NaN before
  its first update. `loss_fn` defaults to `make_loss_fn(cfg.model)`.
  """
  loss_fn = loss_fn or make_loss_fn(cfg.model)
  if prev_vector is None:
    prev_vector = initial_vectors(params, jax.random.fold_in(key, 1))
  prev_vector = match_shardings(prev_vector, {"hessian": params, "precond": params})
  metrics, vector, _ = hessian_core(loss_fn, params, plain_batch(batch), opt_state, lr, key, prev_vector,
                                    optim=_spec(cfg.optim), power_iters=power_iters, trace_probes=trace_probes,
                                    num_micro=num_micro)
  return metrics, vector


@_explain_trace_errors
@functools.partial(jax.jit, static_argnames=("loss_fn", "optim", "trace_probes", "num_micro"))
def hessian_core(loss_fn, params, batch, opt_state, lr, key, vectors, *, optim, power_iters, trace_probes,
                 num_micro=1):
  """`hessian_metrics` for a given loss and `_spec(optim_cfg)`; also returns the power-iteration residuals.

  `power_iters` is traced (a while loop), so a cold start with more iterations compiles nothing new.
  """
  products = lambda vs: _hvps(loss_fn, params, batch, vs, num_micro)
  scale = preconditioner_scale(opt_state, optim)
  if scale is None:
    (top,) = power_iterations(products, (vectors["hessian"],), power_iters)
  else:
    # H v and H (S v_p) in one pass: the two iterations share the primal forward and backward.
    times_s = lambda a: jax.tree.map(lambda x, s: (x * s).astype(x.dtype), a, scale)
    both = lambda vs: (lambda hv, hsv: (hv, times_s(hsv)))(*products((vs[0], times_s(vs[1]))))
    top, precond = power_iterations(both, (vectors["hessian"], vectors["precond"]), power_iters)
  metrics = {"hessian/lambda_max": top.eigenvalue, "hessian/stability_threshold": stability_threshold(optim, lr)}
  out, residuals = {"hessian": top.vector, "precond": vectors["precond"]}, {"hessian": top.residual}
  if scale is not None:
    started = find_adam_state(opt_state).count > 0
    metrics["hessian/lambda_max_precond"] = jnp.where(started, precond.eigenvalue, jnp.nan)
    out["precond"], residuals["precond"] = precond.vector, precond.residual
  matvec = hessian_operator(loss_fn, params, batch, num_micro)
  if trace_probes:
    metrics["hessian/trace"], metrics["hessian/trace_stderr"] = hutchinson_trace(
        matvec, params, jax.random.fold_in(key, 2), trace_probes)
  as_f32 = lambda tree: jax.tree.map(lambda x: jnp.asarray(x).astype(F32), tree)
  return as_f32(metrics), out, as_f32(residuals)
