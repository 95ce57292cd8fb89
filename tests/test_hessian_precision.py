"""The precision of the Hessian computations (lensjax/hessian/precision.py): float32, tf32, bf16.

Each precision's HVP of the tiny Transformer is checked against a float64
jvp-of-grad written out here. On a CPU float32 and tf32 give the same numbers
(no tensor cores), so the matmul precision is checked where a CPU can see it:
in the traced program, every matmul of the HVP carries the precision of its
loss whatever context the caller holds. The flag and the config key are
checked through the CLI.
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from conftest import REPO, make_tiny_config, write_config_file
from lensjax import cli, runner
from lensjax.config import ModelConfig
from lensjax.hessian import operators
from lensjax.hessian.operators import make_loss_fn
from lensjax.hessian.precision import PRECISION_NAMES, chosen_precision
from lensjax.model import Transformer

MODEL = ModelConfig(num_layers=1, d_model=8, num_heads=2, d_ff=16, vocab_size=8, max_len=8)
B, T, V = 4, 8, 8
# Relative error of Hv against float64: float32 rounding for float32 and tf32 (on a CPU), bfloat16's 8-bit
# mantissa for bf16.
TOLERANCE = {"float32": 1e-4, "tf32": 1e-4, "bf16": 5e-2}


def make_batch() -> dict:
  tokens = np.random.default_rng(0).integers(0, V, (B, T + 1))
  return {"inputs": jnp.asarray(tokens[:, :-1], jnp.int32), "targets": jnp.asarray(tokens[:, 1:], jnp.int32),
          "mask": jnp.ones((B, T), jnp.float32)}


def rel_err(a, b) -> float:
  a, b = (np.asarray(ravel_pytree(x)[0], np.float64) for x in (a, b))
  return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.fixture(scope="module")
def problem():
  """Float64 parameters, two tangents and their H·v by jvp-of-grad in float64, as NumPy."""
  with jax.enable_x64(True):
    batch = make_batch()
    shapes = jax.eval_shape(Transformer(MODEL).init, jax.random.PRNGKey(0), batch["inputs"])["params"]
    rng = np.random.default_rng(0)
    draw = lambda: jax.tree.map(lambda s: np.asarray(0.3 * rng.normal(size=s.shape)), shapes)
    params, vs = draw(), [draw(), draw()]  # two tangents: a second call costs no compile
    loss64 = operators.make_loss_fn(MODEL, "float32", compute_dtype="float64")
    reference = jax.jit(lambda p, v: jax.jvp(jax.grad(lambda q: loss64(q, batch)), (p,), (v,))[1])
    expected = [jax.device_get(reference(params, v)) for v in vs]
  as32 = lambda tree: jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), tree)
  return dict(params=as32(params), vs=[as32(v) for v in vs], expected=expected, batch=make_batch())


@pytest.fixture(scope="module")
def products(problem):
  """{precision: [H·v for each tangent]} through `operators.hvp`, float32 parameters."""
  out = {}
  for name in PRECISION_NAMES:
    loss_fn = operators.make_loss_fn(MODEL, name)
    out[name] = [jax.device_get(operators.hvp(loss_fn, problem["params"], problem["batch"], v)) for v in problem["vs"]]
  return out


@pytest.mark.parametrize("name", PRECISION_NAMES)
def test_hvp_matches_float64_within_the_precision(problem, products, name):
  for hv, expected in zip(products[name], problem["expected"]):
    assert all(x.dtype == np.float32 for x in jax.tree.leaves(hv))  # Hv is float32 whatever the compute
    assert rel_err(hv, expected) < TOLERANCE[name], name


def test_bf16_really_computes_in_bfloat16(problem, products):
  # If bf16 silently ran in float32, its products would equal the float32 ones to rounding.
  for bf16, f32 in zip(products["bf16"], products["float32"]):
    assert rel_err(bf16, f32) > 1e-3


def walk_eqns(jaxpr):
  """Every equation of a jaxpr, inner jaxprs (jit, scan, custom rules) included."""
  for eqn in jaxpr.eqns:
    yield eqn
    for value in eqn.params.values():
      for inner in (value if isinstance(value, (tuple, list)) else (value,)):
        inner = getattr(inner, "jaxpr", inner)
        if hasattr(inner, "eqns"):
          yield from walk_eqns(inner)


def dot_generals(fn, *args):
  return [e for e in walk_eqns(jax.make_jaxpr(fn)(*args).jaxpr) if e.primitive.name == "dot_general"]


@pytest.mark.parametrize("name, precision, dtype", [("float32", jax.lax.Precision.HIGHEST, "float32"),
                                                     ("tf32", jax.lax.Precision.DEFAULT, "float32"),
                                                     ("bf16", jax.lax.Precision.DEFAULT, "bfloat16")])
def test_every_matmul_of_the_hvp_runs_at_the_loss_precision(problem, name, precision, dtype):
  loss_fn = operators.make_loss_fn(MODEL, name)
  assert operators.make_loss_fn(MODEL, name) is loss_fn  # cached: the jitted programs compile once per precision
  hvp = lambda p, v: operators.hessian_operator(loss_fn, p, problem["batch"])(v)
  # The caller's context is the opposite one: the loss's own precision must win, in the backward and tangent passes.
  with jax.default_matmul_precision("default" if name == "float32" else "highest"):
    dots = dot_generals(hvp, problem["params"], problem["vs"][0])
  assert len(dots) > 20  # forward, backward and their tangents
  assert {e.params["precision"] for e in dots} == {(precision, precision)}
  operand_dtypes = {str(v.aval.dtype) for e in dots for v in e.invars}
  assert dtype in operand_dtypes and (dtype == "float32") == (operand_dtypes == {"float32"})


def test_bf16_keeps_the_softmax_and_the_loss_in_float32(problem):
  loss_fn = operators.make_loss_fn(MODEL, "bf16")
  params, batch = problem["params"], problem["batch"]
  assert jax.eval_shape(loss_fn, params, batch).dtype == jnp.float32
  eqns = list(walk_eqns(jax.make_jaxpr(loss_fn)(params, batch).jaxpr))
  # exp appears in the attention softmax and in the logsumexp of the cross-entropy: both float32.
  exps = [e for e in eqns if e.primitive.name == "exp"]
  assert len(exps) >= 2 and {str(e.outvars[0].aval.dtype) for e in exps} == {"float32"}
  assert any(str(v.aval.dtype) == "bfloat16" for e in eqns if e.primitive.name == "dot_general" for v in e.invars)


# --------------------------------------------------------------------------
# The config key and the flag.


def test_a_bad_config_value_exits_2_with_one_sentence(tmp_path, capsys):
  config_file = write_config_file(tmp_path / "tiny.py", make_tiny_config())
  code = cli.main(["train", "--config", config_file, "--workdir", str(tmp_path / "run"),
                   "--config.stats.hessian_precision=fp8"])
  err = capsys.readouterr().err
  assert code == 2
  assert err.strip() == ("lensjax: error: config key stats.hessian_precision is 'fp8'; choose one of float32, tf32, "
                         "bf16.")
  assert not os.path.exists(tmp_path / "run" / "checkpoints")


@pytest.mark.parametrize("command", [["hessian", "--workdir", "nowhere"], ["spikes", "--workdir", "nowhere"],
                                     ["bench", "--config", os.path.join(REPO, "configs", "quickstart.py"), "--only", "hvp"]])
def test_a_bad_precision_flag_exits_2_with_one_sentence(command, capsys):
  assert cli.main([*command, "--precision", "fp8"]) == 2
  assert capsys.readouterr().err.strip() == "lensjax: error: --precision is 'fp8'; choose one of float32, tf32, bf16."


def test_the_flag_overrides_the_run_config_value():
  config = make_tiny_config(**{"stats.hessian_precision": "float32"})
  assert chosen_precision(None, config) == "float32" and chosen_precision("bf16", config) == "bf16"
  assert chosen_precision(None, make_tiny_config()) == "tf32"  # the default


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """One step of a one-layer run whose config asks for float32 Hessians (one step: one train program to compile),
  a checkpoint at step 1."""
  workdir = str(tmp_path_factory.mktemp("precision_run"))
  runner.train(make_tiny_config(**{"train.steps": 1, "model.num_layers": 1, "model.d_model": 16, "model.d_ff": 32,
                                   "stats.hessian_precision": "float32"}), workdir)
  return workdir


def test_the_precision_flag_reaches_the_loss_and_the_results(trained, capsys, monkeypatch):
  asked = []

  def recording_make_loss_fn(model_cfg, precision, **kwargs):
    asked.append(precision)
    return make_loss_fn(model_cfg, precision, **kwargs)

  monkeypatch.setattr(operators, "make_loss_fn", recording_make_loss_fn)
  argv = ["hessian", "--workdir", trained, "--power-iters", "2", "--trace-probes", "0", "--lanczos-steps", "0",
          "--no-layers", "--json", "--precision", "bf16"]
  assert cli.main(argv) == 0
  results = json.loads(capsys.readouterr().out)
  assert asked == ["bf16"] and results["precision"] == "bf16" and np.isfinite(results["hessian/lambda_max"])
  with open(os.path.join(trained, "analyses", f"hessian_{results['step']:06d}.json")) as f:
    assert json.load(f)["precision"] == "bf16"
