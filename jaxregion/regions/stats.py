"""Where a region sits: per module type, per layer, per row/column, per hidden dimension.

Rows are axis 0 and columns axis 1 of the HF-layout tensor; for ``nn.Linear`` weights
(``[out, in]``) rows are output dims and columns input dims. The paper's "dimension
dependence" finding (the core concentrates on a few hidden dims) is read off
:func:`hidden_dim_profile`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np

from jaxregion import tree as T
from jaxregion.errors import UserError
from jaxregion.regions.base import roles_for
from jaxregion.regions.region import mask_of, universe_of


def _np(x: Any) -> np.ndarray:
    return np.asarray(x).astype(bool)


def _top(counts: np.ndarray, n: int) -> list[list[int]]:
    order = np.argsort(-counts, kind="stable")[:n]
    return [[int(i), int(counts[i])] for i in order if counts[i] > 0]


def _top_frac(counts: np.ndarray, frac: float) -> float:
    total = int(counts.sum())
    if total == 0:
        return 0.0
    m = max(1, math.ceil(frac * counts.size))
    return float(np.sort(counts)[::-1][:m].sum() / total)


def row_col_counts(region: Any) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """For each 2-D tensor in the universe: (selected per row [axis 0], per column [axis 1])."""
    flat = T.flatten(mask_of(region))
    out = {}
    for n in universe_of(region):
        x = flat[n]
        if len(np.shape(x)) == 2:
            m = jnp.asarray(x, bool)
            out[n] = (
                np.asarray(jnp.sum(m, axis=1, dtype=jnp.int32)).astype(np.int64),
                np.asarray(jnp.sum(m, axis=0, dtype=jnp.int32)).astype(np.int64),
            )
    return out


def counts_by(region: Any, key: Callable[[str], Hashable | None]) -> dict[Any, tuple[int, int]]:
    """``{key(name): (selected, numel)}`` summed over the region's universe, in first-seen
    order; names whose key is None are left out. The one aggregation behind the per-module,
    per-layer and layer x module tables."""
    flat = T.flatten(mask_of(region))
    out: dict[Any, tuple[int, int]] = {}
    for n in universe_of(region):
        k = key(n)
        if k is None:
            continue
        sel = int(np.asarray(jnp.sum(jnp.asarray(flat[n], bool), dtype=jnp.int32)))
        size = int(np.prod(np.shape(flat[n])))
        s0, n0 = out.get(k, (0, 0))
        out[k] = (s0 + sel, n0 + size)
    return out


def expert_counts(
    region: Any, roles: Mapping[str, Any] | None = None
) -> dict[str, tuple[int, int]]:
    """``{"LAYER.EXPERT": (selected, numel)}`` over the tensors the family tables index by
    expert (a routed expert's slices of the fused tensors and its router row); empty for a
    dense model."""
    flat = T.flatten(mask_of(region))
    rl = roles_for(universe_of(region), roles)
    out: dict[str, tuple[int, int]] = {}
    for n in universe_of(region):
        r = rl.get(n)
        if r is None or r.expert_axis is None or r.layer is None:
            continue
        m = jnp.moveaxis(jnp.asarray(flat[n], bool), r.expert_axis, 0)
        sel = np.asarray(jnp.sum(m.reshape(m.shape[0], -1), axis=1, dtype=jnp.int32))
        for e, c in enumerate(sel):
            s0, n0 = out.get(f"{r.layer}.{e}", (0, 0))
            out[f"{r.layer}.{e}"] = (s0 + int(c), n0 + int(m[0].size))
    return out


def whole_experts(region: Any, roles: Mapping[str, Any] | None = None) -> list[tuple[int, int]]:
    """The ``(layer, expert)`` pairs the region holds whole; UserError when it holds part of
    an expert (drop-expert removes whole experts only)."""
    out = []
    for k, (sel, numel) in expert_counts(region, roles).items():
        if 0 < sel < numel:
            raise UserError(
                f"the region holds {sel} of the {numel} elements of expert {k} "
                "(layer.expert); drop-expert removes whole experts: select them "
                "with --granularity expert"
            )
        if sel:
            layer, e = k.split(".")
            out.append((int(layer), int(e)))
    return out


def _cell(selected: int, numel: int) -> dict[str, Any]:
    return {"selected": selected, "numel": numel, "density": selected / numel if numel else 0.0}


def _concentration(rows: np.ndarray, cols: np.ndarray, top_n: int, top_frac: float) -> dict:
    """The ``top_n`` rows and columns by count, and the share of the selection in the top
    ``top_frac`` of rows and of columns."""
    return {
        "top_rows": _top(rows, top_n),
        "top_cols": _top(cols, top_n),
        "rows_top_frac": _top_frac(rows, top_frac),
        "cols_top_frac": _top_frac(cols, top_frac),
    }


def _matrix_dims(
    region: Any, module: Callable[[str], str], top_n: int, top_frac: float
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Row/column concentration per 2-D tensor, and per module type with the counts summed
    over layers (tensors of the module type's first shape only)."""
    matrices: dict[str, Any] = {}
    summed: dict[str, list[np.ndarray]] = {}
    for n, (rows, cols) in row_col_counts(region).items():
        matrices[n] = {
            "shape": [int(rows.size), int(cols.size)],
            "selected": int(rows.sum()),
            **_concentration(rows, cols, top_n, top_frac),
        }
        mt = module(n)
        if mt in summed and summed[mt][0].shape == rows.shape and summed[mt][1].shape == cols.shape:
            summed[mt][0] = summed[mt][0] + rows
            summed[mt][1] = summed[mt][1] + cols
        elif mt not in summed:
            summed[mt] = [rows.copy(), cols.copy()]
    module_dims = {mt: _concentration(r, c, top_n, top_frac) for mt, (r, c) in summed.items()}
    return matrices, module_dims


def stats(
    region: Any, top_n: int = 10, top_frac: float = 0.01, roles: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """JSON-able summary of a region.

    Keys: ``total``/``numel``/``density``; ``by_module`` and ``by_layer`` (str layer index,
    ``"-"`` for non-layer tensors) with selected/numel/density; ``matrices``: per 2-D tensor
    the ``top_n`` rows and columns by count and ``rows_top_frac``/``cols_top_frac`` = share
    of the tensor's selection lying in its top ``top_frac`` of rows/columns; ``module_dims``:
    the same, with row/column counts summed over layers per module type (same shapes only).
    Layers and module types come from ``roles`` (default: the family tables, by name).
    Mixtures of experts add ``by_expert`` (:func:`expert_counts`).
    """
    rl = roles_for(universe_of(region), roles)

    def module(n: str) -> str:
        return rl[n].module if rl.get(n) is not None else n

    def layer(n: str) -> str:
        return str(rl[n].layer) if rl.get(n) is not None and rl[n].layer is not None else "-"

    by_module = counts_by(region, module)
    by_layer = counts_by(region, layer)
    total = sum(s for s, _ in by_module.values())
    numel = sum(n for _, n in by_module.values())
    matrices, module_dims = _matrix_dims(region, module, top_n, top_frac)
    out = {
        "total": total,
        "numel": numel,
        "density": total / numel if numel else 0.0,
        "by_module": {k: _cell(*v) for k, v in by_module.items()},
        "by_layer": {k: _cell(*v) for k, v in by_layer.items()},
        "matrices": matrices,
        "module_dims": module_dims,
    }
    experts = expert_counts(region, rl)
    if experts:  # mixtures of experts: per layer and expert ("LAYER.EXPERT")
        out["by_expert"] = {k: _cell(*v) for k, v in experts.items()}
    return out


def hidden_dim_profile(
    region: Any, hidden_size: int, roles: Mapping[str, Any] | None = None, by_module: bool = False
) -> np.ndarray | dict[str, np.ndarray]:
    """Selected count per hidden (residual-stream) dimension, over every linear map that
    reads from or writes to the residual stream (its residual axis: readers' input columns,
    writers' output rows) and every norm parameter on it (head-sized q/k norms are not).

    ``roles``: ``{name: Role}`` (default: the family tables, by name). ``by_module=True``
    returns ``{module_type: counts}`` instead of the sum. A counted tensor whose residual
    axis is not ``hidden_size`` raises UserError (wrong hidden size given).
    """
    flat = T.flatten(mask_of(region))
    names = universe_of(region)
    rl = roles_for(names, roles)
    out: dict[str, np.ndarray] = {}
    for n in names:
        r = rl.get(n)
        x = flat[n]
        shape = np.shape(x)
        if (
            r is None
            or r.kind not in ("linear", "norm")
            or r.residual_axis is None
            or len(shape) != len(r.axes)
        ):
            continue
        axis = r.residual_axis
        if shape[axis] != hidden_size:
            raise UserError(
                f"tensor {n!r} has {shape[axis]} entries on its hidden axis {axis}, "
                f"not hidden_size={hidden_size}; pass the model's hidden size"
            )
        m = jnp.asarray(x, bool)
        others = tuple(a for a in range(len(shape)) if a != axis)  # 3-D: fused experts
        counts = m if len(shape) == 1 else jnp.sum(m, axis=others, dtype=jnp.int32)
        counts = np.asarray(counts).astype(np.int64)
        out[r.module] = out[r.module] + counts if r.module in out else counts
    if by_module:
        return out
    total = np.zeros(hidden_size, np.int64)
    for c in out.values():
        total += c
    return total
