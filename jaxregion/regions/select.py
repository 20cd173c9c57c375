"""Selecting regions: exact top-k / bottom-k / random-k per scope unit.

Selection is a radix select on order-preserving uint32 keys of the float32 scores: 32
counting passes find the k-th largest key, then everything above it plus the lowest-index
ties at it are taken. That gives exactly k per unit with deterministic tie-breaking (lower
flat index first, then tree order across tensors), needs no sort or concatenation (so
``global`` scope over a 7B model costs no extra copy), and is plain elementwise/reduction
work that runs and shards on any device.

Scores are read one tensor of one language at a time (:mod:`jaxregion.regions.lazy`): a
per-tensor or per-layer unit holds that unit's keys, the global unit only histograms of
them (:func:`top_k_stream`), so score files need never be loaded whole.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxregion import tree as T
from jaxregion.errors import UserError
from jaxregion.names import REGION_KINDS as KINDS
from jaxregion.names import SCOPES
from jaxregion.regions.base import (
    DEFAULT_INCLUDE,
    check_ratio,
    k_for,
    layer_index,
    roles_for,
    scope_names,
)
from jaxregion.regions.granularity import check_granularity, select_coarse, select_experts
from jaxregion.regions.lazy import LazyScores, as_lazy, template_of
from jaxregion.regions.region import Region, check_same_tree, fingerprint, full_mask, shape_of
from jaxregion.regions.topk import name_key, order_key, random_keys, top_k_stream, top_k_unit

PyTree = Any
K_RULE = "max(1, floor(ratio * numel_of_unit))"


# --- keys ------------------------------------------------------------------------------
@jax.jit
def _abs32(x: jax.Array) -> jax.Array:
    return jnp.abs(x.astype(jnp.float32))


@partial(jax.jit, donate_argnums=0)
def _add_abs(total: jax.Array, x: jax.Array) -> jax.Array:
    return total + jnp.abs(x.astype(jnp.float32))


@partial(jax.jit, static_argnames=("largest",))
def _keys_of(total: jax.Array, largest: bool) -> tuple[jax.Array, jax.Array]:
    key = order_key(total)
    return (key if largest else ~key), jnp.any(jnp.isnan(total))


@jax.jit
def _has_nan(total: jax.Array) -> jax.Array:
    return jnp.any(jnp.isnan(total))


def _sum_abs(lazies: Mapping[str, LazyScores], langs: Sequence[str], name: str) -> jax.Array:
    """Σ_lang |score| of one tensor in float32, languages added in the given order, one
    language's tensor read at a time."""
    total = None
    for lang in langs:
        x = lazies[lang].read(name)
        total = _abs32(x) if total is None else _add_abs(total, x)
        del x
    return total


# --- units -----------------------------------------------------------------------------
def units_for(
    names: Sequence[str], scope: str, roles: Mapping[str, Any] | None = None
) -> list[list[str]]:
    """Groups of HF names within which exactly k are chosen (layers from ``roles``, default
    the family tables by name)."""
    if scope == "per-tensor":
        return [[n] for n in names]
    if scope == "global":
        return [list(names)]
    if scope == "per-layer":
        groups: dict[int, list[str]] = {}
        rl = roles_for(names, roles)
        for n in names:
            li = rl[n].layer if rl.get(n) is not None else None
            if li is None:
                raise UserError(
                    f"scope per-layer: parameter {n!r} is in no transformer layer "
                    "(its family table gives it no layer index); narrow --include "
                    "or use scope per-tensor/global"
                )
            groups.setdefault(li, []).append(n)
        return [groups[i] for i in sorted(groups)]
    raise UserError(f"scope {scope!r} is unknown; use one of {', '.join(SCOPES)}")


def _iter_select(
    names: Sequence[str],
    shapes: Mapping[str, tuple[int, ...]],
    scope: str,
    ratio: float,
    key_fn: Callable[[str], jax.Array],
) -> Iterator[dict[str, jax.Array]]:
    """Masks unit by unit. A per-tensor or per-layer unit's keys are held together; the
    global unit's keys never are (:func:`top_k_stream` makes them again per pass)."""
    for unit in units_for(names, scope):
        k = k_for(ratio, sum(math.prod(shapes[n]) for n in unit))
        if scope == "global":
            yield dict(zip(unit, top_k_stream([partial(key_fn, n) for n in unit], k)))
        else:
            yield dict(zip(unit, top_k_unit([key_fn(n) for n in unit], k)))


# --- validation --------------------------------------------------------------------------
def validate_scores(
    scores_by_lang: Mapping[str, PyTree | LazyScores], sources: Mapping[str, str] | None = None
) -> dict[str, LazyScores]:
    """Score trees (in memory or :class:`LazyScores`), checked to share names and shapes
    across languages; returned as :class:`LazyScores` (nothing is read).

    Raises UserError naming the first differing key (and the files, if ``sources`` maps
    language → path)."""
    if not scores_by_lang:
        raise UserError("no importance scores given; pass at least one language")
    lazies = {lang: as_lazy(t) for lang, t in scores_by_lang.items()}
    labels = {
        lang: f"{lang!r} ({sources[lang]})" if sources and lang in sources else repr(lang)
        for lang in lazies
    }
    check_same_tree(
        {
            labels[lang]: {n: jax.ShapeDtypeStruct(s, jnp.float32) for n, s in lz.shapes.items()}
            for lang, lz in lazies.items()
        },
        "importance scores",
    )
    return lazies


def _check_lang(scores_by_lang: Mapping[str, Any], lang: str) -> None:
    if lang not in scores_by_lang:
        raise UserError(
            f"language {lang!r} has no importance scores; have: "
            f"{', '.join(sorted(scores_by_lang)) or '(none)'}"
        )


# --- public selectors ------------------------------------------------------------------
def _check_coarse_scope(granularity: str, scope: str) -> None:
    check_granularity(granularity)
    if granularity in ("row", "column") and scope != "per-tensor":
        raise UserError(
            f"granularity {granularity} takes k {granularity}s in each tensor; "
            f"scope {scope!r} does not apply (use scope per-tensor)"
        )
    if granularity == "expert" and scope == "per-tensor":
        raise UserError(
            "granularity expert takes whole experts per layer or over all layers; "
            "use scope per-layer or global"
        )


def _summed_selector(
    scores_by_lang: Mapping[str, PyTree],
    langs: Sequence[str],
    ratio: float,
    scope: str,
    include: str | None,
    exclude: str | None,
    largest: bool,
    sources: Mapping[str, str] | None,
    granularity: str = "element",
    in_axes: Mapping[str, int] | None = None,
) -> tuple[list[str], Callable[[], Iterator[dict[str, jax.Array]]]]:
    lazies = validate_scores(scores_by_lang, sources)
    shapes = lazies[next(iter(lazies))].shapes
    names = scope_names(list(shapes), include, exclude)

    def nan_error(n: str) -> UserError:
        return UserError(
            f"importance scores for {n!r} contain NaN (languages "
            f"{', '.join(langs)}); recompute them"
        )

    def key_fn(n: str) -> jax.Array:
        key, bad = _keys_of(_sum_abs(lazies, langs, n), largest)
        if bool(bad):
            raise nan_error(n)
        return key

    def values(n: str) -> jax.Array:
        total = _sum_abs(lazies, langs, n)
        if bool(_has_nan(total)):
            raise nan_error(n)
        return total

    if granularity != "element":
        return names, lambda: iter(
            [
                select_coarse(
                    names, shapes, ratio, granularity, values, largest, in_axes=in_axes, scope=scope
                )
            ]
        )
    return names, lambda: _iter_select(names, shapes, scope, ratio, key_fn)


def _meta(
    kind: str,
    ratio: float,
    langs: Sequence[str],
    scope: str,
    include: str | None,
    exclude: str | None,
    model: str,
    granularity: str = "element",
    **extra: Any,
) -> dict[str, Any]:
    unit = (
        "numel_of_unit"
        if granularity == "element"
        else {
            "row": "rows_of_tensor",
            "column": "columns_of_tensor",
            "tensor": "tensors",
            "layer": "layers",
            "expert": "experts",
        }[granularity]
    )
    return {
        "kind": kind,
        "ratio": ratio,
        "langs": list(langs),
        "scope": scope,
        "granularity": granularity,
        "seed": extra.pop("seed", None),
        "include": include,
        "exclude": exclude,
        "k_rule": K_RULE.replace("numel_of_unit", unit),
        "model": model,
        **extra,
    }


def _finish(
    template: PyTree, names: list[str], flat: dict[str, jax.Array], meta: dict[str, Any]
) -> Region:
    return Region(full_mask(template, flat), meta, tuple(names))


def _summed(
    kind: str,
    scores_by_lang: Mapping[str, PyTree],
    ratio: float,
    scope: str,
    include: str | None,
    exclude: str | None,
    sources: Mapping[str, str] | None,
    langs: Sequence[str] | None = None,
    granularity: str = "element",
    in_axes: Mapping[str, int] | None = None,
    **extra: Any,
) -> Region:
    ratio = check_ratio(ratio)
    _check_coarse_scope(granularity, scope)
    langs = sorted(scores_by_lang) if langs is None else list(langs)
    names, run = _summed_selector(
        scores_by_lang,
        langs,
        ratio,
        scope,
        include,
        exclude,
        kind != "bottom",
        sources,
        granularity,
        in_axes,
    )
    flat: dict[str, jax.Array] = {}
    for part in run():
        flat.update(part)
    template = template_of(scores_by_lang[next(iter(scores_by_lang))])
    meta = _meta(
        kind,
        ratio,
        sorted(scores_by_lang),
        scope,
        include,
        exclude,
        fingerprint(template),
        granularity,
        **extra,
    )
    return _finish(template, names, flat, meta)


def core(
    scores_by_lang: Mapping[str, PyTree],
    ratio: float = 0.01,
    scope: str = "per-tensor",
    include: str | None = DEFAULT_INCLUDE,
    exclude: str | None = None,
    sources: Mapping[str, str] | None = None,
    granularity: str = "element",
    in_axes: Mapping[str, int] | None = None,
) -> Region:
    """The paper's core region: top-k of Σ_lang |score| in each scope unit.

    Languages are summed in sorted-name order (float32) so the result does not depend on
    dict order. k = max(1, floor(ratio × unit size)); ties go to the lower index. With a
    coarser ``granularity`` the units are rows/columns/tensors/layers
    (:mod:`jaxregion.regions.granularity`)."""
    return _summed(
        "core",
        scores_by_lang,
        ratio,
        scope,
        include,
        exclude,
        sources,
        granularity=granularity,
        in_axes=in_axes,
    )


def bottom(
    scores_by_lang: Mapping[str, PyTree],
    ratio: float = 0.01,
    scope: str = "per-tensor",
    include: str | None = DEFAULT_INCLUDE,
    exclude: str | None = None,
    sources: Mapping[str, str] | None = None,
    granularity: str = "element",
    in_axes: Mapping[str, int] | None = None,
) -> Region:
    """Control: the k *least* important elements by Σ_lang |score| (same k as :func:`core`)."""
    return _summed(
        "bottom",
        scores_by_lang,
        ratio,
        scope,
        include,
        exclude,
        sources,
        granularity=granularity,
        in_axes=in_axes,
    )


def top(
    scores_by_lang: Mapping[str, PyTree],
    lang: str,
    ratio: float = 0.01,
    scope: str = "per-tensor",
    include: str | None = DEFAULT_INCLUDE,
    exclude: str | None = None,
    sources: Mapping[str, str] | None = None,
    granularity: str = "element",
    in_axes: Mapping[str, int] | None = None,
) -> Region:
    """Top-k of one language's |score| (shapes of all languages are still cross-checked)."""
    _check_lang(scores_by_lang, lang)
    return _summed(
        "top",
        scores_by_lang,
        ratio,
        scope,
        include,
        exclude,
        sources,
        langs=[lang],
        lang=lang,
        granularity=granularity,
        in_axes=in_axes,
    )


def monolingual(
    scores_by_lang: Mapping[str, PyTree],
    lang: str,
    ratio: float = 0.01,
    scope: str = "per-tensor",
    include: str | None = DEFAULT_INCLUDE,
    exclude: str | None = None,
    sources: Mapping[str, str] | None = None,
    granularity: str = "element",
    in_axes: Mapping[str, int] | None = None,
) -> Region:
    """Elements in top-k(lang) and in no other language's top-k (same ratio, scope and
    granularity). With a single language this equals :func:`top`."""
    return _exclusive(
        "monolingual",
        True,
        scores_by_lang,
        lang,
        ratio,
        scope,
        include,
        exclude,
        sources,
        granularity,
        in_axes,
    )


def bottom_monolingual(
    scores_by_lang: Mapping[str, PyTree],
    lang: str,
    ratio: float = 0.01,
    scope: str = "per-tensor",
    include: str | None = DEFAULT_INCLUDE,
    exclude: str | None = None,
    sources: Mapping[str, str] | None = None,
    granularity: str = "element",
    in_axes: Mapping[str, int] | None = None,
) -> Region:
    """The authors' control for monolingual regions: elements in bottom-k(lang) (the k least
    important for ``lang``) and in no other language's bottom-k."""
    return _exclusive(
        "bottom-monolingual",
        False,
        scores_by_lang,
        lang,
        ratio,
        scope,
        include,
        exclude,
        sources,
        granularity,
        in_axes,
    )


def _exclusive(
    kind: str,
    largest: bool,
    scores_by_lang: Mapping[str, PyTree],
    lang: str,
    ratio: float,
    scope: str,
    include: str | None,
    exclude: str | None,
    sources: Mapping[str, str] | None,
    granularity: str,
    in_axes: Mapping[str, int] | None,
) -> Region:
    """One language's top-k (``largest``) or bottom-k minus the union of the others'."""
    ratio = check_ratio(ratio)
    _check_coarse_scope(granularity, scope)
    _check_lang(scores_by_lang, lang)
    others = [o for o in sorted(scores_by_lang) if o != lang]
    runs = {}
    names: list[str] = []
    for ll in [lang, *others]:
        names, runs[ll] = _summed_selector(
            scores_by_lang,
            [ll],
            ratio,
            scope,
            include,
            exclude,
            largest,
            sources,
            granularity,
            in_axes,
        )
    flat: dict[str, jax.Array] = {}
    iters = {ll: runs[ll]() for ll in runs}
    for part in iters[lang]:
        acc = dict(part)
        for o in others:
            other = next(iters[o])
            for n in acc:
                acc[n] = acc[n] & ~other[n]
        flat.update(acc)
    template = template_of(scores_by_lang[next(iter(scores_by_lang))])
    meta = _meta(
        kind,
        ratio,
        sorted(scores_by_lang),
        scope,
        include,
        exclude,
        fingerprint(template),
        granularity,
        lang=lang,
    )
    return _finish(template, names, flat, meta)


def random(
    template: PyTree,
    ratio: float = 0.01,
    seed: int = 0,
    scope: str = "per-tensor",
    include: str | None = DEFAULT_INCLUDE,
    exclude: str | None = None,
    granularity: str = "element",
    in_axes: Mapping[str, int] | None = None,
) -> Region:
    """Control: exactly k uniformly random elements (rows, columns, tensors, layers) per
    unit, reproducible from ``seed``; the same k per tensor as every scored region of the
    same ratio, scope and granularity.

    Each tensor's random stream is keyed by (seed, crc32 of its HF name), so a tensor's
    draw does not depend on which other tensors are in scope. ``template`` may be params,
    scores or ``jax.ShapeDtypeStruct`` leaves."""
    ratio = check_ratio(ratio)
    _check_coarse_scope(granularity, scope)
    shapes = as_lazy(template).shapes
    names = scope_names(list(shapes), include, exclude)

    def key_fn(n: str) -> jax.Array:
        return random_keys(name_key(seed, n), shapes[n])

    flat: dict[str, jax.Array] = {}
    if granularity == "element":
        for part in _iter_select(names, shapes, scope, ratio, key_fn):
            flat.update(part)
    else:
        flat = select_coarse(
            names,
            {n: shapes[n] for n in names},
            ratio,
            granularity,
            None,
            seed=int(seed),
            in_axes=in_axes,
            scope=scope,
        )
    template = template_of(template)
    meta = _meta(
        "random",
        ratio,
        [],
        scope,
        include,
        exclude,
        fingerprint(template),
        granularity,
        seed=int(seed),
    )
    return _finish(template, names, flat, meta)


def layers(
    template: PyTree,
    which: Sequence[int],
    include: str | None = DEFAULT_INCLUDE,
    exclude: str | None = None,
) -> Region:
    """Every parameter (norms included) of the given transformer layers within the scope."""
    flat_t = T.flatten(template)
    names = scope_names(list(flat_t), include, exclude)
    want = {int(i) for i in which}
    present = {layer_index(n) for n in names}
    missing = sorted(want - present)
    if missing:
        raise UserError(
            f"layers {missing} are not in the model (layers in scope: "
            f"{sorted(i for i in present if i is not None)})"
        )
    flat = {n: jnp.full(shape_of(flat_t[n]), layer_index(n) in want, bool) for n in names}
    meta = _meta(
        "layers",
        1.0,
        [],
        "per-tensor",
        include,
        exclude,
        fingerprint(template),
        "layer",
        layers=sorted(want),
    )
    return _finish(template, names, flat, meta)


def experts_by_routing(
    kind: str,
    template: PyTree,
    shares: Mapping[str, np.ndarray],
    ratio: float = 0.01,
    scope: str = "per-layer",
    lang: str | None = None,
    include: str | None = DEFAULT_INCLUDE,
    exclude: str | None = None,
    seed: int = 0,
) -> Region:
    """Whole experts ranked by routing share (``shares``: ``{lang: [layers, experts]}`` top-k
    shares, as ``jaxregion experts`` writes them): core = the most routed-to over all
    languages, bottom = the least, top = ``lang``'s most, monolingual / bottom-monolingual =
    ``lang``'s top / bottom minus the other languages'; random ignores the shares."""
    ratio = check_ratio(ratio)
    _check_coarse_scope("expert", scope)
    flat_t = T.flatten(template)
    names = scope_names(list(flat_t), include, exclude)
    shapes = {n: shape_of(flat_t[n]) for n in names}
    if kind in ("top", "monolingual", "bottom-monolingual") and lang not in shares:
        raise UserError(f"--lang {lang!r} is not in the routing file (have {', '.join(shares)})")

    def pick(values: np.ndarray | None, largest: bool = True) -> dict[str, jax.Array]:
        return select_experts(
            names, shapes, ratio, scope, largest=largest, seed=seed, unit_values=values
        )

    if kind in ("core", "bottom"):
        flat = pick(sum(np.asarray(v, np.float64) for v in shares.values()), kind == "core")
    elif kind == "random":
        flat = pick(None)
    else:
        largest = kind != "bottom-monolingual"
        flat = pick(np.asarray(shares[lang]), largest)
        if kind != "top":
            for o in (o for o in shares if o != lang):
                other = pick(np.asarray(shares[o]), largest)
                flat = {n: flat[n] & ~other[n] for n in flat}
    meta = _meta(
        kind,
        ratio,
        sorted(shares),
        scope,
        include,
        exclude,
        fingerprint(template),
        "expert",
        seed=int(seed),
        expert_rank="routing",
        **({"lang": lang} if lang is not None else {}),
    )
    return _finish(template, names, flat, meta)


def select(
    kind: str,
    scores_by_lang: Mapping[str, PyTree] | None = None,
    *,
    lang: str | None = None,
    ratio: float = 0.01,
    scope: str = "per-tensor",
    include: str | None = DEFAULT_INCLUDE,
    exclude: str | None = None,
    seed: int = 0,
    template: PyTree | None = None,
    sources: Mapping[str, str] | None = None,
    granularity: str = "element",
    in_axes: Mapping[str, int] | None = None,
) -> Region:
    """One entry point: ``kind`` in :data:`KINDS`, at any ``granularity``
    (element/row/column/tensor/layer). ``in_axes``: HF name -> the axis of input features
    (from the family's roles), for row/column granularity."""
    if kind not in KINDS:
        raise UserError(f"region kind {kind!r} is unknown; use one of {', '.join(KINDS)}")
    if scope not in SCOPES:
        raise UserError(f"scope {scope!r} is unknown; use one of {', '.join(SCOPES)}")
    check_granularity(granularity)
    g = {"granularity": granularity, "in_axes": in_axes}
    if kind == "random":
        if template is None:
            if not scores_by_lang:
                raise UserError("a random region needs a model or score file for its shapes")
            template = scores_by_lang[next(iter(scores_by_lang))]
        return random(template, ratio, seed, scope, include, exclude, **g)
    if not scores_by_lang:
        raise UserError(f"a {kind} region needs importance scores; pass at least one language")
    if kind in ("top", "monolingual", "bottom-monolingual"):
        if lang is None:
            raise UserError(
                f"a {kind} region needs a language; have: {', '.join(sorted(scores_by_lang))}"
            )
        fn = {"top": top, "monolingual": monolingual, "bottom-monolingual": bottom_monolingual}
        return fn[kind](scores_by_lang, lang, ratio, scope, include, exclude, sources, **g)
    fn = core if kind == "core" else bottom
    return fn(scores_by_lang, ratio, scope, include, exclude, sources, **g)
