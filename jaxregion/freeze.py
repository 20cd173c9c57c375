"""Freezing regions during continued pre-training (optax).

Two granularities:

* :func:`freeze_elements` — element-wise: replaces updates of masked elements by exact
  zeros. Put it LAST in the chain so no learning rate, momentum or weight decay reaches a
  frozen element; ``optax.apply_updates`` then leaves it bitwise unchanged. (The zero is
  ``-0.0``: ``p + (-0.0) == p`` bitwise for every p, including ``-0.0``, whereas
  ``-0.0 + 0.0`` gives ``+0.0``.)
* :func:`freeze_leaves` — whole tensors, via ``optax.multi_transform`` so frozen leaves get
  no optimizer state at all (no Adam moments).

Pitfall: ``optax.masked(inner, mask)`` is NOT a freeze. It applies ``inner`` to leaves where
the mask is True and passes the other leaves' updates through unchanged — i.e. the raw
gradients get added to the params. Use ``multi_transform`` with ``set_to_zero`` instead.

Masks are plain pytrees of bool arrays shaped like the params, so they can be sharded like
them; ``jnp.where`` keeps the updates' sharding.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxregion import tree as T
from jaxregion.errors import UserError
from jaxregion.regions.base import roles_for
from jaxregion.regions.region import mask_of, shape_of

PyTree = Any


class FreezeState(NamedTuple):
    """No state: freezing is a pure function of the mask."""


def freeze_elements(mask: Any) -> optax.GradientTransformation:
    """Zero the updates of elements where ``mask`` (a Region or bool tree) is True.

    The mask may cover a subset of the params (missing leaves are trainable); mask leaves
    absent from the updates are ignored (e.g. inside ``multi_transform``)."""
    flat_m = T.flatten(mask_of(mask))

    def init_fn(params: PyTree) -> FreezeState:
        del params
        return FreezeState()

    def update_fn(
        updates: PyTree, state: FreezeState, params: PyTree | None = None
    ) -> tuple[PyTree, FreezeState]:
        del params

        def one(n: str, u: Any) -> Any:
            m = flat_m.get(n)
            if u is None or m is None:
                return u
            if shape_of(m) != shape_of(u):
                raise UserError(
                    f"freeze mask for {n!r} has shape {list(shape_of(m))}, "
                    f"updates have {list(shape_of(u))}"
                )
            return jnp.where(m, jnp.asarray(-0.0, u.dtype), u)

        return T.map_named(one, updates), state

    return optax.GradientTransformation(init_fn, update_fn)


def leaf_frozen(x: Any) -> bool:
    """A leaf of a frozen-leaves tree: a Python/NumPy bool, or a bool array that is all True."""
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    return bool(np.all(np.asarray(x)))


def freeze_leaves(
    tx: optax.GradientTransformation, frozen_leaves: PyTree
) -> optax.GradientTransformation:
    """``tx`` on trainable leaves; frozen leaves get zero updates and no optimizer state.

    ``frozen_leaves``: a tree like the params with one bool per leaf (or bool arrays, a leaf
    being frozen when all its entries are True)."""
    labels = jax.tree.map(lambda x: "frozen" if leaf_frozen(x) else "train", mask_of(frozen_leaves))
    return optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)


def make_freeze_mask(
    region_mask: Any,
    include_norms: bool = False,
    roles: Mapping[str, Any] | None = None,
    params: PyTree = None,
) -> PyTree:
    """Bool tree to freeze from a region: norm parameters (kind ``norm`` in ``roles``, by
    default the family tables read by name) are left trainable unless ``include_norms``.

    A mask none of whose names is a parameter (of ``params`` when given, else one the roles
    know) would freeze nothing without a word: UserError."""
    m = mask_of(region_mask)
    names = list(T.flatten(m))
    rl = roles_for(names, roles)
    known = (
        set(T.flatten(params))
        if params is not None
        else {n for n in names if rl.get(n) is not None}
    )
    if names and not known.intersection(names):
        raise UserError(
            f"freeze mask: none of its {len(names)} names (e.g. {names[0]!r}) is "
            "a parameter of the model; is the region for another model?"
        )
    if include_norms:
        return jax.tree.map(lambda x: jnp.asarray(x, bool), m)

    def one(n: str, x: Any) -> jax.Array:
        r = rl.get(n)
        return (
            jnp.zeros(shape_of(x), bool)
            if r is not None and r.kind == "norm"
            else jnp.asarray(x, bool)
        )

    return T.map_named(one, m)


def adamw_with_freeze(
    lr_schedule: float | Callable[[jax.Array], jax.Array],
    b1: float = 0.9,
    b2: float = 0.95,
    weight_decay: float = 0.1,
    clip: float | None = 1.0,
    mask: Any = None,
    eps: float = 1e-8,
    mask_grads: bool = True,
) -> optax.GradientTransformation:
    """``chain(clip_by_global_norm, adamw, freeze_elements(mask))``.

    ``mask_grads`` also zeroes frozen gradients first, so they neither count in the
    global-norm clip nor feed Adam's moments (the final freeze is what guarantees exact
    immobility; weight decay acts after the moments). ``mask=None`` = plain AdamW."""
    parts: list[optax.GradientTransformation] = []
    if mask is not None and mask_grads:
        parts.append(freeze_elements(mask))
    if clip is not None and clip > 0:
        parts.append(optax.clip_by_global_norm(clip))
    parts.append(optax.adamw(lr_schedule, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay))
    if mask is not None:
        parts.append(freeze_elements(mask))
    return optax.chain(*parts)
