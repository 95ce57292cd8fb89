"""Multi-host initialisation, the device mesh and shardings.

The mesh has two axes: `data` (pure data parallelism) and `fsdp` (data
parallelism whose parameters and optimiser state are also split across the
axis, ZeRO-3 style). The batch is split over both axes, never replicated.
With `fsdp = 1` every device holds the whole state.
"""

from __future__ import annotations

import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from lensjax.errors import InputError

DATA_AXIS = "data"
FSDP_AXIS = "fsdp"
BATCH_AXES = (DATA_AXIS, FSDP_AXIS)

# Explicit multi-process settings, JAX's own names (jax.distributed reads JAX_COORDINATOR_ADDRESS itself; the
# other two are the usual companions). SLURM, Open MPI and TPU VMs need none: JAX detects them.
ENV_COORDINATOR, ENV_NUM_PROCESSES, ENV_PROCESS_ID = "JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"
# lensjax's older names, still read when JAX's are absent; LENSJAX_COORDINATOR=auto asks JAX to detect the
# cluster where lensjax would not start it by itself (a Cloud TPU VM slice seen from one worker).
ALIASES = {ENV_COORDINATOR: "LENSJAX_COORDINATOR", ENV_NUM_PROCESSES: "LENSJAX_NUM_PROCESSES",
           ENV_PROCESS_ID: "LENSJAX_PROCESS_ID"}


def distributed_settings(environ) -> dict | None:
  """The keyword arguments of `jax.distributed.initialize` this environment asks for ({} = let JAX detect the
  cluster), or None for a single process. InputError for an incomplete explicit setting."""
  value = lambda name: environ.get(name) or environ.get(ALIASES[name])
  coordinator = value(ENV_COORDINATOR)
  if coordinator == "auto":
    return {}
  if coordinator:
    try:
      return dict(coordinator_address=coordinator, num_processes=int(value(ENV_NUM_PROCESSES)),
                  process_id=int(value(ENV_PROCESS_ID)))
    except (TypeError, ValueError):
      raise InputError(f"{ENV_COORDINATOR}={coordinator} needs {ENV_NUM_PROCESSES} (the number of processes) and "
                       f"{ENV_PROCESS_ID} (this one's, 0 to N-1) as integers; set both.") from None
  if int(environ.get("SLURM_NTASKS", "1")) > 1 or environ.get("TPU_WORKER_HOSTNAMES", "").count(",") > 0 \
      or int(environ.get("OMPI_COMM_WORLD_SIZE", "1")) > 1:
    return {}
  return None


def initialize_distributed() -> None:
  """Starts `jax.distributed` when this process is one of several (`distributed_settings`); a single process does
  nothing."""
  settings = distributed_settings(os.environ)
  if settings is None:
    return
  if settings and os.environ.get("JAX_PLATFORMS", "") == "cpu":
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU processes exchange gradients through gloo
  jax.distributed.initialize(**settings)


def wait_for_all_processes(name: str, timeout_s: float = 3600.0) -> None:
  """Blocks until every process of a jax.distributed job gets here; returns at once without one.

  A barrier of the coordination service, not a collective: processes may
  arrive minutes apart (one compiled a step, another read it from the
  compilation cache), and the first CPU collective (gloo) of a group gives up
  when a peer is more than 30 s late.
  """
  if jax.distributed.is_initialized() and jax.process_count() > 1:
    import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
    ocp.multihost.get_barrier_sync_fn()(key=f"lensjax:{name}", timeout_ms=int(timeout_s * 1000))


def make_mesh(devices=None, fsdp: int = 1) -> Mesh:
  devices = np.asarray(jax.devices() if devices is None else devices)
  return Mesh(devices.reshape(devices.size // fsdp, fsdp), BATCH_AXES)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over every device of the mesh."""
  return NamedSharding(mesh, P(BATCH_AXES))


def member_batch_sharding(mesh: Mesh) -> NamedSharding:
  """An ensemble's batches [N, B, ...]: the member axis on every device, the batch axis split as usual."""
  return NamedSharding(mesh, P(None, BATCH_AXES))


def fsdp_sharding(mesh: Mesh, shape: tuple[int, ...]) -> NamedSharding:
  """Splits the largest axis divisible by the fsdp size; small or odd leaves stay whole."""
  size = mesh.shape[FSDP_AXIS]
  candidates = [(n, axis) for axis, n in enumerate(shape) if size > 1 and n % size == 0]
  if not candidates:
    return replicated(mesh)
  _, axis = max(candidates)
  spec = [None] * len(shape)
  spec[axis] = FSDP_AXIS
  return NamedSharding(mesh, P(*spec))


def state_shardings(mesh: Mesh, abstract_state):
  """Sharding of every leaf of a (shape-only) train state."""
  return jax.tree.map(lambda x: fsdp_sharding(mesh, x.shape), abstract_state)


def shard_batch(local_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Assembles the global batch from this process's rows."""
  sharding = batch_sharding(mesh)
  process_count = jax.process_count()

  def to_global(local):
    global_shape = (local.shape[0] * process_count,) + local.shape[1:]
    return jax.make_array_from_process_local_data(sharding, local, global_shape)

  return {k: to_global(v) for k, v in local_batch.items()}


def shard_member_batch(local_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """The global [N, B, ...] batch of an ensemble from this process's rows [N, B_local, ...]."""
  sharding = member_batch_sharding(mesh)
  process_count = jax.process_count()

  def to_global(local):
    global_shape = (local.shape[0], local.shape[1] * process_count) + local.shape[2:]
    return jax.make_array_from_process_local_data(sharding, local, global_shape)

  return {k: to_global(v) for k, v in local_batch.items()}
