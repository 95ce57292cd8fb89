"""Hessian-vector products and what is built on them, against dense Hessians in float64.

Two problems. The product itself is checked on the tiny Transformer's plain
loss (744 parameters: `jax.hessian` gives the 744 × 744 matrix). The
algorithms on top of it (power iteration, Lanczos, Hutchinson, the
preconditioned and restricted operators, the Taylor terms, the training
metrics) are generic in the loss, so they are checked on a small tanh
network with 198 parameters whose programs compile in a fraction of the time;
the spikes test runs them on the Transformer again, end to end.
"""

from __future__ import annotations

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

from lensjax import config as config_lib
from lensjax.config import Config, ModelConfig, OptimConfig
from lensjax.errors import InputError
from lensjax.hessian import operators
from lensjax.hessian.metrics import hessian_metrics, update_terms
from lensjax.hessian.spectrum import (extreme_eigenpairs, extreme_pairs, lanczos, slq, top_eigenpair, trace,
                                     tridiagonal_eigh)
from lensjax.model import Transformer
from lensjax.ops import layers, trees
from lensjax.ops.adam import find_adam_state
from lensjax.train import optim

MODEL = ModelConfig(num_layers=1, d_model=8, num_heads=2, d_ff=16, vocab_size=8, max_len=8)
B, T, V = 4, 8, 8


def make_batch(seed: int = 0) -> dict:
  tokens = np.random.default_rng(seed).integers(0, V, (B, T + 1))
  return {"inputs": jnp.asarray(tokens[:, :-1], jnp.int32), "targets": jnp.asarray(tokens[:, 1:], jnp.int32),
          "mask": jnp.ones((B, T), jnp.float32)}


def mlp_loss(params, batch):
  """Mean next-token cross-entropy of embed -> tanh layer -> logits, in the parameters' dtype."""
  x_BxTxD = params["embed"][batch["inputs"]]
  h_BxTxF = jnp.tanh(x_BxTxD @ params["layer_0"]["w"] + params["layer_0"]["b"])
  logp_BxTxV = jax.nn.log_softmax(h_BxTxF @ params["layer_1"]["w"])
  nll_BxT = -jnp.take_along_axis(logp_BxTxV, batch["targets"][..., None], axis=-1)[..., 0]
  return jnp.sum(nll_BxT * batch["mask"]) / jnp.sum(batch["mask"])


def mlp_params(dtype=jnp.float64):
  # Seed 2 gives a clear gap below the largest |λ| of H, of S H S and of the first block (ratios ≤ 0.44), so that
  # power iteration converges to 1e-8 in tens of steps.
  rng = np.random.default_rng(2)
  shapes = {"embed": (V, 6), "layer_0": {"w": (6, 10), "b": (10,)}, "layer_1": {"w": (10, V)}}
  return jax.tree.map(lambda s: jnp.asarray(rng.normal(size=s), dtype), shapes, is_leaf=lambda s: isinstance(s, tuple))


def dense_hessian(loss_fn, params, batch):
  flat, unravel = ravel_pytree(params)
  flat_loss = lambda f: loss_fn(unravel(f), batch)
  grad, dense = map(np.asarray, jax.jit(lambda f: (jax.grad(flat_loss)(f), jax.hessian(flat_loss)(f)))(flat))
  return grad, (dense + dense.T) / 2, unravel


@pytest.fixture(scope="module")
def mlp():
  with jax.enable_x64(True):
    params, batch = mlp_params(), make_batch()
    grad, dense, unravel = dense_hessian(mlp_loss, params, batch)
  return dict(params=params, batch=batch, loss_fn=mlp_loss, grad=grad, dense=dense, unravel=unravel, n=grad.size)


def flat(tree) -> np.ndarray:
  return np.asarray(ravel_pytree(tree)[0], np.float64)


def rel_err(a, b) -> float:
  return float(np.linalg.norm(np.asarray(a) - np.asarray(b)) / np.linalg.norm(np.asarray(b)))


def random_vector(p, seed: int):
  return p["unravel"](jnp.asarray(np.random.default_rng(seed).normal(size=p["n"])))


def largest_magnitude(matrix) -> float:
  eigenvalues = np.linalg.eigvalsh(matrix)
  return float(eigenvalues[np.argmax(np.abs(eigenvalues))])


TX, _ = optim.make_optimizer(OptimConfig(name="adamw", b2=0.95, eps=1e-3), 100)


@jax.jit  # eager optax would compile op by op
def _adam_update(grads, state, params):
  return TX.update(grads, state, params)[1]


def adam_state(params, count: int = 3):
  """An AdamW state (b2 0.95, eps 1e-3) after `count` updates with random gradients, so that v̂ varies."""
  state = TX.init(params)
  for i in range(count):
    grads = jax.tree.map(lambda x: x * (i + 1.0), trees.tree_random_normal(jax.random.PRNGKey(i), params))
    state = _adam_update(grads, state, params)
  return state


def test_hvp_of_the_transformer_matches_the_dense_hessian():
  with jax.enable_x64(True):
    batch = make_batch()
    # Random values of the model's shapes (no init to compile), large enough for a curved loss.
    shapes = jax.eval_shape(Transformer(MODEL).init, jax.random.PRNGKey(0), batch["inputs"])["params"]
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda s: jnp.asarray(0.3 * rng.normal(size=s.shape), jnp.float64), shapes)
    loss_fn = operators.make_loss_fn(MODEL, compute_dtype="float64")
    _, dense, unravel = dense_hessian(loss_fn, params, batch)
    assert dense.shape == (744, 744) and jax.tree.leaves(params)[0].dtype == jnp.float64
    v = unravel(jnp.asarray(np.random.default_rng(1).normal(size=744)))
    assert rel_err(flat(operators.hvp(loss_fn, params, batch, v)), dense @ flat(v)) < 1e-6
    with pytest.raises(InputError, match="micro-batches"):
      operators.hvp(loss_fn, params, batch, v, num_micro=3)


def test_power_iteration_and_lanczos_match_eigh(mlp):
  p = mlp
  eigenvalues = np.linalg.eigvalsh(p["dense"])  # ascending
  expected = largest_magnitude(p["dense"])
  with jax.enable_x64(True):
    top = top_eigenpair(p["loss_fn"], p["params"], p["batch"], random_vector(p, 2), 60)
    assert abs(float(top.eigenvalue) - expected) < 1e-8 * abs(expected)
    u = flat(top.vector)
    assert abs(float(top.residual) - np.linalg.norm(p["dense"] @ u - float(top.eigenvalue) * u)) < 1e-8 * abs(expected)
    # Warm-started from its own vector, one more iteration keeps the answer.
    again = top_eigenpair(p["loss_fn"], p["params"], p["batch"], top.vector, 1)
    assert abs(float(again.eigenvalue) - expected) < 1e-8 * abs(expected)

    key = jax.random.PRNGKey(3)
    spectrum = slq(p["loss_fn"], p["params"], p["batch"], key, num_steps=30, top_k=3)
    np.testing.assert_allclose(spectrum.top_eigenvalues, eigenvalues[::-1][:3], rtol=1e-8)
    # The quadrature is exact for degree-1 moments: n·Σ w·node = zᵀHz for the probe z itself.
    z = flat(trees.tree_rademacher(jax.random.fold_in(key, 0), p["params"]))
    assert abs(np.sum(spectrum.weights) - 1.0) < 1e-12
    assert abs(spectrum.trace - z @ p["dense"] @ z) < 1e-8 * abs(z @ p["dense"] @ z)
    # And for degree 2: Σ w·node² = ‖Hz‖²/‖z‖².
    hz = p["dense"] @ z
    assert np.sum(spectrum.weights * spectrum.nodes ** 2) == pytest.approx(hz @ hz / (z @ z), rel=1e-9)


def test_lanczos_past_the_rank_drops_the_padding():
  # 4 distinct eigenvalues on R^5: the Krylov space of the ones vector is exhausted after 4 steps.
  with jax.enable_x64(True):
    A = np.diag([3.0, -2.0, 0.5, 0.0, 0.0])
    alphas, betas = lanczos(lambda v: {"x": jnp.asarray(A) @ v["x"]}, {"x": jnp.ones(5)}, 5)
    ritz, weights = tridiagonal_eigh(alphas, betas)
  np.testing.assert_allclose(np.sort(ritz), [-2.0, 0.0, 0.5, 3.0], atol=1e-10)
  np.testing.assert_allclose(weights[np.argsort(ritz)], [0.2, 0.4, 0.2, 0.2], atol=1e-10)


def test_preconditioned_operator_matches_the_dense_one(mlp):
  p = mlp
  cfg = OptimConfig(name="adamw", b2=0.95, eps=1e-3)
  with jax.enable_x64(True):
    opt_state = adam_state(p["params"])
    scale = operators.preconditioner_scale(opt_state, cfg)
    adam = find_adam_state(opt_state)
    # The dense P^{-1/2} from ν and the count, written out independently.
    s = 1.0 / np.sqrt(np.sqrt(flat(adam.nu) / (1 - 0.95 ** int(adam.count))) + 1e-3)
    np.testing.assert_allclose(flat(scale), s, rtol=1e-6)
    dense = s[:, None] * p["dense"] * s[None, :]
    v = random_vector(p, 4)
    op = jax.jit(operators.preconditioned(operators.hessian_operator(p["loss_fn"], p["params"], p["batch"]), scale))
    assert rel_err(flat(op(v)), dense @ flat(v)) < 1e-6  # scale is float32: ν/√ rounding
    expected = largest_magnitude(dense)
    top = top_eigenpair(p["loss_fn"], p["params"], p["batch"], v, 60, scale=scale)
    assert abs(float(top.eigenvalue) - expected) < 1e-6 * abs(expected)
  assert operators.stability_threshold(cfg, 0.01) == pytest.approx(38 / 0.01)
  assert operators.stability_threshold(OptimConfig(name="sgd"), 0.01) == pytest.approx(200.0)
  assert np.isnan(operators.stability_threshold(OptimConfig(name="adafactor"), 0.01))


def test_restriction_to_one_block_is_the_dense_sub_block(mlp):
  p = mlp
  with jax.enable_x64(True):
    mask = layers.layer_mask(p["params"], ModelConfig(num_layers=2), 0)
    index = np.flatnonzero(np.concatenate([np.full(x.size, m) for x, m in zip(jax.tree.leaves(p["params"]),
                                                                               jax.tree.leaves(mask))]))
    assert index.size == 6 * 10 + 10
    expected = largest_magnitude(p["dense"][np.ix_(index, index)])
    top = top_eigenpair(p["loss_fn"], p["params"], p["batch"], random_vector(p, 5), 60, mask=mask)
  assert abs(float(top.eigenvalue) - expected) < 1e-8 * abs(expected)
  assert np.all(np.delete(flat(top.vector), index) == 0.0)
  scanned = layers.layer_mask({"layers": {"w": jnp.zeros((3, 2))}, "embed": jnp.zeros(4)},
                              ModelConfig(num_layers=3, scan_layers=True), 1)
  assert np.asarray(scanned["layers"]["w"]).ravel().tolist() == [False, True, False] and scanned["embed"] is False


def test_hutchinson_is_within_four_standard_errors_of_the_trace(mlp):
  p = mlp
  with jax.enable_x64(True):
    estimate, stderr = trace(p["loss_fn"], p["params"], p["batch"], jax.random.PRNGKey(6), num_probes=32)
  exact = np.trace(p["dense"])
  # Rademacher variance is 2 Σ_{i≠j} H_ij²: the standard error is known exactly.
  off = p["dense"] - np.diag(np.diag(p["dense"]))
  assert float(stderr) == pytest.approx(np.sqrt(2 * np.sum(off ** 2) / 32), rel=0.5)
  assert abs(float(estimate) - exact) < 4 * float(stderr)


def test_update_terms_are_the_taylor_expansion(mlp):
  p = mlp
  with jax.enable_x64(True):
    delta = trees.tree_scale(random_vector(p, 7), 1e-4)
    new_params = trees.tree_add(p["params"], delta)
    # Two micro-batches (equal token counts) average to the full batch.
    terms = update_terms(p["loss_fn"], p["params"], new_params, p["batch"], num_micro=2)
    d = flat(new_params) - flat(p["params"])
    dHd = d @ p["dense"] @ d
    assert float(terms["spike/dloss_first_order"]) == pytest.approx(p["grad"] @ d, rel=1e-9)
    assert float(terms["spike/dloss_second_order"]) == pytest.approx(0.5 * dHd, rel=1e-9)
    assert float(terms["hessian/update_curvature"]) == pytest.approx(dHd / (d @ d), rel=1e-9)
    actual, first = float(terms["spike/dloss_actual"]), float(terms["spike/dloss_first_order"])
    # The remainder is third order: about 1e-3 of the second-order term at |δ| ~ 1e-3.
    assert abs(actual - first - 0.5 * dHd) < 1e-2 * abs(0.5 * dHd)


def test_hessian_metrics_for_training(mlp):
  p = mlp
  adamw = Config(optim=OptimConfig(name="adamw", b1=0.9, b2=0.95, eps=1e-3))
  params = jax.tree.map(lambda x: x.astype(jnp.float32), p["params"])
  metrics, vector = hessian_metrics(params, p["batch"], adam_state(params), adamw, 0.01, jax.random.PRNGKey(0), None,
                                      power_iters=30, trace_probes=2, loss_fn=mlp_loss)
  assert set(metrics) == {"hessian/lambda_max", "hessian/lambda_max_precond", "hessian/stability_threshold",
                          "hessian/trace", "hessian/trace_stderr", "hessian/lambda_maxabs",
                          "hessian/lambda_maxabs_precond"}
  assert all(np.isfinite(float(v)) and v.dtype == jnp.float32 for v in metrics.values())
  assert float(metrics["hessian/stability_threshold"]) == pytest.approx(3800.0, rel=1e-6)
  expected = largest_magnitude(p["dense"])
  assert float(metrics["hessian/lambda_max"]) == pytest.approx(expected, rel=1e-3)
  # Warm start: two more iterations from the returned vectors keep the answer.
  again, _ = hessian_metrics(params, p["batch"], adam_state(params), adamw, 0.01, jax.random.PRNGKey(1), vector,
                               power_iters=2, trace_probes=2, loss_fn=mlp_loss)
  for name in ("hessian/lambda_max", "hessian/lambda_max_precond"):
    assert float(again[name]) == pytest.approx(float(metrics[name]), rel=1e-3)
  # Before Adam's first update there is no preconditioner yet; SGD has none at all.
  fresh, _ = hessian_metrics(params, p["batch"], adam_state(params, count=0), adamw, 0.01, jax.random.PRNGKey(0),
                               None, power_iters=2, trace_probes=2, loss_fn=mlp_loss)
  assert np.isnan(float(fresh["hessian/lambda_max_precond"]))
  sgd = Config(optim=OptimConfig(name="sgd"))
  plain, _ = hessian_metrics(params, p["batch"], optax.sgd(0.1).init(params), sgd, 0.1, jax.random.PRNGKey(0), None,
                               power_iters=2, trace_probes=0, loss_fn=mlp_loss)
  assert set(plain) == {"hessian/lambda_max", "hessian/lambda_maxabs", "hessian/stability_threshold"}
  assert float(plain["hessian/stability_threshold"]) == pytest.approx(20.0)


def test_extreme_pairs_find_the_top_when_the_largest_magnitude_is_negative():
  with jax.enable_x64(True):
    rotation, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(6, 6)))
    A = rotation @ np.diag([-6.0, 4.0, 2.0, 1.0, -1.0, 0.5]) @ rotation.T
    B = -A  # its largest magnitude is positive: then the top is that one
    apply = lambda M: (lambda v: {"x": jnp.asarray(M) @ v["x"]})
    start = {"x": jnp.asarray(np.random.default_rng(1).normal(size=6))}
    products = lambda vs: (apply(A)(vs[0]), apply(B)(vs[1]), apply(A)(vs[2]), apply(B)(vs[3]))
    of_a, of_b = extreme_pairs(products, (start, start), (start, start), 200)
  for M, found in ((A, of_a), (B, of_b)):
    eigenvalues = np.linalg.eigvalsh(M)
    assert float(found.top.eigenvalue) == pytest.approx(eigenvalues[-1], rel=1e-8)
    assert float(found.magnitude.eigenvalue) == pytest.approx(largest_magnitude(M), rel=1e-8)
    u = flat(found.top.vector)
    assert float(found.top.residual) == pytest.approx(np.linalg.norm(M @ u - eigenvalues[-1] * u), abs=1e-6)
  assert float(of_a.top.eigenvalue) == pytest.approx(4.0) and float(of_a.magnitude.eigenvalue) == pytest.approx(-6.0)


def test_top_eigenvalue_of_an_indefinite_hessian_against_eigh(mlp):
  # The tanh network's loss minus μ‖θ‖² shifts every eigenvalue by −2μ: with 2μ = 0.6·λ_top the most negative
  # eigenvalue outweighs the top in magnitude, the case where plain power iteration reports a negative "λ_max".
  p = mlp
  eigenvalues = np.linalg.eigvalsh(p["dense"])
  mu = 0.3 * eigenvalues[-1]
  shifted = lambda params, batch: mlp_loss(params, batch) - mu * trees.tree_dot(params, params)
  expected = eigenvalues - 2 * mu
  assert abs(expected[0]) > abs(expected[-1]) > 0 and expected[-1] > 0
  with jax.enable_x64(True):
    found = extreme_eigenpairs(shifted, p["params"], p["batch"], random_vector(p, 2), 300)
    assert float(found.top.eigenvalue) == pytest.approx(expected[-1], rel=1e-6)
    assert float(found.magnitude.eigenvalue) == pytest.approx(expected[0], rel=1e-6)
    sgd = Config(optim=OptimConfig(name="sgd"))
    metrics, _ = hessian_metrics(p["params"], p["batch"], optax.sgd(0.1).init(p["params"]), sgd, 0.1,
                                 jax.random.PRNGKey(0), None, power_iters=300, trace_probes=0, loss_fn=shifted)
    assert float(metrics["hessian/lambda_max"]) == pytest.approx(expected[-1], rel=1e-6)
    assert float(metrics["hessian/lambda_maxabs"]) == pytest.approx(expected[0], rel=1e-6)
    # Preconditioned: S H S is congruent to H, so it is indefinite too; its top against the dense one.
    opt_state = adam_state(p["params"])
    scale = operators.preconditioner_scale(opt_state, OptimConfig(name="adamw", b2=0.95, eps=1e-3))
    s = flat(scale)
    dense = s[:, None] * (p["dense"] - 2 * mu * np.eye(p["n"])) * s[None, :]
    found = extreme_eigenpairs(shifted, p["params"], p["batch"], random_vector(p, 3), 600, scale=scale)
  dense_eigenvalues = np.linalg.eigvalsh(dense)
  assert float(found.top.eigenvalue) == pytest.approx(dense_eigenvalues[-1], rel=1e-5)
  assert float(found.magnitude.eigenvalue) == pytest.approx(largest_magnitude(dense), rel=1e-5)


def test_slq_trace_standard_error_is_the_spread_over_its_probes(mlp):
  p = mlp
  key = jax.random.PRNGKey(9)
  with jax.enable_x64(True):
    spectrum = slq(p["loss_fn"], p["params"], p["batch"], key, num_steps=8, num_probes=3)
    # Degree-1 quadrature is exact: each probe contributes zᵀHz for its Rademacher z.
    per_probe = [flat(trees.tree_rademacher(jax.random.fold_in(key, i), p["params"])) for i in range(3)]
  samples = np.array([z @ p["dense"] @ z for z in per_probe])
  assert spectrum.trace == pytest.approx(samples.mean(), rel=1e-9)
  assert spectrum.trace_stderr == pytest.approx(samples.std(ddof=1) / np.sqrt(3), rel=1e-9)


def test_a_cudnn_path_hvp_is_an_input_error():
  with pytest.raises(InputError, match="explicit-softmax"):
    operators.make_loss_fn(MODEL, attention="cudnn")
  # A loss through a custom_vjp whose backward pass is itself custom (as cuDNN's is) cannot go forward-over-reverse.
  @jax.custom_vjp
  def inner(x):
    return x

  inner.defvjp(lambda x: (x, None), lambda _, g: (g,))

  @jax.custom_vjp
  def fused(x):
    return jnp.sin(x)

  fused.defvjp(lambda x: (jnp.sin(x), x), lambda x, g: (inner(g * jnp.cos(x)),))
  params = {"w": jnp.ones(3)}
  with pytest.raises(InputError, match="custom_vjp"):
    operators.hvp(lambda p, b: jnp.sum(fused(p["w"])), params, make_batch(), params)


def test_hessian_every_must_not_be_negative():
  config = Config().updated({"stats.hessian_every": -1})
  with pytest.raises(InputError, match="stats.hessian_every"):
    config_lib.validate(config, 1)


@pytest.mark.parametrize("max_chunk_logits", [10**9, 2 * 7])  # the whole sequence; one position per chunk
def test_plain_cross_entropy_is_the_masked_mean_of_logz_minus_the_target_logit(max_chunk_logits):
  """From hidden states and an output matrix with two padding columns, which are not part of the softmax."""
  from lensjax.ops.cross_entropy import chunked_cross_entropy
  rng = np.random.default_rng(3)
  h = rng.normal(size=(2, 5, 4)).astype(np.float32)
  head = (2 * rng.normal(size=(4, 9))).astype(np.float32)
  targets = rng.integers(0, 7, (2, 5))
  mask = (rng.uniform(size=(2, 5)) > 0.3).astype(np.float32)
  logits = h.astype(np.float64) @ head.astype(np.float64)[:, :7]
  logz = np.log(np.exp(logits).sum(-1))
  nll = logz - np.take_along_axis(logits, targets[..., None], -1)[..., 0]
  args = jnp.asarray(h), jnp.asarray(head), jnp.asarray(targets)
  got = chunked_cross_entropy(*args, jnp.asarray(mask), 7, max_chunk_logits)
  assert got.dtype == jnp.float32
  assert float(got) == pytest.approx((nll * mask).sum() / mask.sum(), rel=1e-6)
  assert float(chunked_cross_entropy(*args, jnp.zeros((2, 5)), 7, max_chunk_logits)) == 0.0


def test_the_chunked_cross_entropy_has_the_hessian_of_the_whole_logits_one():
  """Forward-over-reverse through the scan of rematerialised chunks: the same Hv as the whole-logits loss."""
  from lensjax.ops.cross_entropy import chunked_cross_entropy
  keys = jax.random.split(jax.random.PRNGKey(4), 5)
  h, head = jax.random.normal(keys[0], (2, 6, 4)), jax.random.normal(keys[1], (4, 8))
  targets, mask = jax.random.randint(keys[2], (2, 6), 0, 8), jnp.ones((2, 6)).at[1, 4:].set(0.0)
  tangent = (jax.random.normal(keys[3], h.shape), jax.random.normal(keys[4], head.shape))

  def whole(h, head):
    z = h @ head
    nll = jax.nn.logsumexp(z, -1) - jnp.take_along_axis(z, targets[..., None], -1)[..., 0]
    return jnp.sum(nll * mask) / jnp.sum(mask)

  hvp = lambda loss: jax.jvp(jax.grad(loss, argnums=(0, 1)), (h, head), tangent)[1]
  with jax.default_matmul_precision("highest"):
    want = hvp(whole)
    for budget in (10**9, 2 * 8 * 2):  # whole; chunks of two positions
      got = hvp(lambda h, head: chunked_cross_entropy(h, head, targets, mask, 8, budget))
      for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)


def test_the_hessian_package_imports_nothing_above_it():
  code = ("import sys, lensjax.hessian.metrics, lensjax.hessian.spectrum; "
          "print([m for m in sys.modules if m.startswith(('lensjax.train', 'lensjax.analysis', 'lensjax.report'))])")
  done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
  assert done.stdout.strip() == "[]", done.stdout
