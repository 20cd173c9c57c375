"""Exact top-k of uint32 order keys, and the per-tensor random keys: the one pick shared by
every selection (elements in :mod:`select`, rows/columns/tensors/layers in
:mod:`granularity`).

A float's order key maps it to a uint32 that sorts the same way; the k-th largest key is
found by a radix search over the key bits (int32 counts per pass), then exactly k elements
are taken, ties broken by position. A random selection is the top-k of random keys drawn
per tensor from (seed, crc32 of its HF name), so a tensor's draw does not depend on which
other tensors are in scope.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

_INT32_MAX = 2**31 - 1


def name_key(seed: int, name: str) -> jax.Array:
    """The PRNG key of tensor ``name``'s random draw under ``seed``."""
    return jax.random.fold_in(jax.random.PRNGKey(int(seed)), zlib.crc32(name.encode()) & 0x7FFFFFFF)


# --- keys ------------------------------------------------------------------------------
def order_key(x: jax.Array) -> jax.Array:
    """uint32 whose unsigned order equals the float order of ``x`` (-0.0 folded to +0.0)."""
    x = jnp.where(x == 0, jnp.float32(0), x.astype(jnp.float32))
    b = jax.lax.bitcast_convert_type(x, jnp.uint32)
    return jnp.where((b >> 31) == 1, ~b, b | jnp.uint32(0x80000000))


@partial(jax.jit, static_argnames=("shape",))
def random_keys(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    return jax.random.bits(key, shape, jnp.uint32)


# --- exact k-th largest and the pick -----------------------------------------------------
@jax.jit
def _radix_threshold(keys: tuple[jax.Array, ...], k: jax.Array) -> jax.Array:
    """Largest t with count(key >= t) >= k, i.e. the k-th largest key (int32 counts)."""

    def body(i: jax.Array, t: jax.Array) -> jax.Array:
        cand = t | (jnp.uint32(1) << (31 - i).astype(jnp.uint32))
        c = sum(jnp.sum(kk >= cand, dtype=jnp.int32) for kk in keys)
        return jnp.where(c >= k, cand, t)

    return jax.lax.fori_loop(0, 32, body, jnp.uint32(0))


@jax.jit
def _counts_ge(keys: tuple[jax.Array, ...], t: jax.Array) -> jax.Array:
    return jnp.stack([jnp.sum(kk >= t, dtype=jnp.int32) for kk in keys])


@jax.jit
def _gt_eq(keys: tuple[jax.Array, ...], t: jax.Array) -> tuple[jax.Array, jax.Array]:
    gt = jnp.stack([jnp.sum(kk > t, dtype=jnp.int32) for kk in keys])
    eq = jnp.stack([jnp.sum(kk == t, dtype=jnp.int32) for kk in keys])
    return gt, eq


@partial(jax.jit, static_argnames=("mode",))
def _pick(key: jax.Array, t: jax.Array, need: jax.Array, mode: int) -> jax.Array:
    if mode == 0:  # no ties at the threshold taken from this tensor
        return key > t
    if mode == 1:  # all of them
        return key >= t
    eq = key == t
    rank = jnp.cumsum(eq.ravel(), dtype=jnp.int32).reshape(key.shape)
    return (key > t) | (eq & (rank <= need))


def _threshold(keys: tuple[jax.Array, ...], k: int) -> jax.Array:
    n = sum(int(np.prod(kk.shape)) for kk in keys)
    if n <= _INT32_MAX:
        return _radix_threshold(keys, jnp.int32(k))
    t = 0  # counts may overflow int32: sum per-tensor counts on the host in int64
    for bit in range(31, -1, -1):
        cand = t | (1 << bit)
        if int(np.asarray(_counts_ge(keys, jnp.uint32(cand))).astype(np.int64).sum()) >= k:
            t = cand
    return jnp.uint32(t)


def top_k_unit(keys: Sequence[jax.Array], k: int) -> list[jax.Array]:
    """Bool masks selecting exactly the k largest keys over all arrays of one unit.

    Ties at the threshold go to the lowest flat index, earlier arrays first."""
    keys = tuple(keys)
    t = _threshold(keys, k)
    gt, eq = (np.asarray(a).astype(np.int64) for a in _gt_eq(keys, t))
    remaining = k - int(gt.sum())
    out = []
    for kk, e in zip(keys, eq):
        need = max(0, min(remaining, int(e)))
        mode = 0 if need == 0 else 1 if need == e else 2
        out.append(_pick(kk, t, jnp.int32(min(need, _INT32_MAX)), mode))
        remaining -= need
    return out


