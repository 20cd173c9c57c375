"""Multi-host runs: start-up, rank-0-only output, and gathering sharded results.

Every process runs the same program over a global mesh (:mod:`jaxregion.parallel.sharding`); each
feeds only its own rows of a batch and reads only the parameter slices its devices own.
Anything written to disk (region and importance files, exports, logs) is gathered one tensor
at a time and written by process 0; orbax checkpoints are written collectively.

Start-up, first match wins:

1. explicit ``coordinator`` / ``num_processes`` / ``process_id`` (the CLI's
   ``--coordinator HOST:PORT --num-processes N --process-id I``);
2. the environment: ``JAXREGION_COORDINATOR``, ``JAXREGION_NUM_PROCESSES``,
   ``JAXREGION_PROCESS_ID``;
3. a TPU pod slice or a SLURM job of several tasks: ``jax.distributed.initialize()``, which
   reads the cluster's own environment;
4. otherwise a single process: nothing to do.

On CPU the cross-process collectives use gloo.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

from jaxregion import tree as T
from jaxregion.errors import UserError

ENV_COORDINATOR = "JAXREGION_COORDINATOR"
ENV_NUM_PROCESSES = "JAXREGION_NUM_PROCESSES"
ENV_PROCESS_ID = "JAXREGION_PROCESS_ID"
ENV_INIT_TIMEOUT = "JAXREGION_INIT_TIMEOUT"


@dataclass(frozen=True)
class DistInfo:
    process_index: int
    process_count: int
    how: str  # "single", "explicit", "env", "tpu", "slurm"


_STATE: DistInfo | None = None


def _env_int(name: str) -> int | None:
    v = os.environ.get(name)
    if v in (None, ""):
        return None
    try:
        return int(v)
    except ValueError:
        raise UserError(f"${name}={v!r}: not an integer") from None


def detect_cluster() -> str | None:
    """``"tpu"`` on a multi-host TPU slice, ``"slurm"`` in a SLURM job of several tasks."""
    hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
    if len([h for h in hosts.split(",") if h.strip()]) > 1:
        return "tpu"
    ntasks = os.environ.get("SLURM_NTASKS") or os.environ.get("SLURM_NPROCS")
    if (
        os.environ.get("SLURM_JOB_ID")
        and ntasks
        and ntasks.isdigit()
        and int(ntasks) > 1
        and os.environ.get("SLURM_PROCID") is not None
    ):
        return "slurm"
    return None


def initialize(
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    local_device_ids: Any = None,
    auto: bool = True,
) -> DistInfo:
    """Join (or start) the multi-process run; idempotent. See the module doc for the order."""
    global _STATE
    if _STATE is not None:
        return _STATE
    how = (
        "explicit" if coordinator or num_processes is not None or process_id is not None else "env"
    )
    coordinator = coordinator or os.environ.get(ENV_COORDINATOR) or None
    num_processes = num_processes if num_processes is not None else _env_int(ENV_NUM_PROCESSES)
    process_id = process_id if process_id is not None else _env_int(ENV_PROCESS_ID)
    # Only affects the CPU backend; must be set before any backend starts.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if coordinator or (num_processes is not None and num_processes > 1):
        if not coordinator:
            raise UserError(
                f"--num-processes given without --coordinator HOST:PORT (or ${ENV_COORDINATOR})"
            )
        if ":" not in coordinator:
            raise UserError(f"--coordinator {coordinator!r}: expected HOST:PORT")
        if num_processes is None or process_id is None:
            raise UserError(
                "--coordinator needs --num-processes N and --process-id I "
                f"(or ${ENV_NUM_PROCESSES} and ${ENV_PROCESS_ID})"
            )
        if num_processes < 1 or not 0 <= process_id < num_processes:
            raise UserError(f"--process-id {process_id}: must be in [0, {num_processes})")
        if num_processes > 1:
            _join(coordinator, num_processes, process_id, local_device_ids)
        _STATE = DistInfo(process_id, num_processes, how)
        return _STATE
    cluster = detect_cluster() if auto else None
    if cluster is not None:
        jax.distributed.initialize(local_device_ids=local_device_ids)
        _STATE = DistInfo(jax.process_index(), jax.process_count(), cluster)
        return _STATE
    _STATE = DistInfo(0, 1, "single")
    return _STATE


def init_timeout() -> int:
    """Seconds to wait for the coordinator (``$JAXREGION_INIT_TIMEOUT``, default 300)."""
    v = os.environ.get(ENV_INIT_TIMEOUT, "300")
    try:
        t = int(v)
    except ValueError:
        t = 0
    if t <= 0:
        raise UserError(f"${ENV_INIT_TIMEOUT}={v!r}: must be a positive number of seconds")
    return t


def _wait_for_coordinator(coordinator: str, timeout: int) -> None:
    """Return once a TCP connection to ``coordinator`` opens; a UserError after ``timeout``."""
    host, _, port = coordinator.rpartition(":")
    try:
        port_n = int(port)
    except ValueError:
        raise UserError(f"--coordinator {coordinator!r}: expected HOST:PORT") from None
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host.strip("[]"), port_n), timeout=2):
                return
        except OSError as e:
            if time.monotonic() >= deadline:
                raise UserError(
                    f"--coordinator {coordinator}: nothing answered within {timeout} "
                    f"s ({e.strerror or e}); start process 0 first, check the "
                    f"address and port, or raise ${ENV_INIT_TIMEOUT}"
                ) from None
            time.sleep(0.5)


def _join(
    coordinator: str, num_processes: int, process_id: int, local_device_ids: Sequence[int] | None
) -> None:
    """``jax.distributed.initialize`` with a bounded wait and a message saying what failed."""
    timeout = init_timeout()
    if process_id != 0:  # jax aborts the process (no exception) when the deadline passes
        _wait_for_coordinator(coordinator, timeout)
    try:
        jax.distributed.initialize(
            coordinator,
            num_processes,
            process_id,
            local_device_ids=local_device_ids,
            initialization_timeout=timeout,
        )
    except Exception as e:  # XlaRuntimeError (DEADLINE_EXCEEDED, UNAVAILABLE, ...)
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise UserError(
            f"--coordinator {coordinator}: could not join the run within {timeout} s "
            f"({first}); start process 0 first, check the address and port, or raise "
            f"${ENV_INIT_TIMEOUT}"
        ) from None


def shutdown() -> None:
    global _STATE
    if _STATE is not None and _STATE.process_count > 1:
        jax.distributed.shutdown()
    _STATE = None


def process_index() -> int:
    return jax.process_index()


def process_count() -> int:
    return jax.process_count()


def is_main() -> bool:
    """True on the process that logs and writes files (process 0)."""
    return jax.process_index() == 0


def barrier(name: str = "jaxregion") -> None:
    """Wait for every process (no-op on one)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


# --- gathering -----------------------------------------------------------------------------
def fetch(x: Any) -> np.ndarray:
    """The whole of one (possibly sharded, possibly multi-host) array as host numpy.

    Collective when ``x`` spans processes: every process must call it, in the same order."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        if x.is_fully_replicated:
            return np.asarray(x.addressable_data(0))
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(jax.device_get(x))


def host_tree(tree: Any) -> Any:
    """:func:`fetch` on every leaf, one tensor at a time (collective)."""
    return jax.tree.map(fetch, tree)


def write_on_main(write: Callable[..., Any], path: str, tree: Any, *args: Any, **kw: Any) -> None:
    """Gather ``tree`` (one tensor at a time) and let process 0 call
    ``write(path, host_tree, *args, **kw)``; every process returns after the file exists."""
    gathered = host_tree(tree)
    if is_main():
        write(path, gathered, *args, **kw)
    del gathered
    barrier(f"write:{path}")


def sum_over_processes(x: Any) -> Any:
    """Host scalars/arrays summed over processes (e.g. token counts each process saw)."""
    if jax.process_count() == 1:
        return x
    g = multihost_utils.process_allgather(np.asarray(x))
    return np.sum(g, axis=0)


def flat_host(tree: Any) -> dict[str, np.ndarray]:
    return {n: fetch(x) for n, x in T.flatten(tree).items()}
