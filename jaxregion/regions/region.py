"""The :class:`Region` type and its set algebra (on regions and bare masks).

A region is a bool pytree shaped like the params (HF names, HF layout) plus JSON-able
metadata. Keeping the mask a plain pytree means it can be sharded, jitted and fed to optax
exactly like the params it describes.

Binary operations need masks of the same tree (names and shapes). The result of an
operation on Regions is a Region whose universe is the union of the operands' universes;
:func:`complement` negates only the universe (for a Region selected with include/exclude,
that is the include scope, so ~core is "the rest of the transformer layers", not the
embeddings). Set laws (De Morgan etc.) therefore hold among regions sharing a universe,
which regions selected with the same include/exclude always do.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxregion import tree as T
from jaxregion.errors import UserError

PyTree = Any


@jax.tree_util.register_pytree_node_class
@dataclasses.dataclass(frozen=True, eq=False)
class Region:
    """A bool mask over params plus how it was made.

    ``mask``: bool pytree like the params; leaves outside the region's universe are all-False.
    ``meta``: JSON-able dict (kind, ratio, langs, scope, seed, include, exclude, model, ...).
    ``universe``: HF names of the leaves the region was selected from (the include/exclude
    scope), in tree order; ``None`` means every leaf. :func:`complement` negates only these,
    and region files store exactly these tensors.

    Registered as a pytree (mask = children, meta/universe = static aux data), so
    ``jax.tree.map``, ``jax.device_put`` and ``jit`` see only the mask arrays.
    """

    mask: PyTree
    meta: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    universe: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "meta", json.loads(json.dumps(dict(self.meta))))
        if self.universe is not None:
            object.__setattr__(self, "universe", tuple(self.universe))

    def tree_flatten(self) -> tuple[tuple[PyTree], tuple[str, tuple[str, ...] | None]]:
        return (self.mask,), (json.dumps(self.meta, sort_keys=True), self.universe)

    @classmethod
    def tree_unflatten(cls, aux: tuple, children: tuple) -> Region:
        return cls(children[0], json.loads(aux[0]), aux[1])

    # --- conveniences ------------------------------------------------------------------
    def flat(self) -> dict[str, Any]:
        """``{hf_name: bool array}`` for every leaf (outside the universe: all-False)."""
        return T.flatten(self.mask)

    def names(self) -> list[str]:
        """HF names of the universe, in tree order."""
        return universe_of(self)

    @property
    def size(self) -> int:
        """Selected elements."""
        return size(self)

    @property
    def numel(self) -> int:
        """Elements in the universe."""
        return numel(self)

    @property
    def density(self) -> float:
        return self.size / max(self.numel, 1)

    def with_meta(self, **kw: Any) -> Region:
        return Region(self.mask, {**self.meta, **kw}, self.universe)

    def __or__(self, other: Any) -> Region:
        return union(self, other)

    def __and__(self, other: Any) -> Region:
        return intersection(self, other)

    def __sub__(self, other: Any) -> Region:
        return difference(self, other)

    def __invert__(self) -> Region:
        return complement(self)

    def __repr__(self) -> str:
        n = len(self.universe) if self.universe is not None else len(T.flatten(self.mask))
        return f"Region(kind={self.meta.get('kind')!r}, tensors={n}, meta={self.meta!r})"


def mask_of(region_or_mask: Region | PyTree) -> PyTree:
    """The bool pytree of a Region, or the argument itself if it already is a mask."""
    return region_or_mask.mask if isinstance(region_or_mask, Region) else region_or_mask


def universe_of(region_or_mask: Region | PyTree) -> list[str]:
    """The HF names a region was selected from (every leaf for a bare mask)."""
    if isinstance(region_or_mask, Region) and region_or_mask.universe is not None:
        return list(region_or_mask.universe)
    return list(T.flatten(mask_of(region_or_mask)))


def shape_of(leaf: Any) -> tuple[int, ...]:
    return (
        tuple(int(d) for d in np.shape(leaf))
        if not hasattr(leaf, "shape")
        else tuple(int(d) for d in leaf.shape)
    )


def fingerprint(tree_or_shapes: PyTree | Mapping[str, Sequence[int]]) -> str:
    """sha1 of the sorted (HF name, shape) pairs: identifies a model architecture.

    Accepts a params/abstract/score tree, or ``{name: shape}``. Dtypes are ignored so bf16
    params, f32 scores and bool masks of one model share a fingerprint."""
    if (
        isinstance(tree_or_shapes, Mapping)
        and tree_or_shapes
        and all(isinstance(v, (list, tuple)) for v in tree_or_shapes.values())
    ):
        items = {str(k): [int(d) for d in v] for k, v in tree_or_shapes.items()}
    else:
        items = {k: list(shape_of(v)) for k, v in T.flatten(tree_or_shapes).items()}
    blob = json.dumps(sorted(items.items()), separators=(",", ":"))
    return "sha1:" + hashlib.sha1(blob.encode()).hexdigest()


@functools.lru_cache(maxsize=32)
def _all_false(shape: tuple[int, ...]) -> jax.Array:
    """One all-False array per shape, shared by every region (jax arrays are immutable): the
    leaves outside a region's universe, such as a real model's embedding, cost memory once."""
    return jnp.zeros(shape, dtype=bool)


def full_mask(template: PyTree, flat_mask: Mapping[str, Any]) -> PyTree:
    """A bool tree shaped like ``template``: leaves from ``flat_mask``, others all-False."""
    return T.map_named(
        lambda n, x: (
            jnp.asarray(flat_mask[n], dtype=bool)
            if n in flat_mask
            else _all_false(tuple(shape_of(x)))
        ),
        template,
    )


def check_same_tree(flats: Mapping[str, Mapping[str, Any]], what: str) -> None:
    """UserError unless every flat tree in ``flats`` (``{label: {hf_name: leaf}}``) has the
    first one's names and shapes; the message names the labels, the first differing key and
    ``what`` the trees are (the one name/shape cross-check of regions and score files)."""
    labels = list(flats)
    ref_label, ref = labels[0], flats[labels[0]]
    for label in labels[1:]:
        cur = flats[label]
        for n in ref:
            if n not in cur:
                raise UserError(
                    f"{what} {label} lack key {n!r} that {ref_label} has (they "
                    "cover different parameters); use ones of the same model"
                )
            if shape_of(cur[n]) != shape_of(ref[n]):
                raise UserError(
                    f"{what} {label} and {ref_label} differ at key {n!r}: shape "
                    f"{list(shape_of(cur[n]))} vs {list(shape_of(ref[n]))}; use "
                    "ones of the same model"
                )
        for n in cur:
            if n not in ref:
                raise UserError(
                    f"{what} {label} have key {n!r} that {ref_label} lacks (they "
                    "cover different parameters); use ones of the same model"
                )


def _check_same(a: Any, b: Any) -> None:
    check_same_tree({"A": T.flatten(mask_of(a)), "B": T.flatten(mask_of(b))}, "regions")


def _meta(x: Any) -> dict:
    return dict(x.meta) if isinstance(x, Region) else {"kind": "mask"}


def _binary(op: str, fn: Callable[[jax.Array, jax.Array], jax.Array], a: Any, b: Any) -> Any:
    _check_same(a, b)
    mask = jax.tree.map(
        lambda x, y: fn(jnp.asarray(x, bool), jnp.asarray(y, bool)), mask_of(a), mask_of(b)
    )
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
        raise UserError(
            f"complement universe names {sorted(unknown)[0]!r}, which the region does not have"
        )
    mask = T.map_named(
        lambda n, x: ~jnp.asarray(x, bool) if n in uni else jnp.zeros(shape_of(x), bool), mask_of(a)
    )
    if not isinstance(a, Region):
        return mask
    order = tuple(n for n in T.flatten(mask) if n in uni)
    meta: dict[str, Any] = {"kind": "complement", "operands": [dict(a.meta)]}
    if a.meta.get("model") is not None:
        meta["model"] = a.meta["model"]
    return Region(mask, meta, order)


def size(a: Any) -> int:
    """Selected elements (exact, counted on host in int64)."""
    return int(
        sum(
            int(np.asarray(jnp.sum(jnp.asarray(x, bool), dtype=jnp.int32)))
            for x in jax.tree.leaves(mask_of(a))
        )
    )


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
    fa, fb = T.flatten(mask_of(a)), T.flatten(mask_of(b))
    live = set(universe_of(a)) | set(universe_of(b))  # the leaves outside both are all-False
    inter = uni = 0
    for n in (n for n in fa if n in live):  # one leaf at a time
        i, u = _inter_union(jnp.asarray(fa[n], bool), jnp.asarray(fb[n], bool))
        inter, uni = inter + int(i), uni + int(u)
    return 1.0 if uni == 0 else inter / uni


@jax.jit
def _inter_union(x: jax.Array, y: jax.Array) -> tuple[jax.Array, jax.Array]:
    return jnp.sum(x & y, dtype=jnp.int32), jnp.sum(x | y, dtype=jnp.int32)


def overlap_matrix(regions: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Pairwise Jaccard between named regions (e.g. each language's top-k), for reports."""
    keys = list(regions)
    return {i: {j: jaccard(regions[i], regions[j]) for j in keys} for i in keys}
