"""Loss terms that pull training back towards the base model (forgetting baselines).

EWC (Kirkpatrick et al. 2017): ``λ/2 · Σ_i F_i (θ_i − θ*_i)²`` with ``θ*`` the base params
and ``F`` a Fisher diagonal. ``F`` is normalised to mean 1 over the penalised elements, so
``λ`` is a scale-free strength (``F ≡ 1`` would be plain L2 towards the base, "L2-SP") and
one λ transfers across models and estimators.

The Fisher diagonal comes from the ``fisher`` importance files (one source of truth for the
Fisher): those hold ``E_b[(θ ⊙ ∇L_b)²]`` = ``θ² · E_b[(∇L_b)²]``, so ``F = score / θ²``
where ``θ ≠ 0`` (and 0 where the base parameter is exactly 0). Summing over the source
languages' files gives their joint Fisher.

The penalty is an extra loss term, so it composes with freezing: frozen elements get zero
updates from the freeze transform (last in the chain) whatever their penalty gradient.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

PyTree = Any


class EWC(NamedTuple):
    """The anchor (base params) and the normalised Fisher diagonal, both like the params."""

    anchor: PyTree
    fisher: PyTree


def ewc_penalty(params: PyTree, ewc: EWC, lam: float | jax.Array) -> jax.Array:
    """``λ/2 · Σ F (θ − θ*)²``, in float32 (or wider, for float64 params)."""

    def one(p: jax.Array, a: jax.Array, f: jax.Array) -> jax.Array:
        dt = jnp.promote_types(p.dtype, jnp.float32)
        return jnp.sum(f.astype(dt) * jnp.square(p.astype(dt) - a.astype(dt)))

    terms = jax.tree.leaves(jax.tree.map(one, params, ewc.anchor, ewc.fisher))
    return 0.5 * jnp.asarray(lam, terms[0].dtype) * sum(terms)


def fisher_from_scores(score_trees: Iterable[PyTree], params: PyTree) -> PyTree:
    """The Fisher diagonal ``Σ_lang score / θ²`` (0 where θ = 0), normalised to mean 1."""

    def one(p: jax.Array, *scores: jax.Array) -> jax.Array:
        p = jnp.asarray(p, jnp.float32)
        s = sum(jnp.asarray(x, jnp.float32) for x in scores)
        return jnp.where(p != 0, s / jnp.where(p != 0, jnp.square(p), 1.0), 0.0)

    trees = list(score_trees)
    f = jax.tree.map(one, params, *trees)
    total = sum(float(jnp.sum(x)) for x in jax.tree.leaves(f))
    count = sum(int(x.size) for x in jax.tree.leaves(f))
    mean = total / max(count, 1)
    if not mean > 0:
        return f
    return jax.tree.map(lambda x: x / jnp.float32(mean), f)


def make_ewc(params: PyTree, fisher: PyTree) -> EWC:
    """Anchor = a float32 copy of ``params``."""
    return EWC(jax.tree.map(lambda p: jnp.array(p, jnp.float32), params), fisher)
