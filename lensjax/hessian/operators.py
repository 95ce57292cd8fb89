"""The plain loss, its Hessian-vector product, and the operators built from it.

The building block is the Hessian-vector product of a *plain* loss
(docs/metrics.md): float32 master parameters, float32 logits one chunk of
positions at a time (`ops.cross_entropy`), the explicit-softmax attention path, no dropout, one fixed batch, optionally
averaged over micro-batches, at one of the precisions of
`lensjax.hessian.precision` (float32, tf32, bf16), which the loss function
carries. From v ↦ Hv:

  preconditioned   v ↦ S H S v, S = P^{-1/2}, P = diag(√v̂ + ε) from Adam
  restrict         H on a parameter subset (a pytree mask), e.g. one block
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp

from lensjax.config import ModelConfig
from lensjax.errors import InputError
from lensjax.hessian.precision import DEFAULT_PRECISION, hessian_precision
from lensjax.model import Transformer, head_matrix
from lensjax.ops.adam import find_adam_state, second_moment
from lensjax.ops.cross_entropy import chunked_cross_entropy
from lensjax.ops.trees import stack_trees

BATCH_KEYS = ("inputs", "targets", "mask")  # what the plain loss reads; target_probs stays behind

Tree = Any
MatVec = Callable[[Tree], Tree]
LossFn = Callable[[Tree, dict], jax.Array]


# --------------------------------------------------------------------------
# The plain loss.


def plain_model_config(model_cfg: ModelConfig, compute_dtype: str = "float32") -> ModelConfig:
  """The model of the run, on the path that forward-over-reverse can differentiate: the explicit softmax, one
  block of queries at a time and rematerialised (`model.blockwise_attention`), so that no pass holds all B×H×T×T
  float32 scores."""
  return dataclasses.replace(model_cfg, attention="xla", dtype=compute_dtype, dropout=0.0)


def make_loss_fn(model_cfg: ModelConfig, precision: str = DEFAULT_PRECISION, *, attention: str = "xla",
                 compute_dtype: str | None = None) -> LossFn:
  """`loss_fn(params, batch) -> scalar`: mean next-token cross-entropy of the plain model, at `precision`.

  `precision` (lensjax.hessian.precision) sets the plain model's compute dtype
  and the matmul precision of the loss; the loss applies it to its own forward
  pass, and every derivative taken of it (grad, jvp, their transposes) keeps the
  precision of the matmul it came from, so the HVP, the gradient and the Taylor
  terms all run at it without a context of their own.

  The run's model is rebuilt with explicit-softmax attention whatever it trained
  with: cuDNN's fused attention is a `custom_vjp` whose backward pass has no
  derivative, so its HVP cannot be traced. Asking for it anyway is an input
  error. `compute_dtype="float64"` (under `jax.enable_x64`) overrides the
  precision's dtype, for tests.
  """
  if attention != "xla":
    raise InputError(f"a Hessian-vector product needs the explicit-softmax attention path, not attention={attention!r}: "
                     "cuDNN's fused attention has no forward-over-reverse derivative; leave attention at 'xla' "
                     "(the run's parameters are unchanged, only the attention kernel differs).")
  chosen = hessian_precision(precision)
  return _loss_fn_of(plain_model_config(model_cfg, compute_dtype or chosen.compute_dtype), chosen.matmul_precision)


@functools.lru_cache(maxsize=32)
def _loss_fn_of(cfg: ModelConfig, matmul_precision: str) -> LossFn:
  # One function object per plain config and precision, so that jitted callers that take the loss as a static
  # argument compile once per model and precision, not once per call.
  model = Transformer(cfg)

  def loss_fn(params, batch):
    # Under the context every matmul of the forward pass gets an explicit precision, which its jvp and transpose
    # rules copy: the derivatives, traced after this returns, run at the same precision.
    with jax.default_matmul_precision(matmul_precision):
      h_BxTxD, _ = model.apply({"params": params}, batch["inputs"], batch["mask"], return_hidden=True)
      # Chunk by chunk, rematerialised: neither the gradient nor its tangent holds all B×T×V float32 logits.
      return chunked_cross_entropy(h_BxTxD, head_matrix(params, cfg), batch["targets"], batch["mask"],
                                   cfg.vocab_size)

  return loss_fn


def plain_batch(batch: dict) -> dict:
  return {k: batch[k] for k in BATCH_KEYS}


# --------------------------------------------------------------------------
# Micro-batches.


def _micro_batches(batch: dict, num_micro: int) -> dict:
  """[B, ...] -> [num_micro, B/num_micro, ...], micro-batch j holding rows j, j+n, j+2n, ...

  Strided rather than contiguous: the batch is split over devices along its
  rows, so every micro-batch keeps rows on every device.
  """
  def split(x):
    rows = x.shape[0] // num_micro
    return jnp.swapaxes(x.reshape((rows, num_micro) + x.shape[1:]), 0, 1)
  return jax.tree.map(split, batch)


def check_micro(batch: dict, num_micro: int) -> None:
  rows = batch["inputs"].shape[0]
  if num_micro < 1 or rows % num_micro:
    raise InputError(f"{num_micro} micro-batches do not divide the batch of {rows} rows; pick a divisor of {rows}.")


def over_micro_batches(fn, batch: dict, num_micro: int):
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


# --------------------------------------------------------------------------
# The Hessian-vector product.


def explain_trace_errors(fn):
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
                         "build it with lensjax.hessian.operators.make_loss_fn, which takes the explicit-softmax path "
                         f"({type(e).__name__}: {text.splitlines()[0]})") from e
      raise
  return wrapped


# The products take the precision of the loss (`make_loss_fn`): a loss written by hand runs at the caller's.


def _hvp(loss_fn: LossFn, params: Tree, batch: dict, v: Tree, num_micro: int = 1) -> Tree:
  one = lambda micro: jax.jvp(jax.grad(lambda p: loss_fn(p, micro)), (params,), (v,))[1]
  return over_micro_batches(one, plain_batch(batch), num_micro)


def _value_and_grad(loss_fn: LossFn, params: Tree, batch: dict, num_micro: int = 1):
  one = lambda micro: jax.value_and_grad(loss_fn)(params, micro)
  return over_micro_batches(one, plain_batch(batch), num_micro)


def hvps(loss_fn: LossFn, params: Tree, batch: dict, vs: tuple, num_micro: int = 1) -> tuple:
  """H·v for a few vectors at once, traceable. The tangents are vmapped around one primal
  forward and backward pass, so k products cost less than k single ones."""
  if len(vs) == 1:
    return (_hvp(loss_fn, params, batch, vs[0], num_micro),)
  stacked = stack_trees(vs)

  def one(micro):
    grad_fn = jax.grad(lambda p: loss_fn(p, micro))
    return jax.vmap(lambda t: jax.jvp(grad_fn, (params,), (t,))[1])(stacked)
  images = over_micro_batches(one, plain_batch(batch), num_micro)
  return tuple(jax.tree.map(lambda x, i=i: x[i], images) for i in range(len(vs)))


# The compiled programs behind `hvp` and `value_and_grad` (`loss_fn` and `num_micro` static), for
# callers that lower and time them ahead of time (`lensjax bench`).
hvp_program = jax.jit(_hvp, static_argnames=("loss_fn", "num_micro"))
value_and_grad_program = jax.jit(_value_and_grad, static_argnames=("loss_fn", "num_micro"))


@explain_trace_errors
def hvp(loss_fn: LossFn, params: Tree, batch: dict, v: Tree, num_micro: int = 1) -> Tree:
  """H v = ∂/∂ε ∇L(θ + εv) at ε = 0 (jax.jvp over jax.grad), averaged over `num_micro` micro-batches."""
  check_micro(batch, num_micro)
  return hvp_program(loss_fn, params, batch, v, num_micro=num_micro)


def value_and_grad(loss_fn: LossFn, params: Tree, batch: dict, num_micro: int = 1):
  """(L, ∇L) of the plain loss, with the same precision and micro-batching as `hvp`."""
  check_micro(batch, num_micro)
  return value_and_grad_program(loss_fn, params, batch, num_micro=num_micro)


def hessian_operator(loss_fn: LossFn, params: Tree, batch: dict, num_micro: int = 1) -> MatVec:
  """v ↦ Hv at `params` on `batch`, for use inside a traced function."""
  return lambda v: _hvp(loss_fn, params, batch, v, num_micro)


# --------------------------------------------------------------------------
# Operators built from H.


def preconditioner_scale(opt_state, optim_cfg) -> Tree | None:
  """P^{-1/2} = 1/√(√v̂ + ε) per coordinate, v̂ from the optax Adam state (0 before its first update).

  None when the optimiser keeps no Adam state.
  """
  adam = find_adam_state(opt_state)
  if adam is None:
    return None
  return jax.tree.map(lambda v_hat: jax.lax.rsqrt(jnp.sqrt(v_hat) + optim_cfg.eps), second_moment(adam, optim_cfg.b2))


def scaled(a: Tree, scale: Tree) -> Tree:
  """a ⊙ scale, leaf by leaf, in a's dtypes."""
  return jax.tree.map(lambda x, s: (x * s).astype(x.dtype), a, scale)


def preconditioned(matvec: MatVec, scale: Tree) -> MatVec:
  """v ↦ S H S v with S = P^{-1/2}: symmetric, with the eigenvalues of P^{-1} H."""
  return lambda v: scaled(matvec(scaled(v, scale)), scale)


def masked(a: Tree, mask: Tree) -> Tree:
  """a where the boolean pytree `mask` holds, 0 elsewhere."""
  return jax.tree.map(lambda x, m: jnp.where(m, x, jnp.zeros_like(x)), a, mask)


def restrict(matvec: MatVec, mask: Tree) -> MatVec:
  """v ↦ M H M v for a 0/1 pytree mask M: the Hessian block of the masked parameters (zero elsewhere)."""
  return lambda v: masked(matvec(masked(v, mask)), mask)


def path_mask(params: Tree, select: Callable[[tuple[str, ...]], bool]) -> Tree:
  """A boolean per leaf: `select(names)` of its path (("layer_0", "ffn", "up", "kernel"), ...)."""
  names = lambda path: tuple(str(getattr(k, "key", k)) for k in path)
  return jax.tree_util.tree_map_with_path(lambda path, _: bool(select(names(path))), params)


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
