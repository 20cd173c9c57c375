"""The :class:`Region` type and the naming rules every region function shares.

A region is a bool pytree shaped like the params (HF names, HF layout) plus JSON-able
metadata. Keeping the mask a plain pytree means it can be sharded, jitted and fed to optax
exactly like the params it describes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from collections.abc import Mapping, Sequence
from fractions import Fraction
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxregion import tree as T
from jaxregion.errors import UserError

PyTree = Any

#: The default include scope: every parameter the family table puts in a transformer layer
#: (norms included). Not a regex; any other ``include`` string is one.
LAYERS = ":layers"
DEFAULT_INCLUDE = LAYERS


def roles_for(names: Sequence[str], roles: Mapping[str, Any] | None = None
              ) -> Mapping[str, Any]:
    """``{name: Role or None}``: ``roles`` when the caller has them (``models.roles(cfg)``),
    else read off the family tables by name (score and region files carry no config).

    Roles are data here (``.layer``, ``.module``, ``.kind``, ``.residual_axis``): this
    package imports no model family, and the lookup below happens only on demand."""
    if roles is not None:
        return roles
    from jaxregion.models.table import infer_roles

    return infer_roles(names)


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
        from jaxregion.regions.algebra import size

        return size(self)

    @property
    def numel(self) -> int:
        """Elements in the universe."""
        from jaxregion.regions.algebra import numel

        return numel(self)

    @property
    def density(self) -> float:
        return self.size / max(self.numel, 1)

    def with_meta(self, **kw: Any) -> Region:
        return Region(self.mask, {**self.meta, **kw}, self.universe)

    def __or__(self, other: Any) -> Region:
        from jaxregion.regions.algebra import union

        return union(self, other)

    def __and__(self, other: Any) -> Region:
        from jaxregion.regions.algebra import intersection

        return intersection(self, other)

    def __sub__(self, other: Any) -> Region:
        from jaxregion.regions.algebra import difference

        return difference(self, other)

    def __invert__(self) -> Region:
        from jaxregion.regions.algebra import complement

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


def _role(name: str, roles: Mapping[str, Any] | None) -> Any:
    return roles_for([name], roles).get(name)


def layer_index(name: str, roles: Mapping[str, Any] | None = None) -> int | None:
    """Transformer layer of a parameter (``model.layers.3.…`` → 3), ``None`` outside layers."""
    r = _role(name, roles)
    return None if r is None else r.layer


def module_type(name: str, roles: Mapping[str, Any] | None = None) -> str:
    """The tensor's name within its layer, minus ``.weight``: ``self_attn.q_proj``,
    ``mlp.down_proj``, ``input_layernorm``, ``self_attn.q_proj.bias``; non-layer tensors
    keep their name (minus ``.weight``). Groups the same matrix across layers."""
    r = _role(name, roles)
    return name if r is None else r.module


def is_norm(name: str, roles: Mapping[str, Any] | None = None) -> bool:
    """Normalisation parameters (weights and biases), per the family table."""
    r = _role(name, roles)
    return r is not None and r.kind == "norm"


def k_for(ratio: float, n: int) -> int:
    """How many of ``n`` elements a ratio selects: ``max(1, floor(ratio * n))``, at most n.

    The paper takes ``int(ratio * numel)``; we floor the same way but on the ratio as the
    decimal it prints as (so 0.29 × 100 is 29, not float-rounded 28), and select at least
    one element so a tiny tensor is never silently skipped when ratio > 0.
    """
    if n <= 0:
        return 0
    k = math.floor(Fraction(repr(float(ratio))) * n)
    return int(min(n, max(1, k)))


def check_ratio(ratio: Any) -> float:
    try:
        r = float(ratio)
    except (TypeError, ValueError):
        raise UserError(f"ratio {ratio!r} is not a number; give a fraction in (0, 1], "
                        "e.g. 0.01 for 1%") from None
    if not (0.0 < r <= 1.0) or math.isnan(r):
        raise UserError(f"ratio {ratio!r} is outside (0, 1]; give a fraction such as 0.01 "
                        "for the top 1%")
    return r


def compile_regex(pattern: str | None, what: str) -> re.Pattern | None:
    if pattern is None:
        return None
    try:
        return re.compile(pattern)
    except re.error as e:
        raise UserError(f"{what} regex {pattern!r} is invalid: {e}") from None


def scope_names(all_names: Sequence[str], include: str | None = DEFAULT_INCLUDE,
                exclude: str | None = None, roles: Mapping[str, Any] | None = None
                ) -> list[str]:
    """Names kept by ``include`` (:data:`LAYERS`: the transformer layers' parameters; else
    a regex, re.search; None = all) and not matched by ``exclude`` (a regex).

    Raises UserError when nothing is left, naming the scope and a few real names."""
    examples = ", ".join(list(all_names)[:4]) + (" ..." if len(all_names) > 4 else "")
    if include == LAYERS:
        r = roles_for(all_names, roles)
        kept = [n for n in all_names if r.get(n) is not None and r[n].layer is not None]
        if not kept:
            raise UserError(f"include {LAYERS!r} (the default) selects no parameter: none is in "
                            f"a transformer layer of a known family; names look like: "
                            f"{examples}. Pass --include REGEX")
    else:
        inc = compile_regex(include, "include")
        kept = [n for n in all_names if inc is None or inc.search(n)]
        if not kept:
            raise UserError(f"include regex {include!r} selects no parameter; names look "
                            f"like: {examples}")
    exc = compile_regex(exclude, "exclude")
    if exc is not None:
        kept = [n for n in kept if not exc.search(n)]
        if not kept:
            raise UserError(f"exclude regex {exclude!r} removes every parameter that include "
                            f"{include!r} selects; names look like: {examples}")
    return kept


def shape_of(leaf: Any) -> tuple[int, ...]:
    return tuple(int(d) for d in np.shape(leaf)) if not hasattr(leaf, "shape") else tuple(
        int(d) for d in leaf.shape)


def fingerprint(tree_or_shapes: PyTree | Mapping[str, Sequence[int]]) -> str:
    """sha1 of the sorted (HF name, shape) pairs: identifies a model architecture.

    Accepts a params/abstract/score tree, or ``{name: shape}``. Dtypes are ignored so bf16
    params, f32 scores and bool masks of one model share a fingerprint."""
    if isinstance(tree_or_shapes, Mapping) and tree_or_shapes and all(
        isinstance(v, (list, tuple)) for v in tree_or_shapes.values()
    ):
        items = {str(k): [int(d) for d in v] for k, v in tree_or_shapes.items()}
    else:
        items = {k: list(shape_of(v)) for k, v in T.flatten(tree_or_shapes).items()}
    blob = json.dumps(sorted(items.items()), separators=(",", ":"))
    return "sha1:" + hashlib.sha1(blob.encode()).hexdigest()


def full_mask(template: PyTree, flat_mask: Mapping[str, Any]) -> PyTree:
    """A bool tree shaped like ``template``: leaves from ``flat_mask``, others all-False."""
    return T.map_named(
        lambda n, x: jnp.asarray(flat_mask[n], dtype=bool) if n in flat_mask
        else jnp.zeros(shape_of(x), dtype=bool),
        template,
    )
