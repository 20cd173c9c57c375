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
from collections.abc import Callable, Iterable, Iterator, Sequence
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

_INT32_MAX = 2**31 - 1
_BINS = 1 << 16


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
def _counts_gt(keys: tuple[jax.Array, ...], t: jax.Array) -> jax.Array:
    return jnp.stack([jnp.sum(kk > t, dtype=jnp.int32) for kk in keys])


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


def _take(keys_of: Iterable[jax.Array], t: jax.Array, remaining: int) -> Iterator[jax.Array]:
    """The pick of each array in turn: keys above ``t``, plus its lowest-index ties at ``t``
    while ``remaining`` ties are still to take (earlier arrays first)."""
    for kk in keys_of:
        e = int(np.asarray(_count_eq(kk, t)))
        need = max(0, min(remaining, e))
        mode = 0 if need == 0 else 1 if need == e else 2
        yield _pick(kk, t, jnp.int32(min(need, _INT32_MAX)), mode)
        remaining -= need


def top_k_unit(keys: Sequence[jax.Array], k: int) -> list[jax.Array]:
    """Bool masks selecting exactly the k largest keys over all arrays of one unit.

    Ties at the threshold go to the lowest flat index, earlier arrays first."""
    keys = tuple(keys)
    t = _threshold(keys, k)
    gt = np.asarray(_counts_gt(keys, t)).astype(np.int64)
    return list(_take(keys, t, k - int(gt.sum())))


# --- the same pick over keys made on demand -----------------------------------------------
@jax.jit
def _count_eq(key: jax.Array, t: jax.Array) -> jax.Array:
    return jnp.sum(key == t, dtype=jnp.int32)


@jax.jit
def _hist_high(key: jax.Array) -> jax.Array:
    return jnp.bincount((key >> 16).astype(jnp.int32).ravel(), length=_BINS)


@jax.jit
def _hist_low(key: jax.Array, high: jax.Array) -> jax.Array:
    """Histogram of the low 16 bits of the keys whose high 16 bits are ``high``."""
    inside = (key >> 16) == high
    idx = jnp.where(inside, (key & 0xFFFF).astype(jnp.int32), _BINS).ravel()
    return jnp.bincount(idx, length=_BINS + 1)[:_BINS]


def _last_reaching(hist: np.ndarray, k: int) -> tuple[int, int]:
    """(largest bin b with count(bins >= b) >= k, count(bins > b))."""
    at_or_above = np.cumsum(hist[::-1])[::-1]
    b = int(np.nonzero(at_or_above >= k)[0][-1])
    return b, int(at_or_above[b] - hist[b])


def top_k_stream(key_fns: Sequence[Callable[[], jax.Array]], k: int) -> Iterator[jax.Array]:
    """:func:`top_k_unit`'s masks (bitwise the same), for a unit too big to hold: each
    array's keys are made three times by its ``key_fns`` entry and dropped after use.

    Pass 1 histograms the keys' high 16 bits and finds the bin of the k-th largest key;
    pass 2 histograms the low 16 bits inside that bin, which gives that key exactly; pass 3
    picks, array by array (counts summed on the host in int64, so no overflow)."""
    high = np.zeros(_BINS, np.int64)
    for f in key_fns:
        high += np.asarray(_hist_high(f()))
    b, above_b = _last_reaching(high, k)
    low = np.zeros(_BINS, np.int64)
    for f in key_fns:
        low += np.asarray(_hist_low(f(), jnp.uint32(b)))
    lo, above_t = _last_reaching(low, k - above_b)
    t = jnp.uint32((b << 16) | lo)
    return _take((f() for f in key_fns), t, k - above_b - above_t)
