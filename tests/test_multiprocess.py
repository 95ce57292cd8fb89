"""Two real processes on localhost, joined by `jax.distributed` (CPU collectives through gloo), train like one.

Each process is `lensjax train` with JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES
/ JAX_PROCESS_ID set and 2 fake CPU devices, so the mesh has 4 devices on
2 processes. The run must match the single-process run of the same config
(8 devices, in this process) to float tolerance; only process 0 writes
metrics.jsonl and TensorBoard; each process writes its share of the Orbax
checkpoint.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from conftest import REPO, write_config_file
from test_faults import STEPS, faults_config, finished_state
from test_train import host
from lensjax import parallel
from lensjax.errors import InputError
from lensjax.io.metrics_log import read_metrics
from lensjax.train import loop

NUM_PROCESSES = 2
DEVICES_PER_PROCESS = 2
# Four devices reduce gradients in another order than eight. Measured after 80 steps (data parallel / FSDP):
# losses within 2e-6 / 5e-6 (relative), gradient norms within 3e-5 / 8e-5, parameters within 8e-5 / 1.4e-4
# (the key bias aside, see without_key_bias). A missing all-reduce or a wrong batch split moves the loss by
# 1e-2 and parameters by O(lr) = 1e-2 within a step or two.
LOSS_RTOL = 3e-5
GRAD_NORM_RTOL = 5e-4
PARAMS_ATOL = 1e-3


@pytest.fixture(scope="module")
def single_process(tmp_path_factory):
  """The same config trained by this one process on its 8 devices: (workdir, final state on the host)."""
  workdir = str(tmp_path_factory.mktemp("single"))
  return workdir, host(loop.train(faults_config(), workdir))


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def start_two_processes(workdir, config_file, logs, *overrides: str) -> tuple[list, list]:
  """Starts `lensjax train` as process 0 and 1 of one jax.distributed job; returns the processes and their logs."""
  flags = re.sub(r"--xla_force_host_platform_device_count=\S*", "", os.environ.get("XLA_FLAGS", ""))
  env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{free_port()}",
             JAX_NUM_PROCESSES=str(NUM_PROCESSES),
             XLA_FLAGS=f"{flags} --xla_force_host_platform_device_count={DEVICES_PER_PROCESS}".strip())
  logs.mkdir(exist_ok=True)
  paths = [logs / f"process_{i}.log" for i in range(NUM_PROCESSES)]
  processes = []
  for i, path in enumerate(paths):
    with open(path, "w") as log:
      processes.append(subprocess.Popen(
          [sys.executable, "-m", "lensjax", "train", "--config", config_file, "--workdir", workdir, *overrides],
          cwd=REPO, env=dict(env, JAX_PROCESS_ID=str(i)), stdout=log, stderr=subprocess.STDOUT))
  return processes, paths


def finish(processes, paths, timeout: float = 400) -> list[str]:
  """Waits for both processes to exit 0; returns their outputs. A failure stops both."""
  deadline = time.monotonic() + timeout
  try:
    # A process that fails leaves the other waiting in a collective: stop both at the first failure.
    while any(p.poll() is None for p in processes):
      assert not any(p.poll() not in (None, 0) for p in processes), "a process failed"
      assert time.monotonic() < deadline, f"the two processes did not finish within {timeout} s"
      time.sleep(0.1)
  except AssertionError as e:
    outputs = "\n".join(f"--- process {i}:\n{path.read_text()[-3000:]}" for i, path in enumerate(paths))
    raise AssertionError(f"{e}\n{outputs}") from None
  finally:
    for p in processes:
      if p.poll() is None:
        p.kill()
        p.wait()
  outputs = [path.read_text() for path in paths]
  for i, (p, output) in enumerate(zip(processes, outputs)):
    assert p.returncode == 0, f"process {i} exited with {p.returncode}:\n{output[-3000:]}"
  return outputs


@pytest.fixture(scope="module")
def fsdp_run(tmp_path_factory):
  """The config trained by two processes with the state split over all 4 devices: (workdir, outputs)."""
  base = tmp_path_factory.mktemp("two_processes_fsdp")
  workdir = str(base / "run")
  config_file = write_config_file(base / "faults.py", faults_config())
  outputs = finish(*start_two_processes(workdir, config_file, base / "logs", "--config.checkpoint.save_every=40",
                                        "--config.parallel.fsdp=4"))
  return workdir, outputs


@pytest.fixture(scope="module")
def preempted_run(tmp_path_factory):
  """Data parallel over two processes, stopped by a SIGTERM to process 1 alone, then resumed by the same command.

  Returns `(workdir, outputs of the first start, outputs of the resumed start, checkpoint steps after the stop)`.
  Logging every step (the same update, see test_train) slows the loop enough to be caught mid-run.
  """
  base = tmp_path_factory.mktemp("two_processes_preempted")
  workdir = str(base / "run")
  config_file = write_config_file(base / "faults.py", faults_config())
  overrides = ("--config.logging.log_every=1",)
  processes, paths = start_two_processes(workdir, config_file, base / "logs", *overrides)
  metrics_path = os.path.join(workdir, "metrics.jsonl")
  records = lambda: len(read_metrics(metrics_path)) if os.path.exists(metrics_path) else 0
  try:
    deadline = time.monotonic() + 300
    while records() < 2:
      assert all(p.poll() is None for p in processes), "\n".join(path.read_text()[-2000:] for path in paths)
      assert time.monotonic() < deadline, "no metrics record within 300 s"
      time.sleep(0.05)
    logged = records()
    processes[1].send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 60
    while records() < logged + 2 and processes[0].poll() is None and time.monotonic() < deadline:
      time.sleep(0.05)
    if processes[0].poll() is None:
      processes[0].send_signal(signal.SIGTERM)
  except BaseException:
    for p in processes:
      p.kill()
    raise
  first = finish(processes, paths, timeout=120)
  stopped_at = sorted(int(name) for name in os.listdir(os.path.join(workdir, "checkpoints")) if name.isdigit())
  resumed = finish(*start_two_processes(workdir, config_file, base / "logs_resumed", *overrides))
  return workdir, first, resumed, stopped_at


@pytest.mark.parametrize("variant", ["data_parallel_preempted", "fsdp_across_processes"])
def test_two_processes_train_like_one(variant, single_process, request):
  """data_parallel_preempted: each process holds the whole state, the batch is split over all 4 devices, and
  the run was stopped by a SIGTERM and resumed on the way (from a checkpoint both processes wrote).

  fsdp_across_processes: parameters and optimiser state are split over the 4 devices of both
  processes, so neither process holds a whole parameter and the checkpoint is
  complete only if both wrote their shards.
  """
  single_dir, single_state = single_process
  if variant == "fsdp_across_processes":
    workdir, outputs = request.getfixturevalue("fsdp_run")
    checkpoint_steps, starts = (40, STEPS), 1
  else:
    workdir, _, outputs, stopped_at = request.getfixturevalue("preempted_run")
    checkpoint_steps, starts = (*stopped_at, STEPS), 2
  assert f"done at step {STEPS}" in outputs[0] and "device cpu x4" in outputs[0], outputs[0]
  assert "done at step" not in outputs[1]  # process 1 logs nothing of its own

  # Process 0 alone wrote the logs: each logged step once, one TensorBoard event file per start.
  records = read_metrics(os.path.join(workdir, "metrics.jsonl"))
  log_every = 1 if variant != "fsdp_across_processes" else faults_config().logging.log_every
  assert [r["step"] for r in records] == [s for s in range(STEPS) if s % log_every == 0 or s == STEPS - 1]
  assert len([f for f in os.listdir(os.path.join(workdir, "tb")) if "tfevents" in f]) == starts
  single_records = read_metrics(os.path.join(single_dir, "metrics.jsonl"))
  ours = {r["step"]: r for r in records}
  np.testing.assert_allclose([ours[r["step"]]["train/loss"] for r in single_records],
                             [r["train/loss"] for r in single_records], rtol=LOSS_RTOL)
  np.testing.assert_allclose([ours[r["step"]]["train/grad_norm"] for r in single_records],
                             [r["train/grad_norm"] for r in single_records], rtol=GRAD_NORM_RTOL)

  # Both processes wrote their share of each checkpoint, and together they restore (into 8 devices here).
  for step in checkpoint_steps:
    state_dir = os.path.join(workdir, "checkpoints", str(step), "state")
    assert {f"ocdbt.process_{i}" for i in range(NUM_PROCESSES)} <= set(os.listdir(state_dir)), os.listdir(state_dir)
  state = finished_state(workdir)
  assert int(state.step) == STEPS
  ours, single = without_key_bias(state.params), without_key_bias(single_state.params)
  for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(ours)[0], jax.tree.leaves(single)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=PARAMS_ATOL, err_msg=jax.tree_util.keystr(path))


def without_key_bias(params):
  """The parameters with the attention key bias zeroed.

  Softmax ignores the key bias, so its gradient is rounding noise that Adam
  turns into steps of up to lr: it drifts apart between any two device counts
  (1e-3 after 80 steps here) without changing the function.
  """
  params = jax.tree.map(np.array, params)
  for name, layer in params.items():
    if name.startswith("layer_"):
      layer["attn"]["qkv"]["bias"][1] = 0.0
  return params


def test_sigterm_stops_both_processes_at_one_step_and_the_same_command_resumes(preempted_run):
  """SIGTERM reaches process 1 alone; process 0 hears of it only through jax.distributed.

  A flag per process would stop process 1 at once and leave process 0 waiting
  in the next step's collective, for ever. Both must stop at one step, write
  one checkpoint together and exit 0 (process 0 gets its own SIGTERM only if it
  is still training two logged steps later); the same command then finishes
  the run, every step logged once (that it ends where one process would, see
  test_two_processes_train_like_one[data_parallel_preempted]).
  """
  workdir, first, resumed, stopped_at = preempted_run
  assert len(stopped_at) == 1 and 0 < stopped_at[0] < STEPS, stopped_at
  assert f"SIGTERM: saving a checkpoint at step {stopped_at[0]}" in first[0], first[0]
  assert f"resuming from the checkpoint at step {stopped_at[0]} " in resumed[0], resumed[0]
  assert [r["step"] for r in read_metrics(os.path.join(workdir, "metrics.jsonl"))] == list(range(STEPS))


@pytest.mark.parametrize("environ, expected", [
    ({}, None),
    ({"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234", "JAX_NUM_PROCESSES": "4", "JAX_PROCESS_ID": "2"},
     {"coordinator_address": "10.0.0.1:1234", "num_processes": 4, "process_id": 2}),
    ({"LENSJAX_COORDINATOR": "h:1", "LENSJAX_NUM_PROCESSES": "2", "LENSJAX_PROCESS_ID": "1"},
     {"coordinator_address": "h:1", "num_processes": 2, "process_id": 1}),
    # JAX's names win over the older ones.
    ({"JAX_COORDINATOR_ADDRESS": "a:1", "LENSJAX_COORDINATOR": "b:2", "JAX_NUM_PROCESSES": "2",
      "JAX_PROCESS_ID": "0"}, {"coordinator_address": "a:1", "num_processes": 2, "process_id": 0}),
    ({"LENSJAX_COORDINATOR": "auto"}, {}),
    ({"SLURM_NTASKS": "8"}, {}), ({"SLURM_NTASKS": "1"}, None), ({"OMPI_COMM_WORLD_SIZE": "2"}, {}),
    ({"TPU_WORKER_HOSTNAMES": "w0,w1"}, {}),
])
def test_the_environment_chooses_how_jax_distributed_starts(environ, expected):
  assert parallel.distributed_settings(environ) == expected


def test_an_incomplete_explicit_setting_is_one_sentence():
  with pytest.raises(InputError, match="JAX_COORDINATOR_ADDRESS=h:1 needs JAX_NUM_PROCESSES .* and JAX_PROCESS_ID"):
    parallel.distributed_settings({"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_PROCESS_ID": "0"})
