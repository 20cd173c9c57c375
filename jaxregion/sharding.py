"""Meshes and shardings. Consulted by hf, evaluate, importance and train; never the reverse.

The default mesh puts every device on the ``data`` axis: batches are split, params replicated.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")


def make_mesh(data: int = -1, fsdp: int = 1, tensor: int = 1, devices=None) -> Mesh:
    devices = list(jax.devices() if devices is None else devices)
    n = len(devices)
    sizes = [data, fsdp, tensor]
    if sizes.count(-1) > 1:
        raise ValueError("at most one mesh axis may be -1")
    known = int(np.prod([s for s in sizes if s != -1]))
    sizes = [n // known if s == -1 else s for s in sizes]
    if int(np.prod(sizes)) != n:
        from jaxregion.errors import UserError

        raise UserError(f"mesh {dict(zip(AXES, sizes))} needs {np.prod(sizes)} devices, have {n}")
    return Mesh(np.asarray(devices).reshape(sizes), AXES)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_multiple(mesh: Mesh) -> int:
    """Batches must be a multiple of this many windows."""
    return int(np.prod([mesh.shape[a] for a in BATCH_AXES]))


def put_batch(batch: np.ndarray, mesh: Mesh) -> jax.Array:
    """Place a host batch (this process's rows) split over the batch axes."""
    sharding = batch_sharding(mesh)
    if jax.process_count() == 1:
        return jax.device_put(batch, sharding)
    return jax.make_array_from_process_local_data(sharding, batch)
