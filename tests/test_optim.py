"""Learning-rate schedules at hand-computed points; which parameters weight decay touches."""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lensjax.config import ModelConfig, OptimConfig
from lensjax.model import Transformer
from lensjax.train import optim

# lr 1, warmup 10, floor 0.1, 110 steps: the decay spans steps 10..110.
BASE = OptimConfig(lr=1.0, warmup_steps=10, min_lr_ratio=0.1)
TOTAL = 110
WARMUP_POINTS = [(0, 0.1), (4, 0.5), (9, 1.0)]  # lr * (step + 1) / warmup


@pytest.mark.parametrize("schedule,points", [
    ("constant", [(10, 1.0), (60, 1.0), (500, 1.0)]),
    # floor + (lr - floor) * (1 + cos(pi * progress)) / 2, progress = (step - 10) / 100
    ("cosine", [(10, 1.0), (35, 0.1 + 0.9 * (1 + math.cos(math.pi / 4)) / 2), (60, 0.55), (110, 0.1), (500, 0.1)]),
    # lr + (floor - lr) * progress
    ("linear", [(10, 1.0), (35, 0.775), (60, 0.55), (110, 0.1), (500, 0.1)]),
    # lr * sqrt(warmup / (step + 1)) after warmup
    ("rsqrt", [(10, math.sqrt(10 / 11)), (39, 0.5), (159, 0.25)]),
])
def test_schedule_values_at_hand_computed_steps(schedule, points):
  fn = optim.make_schedule(dataclasses.replace(BASE, schedule=schedule), TOTAL)
  for step, expected in WARMUP_POINTS + points:
    np.testing.assert_allclose(float(fn(step)), expected, rtol=1e-6, err_msg=f"{schedule} at step {step}")


def test_schedule_without_warmup_starts_at_lr():
  fn = optim.make_schedule(dataclasses.replace(BASE, schedule="cosine", warmup_steps=0), 100)
  np.testing.assert_allclose([float(fn(0)), float(fn(50)), float(fn(100))], [1.0, 0.55, 0.1], rtol=1e-6)


def model_params(scan_layers: bool, norm: str = "pre"):
  """The model's real parameter tree, filled with distinct values (no init compiled)."""
  cfg = ModelConfig(num_layers=2, d_model=8, num_heads=2, d_ff=16, vocab_size=5, max_len=4, scan_layers=scan_layers,
                    norm=norm)
  init = lambda: Transformer(cfg).init(jax.random.PRNGKey(0), jnp.zeros((1, 4), jnp.int32))["params"]
  shapes = jax.eval_shape(init)
  return jax.tree.map(lambda s: jnp.linspace(0.5, 1.5, s.size).reshape(s.shape), shapes)


def leaf_names(params) -> dict[str, object]:
  return {jax.tree_util.keystr(path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]}


@pytest.mark.parametrize("scan_layers,norm", [(False, "pre"), (True, "pre"), (False, "post"), (True, "post")])
def test_weight_decay_mask_decays_kernels_only(scan_layers, norm):
  params = model_params(scan_layers, norm)
  mask = leaf_names(optim.decay_mask(params, BASE))
  # Leaves are kernels (decayed), or biases, norm scales and embedding tables (exempt).
  assert {name.rsplit("'", 2)[-2] for name in mask} == {"kernel", "bias", "scale", "embedding"}
  for name, decayed in mask.items():
    assert decayed == name.endswith("['kernel']"), name
  assert any(mask.values()) and not all(mask.values())
  everything = optim.decay_mask(params, dataclasses.replace(BASE, decay_exempt=False))
  assert all(jax.tree.leaves(everything))


def test_adamw_shrinks_exactly_the_masked_leaves():
  # With zero gradients Adam's own update is 0, so what moves is weight decay alone.
  cfg = dataclasses.replace(BASE, lr=0.1, weight_decay=0.5, warmup_steps=0, schedule="constant")
  tx, _ = optim.make_optimizer(cfg, 10)
  params = model_params(scan_layers=True)
  zeros = jax.tree.map(jnp.zeros_like, params)
  updates, _ = jax.jit(tx.update)(zeros, tx.init(params), params)
  new = leaf_names(jax.tree.map(lambda p, u: p + u, params, updates))
  old = leaf_names(params)
  for name, p in old.items():
    expected = p * (1 - 0.1 * 0.5) if name.endswith("['kernel']") else p
    np.testing.assert_allclose(new[name], expected, rtol=1e-6, atol=1e-9, err_msg=name)
