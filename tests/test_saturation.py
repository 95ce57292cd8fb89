"""Saturation (Merrill et al. 2021): hard attention in the limit, causal masking at scale, the cosine, the CLI."""

from __future__ import annotations

import dataclasses
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import make_tiny_config, run_cli
from lensjax import config as config_lib
from lensjax import parallel
from lensjax.analysis import saturation
from lensjax.config import ModelConfig
from lensjax.errors import InputError
from lensjax.model import Transformer

TINY = ModelConfig(num_layers=2, d_model=32, num_heads=4, d_ff=64, vocab_size=8, max_len=16)
B, T = 8, 16


def saturated_probs(logits_BxHxTxT, scale):
  """softmax(where(causal, c·s, -inf)): attention of logits s scaled by c, masked after scaling.

  The reference for what `Attention` computes at c·θ; as c → ∞ it tends to the
  uniform distribution over each query's tied largest visible logits.
  """
  T = logits_BxHxTxT.shape[-1]
  causal_TxT = jnp.tril(jnp.ones((T, T), bool))
  return jax.nn.softmax(jnp.where(causal_TxT, scale * logits_BxHxTxT.astype(jnp.float32), -jnp.inf), axis=-1)


def tiny_params(cfg: ModelConfig = TINY, seed: int = 0):
  return Transformer(cfg).init(jax.random.PRNGKey(seed), jnp.zeros((1, T), jnp.int32))["params"]


def tiny_batch(pad_last: int = 0) -> dict:
  tokens = (np.arange(B * T).reshape(B, T) * 5 + np.arange(B)[:, None] ** 2) % TINY.vocab_size
  mask = np.ones((B, T), np.float32)
  if pad_last:
    mask[-1, T - pad_last:] = 0.0  # right padding, as the data sources do
  return {"inputs": jnp.asarray(tokens, jnp.int32), "mask": jnp.asarray(mask)}


def sharded_batch() -> dict:
  """tiny_batch with a padded row, split over the 8 devices as a training batch is."""
  local = {k: np.asarray(v) for k, v in tiny_batch(pad_last=5).items()}
  return parallel.shard_batch(local, parallel.make_mesh(fsdp=1))


def test_saturated_attention_is_uniform_over_tied_maxima():
  logits = np.full((1, 1, 4, 4), -3.0, np.float32)
  logits[0, 0, 3] = [2.0, 5.0, 5.0, 1.0]  # a tie for the maximum: keys 1 and 2
  logits[0, 0, 2, :3] = [0.5, 0.5, 0.5]  # a three-way tie
  probs = np.asarray(saturated_probs(jnp.asarray(logits), 1000.0))[0, 0]
  np.testing.assert_array_equal(probs[3], [0.0, 0.5, 0.5, 0.0])
  np.testing.assert_allclose(probs[2], [1 / 3, 1 / 3, 1 / 3, 0.0], rtol=1e-6)
  np.testing.assert_array_equal(probs[0], [1.0, 0.0, 0.0, 0.0])
  # Unscaled, the same logits are soft: the limit is what the scale buys.
  assert np.asarray(saturated_probs(jnp.asarray(logits), 1.0))[0, 0, 3, 0] > 0.01


def test_causal_positions_stay_masked_after_scaling():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(2, 3, T, T)).astype(np.float32)
  logits[:, :, np.triu_indices(T, 1)[0], np.triu_indices(T, 1)[1]] = 100.0  # the future looks best
  future = ~np.tril(np.ones((T, T), bool))
  probs = np.asarray(saturated_probs(jnp.asarray(logits), 1000.0))
  assert np.all(np.isfinite(probs)) and np.all(probs[..., future] == 0.0)
  np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-6)
  # The model fills masked logits with finfo.min, not -inf: the same probabilities at this scale.
  scaled = jnp.asarray(logits) * 1000.0
  model_fill = jax.nn.softmax(jnp.where(jnp.asarray(~future), scaled, jnp.finfo(jnp.float32).min), axis=-1)
  np.testing.assert_array_equal(np.asarray(model_fill), probs)


def test_model_attention_at_1000_theta_stays_causal():
  batch = tiny_batch()
  # jit: op by op, the captured forward pass compiles each primitive on its own and takes longer.
  hidden_and_probs = jax.jit(lambda p, b: saturation.hidden_and_probs(
      saturation.scale_params(p, 1000.0), b["inputs"], b["mask"], saturation.analysis_config(TINY)))

  def forward(params, batch):
    with jax.enable_x64(True):
      return hidden_and_probs(params, batch)

  params = tiny_params()
  h, probs = jax.device_get(forward(params, batch))
  assert h.dtype == np.float64 and probs.dtype == np.float64
  future = ~np.tril(np.ones((T, T), bool))
  assert np.all(np.isfinite(h)) and np.all(np.isfinite(probs))
  assert np.all(probs[..., future] == 0.0)
  np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-5)
  # Ties in the model itself: without position embeddings, a row of one repeated token has
  # bitwise identical keys in layer 0, so every saturated head there spreads evenly over what
  # it sees. (Deeper layers see averages rounded differently per position, so only layer 0 is exact.)
  params = dict(params, pos_embed={"embedding": jnp.zeros_like(params["pos_embed"]["embedding"])})
  batch["inputs"] = batch["inputs"].at[0].set(3)
  _, probs = jax.device_get(forward(params, batch))
  want = np.where(future, 0.0, 1.0 / np.arange(1, T + 1)[:, None])
  np.testing.assert_allclose(probs[0, 0], np.broadcast_to(want, probs[0, 0].shape), rtol=1e-5)


def test_head_key_counts_against_numpy():
  L, H = 1, 3
  probs = np.zeros((L, B, H, T, T), np.float32)
  visible = np.arange(1, T + 1)
  for t in range(T):
    probs[0, :, 0, t, t] = 1.0  # head 0: an argmax head on the current token
    probs[0, :, 1, t, :t + 1] = 1.0 / (t + 1)  # head 1: averages over everything visible
    keys = max((t + 1) // 2, 1)
    probs[0, :, 2, t, :keys] = 1.0 / keys  # head 2: averages over the first half
  mask = np.ones((B, T), np.float32)
  mask[-1, 10:] = 0.0
  count, fraction = map(np.asarray, saturation.head_key_counts(jnp.asarray(probs), jnp.asarray(mask)))
  half = np.maximum(visible // 2, 1)
  weights = mask.reshape(-1)
  later = (mask * (np.arange(T) > 0)).reshape(-1)
  tile = lambda per_t: np.tile(per_t, B)
  np.testing.assert_allclose(count[0], [1.0, np.average(tile(visible), weights=weights),
                                        np.average(tile(half), weights=weights)], rtol=1e-6)
  np.testing.assert_allclose(fraction[0], [np.average(tile(1 / visible), weights=later), 1.0,
                                           np.average(tile(half / visible), weights=later)], rtol=1e-6)
  histogram = saturation.head_histogram(fraction)
  assert sum(histogram["counts"]) == L * H and len(histogram["edges"]) == saturation.HISTOGRAM_BINS + 1


def test_cosine_is_one_when_saturated_and_low_at_initialisation():
  """Jitted over a batch sharded on 8 devices, as in training.

  Logits reach ~1e11 at c = 1000; while the model divided the logits by √K,
  XLA recomputed that product in the softmax's max and exp fusions with
  different rounding, exp(x − max) overflowed, and this setting gave NaN
  attention (in_range False, key counts below 1).
  """
  params, batch = tiny_params(), sharded_batch()
  fn = saturation.jit_saturation_arrays(TINY)
  at_init = jax.device_get(fn(params, batch, 1000.0))
  # Small init: h(θ) is mostly the embedding, h(cθ) mostly the c³-sized sublayer outputs.
  assert bool(at_init["in_range"]) and np.all(at_init["cosine_L"] < 0.5), at_init["cosine_L"]
  assert np.all(at_init["key_count_LxH"] > 1.0 - 1e-6)
  # Already far out along θ's direction: scaling further changes no direction.
  saturated = jax.device_get(fn(jax.tree.map(lambda p: p * 100.0, params), batch, 1000.0))
  assert bool(saturated["in_range"]) and np.all(saturated["cosine_L"] > 0.9999), saturated["cosine_L"]
  np.testing.assert_allclose(saturated["key_count_LxH"], 1.0, rtol=1e-5)  # argmax heads, one key per query
  # Overflowing float64 is reported, not measured.
  assert not bool(fn(params, batch, 1e60)["in_range"])


def test_scanned_layout_gives_the_same_metrics():
  params, batch = tiny_params(), sharded_batch()  # the reference compiles as in the test above
  scanned_cfg = dataclasses.replace(TINY, scan_layers=True)
  layers = [params[f"layer_{l}"] for l in range(TINY.num_layers)]
  scanned = {k: v for k, v in params.items() if not k.startswith("layer_")}
  scanned["layers"] = jax.tree.map(lambda *xs: jnp.stack(xs), *layers)
  want = saturation.metric_names(jax.device_get(saturation.jit_saturation_arrays(TINY)(params, batch, 1000.0)))
  got = saturation.make_saturation_fn(scanned_cfg, 1000.0)(scanned, batch)
  assert set(got) == ({f"eval/saturation/layer_{l}" for l in range(2)}
                      | {f"eval/saturated_head/layer_{l}/head_{h}" for l in range(2) for h in range(4)})
  np.testing.assert_allclose([float(got[k]) for k in sorted(want)], [float(want[k]) for k in sorted(want)], rtol=1e-5)


def test_saturation_every_must_not_be_negative():
  config_lib.validate(make_tiny_config(**{"stats.saturation_every": 0}), 8)
  with pytest.raises(InputError, match="stats.saturation_every"):
    config_lib.validate(make_tiny_config(**{"stats.saturation_every": -5}), 8)


# --------------------------------------------------------------------------
# The command line, end to end on a trained checkpoint.


def _cli_is_wired() -> bool:
  from lensjax import cli
  subcommands = next(a for a in cli.parser()._actions if a.dest == "command")  # pylint: disable=protected-access
  return "saturation" in subcommands.choices


def saturation_command(workdir: str, *args: str, capsys, through_cli: bool = False) -> tuple[int, str, str]:
  """`lensjax saturation ARGS` in this process (`cli.main`), or with `through_cli` as a real
  `python -m lensjax saturation` subprocess once cli.py wires the command."""
  if through_cli and _cli_is_wired():
    done = run_cli("saturation", "--workdir", workdir, *args)
    return done.returncode, done.stdout, done.stderr
  from lensjax import cli
  code = cli.main(["saturation", "--workdir", workdir, *args])
  captured = capsys.readouterr()
  return code, captured.out, captured.err


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> str:
  from lensjax.train import loop
  workdir = str(tmp_path_factory.mktemp("saturation") / "run")
  loop.train(make_tiny_config(**{"train.steps": 2}), workdir)  # the config test_reliability compiles too
  return workdir


def test_cli_json_names_every_layer_and_head(trained_run, capsys):
  code, out, err = saturation_command(trained_run, "--json", capsys=capsys, through_cli=True)
  assert code == 0, err
  results = json.loads(out.strip().splitlines()[-1])
  L, H = 2, 4
  names = [f"eval/saturation/layer_{l}" for l in range(L)]
  names += [f"eval/saturated_head/layer_{l}/head_{h}" for l in range(L) for h in range(H)]
  for name in names:
    assert name in results and math.isfinite(results[name]), name
  assert all(-1.0 <= results[f"eval/saturation/layer_{l}"] <= 1.0 for l in range(L))
  assert all(1.0 <= results[f"eval/saturated_head/layer_{l}/head_{h}"] <= 16.0 for l in range(L) for h in range(H))
  assert results["step"] == 2 and results["scale"] == 1000.0
  assert np.shape(results["saturated_head_fraction"]) == (L, H)
  assert sum(results["saturated_head_histogram"]["counts"]) == L * H
  assert os.listdir(os.path.join(trained_run, "tb"))


def test_cli_summary_and_bad_input(trained_run, capsys):
  code, out, err = saturation_command(trained_run, "--scale", "10", capsys=capsys)
  assert code == 0, err
  assert "layer 1: cos" in out and "c = 10" in out
  code, _, err = saturation_command(trained_run, "--step", "999", capsys=capsys)
  assert code == 2 and "999" in err
  code, _, err = saturation_command(trained_run, "--scale", "-1", capsys=capsys)
  assert code == 2 and "--scale" in err
