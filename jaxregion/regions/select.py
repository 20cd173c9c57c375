"""Selecting regions: exact top-k / bottom-k / random-k per scope unit.

Selection is a radix select on order-preserving uint32 keys of the float32 scores: 32
counting passes find the k-th largest key, then everything above it plus the lowest-index
ties at it are taken. That gives exactly k per unit with deterministic tie-breaking (lower
flat index first, then tree order across tensors), needs no sort or concatenation (so
``global`` scope over a 7B model costs no extra copy), and is plain elementwise/reduction
work that runs and shards on any device.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxregion import tree as T
from jaxregion.errors import UserError
from jaxregion.regions.base import (
    DEFAULT_INCLUDE,
    Region,
    check_ratio,
    fingerprint,
    full_mask,
    roles_for,
    scope_names,
    shape_of,
)

PyTree = Any
SCOPES = ("per-tensor", "per-layer", "global")
KINDS = ("core", "bottom", "random", "top", "monolingual")
K_RULE = "max(1, floor(ratio * numel_of_unit))"

_INT32_MAX = 2**31 - 1


# --- keys ------------------------------------------------------------------------------
def _order_key(x: jax.Array) -> jax.Array:
    """uint32 whose unsigned order equals the float order of ``x`` (-0.0 folded to +0.0)."""
    x = jnp.where(x == 0, jnp.float32(0), x.astype(jnp.float32))
    b = jax.lax.bitcast_convert_type(x, jnp.uint32)
    return jnp.where((b >> 31) == 1, ~b, b | jnp.uint32(0x80000000))


@partial(jax.jit, static_argnames=("largest",))
def _sum_abs_keys(xs: tuple[jax.Array, ...], largest: bool) -> tuple[jax.Array, jax.Array]:
    total = jnp.abs(xs[0].astype(jnp.float32))
    for x in xs[1:]:
        total = total + jnp.abs(x.astype(jnp.float32))
    key = _order_key(total)
    return (key if largest else ~key), jnp.any(jnp.isnan(total))


@partial(jax.jit, static_argnames=("shape",))
def _random_keys(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    return jax.random.bits(key, shape, jnp.uint32)


# --- exact k-th largest and the pick -----------------------------------------------------
@jax.jit
def _radix_threshold(keys: tuple[jax.Array, ...], k: jax.Array) -> jax.Array:
    """Largest t with count(key >= t) >= k, i.e. the k-th largest key (int32 counts)."""

    def body(i: jax.Array, t: jax.Array) -> jax.Array:
        cand = t | (jnp.uint32(1) << (31 - i).astype(jnp.uint32))
        c = sum(jnp.sum(kk >= cand, dtype=jnp.int32) for kk in keys)
        return jnp.where(c >= k, cand, t)

    return jax.lax.fori_loop(0, 32, body, jnp.uint32(0))


@jax.jit
def _counts_ge(keys: tuple[jax.Array, ...], t: jax.Array) -> jax.Array:
    return jnp.stack([jnp.sum(kk >= t, dtype=jnp.int32) for kk in keys])


@jax.jit
def _gt_eq(keys: tuple[jax.Array, ...], t: jax.Array) -> tuple[jax.Array, jax.Array]:
    gt = jnp.stack([jnp.sum(kk > t, dtype=jnp.int32) for kk in keys])
    eq = jnp.stack([jnp.sum(kk == t, dtype=jnp.int32) for kk in keys])
    return gt, eq


@partial(jax.jit, static_argnames=("mode",))
def _pick(key: jax.Array, t: jax.Array, need: jax.Array, mode: int) -> jax.Array:
    if mode == 0:  # no ties at the threshold taken from this tensor
        return key > t
    if mode == 1:  # all of them
        return key >= t
    eq = key == t
    rank = jnp.cumsum(eq.ravel(), dtype=jnp.int32).reshape(key.shape)
    return (key > t) | (eq & (rank <= need))


def _threshold(keys: tuple[jax.Array, ...], k: int) -> jax.Array:
    n = sum(int(np.prod(kk.shape)) for kk in keys)
    if n <= _INT32_MAX:
        return _radix_threshold(keys, jnp.int32(k))
    t = 0  # counts may overflow int32: sum per-tensor counts on the host in int64
    for bit in range(31, -1, -1):
        cand = t | (1 << bit)
        if int(np.asarray(_counts_ge(keys, jnp.uint32(cand))).astype(np.int64).sum()) >= k:
            t = cand
    return jnp.uint32(t)


def top_k_unit(keys: Sequence[jax.Array], k: int) -> list[jax.Array]:
    """Bool masks selecting exactly the k largest keys over all arrays of one unit.

    Ties at the threshold go to the lowest flat index, earlier arrays first."""
    keys = tuple(keys)
    t = _threshold(keys, k)
    gt, eq = (np.asarray(a).astype(np.int64) for a in _gt_eq(keys, t))
    remaining = k - int(gt.sum())
    out = []
    for kk, e in zip(keys, eq):
        need = max(0, min(remaining, int(e)))
        mode = 0 if need == 0 else 1 if need == e else 2
        out.append(_pick(kk, t, jnp.int32(min(need, _INT32_MAX)), mode))
        remaining -= need
    return out


# --- units -----------------------------------------------------------------------------
def units_for(names: Sequence[str], scope: str, roles: Mapping[str, Any] | None = None
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
                raise UserError(f"scope per-layer: parameter {n!r} is in no transformer layer "
                                "(its family table gives it no layer index); narrow --include "
                                "or use scope per-tensor/global")
            groups.setdefault(li, []).append(n)
        return [groups[i] for i in sorted(groups)]
    raise UserError(f"scope {scope!r} is unknown; use one of {', '.join(SCOPES)}")


def _iter_select(names: Sequence[str], scope: str, ratio: float,
                 key_fn: Callable[[str], jax.Array]) -> Iterator[dict[str, jax.Array]]:
    from jaxregion.regions.base import k_for

    for unit in units_for(names, scope):
        keys = [key_fn(n) for n in unit]
        k = k_for(ratio, sum(int(np.prod(kk.shape)) for kk in keys))
        yield dict(zip(unit, top_k_unit(keys, k)))


# --- validation --------------------------------------------------------------------------
def validate_scores(scores_by_lang: Mapping[str, PyTree],
                    sources: Mapping[str, str] | None = None) -> dict[str, dict[str, Any]]:
    """Flattened score trees, checked to share names and shapes across languages.

    Raises UserError naming the first differing key (and the files, if ``sources`` maps
    language → path)."""
    if not scores_by_lang:
        raise UserError("no importance scores given; pass at least one language")
    flats = {lang: T.flatten(t) for lang, t in scores_by_lang.items()}
    langs = list(flats)
    ref_lang = langs[0]
    ref = flats[ref_lang]

    def where(lang: str) -> str:
        return f"{lang!r} ({sources[lang]})" if sources and lang in sources else repr(lang)

    for lang in langs[1:]:
        cur = flats[lang]
        for n in ref:
            if n not in cur:
                raise UserError(f"importance scores {where(lang)} lack key {n!r} that "
                                f"{where(ref_lang)} has; compute both for the same model")
            if shape_of(cur[n]) != shape_of(ref[n]):
                raise UserError(f"importance scores {where(lang)} and {where(ref_lang)} differ "
                                f"at key {n!r}: shape {list(shape_of(cur[n]))} vs "
                                f"{list(shape_of(ref[n]))}; compute both for the same model")
        for n in cur:
            if n not in ref:
                raise UserError(f"importance scores {where(lang)} have key {n!r} that "
                                f"{where(ref_lang)} lacks; compute both for the same model")
    return flats


def _check_lang(scores_by_lang: Mapping[str, Any], lang: str) -> None:
    if lang not in scores_by_lang:
        raise UserError(f"language {lang!r} has no importance scores; have: "
                        f"{', '.join(sorted(scores_by_lang)) or '(none)'}")


# --- public selectors ------------------------------------------------------------------
def _summed_selector(scores_by_lang: Mapping[str, PyTree], langs: Sequence[str], ratio: float,
                     scope: str, include: str | None, exclude: str | None, largest: bool,
                     sources: Mapping[str, str] | None,
                     ) -> tuple[list[str], Callable[[], Iterator[dict[str, jax.Array]]]]:
    flats = validate_scores(scores_by_lang, sources)
    ref = flats[next(iter(flats))]
    names = scope_names(list(ref), include, exclude)

    def key_fn(n: str) -> jax.Array:
        key, bad = _sum_abs_keys(tuple(jnp.asarray(flats[lang][n]) for lang in langs), largest)
        if bool(bad):
            raise UserError(f"importance scores for {n!r} contain NaN (languages "
                            f"{', '.join(langs)}); recompute them")
        return key

    return names, lambda: _iter_select(names, scope, ratio, key_fn)


def _meta(kind: str, ratio: float, langs: Sequence[str], scope: str, include: str | None,
          exclude: str | None, model: str, **extra: Any) -> dict[str, Any]:
    return {"kind": kind, "ratio": ratio, "langs": list(langs), "scope": scope,
            "seed": extra.pop("seed", None), "include": include, "exclude": exclude,
            "k_rule": K_RULE, "model": model, **extra}


def _finish(template: PyTree, names: list[str], flat: dict[str, jax.Array],
            meta: dict[str, Any]) -> Region:
    return Region(full_mask(template, flat), meta, tuple(names))


def _summed(kind: str, scores_by_lang: Mapping[str, PyTree], ratio: float, scope: str,
            include: str | None, exclude: str | None, sources: Mapping[str, str] | None,
            langs: Sequence[str] | None = None, **extra: Any) -> Region:
    ratio = check_ratio(ratio)
    langs = sorted(scores_by_lang) if langs is None else list(langs)
    names, run = _summed_selector(scores_by_lang, langs, ratio, scope, include, exclude,
                                  kind != "bottom", sources)
    flat: dict[str, jax.Array] = {}
    for part in run():
        flat.update(part)
    template = scores_by_lang[next(iter(scores_by_lang))]
    meta = _meta(kind, ratio, sorted(scores_by_lang), scope, include, exclude,
                 fingerprint(template), **extra)
    return _finish(template, names, flat, meta)


def core(scores_by_lang: Mapping[str, PyTree], ratio: float = 0.01, scope: str = "per-tensor",
         include: str | None = DEFAULT_INCLUDE, exclude: str | None = None,
         sources: Mapping[str, str] | None = None) -> Region:
    """The paper's core region: top-k of Σ_lang |score| in each scope unit.

    Languages are summed in sorted-name order (float32) so the result does not depend on
    dict order. k = max(1, floor(ratio × unit size)); ties go to the lower index."""
    return _summed("core", scores_by_lang, ratio, scope, include, exclude, sources)


def bottom(scores_by_lang: Mapping[str, PyTree], ratio: float = 0.01,
           scope: str = "per-tensor", include: str | None = DEFAULT_INCLUDE,
           exclude: str | None = None, sources: Mapping[str, str] | None = None) -> Region:
    """Control: the k *least* important elements by Σ_lang |score| (same k as :func:`core`)."""
    return _summed("bottom", scores_by_lang, ratio, scope, include, exclude, sources)


def top(scores_by_lang: Mapping[str, PyTree], lang: str, ratio: float = 0.01,
        scope: str = "per-tensor", include: str | None = DEFAULT_INCLUDE,
        exclude: str | None = None, sources: Mapping[str, str] | None = None) -> Region:
    """Top-k of one language's |score| (shapes of all languages are still cross-checked)."""
    _check_lang(scores_by_lang, lang)
    return _summed("top", scores_by_lang, ratio, scope, include, exclude, sources,
                   langs=[lang], lang=lang)


def monolingual(scores_by_lang: Mapping[str, PyTree], lang: str, ratio: float = 0.01,
                scope: str = "per-tensor", include: str | None = DEFAULT_INCLUDE,
                exclude: str | None = None, sources: Mapping[str, str] | None = None) -> Region:
    """Elements in top-k(lang) and in no other language's top-k (same ratio and scope).

    With a single language this equals :func:`top`."""
    ratio = check_ratio(ratio)
    _check_lang(scores_by_lang, lang)
    others = [o for o in sorted(scores_by_lang) if o != lang]
    runs = {}
    names: list[str] = []
    for ll in [lang, *others]:
        names, runs[ll] = _summed_selector(scores_by_lang, [ll], ratio, scope, include,
                                           exclude, True, sources)
    flat: dict[str, jax.Array] = {}
    iters = {ll: runs[ll]() for ll in runs}
    for part in iters[lang]:
        acc = dict(part)
        for o in others:
            other = next(iters[o])
            for n in acc:
                acc[n] = acc[n] & ~other[n]
        flat.update(acc)
    template = scores_by_lang[next(iter(scores_by_lang))]
    meta = _meta("monolingual", ratio, sorted(scores_by_lang), scope, include, exclude,
                 fingerprint(template), lang=lang)
    return _finish(template, names, flat, meta)


def random(template: PyTree, ratio: float = 0.01, seed: int = 0, scope: str = "per-tensor",
           include: str | None = DEFAULT_INCLUDE, exclude: str | None = None) -> Region:
    """Control: exactly k uniformly random elements per unit, reproducible from ``seed``.

    Each tensor's random stream is keyed by (seed, crc32 of its HF name), so a tensor's
    draw does not depend on which other tensors are in scope. ``template`` may be params,
    scores or ``jax.ShapeDtypeStruct`` leaves."""
    ratio = check_ratio(ratio)
    flat_t = T.flatten(template)
    names = scope_names(list(flat_t), include, exclude)
    base = jax.random.PRNGKey(int(seed))

    def key_fn(n: str) -> jax.Array:
        return _random_keys(jax.random.fold_in(base, zlib.crc32(n.encode()) & 0x7FFFFFFF),
                            shape_of(flat_t[n]))

    flat: dict[str, jax.Array] = {}
    for part in _iter_select(names, scope, ratio, key_fn):
        flat.update(part)
    meta = _meta("random", ratio, [], scope, include, exclude, fingerprint(template),
                 seed=int(seed))
    return _finish(template, names, flat, meta)


def select(kind: str, scores_by_lang: Mapping[str, PyTree] | None = None, *,
           lang: str | None = None, ratio: float = 0.01, scope: str = "per-tensor",
           include: str | None = DEFAULT_INCLUDE, exclude: str | None = None, seed: int = 0,
           template: PyTree | None = None, sources: Mapping[str, str] | None = None) -> Region:
    """One entry point for the CLI: ``kind`` in core/bottom/random/top/monolingual."""
    if kind not in KINDS:
        raise UserError(f"region kind {kind!r} is unknown; use one of {', '.join(KINDS)}")
    if scope not in SCOPES:
        raise UserError(f"scope {scope!r} is unknown; use one of {', '.join(SCOPES)}")
    if kind == "random":
        if template is None:
            if not scores_by_lang:
                raise UserError("a random region needs a model or score file for its shapes")
            template = scores_by_lang[next(iter(scores_by_lang))]
        return random(template, ratio, seed, scope, include, exclude)
    if not scores_by_lang:
        raise UserError(f"a {kind} region needs importance scores; pass at least one language")
    if kind in ("top", "monolingual"):
        if lang is None:
            raise UserError(f"a {kind} region needs a language; have: "
                            f"{', '.join(sorted(scores_by_lang))}")
        fn = top if kind == "top" else monolingual
        return fn(scores_by_lang, lang, ratio, scope, include, exclude, sources)
    fn = core if kind == "core" else bottom
    return fn(scores_by_lang, ratio, scope, include, exclude, sources)
