"""Score trees read one tensor at a time.

A :class:`LazyScores` is one language's importance scores as names, shapes and a reader:
selection (:mod:`jaxregion.regions.select`) asks for one tensor of one language at a time,
so a region over N languages holds about one unit of their scores, never N whole trees.
An in-memory tree is wrapped by :func:`as_lazy` (its reader returns the leaf itself, on
whatever device it lives); a score file by :func:`jaxregion.regions.files.open_scores`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp

from jaxregion import tree as T
from jaxregion.regions.region import shape_of

PyTree = Any


@dataclass(frozen=True)
class LazyScores:
    """``shapes``: HF name -> shape, in tree order (``tree.flatten`` of the scores);
    ``read(name)``: that tensor's float scores (numpy or jax)."""

    shapes: Mapping[str, tuple[int, ...]]
    read: Callable[[str], Any]

    def template(self) -> PyTree:
        """A tree of float32 ``ShapeDtypeStruct`` leaves with the scores' structure."""
        return T.unflatten(
            {n: jax.ShapeDtypeStruct(s, jnp.float32) for n, s in self.shapes.items()}
        )

    def map(self, fn: Callable[..., Any], *others: LazyScores) -> LazyScores:
        """Scores computed tensor by tensor: ``fn(self[n], other[n], ...)``."""
        return LazyScores(self.shapes, lambda n: fn(self.read(n), *(o.read(n) for o in others)))


def as_lazy(scores: PyTree | LazyScores) -> LazyScores:
    """``scores`` as a :class:`LazyScores` (an in-memory tree reads its own leaves)."""
    if isinstance(scores, LazyScores):
        return scores
    flat = T.flatten(scores)
    return LazyScores({n: shape_of(x) for n, x in flat.items()}, flat.__getitem__)


def tree_order(names: Any) -> list[str]:
    """``names`` in the order ``tree.flatten`` gives a tree holding them (sorted dict keys,
    list indices in order): the order of every selection's tie-breaking."""
    return list(T.flatten(T.unflatten({n: 0 for n in names})))


def template_of(scores: PyTree | LazyScores) -> PyTree:
    """The tree a region over ``scores`` is shaped like (the tree itself when in memory)."""
    return scores.template() if isinstance(scores, LazyScores) else scores
