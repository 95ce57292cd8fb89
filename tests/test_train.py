"""The train step and loop: golden arithmetic, resume, devices, outputs, SIGTERM.

Every test here uses one config (CONFIG), so that the session's persistent
compilation cache (see conftest) compiles its step once for all of them, the
CLI subprocesses included.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import NUM_DEVICES, popen_cli, preempted_sources, write_config_file
from lensjax import config as config_lib
from lensjax import parallel
from lensjax.errors import InputError
from lensjax.io.checkpoints import Checkpoints
from lensjax.io.metrics_log import read_metrics
from lensjax.train import loop
from lensjax.train.state import legacy_layout


def golden_config() -> config_lib.Config:
  """Every value that one step's arithmetic depends on, spelled out.

  Spelled out rather than taken from the defaults, so that a change of a
  default does not silently move the golden numbers below.
  """
  return config_lib.from_dict({
      "model": dict(num_layers=2, d_model=32, num_heads=4, d_ff=64, vocab_size=0, vocab_multiple=1, max_len=16,
                    activation="relu", active_threshold=0.0, norm="pre", block="attention+ffn",
                    positions="learned", tie_embeddings=True, use_bias=True, dropout=0.0, dtype="float32",
                    attention="xla", scan_layers=False, remat=False, init_std=0.02),
      "data": dict(source="markov", seq_len=16, seed=0, vocab_size=8, markov_order=1, markov_alpha=0.5),
      "optim": dict(name="adamw", lr=1e-2, schedule="cosine", warmup_steps=2, min_lr_ratio=0.1, b1=0.9, b2=0.95,
                    eps=1e-8, weight_decay=0.01, decay_exempt=True, clip_norm=1.0),
      "train": dict(steps=100, batch_size=8, seed=0),
      "stats": dict(dead_window=3),
  })


def make_config() -> config_lib.Config:
  return golden_config().updated({
      "logging.log_every": 20,  # 99, the last step, is logged too though 99 % 20 != 0
      "logging.eval_every": 0,
      "logging.progress": "none",
      "checkpoint.save_every": 40,
      "checkpoint.keep": 2,
      "checkpoint.async_save": True,  # the real path; close() waits for the writes
  })


CONFIG = make_config()
STEPS = CONFIG.train.steps
LOGGED_STEPS = [s for s in range(STEPS) if s % CONFIG.logging.log_every == 0 or s == STEPS - 1]

GOLDEN_MESSAGE = ("the step's arithmetic changed: model, init, loss or optimiser; if intended, update the golden "
                  "values and say why in the commit")


def fixed_batch(shift: int = 0) -> dict[str, np.ndarray]:
  """A batch that depends on no data source: arithmetic token ids."""
  B, T, V = CONFIG.train.batch_size, CONFIG.data.seq_len, CONFIG.data.vocab_size
  tokens = (np.arange(B * (T + 1)).reshape(B, T + 1) * 5 + np.arange(B)[:, None] ** 2 + shift) % V
  return {"inputs": tokens[:, :-1].astype(np.int32), "targets": tokens[:, 1:].astype(np.int32),
          "mask": np.ones((B, T), np.float32)}


def copy_state(state):
  # The compiled steps donate their input state; keep the fixture's intact.
  return jax.tree.map(jnp.copy, state)


def host(tree):
  return jax.tree.map(np.asarray, jax.device_get(tree))


def assert_trees_equal(a, b, what: str) -> None:
  assert jax.tree.structure(a) == jax.tree.structure(b), what
  for (path, x), y in zip(jax.tree_util.tree_flatten_with_path(host(a))[0], jax.tree.leaves(host(b))):
    assert np.array_equal(x, y), f"{what}{jax.tree_util.keystr(path)} differs"


def assert_states_equal(a, b) -> None:
  """Bitwise: a resumed run must be the uninterrupted run, not merely close to it."""
  for name in ("step", "params", "opt_state", "rng", "lens_state"):
    assert_trees_equal(getattr(a, name), getattr(b, name), f"state.{name}")


def logged_metrics(workdir) -> list[dict]:
  """metrics.jsonl without the timing keys, which differ from run to run."""
  records = read_metrics(os.path.join(workdir, "metrics.jsonl"))
  return [{k: v for k, v in r.items() if not k.startswith("perf/")} for r in records]


def checkpoint_steps(workdir) -> list[int]:
  checkpoints = Checkpoints(os.path.join(workdir, "checkpoints"), keep=10, async_save=False)
  try:
    return checkpoints.steps()
  finally:
    checkpoints.close()


@pytest.fixture(scope="module")
def runs():
  """The same config built on a one-device mesh and on the 8 fake devices."""
  assert jax.device_count() == NUM_DEVICES, "conftest must set XLA_FLAGS before jax is imported"
  config = loop.prepare(CONFIG)
  return {n: loop.build(config, mesh=parallel.make_mesh(jax.devices()[:n])) for n in (1, NUM_DEVICES)}


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
  """An uninterrupted run of CONFIG: (workdir, final state)."""
  workdir = str(tmp_path_factory.mktemp("straight"))
  return workdir, loop.train(CONFIG, workdir)


def test_the_readmes_plain_orbax_restore_gives_the_run_s_parameters_and_config(straight):
  workdir, state = straight
  readme = open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")).read()
  block = readme.split("<!-- plain-orbax-restore")[1].split("```python\n")[1].split("```")[0]
  assert len(block.strip().splitlines()) == 5, block
  namespace = {}
  exec(block.replace("runs/quickstart", workdir), namespace)  # pylint: disable=exec-used
  saved = jax.tree.leaves(jax.device_get(state.params))
  assert len(jax.tree.leaves(namespace["params"])) == len(saved)
  for got, want in zip(jax.tree.leaves(namespace["params"]), saved):
    np.testing.assert_array_equal(np.asarray(got), want)
  assert namespace["config"]["train"]["steps"] == STEPS and namespace["step"] == STEPS


# ---------------------------------------------------------------------------


# One step of golden_config() on fixed_batch() from the seed-0 init, on one
# device. Measured on x86-64 CPU with jax 0.10.2, flax 0.12.8, optax 0.2.8.
GOLDEN_LOSS = 2.1780107021331787
GOLDEN_GRAD_NORM = 2.1846535205841064
GOLDEN_SUM_SQ = 165.41692797772586  # Σ θ1²
GOLDEN_DOT_INIT = 164.9962364956086  # Σ θ0·θ1


def test_one_step_matches_golden_values(runs):
  run = runs[1]
  params0 = host(run.state.params)
  state, metrics = run.plain_step(copy_state(run.state), parallel.shard_batch(fixed_batch(), run.mesh))
  params1 = host(state.params)
  # Two checksums of θ1 that every coordinate's update moves, except the qkv
  # key bias: its gradient is zero up to rounding (softmax ignores it), and
  # Adam turns that noise into machine-dependent steps (~1e-6 here). It starts
  # at zero, so it drops out of θ0·θ1, and its squared steps vanish in Σθ1².
  sum_sq = sum(float(np.sum(np.float64(p) ** 2)) for p in jax.tree.leaves(params1))
  dot_init = sum(float(np.sum(np.float64(p0) * p1)) for p0, p1 in zip(jax.tree.leaves(params0),
                                                                     jax.tree.leaves(params1)))
  got = [float(metrics["train/loss"]), float(metrics["train/grad_norm"]), sum_sq, dot_init]
  golden = [GOLDEN_LOSS, GOLDEN_GRAD_NORM, GOLDEN_SUM_SQ, GOLDEN_DOT_INIT]
  np.testing.assert_allclose(got, golden, rtol=1e-5, err_msg=GOLDEN_MESSAGE)
  # Warmup's first step: lr * (0 + 1) / warmup_steps.
  np.testing.assert_allclose(float(metrics["train/lr"]), 1e-2 / 2, rtol=1e-6)
  assert int(state.step) == 1


def test_eight_devices_match_one_device(runs):
  results = {}
  for n, run in runs.items():
    state, history = copy_state(run.state), []
    for step in range(3):
      batch = parallel.shard_batch(run.source.batch(step, CONFIG.train.batch_size), run.mesh)
      assert batch["inputs"].addressable_shards[0].data.shape[0] == CONFIG.train.batch_size // n  # really split
      state, metrics = run.plain_step(state, batch)
      history.append([float(metrics["train/loss"]), float(metrics["train/grad_norm"])])
    results[n] = (np.array(history), host(state.params))
  (history_1, params_1), (history_8, params_8) = results[1], results[NUM_DEVICES]
  np.testing.assert_allclose(history_8, history_1, rtol=1e-5)
  # atol: Adam normalises the rounding noise of near-zero gradients (the qkv
  # key bias) into steps of up to ~1e-3 of lr; a real disagreement (a missing
  # all-reduce, a wrong batch split) moves parameters by O(lr) = 1e-2.
  for p8, p1 in zip(jax.tree.leaves(params_8), jax.tree.leaves(params_1)):
    np.testing.assert_allclose(p8, p1, rtol=1e-5, atol=5e-5)


def test_resume_from_step_10_equals_the_straight_run(straight, tmp_path):
  straight_dir, straight_state = straight
  workdir = str(tmp_path / "run")
  loop.train(CONFIG, workdir, stop_at_step=10)
  assert checkpoint_steps(workdir) == [10]
  resumed_state = loop.train(CONFIG, workdir)
  assert_states_equal(resumed_state, straight_state)
  assert logged_metrics(workdir) == logged_metrics(straight_dir)


def test_a_checkpoint_in_the_layout_before_lens_states_resumes_exactly(straight, tmp_path):
  """Checkpoints written before the lenses owned their state kept it in TrainState fields of its own
  (unit_last_active, loss_window, ...) and named no lenses in their meta: they restore and resume bit for bit."""
  straight_dir, straight_state = straight
  workdir = str(tmp_path / "run")
  state = loop.train(CONFIG, workdir, stop_at_step=10)
  config_dict = config_lib.to_dict(loop.prepare(CONFIG))
  legacy = legacy_layout(host(state))
  assert {"unit_last_active", "dead_at_last_log", "loss_window", "spike_count", "last_spike_step"} <= set(legacy)
  shutil.rmtree(os.path.join(workdir, "checkpoints", "10"))
  checkpoints = Checkpoints(os.path.join(workdir, "checkpoints"), keep=10, async_save=False)
  try:
    checkpoints.save(10, legacy, {"config": config_dict})  # the old meta: the config alone
    checkpoints.wait()
  finally:
    checkpoints.close()
  resumed_state = loop.train(CONFIG, workdir)
  assert_states_equal(resumed_state, straight_state)
  assert logged_metrics(workdir) == logged_metrics(straight_dir)


def test_resume_refuses_a_checkpoint_that_holds_other_lenses_state(tmp_path):
  config = loop.prepare(CONFIG)
  checkpoints = Checkpoints(str(tmp_path / "checkpoints"), keep=2, async_save=False)
  try:
    checkpoints.save(4, {"step": np.int32(4)}, {"config": config_lib.to_dict(config), "lenses": ["spikes"]})
    checkpoints.wait()
    with pytest.raises(InputError, match=r"the lenses with state \(checkpoint spikes, config dead_units, spikes\)"):
      checkpoints.check_compatible(config, config_lib.STATE_KEYS, ["dead_units", "spikes"])
    checkpoints.check_compatible(config, config_lib.STATE_KEYS, ["spikes"])
  finally:
    checkpoints.close()


def test_resume_refusal_names_each_differing_key_once(tmp_path):
  """The lenses' resume keys repeat keys of STATE_KEYS (model.d_ff, model.num_layers): each is named once."""
  config = loop.prepare(CONFIG)
  saved = config_lib.to_dict(dataclasses.replace(config, model=dataclasses.replace(config.model, d_ff=7)))
  checkpoints = Checkpoints(str(tmp_path / "checkpoints"), keep=2, async_save=False)
  try:
    checkpoints.save(4, {"step": np.int32(4)}, {"config": saved})
    checkpoints.wait()
    with pytest.raises(InputError) as info:
      checkpoints.check_compatible(config, config_lib.STATE_KEYS + ("model.d_ff", "model.num_layers"), [])
  finally:
    checkpoints.close()
  assert str(info.value).count("model.d_ff (checkpoint 7") == 1
  assert str(info.value).count("--config.model.d_ff=7") == 1 and "model.num_layers" not in str(info.value)


def test_tensorboard_and_metrics_log_hold_every_logged_step(straight):
  workdir, _ = straight
  events = EventAccumulator(os.path.join(workdir, "tb"), size_guidance={"scalars": 0})
  events.Reload()
  losses = events.Scalars("train/loss")
  assert [e.step for e in losses] == LOGGED_STEPS
  records = read_metrics(os.path.join(workdir, "metrics.jsonl"))
  assert [r["step"] for r in records] == LOGGED_STEPS
  # TensorBoard stores float32.
  np.testing.assert_allclose([e.value for e in losses], [r["train/loss"] for r in records], rtol=1e-6)
  assert config_lib.load_json(os.path.join(workdir, "config.json")) == loop.prepare(CONFIG)
  # Saves every 40 steps and at the end; keep=2 leaves the newest two.
  assert checkpoint_steps(workdir) == [80, STEPS]


def test_sigterm_saves_and_the_resumed_run_equals_the_straight_run(straight, tmp_path, monkeypatch):
  """SIGTERM arrives while step 37's batch is read: a checkpoint at 38, then an exact resume."""
  straight_dir, straight_state = straight
  workdir = str(tmp_path / "run")
  make_source = loop.make_source
  monkeypatch.setattr(loop, "make_source", preempted_sources(make_source, 37))
  interrupted = loop.train(CONFIG, workdir)
  assert int(interrupted.step) == 38
  assert checkpoint_steps(workdir) == [38]
  monkeypatch.setattr(loop, "make_source", make_source)
  resumed = loop.train(CONFIG, workdir)
  assert_states_equal(resumed, straight_state)
  assert logged_metrics(workdir) == logged_metrics(straight_dir)


@pytest.mark.parametrize("when", ["compiling", "final save"])
def test_sigterm_while_compiling_or_writing_the_last_checkpoint_is_a_stop_request_not_a_kill(when, tmp_path,
                                                                                            monkeypatch):
  """Outside training a handler of the test's own records SIGTERM: if it is the one that sees the signal, the
  trainer had left the signal's default action (death, the checkpoint half written) in place."""
  workdir = str(tmp_path / "run")
  config = CONFIG.updated({"train.steps": 45})  # 45: a final save after the one at 40
  received = []
  def send_sigterm_then(function):
    def wrapped(*args, **kwargs):
      os.kill(os.getpid(), signal.SIGTERM)
      return function(*args, **kwargs)
    return wrapped
  if when == "compiling":
    monkeypatch.setattr(loop, "compile_steps", send_sigterm_then(loop.compile_steps))
  else:
    final = loop.skipped_steps
    monkeypatch.setattr(loop, "skipped_steps",
                        lambda state: (send_sigterm_then(final) if int(np.max(state.step)) == 45 else final)(state))
  previous = signal.signal(signal.SIGTERM, lambda *_: received.append(True))
  try:
    state = loop.train(config, workdir)
  finally:
    signal.signal(signal.SIGTERM, previous)
  assert not received
  if when == "compiling":  # stopped before the first step: nothing to save
    assert int(state.step) == 0 and checkpoint_steps(workdir) == []
  else:
    assert int(state.step) == 45 and checkpoint_steps(workdir)[-1] == 45


def test_sigterm_on_the_command_line_exits_0_with_a_checkpoint(tmp_path):
  config_file = write_config_file(tmp_path / "config.py", CONFIG)
  workdir = str(tmp_path / "run")
  log_path = tmp_path / "sigterm_run.log"
  # Output to a file, not a pipe that nobody reads while the run goes on.
  with open(log_path, "w") as log:
    process = popen_cli("train", "--config", config_file, "--workdir", workdir, "--config.train.steps=1000000",
                        stdout=log, stderr=log)
  try:
    metrics_path = os.path.join(workdir, "metrics.jsonl")
    deadline = time.monotonic() + 240
    # The first record is written from inside the step loop, where SIGTERM is handled.
    while not (os.path.exists(metrics_path) and os.path.getsize(metrics_path) > 0):
      assert process.poll() is None, f"train exited early:\n{log_path.read_text()}"
      assert time.monotonic() < deadline, "no metrics record within 240 s"
      time.sleep(0.02)
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=120)
  finally:
    if process.poll() is None:
      process.kill()
  assert process.returncode == 0, log_path.read_text()
  steps = checkpoint_steps(workdir)
  assert len(steps) == 1 and 0 < steps[0] < 1000000, steps
  assert f"saving a checkpoint at step {steps[0]}" in log_path.read_text()
