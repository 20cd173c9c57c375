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
``expert``
    Whole routed experts of a mixture of experts (each its slices of the fused expert
    tensors and its router row, found by the roles' ``expert_axis``), ranked by summed
    element value or by routing share, ``max(1, floor(ratio * experts))`` per layer
    (``per-layer`` scope) or of all layers' experts (``global``); every other tensor of the
    universe is left out.

Ranking uses the same exact radix select as element regions (ties: lower index first);
random regions draw uint32 keys per line / unit from ``(seed, crc32(name))`` or ``seed``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxregion.errors import UserError
from jaxregion.names import GRANULARITIES
from jaxregion.regions.base import k_for, layer_index, roles_for
from jaxregion.regions.topk import name_key, order_key, top_k_unit

ValueFn = Callable[[str], jax.Array]


def check_granularity(granularity: str) -> str:
    if granularity not in GRANULARITIES:
        raise UserError(
            f"granularity {granularity!r} is unknown; use one of {', '.join(GRANULARITIES)}"
        )
    return granularity


def line_axis(shape: Sequence[int], granularity: str, in_axis: int | None) -> int | None:
    """The axis a row/column selection indexes (None: a 1-D leaf, lines are elements)."""
    nd = len(shape)
    if nd < 2:
        return None
    if nd > 2:
        raise UserError(
            f"granularity {granularity}: a {nd}-D tensor has no rows/columns; "
            "use element, tensor or layer granularity"
        )
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


def select_lines(
    names: Sequence[str],
    shapes: Mapping[str, tuple[int, ...]],
    ratio: float,
    granularity: str,
    values: ValueFn | None = None,
    largest: bool = True,
    seed: int = 0,
    in_axes: Mapping[str, int] | None = None,
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


def select_units(
    names: Sequence[str],
    shapes: Mapping[str, tuple[int, ...]],
    ratio: float,
    granularity: str,
    values: ValueFn | None = None,
    largest: bool = True,
    seed: int = 0,
) -> dict[str, jax.Array]:
    """``{name: bool mask}`` taking exactly k whole tensors or layers of ``names``."""
    if granularity == "tensor":
        groups = [[n] for n in names]
    else:
        by_layer: dict[int, list[str]] = {}
        for n in names:
            li = layer_index(n)
            if li is None:
                raise UserError(
                    f"granularity layer: parameter {n!r} is in no transformer layer; "
                    "narrow --include to the layers or use tensor granularity"
                )
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
    return {
        n: jnp.full(tuple(shapes[n]), bool(sel[i]), bool) for i, g in enumerate(groups) for n in g
    }


def expert_tensors(
    names: Sequence[str], roles: Mapping[str, Any] | None = None
) -> dict[int, list[tuple[str, int]]]:
    """``{layer: [(name, expert axis), ...]}``: the tensors of ``names`` the family tables
    index by expert (fused expert tensors and routers), read as data from the roles."""
    rs = roles_for(list(names), roles)
    out: dict[int, list[tuple[str, int]]] = {}
    for n in names:
        r = rs.get(n)
        if r is not None and r.expert_axis is not None and r.layer is not None:
            out.setdefault(r.layer, []).append((n, r.expert_axis))
    if not out:
        raise UserError(
            "granularity expert: no parameter in scope is indexed by expert (a "
            "dense model, or --include leaves out the experts and routers)"
        )
    return out


def _expert_sums(values: ValueFn, group: list[tuple[str, int]]) -> jax.Array:
    """Summed |score| per expert over the tensors of one layer that the expert axis indexes."""
    total: jax.Array | None = None
    for n, ax in group:
        v = jnp.asarray(values(n)).astype(jnp.float32)
        s = jnp.sum(jnp.moveaxis(v, ax, 0).reshape(v.shape[ax], -1), axis=1)
        total = s if total is None else total + s
    assert total is not None, "an expert group is never empty"
    return total


def select_experts(
    names: Sequence[str],
    shapes: Mapping[str, tuple[int, ...]],
    ratio: float,
    scope: str,
    values: ValueFn | None = None,
    largest: bool = True,
    seed: int = 0,
    unit_values: np.ndarray | None = None,
    roles: Mapping[str, Any] | None = None,
) -> dict[str, jax.Array]:
    """``{name: bool mask}`` taking exactly k whole experts: an expert is its slices of the
    layer's fused expert tensors and its router row. Ranked by the sum of ``values`` over
    those elements, or by ``unit_values[layer, expert]`` (routing shares); uniformly random
    from ``seed`` when neither is given. ``scope`` ``per-layer``: k = max(1, floor(ratio *
    experts)) in every layer; ``global``: k = max(1, floor(ratio * layers * experts))."""
    groups = expert_tensors(names, roles)
    layers = sorted(groups)
    n_exp = {li: shapes[g[0][0]][g[0][1]] for li, g in groups.items()}
    if unit_values is not None:
        if any(li >= len(unit_values) or len(unit_values[li]) != n_exp[li] for li in layers):
            raise UserError(
                f"granularity expert: the routing table is "
                f"{len(unit_values)} layers x {len(unit_values[0])} experts; the "
                f"model has {len(layers)} MoE layers of {n_exp[layers[0]]} experts"
            )
        keys = [_keys(jnp.asarray(unit_values[li], jnp.float32), largest) for li in layers]
    elif values is not None:
        keys = [_keys(_expert_sums(values, groups[li]), largest) for li in layers]
    else:
        bits = jax.random.bits(jax.random.PRNGKey(int(seed)), (sum(n_exp.values()),), jnp.uint32)
        cut = np.cumsum([0] + [n_exp[li] for li in layers])
        keys = [bits[cut[i] : cut[i + 1]] for i in range(len(layers))]
    if scope == "per-layer":
        picks = [_pick(k, ratio) for k in keys]
    else:
        flat = jnp.concatenate(keys)
        sel = _pick(flat, ratio)
        cut = np.cumsum([0] + [len(k) for k in keys])
        picks = [sel[cut[i] : cut[i + 1]] for i in range(len(layers))]
    out = {n: jnp.zeros(tuple(shapes[n]), bool) for n in names}
    for li, pick in zip(layers, picks):
        for n, ax in groups[li]:
            shape = tuple(shapes[n])
            out[n] = jnp.broadcast_to(
                pick.reshape([-1 if d == ax else 1 for d in range(len(shape))]), shape
            )
    return out


def select_coarse(
    names: Sequence[str],
    shapes: Mapping[str, tuple[int, ...]],
    ratio: float,
    granularity: str,
    values: ValueFn | None = None,
    largest: bool = True,
    seed: int = 0,
    in_axes: Mapping[str, int] | None = None,
    scope: str = "global",
) -> dict[str, jax.Array]:
    """Row, column, tensor, layer or expert selection (see the module doc)."""
    check_granularity(granularity)
    if granularity in ("row", "column"):
        return select_lines(names, shapes, ratio, granularity, values, largest, seed, in_axes)
    if granularity in ("tensor", "layer"):
        return select_units(names, shapes, ratio, granularity, values, largest, seed)
    if granularity == "expert":
        return select_experts(names, shapes, ratio, scope, values, largest, seed)
    raise UserError("select_coarse: element granularity is handled by regions.select")


def line_counts(mask: jax.Array, granularity: str, in_axis: int | None = None) -> int:
    """How many whole rows/columns ``mask`` selects (all elements of the line set)."""
    m = np.asarray(mask, bool)
    axis = line_axis(m.shape, granularity, in_axis)
    if axis is None:
        return int(m.sum())
    return int(np.all(m, axis=1 - axis).sum())
