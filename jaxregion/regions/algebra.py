"""Set algebra on regions and bare masks.

Binary operations need masks of the same tree (names and shapes). The result of an
operation on Regions is a Region whose universe is the union of the operands' universes;
:func:`complement` negates only the universe (for a Region selected with include/exclude,
that is the include scope, so ~core is "the rest of the transformer layers", not the
embeddings). Set laws (De Morgan etc.) therefore hold among regions sharing a universe,
which regions selected with the same include/exclude always do.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxregion import tree as T
from jaxregion.errors import UserError
from jaxregion.regions.base import Region, mask_of, shape_of, universe_of

PyTree = Any


def _check_same(a: Any, b: Any) -> None:
    fa, fb = T.flatten(mask_of(a)), T.flatten(mask_of(b))
    for n in fa:
        if n not in fb:
            raise UserError(f"regions cover different parameters: {n!r} is in one only; "
                            "combine regions of the same model")
        if shape_of(fa[n]) != shape_of(fb[n]):
            raise UserError(f"regions differ at {n!r}: shape {list(shape_of(fa[n]))} vs "
                            f"{list(shape_of(fb[n]))}; combine regions of the same model")
    for n in fb:
        if n not in fa:
            raise UserError(f"regions cover different parameters: {n!r} is in one only; "
                            "combine regions of the same model")


def _meta(x: Any) -> dict:
    return dict(x.meta) if isinstance(x, Region) else {"kind": "mask"}


def _binary(op: str, fn: Callable[[jax.Array, jax.Array], jax.Array], a: Any, b: Any) -> Any:
    _check_same(a, b)
    mask = jax.tree.map(lambda x, y: fn(jnp.asarray(x, bool), jnp.asarray(y, bool)),
                        mask_of(a), mask_of(b))
    if not (isinstance(a, Region) or isinstance(b, Region)):
        return mask
    ua, ub = set(universe_of(a)), set(universe_of(b))
    uni = tuple(n for n in T.flatten(mask) if n in ua or n in ub)
    ma, mb = _meta(a), _meta(b)
    meta: dict[str, Any] = {"kind": op, "operands": [ma, mb]}
    if ma.get("model") is not None and ma.get("model") == mb.get("model"):
        meta["model"] = ma["model"]
    return Region(mask, meta, uni)


def union(a: Any, b: Any, *more: Any) -> Any:
    """A ∪ B (∪ ...). Region in → Region out; bare masks → bare mask."""
    out = _binary("union", jnp.logical_or, a, b)
    for m in more:
        out = _binary("union", jnp.logical_or, out, m)
    return out


def intersection(a: Any, b: Any, *more: Any) -> Any:
    """A ∩ B (∩ ...)."""
    out = _binary("intersection", jnp.logical_and, a, b)
    for m in more:
        out = _binary("intersection", jnp.logical_and, out, m)
    return out


def difference(a: Any, b: Any) -> Any:
    """A \\ B = A ∧ ¬B (elementwise; independent of universes)."""
    return _binary("difference", lambda x, y: x & ~y, a, b)


def complement(a: Any, universe: Sequence[str] | None = None) -> Any:
    """Universe \\ A. The universe is ``universe`` if given, else the Region's universe
    (its include/exclude scope), else every leaf of a bare mask. Leaves outside the
    universe come out all-False."""
    uni = set(universe) if universe is not None else set(universe_of(a))
    unknown = uni - set(T.flatten(mask_of(a)))
    if unknown:
        raise UserError(f"complement universe names {sorted(unknown)[0]!r}, which the region "
                        "does not have")
    mask = T.map_named(lambda n, x: ~jnp.asarray(x, bool) if n in uni
                       else jnp.zeros(shape_of(x), bool), mask_of(a))
    if not isinstance(a, Region):
        return mask
    order = tuple(n for n in T.flatten(mask) if n in uni)
    meta: dict[str, Any] = {"kind": "complement", "operands": [dict(a.meta)]}
    if a.meta.get("model") is not None:
        meta["model"] = a.meta["model"]
    return Region(mask, meta, order)


def size(a: Any) -> int:
    """Selected elements (exact, counted on host in int64)."""
    return int(sum(int(np.asarray(jnp.sum(jnp.asarray(x, bool), dtype=jnp.int32)))
                   for x in jax.tree.leaves(mask_of(a))))


def numel(a: Any) -> int:
    """Elements in the universe."""
    flat = T.flatten(mask_of(a))
    return int(sum(int(np.prod(shape_of(flat[n]))) for n in universe_of(a)))


def density(a: Any) -> float:
    """size / numel of the universe (0.0 for an empty universe)."""
    n = numel(a)
    return size(a) / n if n else 0.0


def jaccard(a: Any, b: Any) -> float:
    """|A ∩ B| / |A ∪ B| in [0, 1]; 1.0 when both are empty (identical sets)."""
    _check_same(a, b)
    ma, mb = mask_of(a), mask_of(b)
    inter = size(jax.tree.map(lambda x, y: jnp.asarray(x, bool) & jnp.asarray(y, bool), ma, mb))
    uni = size(jax.tree.map(lambda x, y: jnp.asarray(x, bool) | jnp.asarray(y, bool), ma, mb))
    return 1.0 if uni == 0 else inter / uni


def overlap_matrix(regions: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Pairwise Jaccard between named regions (e.g. each language's top-k), for reports."""
    keys = list(regions)
    return {i: {j: jaccard(regions[i], regions[j]) for j in keys} for i in keys}
