"""Device mesh and shardings."""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def make_mesh(devices=None) -> Mesh:
  devices = jax.devices() if devices is None else devices
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over the data axis; never replicated."""
  return NamedSharding(mesh, P(DATA_AXIS))


def shard_batch(local_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Assembles the global batch from this process's rows."""
  sharding = batch_sharding(mesh)
  process_count = jax.process_count()

  def to_global(local):
    global_shape = (local.shape[0] * process_count,) + local.shape[1:]
    return jax.make_array_from_process_local_data(sharding, local, global_shape)

  return {k: to_global(v) for k, v in local_batch.items()}
