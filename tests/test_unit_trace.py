"""The `ffn_pre` capture and the unit-trace lens against NumPy; its per-step files, atomic, per ensemble member."""

from __future__ import annotations

import dataclasses
import os
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import make_tiny_config, run_cli, write_config_file
from lensjax import config as config_lib
from lensjax.config import Config, ModelConfig
from lensjax.errors import InputError
from lensjax.io import step_arrays
from lensjax.model import Transformer
from lensjax.stats import lenses as lens_lib
from lensjax.stats.lens import StepView
from lensjax.stats.unit_trace import TRACE_FIELDS, UnitTraceLens
from lensjax.train import loop
from lensjax.train.ensemble import member_of
from lensjax.train.guards import prepare_run_dirs
from lensjax.train.step import model_for

# Row 0 full, row 1 right-padded, row 2 all padding.
MASK_3x5 = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [0, 0, 0, 0, 0]], np.float32)


def layer_norm(x, scale, bias, eps=1e-6):
  mean = x.mean(-1, keepdims=True)
  return (x - mean) / np.sqrt(((x - mean) ** 2).mean(-1, keepdims=True) + eps) * scale + bias


@pytest.mark.parametrize("scan_layers", [False, True])
def test_ffn_pre_is_the_up_projection_of_the_normed_residual_and_its_relu_is_ffn_hidden(scan_layers):
  cfg = ModelConfig(num_layers=2, d_model=8, num_heads=2, d_ff=12, vocab_size=7, max_len=6, init_std=0.3,
                    scan_layers=scan_layers)
  model = Transformer(cfg, capture=("block_in", "attn_out", "ffn_pre", "ffn_hidden"))
  tokens = jax.random.randint(jax.random.PRNGKey(0), (3, 5), 0, 7)
  params = model.init(jax.random.PRNGKey(1), tokens)["params"]
  _, captured = model.apply({"params": params}, tokens, jnp.asarray(MASK_3x5))
  for l in range(cfg.num_layers):
    layer = (jax.tree.map(lambda x: np.asarray(x[l], np.float64), params["layers"]) if scan_layers
             else jax.tree.map(lambda x: np.asarray(x, np.float64), params[f"layer_{l}"]))
    residual = np.asarray(captured["block_in"][l], np.float64) + np.asarray(captured["attn_out"][l], np.float64)
    normed = layer_norm(residual, layer["ffn_norm"]["scale"], layer["ffn_norm"]["bias"])
    want_z = normed @ layer["ffn"]["up"]["kernel"] + layer["ffn"]["up"]["bias"]
    np.testing.assert_allclose(captured["ffn_pre"][l], want_z, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(captured["ffn_hidden"][l], np.maximum(captured["ffn_pre"][l], 0.0), atol=1e-7)
    assert np.any(want_z < 0) and np.any(want_z > 0)  # the ReLU bites on both sides
  # Nothing extra leaves the model unless asked for, and a gated FFN has no single pre-activation to give.
  assert Transformer(cfg).apply({"params": params}, tokens)[1] == {}
  if scan_layers:
    return
  swiglu = dataclasses.replace(cfg, activation="swiglu")
  gated = Transformer(swiglu, capture=("ffn_pre", "ffn_hidden"))
  gated_params = gated.init(jax.random.PRNGKey(1), tokens)["params"]
  assert set(gated.apply({"params": gated_params}, tokens)[1]) == {"ffn_hidden"}


def ref_moments(z_BxTxF, mask_BxT):
  """Mean and population std over real tokens, by loops in float64 (0, 0 without real tokens)."""
  B, T, F = z_BxTxF.shape
  mean, std = np.zeros(F), np.zeros(F)
  for f in range(F):
    values = [float(z_BxTxF[b, t, f]) for b in range(B) for t in range(T) if mask_BxT[b, t] > 0]
    if values:
      m = sum(values) / len(values)
      mean[f], std[f] = m, (sum((v - m) ** 2 for v in values) / len(values)) ** 0.5
  return mean, std


def ffn_params(rng, D, F, with_bias):
  up = {"kernel": rng.normal(size=(D, F)).astype(np.float32)}
  if with_bias:
    up["bias"] = rng.normal(size=F).astype(np.float32)
  return {"ffn": {"up": up, "down": {"kernel": rng.normal(size=(F, D)).astype(np.float32)}}}


@pytest.mark.parametrize("scan_layers,with_bias", [(False, True), (True, True), (False, False)])
def test_unit_trace_lens_against_numpy_with_padding_and_an_all_dead_layer(scan_layers, with_bias):
  rng = np.random.default_rng(3)
  L, D, F = 2, 3, 4
  z = rng.normal(size=(L, 3, 5, F)).astype(np.float32)
  z[0, :, :, 0] += 1e3  # |mean| ≫ std: a one-pass variance would lose it
  z[0, 1, 3:] = 50.0  # padding that would move every statistic
  z[0, 2] = -80.0  # the all-padding row
  z[1] = -np.abs(z[1]) - 1.0  # layer 1: every unit dead (never above 0)
  mask = MASK_3x5.copy()
  layers = [ffn_params(rng, D, F, with_bias) for _ in range(L)]
  steps = [ffn_params(rng, D, F, with_bias) for _ in range(L)]
  new_layers = [jax.tree.map(np.add, p, u) for p, u in zip(layers, steps)]
  tree = lambda blocks: ({"layers": jax.tree.map(lambda *xs: np.stack(xs), *blocks)} if scan_layers
                         else {f"layer_{l}": block for l, block in enumerate(blocks)})
  captured = {"ffn_pre": z if scan_layers else tuple(z)}
  view = StepView({"mask": jnp.asarray(mask)}, {}, captured, None, tree(layers), tree(new_layers), None, tree(steps),
                  None, jnp.asarray(4), True)
  lens = UnitTraceLens(ModelConfig(num_layers=L, d_model=D, d_ff=F, scan_layers=scan_layers, use_bias=with_bias))
  metrics = jax.jit(lambda v: lens.update(None, v)[1])(view)
  assert set(metrics) == {"units/pre_mean", "units/pre_std", "units/w_in_norm", "units/w_in_update"}
  for l in range(L):
    mean, std = ref_moments(z[l].astype(np.float64), mask)
    np.testing.assert_allclose(metrics["units/pre_mean"][l], mean, rtol=1e-6, atol=1e-5)
    np.testing.assert_allclose(metrics["units/pre_std"][l], std, rtol=1e-4, atol=1e-5)
    for name, blocks in (("units/w_in_norm", new_layers), ("units/w_in_update", steps)):
      up = blocks[l]["ffn"]["up"]
      columns = [np.concatenate([up["kernel"][:, f], up["bias"][f:f + 1] if with_bias else []]) for f in range(F)]
      np.testing.assert_allclose(metrics[name][l], [np.linalg.norm(c.astype(np.float64)) for c in columns],
                                 rtol=1e-6)
  assert np.all(np.asarray(metrics["units/pre_mean"][1]) < 0)  # the dead layer is traced like any other
  # A batch of padding only: every moment is 0, nothing is NaN.
  empty = view._replace(batch={"mask": jnp.zeros((3, 5))})
  empty_metrics = lens.update(None, empty)[1]
  assert not np.any(empty_metrics["units/pre_mean"]) and not np.any(empty_metrics["units/pre_std"])


def test_unit_trace_is_off_by_default_runs_on_logging_steps_only_and_refuses_swiglu():
  off, on = Config(), Config().updated({"stats.unit_trace": True})
  assert not any(isinstance(lens, UnitTraceLens) for lens in lens_lib.train_lenses(off))
  lenses = lens_lib.train_lenses(on)
  assert sum(isinstance(lens, UnitTraceLens) for lens in lenses) == 1
  every_step = [lens for lens in lenses if lens.every_step]
  # The plain step captures what it did before; only the logging step's model hands out ffn_pre.
  assert model_for(on.model, every_step).capture == ("ffn_hidden",)
  assert "ffn_pre" in model_for(on.model, lenses).capture
  assert "ffn_pre" not in model_for(off.model, lens_lib.train_lenses(off)).capture
  with pytest.raises(InputError, match="model.activation=swiglu.*stats.unit_trace=false"):
    lens_lib.train_lenses(on.updated({"model.activation": "swiglu"}))


def test_step_files_are_whole_or_absent_and_a_rewrite_replaces_them(tmp_path, monkeypatch):
  directory = str(tmp_path / "unit_trace")
  step_arrays.write_step_arrays(directory, 7, {"a": np.arange(3.0)})
  path = step_arrays.step_file(directory, 7)
  assert os.path.basename(path) == "step_00000007.npz"
  step_arrays.write_step_arrays(directory, 7, {"a": np.full(3, 2.0)})
  with np.load(path) as f:
    assert f["a"].dtype == np.float32 and f["a"].tolist() == [2.0, 2.0, 2.0]

  def killed(file, **arrays):
    file.write(b"PK\x03\x04 half a zip")
    raise KeyboardInterrupt

  monkeypatch.setattr(np, "savez_compressed", killed)
  with pytest.raises(KeyboardInterrupt):
    step_arrays.write_step_arrays(directory, 7, {"a": np.zeros(3)})
  with pytest.raises(KeyboardInterrupt):
    step_arrays.write_step_arrays(directory, 9, {"a": np.zeros(3)})
  monkeypatch.undo()
  with np.load(path) as f:  # the old file, whole
    assert f["a"].tolist() == [2.0, 2.0, 2.0]
  assert sorted(os.listdir(directory)) == ["step_00000007.npz"]
  open(os.path.join(directory, ".step_00000011.tmp"), "wb").close()  # what a kill at the wrong moment leaves
  assert step_arrays.step_files(directory) == [(7, path)]


def test_a_resume_drops_the_trace_files_logged_after_its_checkpoint(tmp_path):
  config = make_tiny_config(**{"stats.unit_trace": True})
  directory = str(tmp_path / "unit_trace")
  for step in (0, 2, 4, 6):
    step_arrays.write_step_arrays(directory, step, {"a": np.zeros(1)})
  open(os.path.join(directory, ".step_00000008.tmp"), "wb").close()
  run = types.SimpleNamespace(members=[config], lenses=lens_lib.train_lenses(config), ensemble=False, config=config)
  prepare_run_dirs(run, [str(tmp_path)], start_step=4, restored=True, checkpoint_dir=str(tmp_path / "checkpoints"))
  assert [step for step, _ in step_arrays.step_files(directory)] == [0, 2]
  assert sorted(os.listdir(directory)) == ["step_00000000.npz", "step_00000002.npz"]


def up_column_norms(params, cfg) -> np.ndarray:
  """[L, F] norms of (W_up[:, f], b_up[f]) of a parameter tree, in NumPy."""
  rows = []
  for l in range(cfg.num_layers):
    up = jax.tree.map(np.asarray, params[f"layer_{l}"]["ffn"]["up"])
    rows.append(np.sqrt((up["kernel"].astype(np.float64) ** 2).sum(0) + up["bias"].astype(np.float64) ** 2))
  return np.stack(rows)


def test_each_ensemble_member_writes_its_own_trace_file_per_logging_step(tmp_path):
  config = make_tiny_config(**{"stats.unit_trace": True, "train.members": 2})
  state = loop.train(config, str(tmp_path))
  logging_steps = [0, 2, 4, 5]  # log_every 2, and the last step
  for i in range(2):
    directory = os.path.join(tmp_path, f"member_{i}", "unit_trace")
    assert sorted(os.listdir(directory)) == [f"step_{s:08d}.npz" for s in logging_steps]
    with np.load(step_arrays.step_file(directory, 5)) as last:
      assert set(last.files) == set(TRACE_FIELDS.values())
      assert all(last[name].shape == (2, 64) and last[name].dtype == np.float32 for name in last.files)
      # The last logging step's w_in_norm is at θ_6, the member's final parameters: its own slice, not another's.
      want = up_column_norms(member_of(state.params, i), config.model)
      np.testing.assert_allclose(last["w_in_norm"], want, rtol=1e-5)
      assert np.all((last["frequency"] >= 0) & (last["frequency"] <= 1)) and np.all(last["pre_std"] > 0)
  assert not os.path.exists(os.path.join(tmp_path, "unit_trace"))
  with np.load(step_arrays.step_file(os.path.join(tmp_path, "member_0", "unit_trace"), 0)) as a, \
       np.load(step_arrays.step_file(os.path.join(tmp_path, "member_1", "unit_trace"), 0)) as b:
    assert not np.allclose(a["pre_mean"], b["pre_mean"])  # the members differ in their seeds


def test_training_a_gated_ffn_with_the_unit_trace_exits_2_before_touching_the_run(tmp_path):
  workdir = tmp_path / "run"
  workdir.mkdir()
  (workdir / "metrics.jsonl").write_text('{"step": 0, "train/loss": 1.0}\n')
  config_file = write_config_file(tmp_path / "gated.py", make_tiny_config(**{"model.activation": "swiglu"}))
  result = run_cli("train", "--config", config_file, "--workdir", str(workdir), "--config.stats.unit_trace=true")
  assert result.returncode == 2, result.stderr
  # Validation refuses before anything is opened: one sentence, nothing after it, nothing created.
  assert result.stderr.strip().splitlines() == [result.stderr.strip()], result.stderr
  message = result.stderr.strip()
  assert message.startswith("lensjax: error: ") and "model.activation=swiglu" in message
  assert message.endswith("--config.stats.unit_trace=false.")
  assert (workdir / "metrics.jsonl").read_text() == '{"step": 0, "train/loss": 1.0}\n'
  assert sorted(os.listdir(workdir)) == ["metrics.jsonl"]


@pytest.mark.parametrize("change,named", [({"model.activation": "swiglu"}, "model.activation=swiglu"),
                                          ({"model.block": "attention_only"}, "model.block=attention_only")])
def test_validation_refuses_a_unit_trace_of_a_model_without_single_ffn_units(change, named):
  config = make_tiny_config(**{"stats.unit_trace": True, **change})
  with pytest.raises(InputError, match=f"{named}.*stats.unit_trace=false"):
    config_lib.validate(config, 1)
  config_lib.validate(config.updated({"stats.unit_trace": False}), 1)
