"""Coarse regions: whole rows, columns, tensors or layers, chosen from element scores.

A coarser region is still stored as an element mask (so eval, train and PyTorch users apply
it unchanged); only its metadata says ``granularity``. The rules:

``row`` / ``column``
    Per tensor, exactly ``k = max(1, floor(ratio * n_lines))`` rows (output features) or
    columns (input features) are taken, ranked by the sum of the element values along the
    line (values = Σ_lang |score|, so this is the sum of |score|). Which axis holds the input
    features is *data*: ``in_axes`` maps HF name -> axis (a family's roles table supplies
    it; the default, for ``[out, in]`` linear weights, is the last axis). 1-D leaves (norms,
    biases) have one element per line, so row = column = element for them.
``tensor`` / ``layer``
    Exactly ``max(1, floor(ratio * n_units))`` whole tensors (or transformer layers) of the
    region's universe, ranked by mean element value (a mean, so that big matrices do not win
    by size alone).

Ranking uses the same exact radix select as element regions (ties: lower index first);
random regions draw uint32 keys per line / unit from ``(seed, crc32(name))`` or ``seed``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from jaxregion.configs import GRANULARITIES
from jaxregion.errors import UserError
from jaxregion.regions.base import k_for, layer_index
from jaxregion.regions.topk import name_key, order_key, top_k_unit

ValueFn = Callable[[str], jax.Array]


def check_granularity(granularity: str) -> str:
    if granularity not in GRANULARITIES:
        raise UserError(f"granularity {granularity!r} is unknown; use one of "
                        f"{', '.join(GRANULARITIES)}")
    return granularity


def line_axis(shape: Sequence[int], granularity: str, in_axis: int | None) -> int | None:
    """The axis a row/column selection indexes (None: a 1-D leaf, lines are elements)."""
    nd = len(shape)
    if nd < 2:
        return None
    if nd > 2:
        raise UserError(f"granularity {granularity}: a {nd}-D tensor has no rows/columns; "
                        "use element, tensor or layer granularity")
    ax_in = (nd - 1 if in_axis is None else int(in_axis)) % nd
    return ax_in if granularity == "column" else 1 - ax_in


@partial(jax.jit, static_argnames=("axis",))
def _line_sums(values: jax.Array, axis: int | None) -> jax.Array:
    v = values.astype(jnp.float32)
    if axis is None:
        return v.ravel()
    return jnp.sum(v, axis=1 - axis)


@jax.jit
def _mean(values: jax.Array) -> tuple[jax.Array, jax.Array]:
    v = values.astype(jnp.float32)
    return jnp.sum(v), jnp.asarray(v.size, jnp.float32)


def _expand(sel: jax.Array, shape: tuple[int, ...], axis: int | None) -> jax.Array:
    if axis is None:
        return sel.reshape(shape)
    return jnp.broadcast_to(jnp.expand_dims(sel, 1 - axis), shape)


def _keys(vals: jax.Array, largest: bool) -> jax.Array:
    k = order_key(vals)
    return k if largest else ~k


def _pick(keys: jax.Array, ratio: float) -> jax.Array:
    return top_k_unit([keys], k_for(ratio, int(keys.size)))[0]


def select_lines(names: Sequence[str], shapes: Mapping[str, tuple[int, ...]], ratio: float,
                 granularity: str, values: ValueFn | None = None, largest: bool = True,
                 seed: int = 0, in_axes: Mapping[str, int] | None = None
                 ) -> dict[str, jax.Array]:
    """``{name: bool mask}`` taking exactly k rows/columns per tensor.

    ``values(name)``: non-negative element values (None = uniformly random lines from
    ``seed``); ``largest=False`` takes the lowest-valued lines (the bottom control)."""
    in_axes = in_axes or {}
    out = {}
    for n in names:
        shape = tuple(shapes[n])
        axis = line_axis(shape, granularity, in_axes.get(n))
        n_lines = int(np.prod(shape)) if axis is None else shape[axis]
        if values is None:
            keys = jax.random.bits(name_key(seed, n), (n_lines,), jnp.uint32)
        else:
            keys = _keys(_line_sums(jnp.asarray(values(n)), axis), largest)
        out[n] = _expand(_pick(keys, ratio), shape, axis)
    return out


def select_units(names: Sequence[str], shapes: Mapping[str, tuple[int, ...]], ratio: float,
                 granularity: str, values: ValueFn | None = None, largest: bool = True,
                 seed: int = 0) -> dict[str, jax.Array]:
    """``{name: bool mask}`` taking exactly k whole tensors or layers of ``names``."""
    if granularity == "tensor":
        groups = [[n] for n in names]
    else:
        by_layer: dict[int, list[str]] = {}
        for n in names:
            li = layer_index(n)
            if li is None:
                raise UserError(f"granularity layer: parameter {n!r} is in no transformer layer; "
                                "narrow --include to the layers or use tensor granularity")
            by_layer.setdefault(li, []).append(n)
        groups = [by_layer[i] for i in sorted(by_layer)]
    if values is None:
        keys = jax.random.bits(jax.random.PRNGKey(int(seed)), (len(groups),), jnp.uint32)
    else:
        means = []
        for g in groups:
            s, c = zip(*(_mean(jnp.asarray(values(n))) for n in g))
            means.append(sum(s) / sum(c))
        keys = _keys(jnp.stack(means), largest)
    sel = np.asarray(_pick(keys, ratio))
    return {n: jnp.full(tuple(shapes[n]), bool(sel[i]), bool)
            for i, g in enumerate(groups) for n in g}


def select_coarse(names: Sequence[str], shapes: Mapping[str, tuple[int, ...]], ratio: float,
                  granularity: str, values: ValueFn | None = None, largest: bool = True,
                  seed: int = 0, in_axes: Mapping[str, int] | None = None
                  ) -> dict[str, jax.Array]:
    """Row, column, tensor or layer selection (see the module doc)."""
    check_granularity(granularity)
    if granularity in ("row", "column"):
        return select_lines(names, shapes, ratio, granularity, values, largest, seed, in_axes)
    if granularity in ("tensor", "layer"):
        return select_units(names, shapes, ratio, granularity, values, largest, seed)
    raise UserError("select_coarse: element granularity is handled by regions.select")


def line_counts(mask: jax.Array, granularity: str, in_axis: int | None = None) -> int:
    """How many whole rows/columns ``mask`` selects (all elements of the line set)."""
    m = np.asarray(mask, bool)
    axis = line_axis(m.shape, granularity, in_axis)
    if axis is None:
        return int(m.sum())
    return int(np.all(m, axis=1 - axis).sum())
