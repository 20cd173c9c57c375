"""Region and importance-score files (safetensors, HF names, HF layout, no transposes).

Region file: one uint8 tensor per HF name in the region's universe, holding
``numpy.packbits(mask.ravel(), bitorder="little")``; header ``__metadata__`` (all str):
``format``, ``shapes`` (JSON name → shape), ``kind``, ``ratio``, ``languages`` (JSON list),
``scope``, ``granularity`` (element/row/column/tensor/layer: a coarse region is still an
element mask), ``seed``, ``include``, ``exclude`` (``""`` = none), ``model`` (fingerprint) and
``meta`` (the full JSON meta). Any numpy/PyTorch user can apply it:
``np.unpackbits(t, bitorder="little")[:n].reshape(shape).astype(bool)``.
"""

from __future__ import annotations

import functools
import json
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from jaxregion import tree as T
from jaxregion.errors import UserError
from jaxregion.io.atomic import atomic_path
from jaxregion.io.safetensors_io import SafetensorsFile
from jaxregion.io.safetensors_io import write as write_tensors
from jaxregion.parallel.distributed import write_on_main
from jaxregion.regions.lazy import LazyScores, tree_order
from jaxregion.regions.region import Region, fingerprint, full_mask, shape_of, universe_of
from jaxregion.regions.select import validate_scores
from jaxregion.safety import check_name, excerpt, reading

PyTree = Any
REGION_FORMAT = "jaxregion.region.v1"
SCORES_FORMAT = "jaxregion.scores.v1"


def _s(v: Any) -> str:
    return "" if v is None else str(v)


def save_region(path: str, region: Region | PyTree, model: str | None = None) -> None:
    """Write ``region`` (or a bare mask) to ``path`` atomically; every universe tensor is
    stored, all-False ones included, so the file fully describes the mask.

    Multi-host: every process calls it; the mask is gathered one tensor at a time and
    process 0 writes (:func:`jaxregion.parallel.distributed.write_on_main`)."""
    write_on_main(_write_region, path, region, model)


def _write_region(path: str, region: Region | PyTree, model: str | None) -> None:
    if not isinstance(region, Region):
        region = Region(region, {"kind": "mask"})
    flat = region.flat()
    names = universe_of(region)
    tensors: dict[str, np.ndarray] = {}
    shapes: dict[str, list[int]] = {}
    for n in names:
        m = np.asarray(flat[n]).astype(bool)
        shapes[n] = list(m.shape)
        tensors[n] = np.packbits(m.ravel(), bitorder="little")
    meta = dict(region.meta)
    model = model or meta.get("model") or fingerprint(region.mask)
    meta["model"] = model
    header = {
        "format": REGION_FORMAT,
        "shapes": json.dumps(shapes),
        "kind": _s(meta.get("kind")),
        "ratio": _s(meta.get("ratio")),
        "languages": json.dumps(list(meta.get("langs") or [])),
        "scope": _s(meta.get("scope")),
        "granularity": _s(meta.get("granularity") or "element"),
        "seed": _s(meta.get("seed")),
        "include": _s(meta.get("include")),
        "exclude": _s(meta.get("exclude")),
        "model": model,
        "meta": json.dumps(meta),
    }
    with atomic_path(path) as tmp:
        save_file(tensors, tmp, metadata=header)


def _open(
    path: str, what: str, record: bool = True
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    if not os.path.isfile(path):
        raise UserError(f"{what} file {path} not found")
    SafetensorsFile(path)  # the header, validated with bounded work, before safetensors reads it
    if record:  # an input of the command: protected from its writes (safety.guard)
        reading(path)
    try:
        with safe_open(path, framework="np") as f:
            meta = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    except Exception as e:  # safetensors raises several types for corrupt files
        raise UserError(
            f"{what} file {path} is not a readable safetensors file: {str(e)[:200]}"
        ) from None
    return tensors, meta


def _bad_meta(path: str, key: str, value: Any, want: str) -> UserError:
    return UserError(
        f"region file {path}: metadata {key} = {excerpt(value)} is not {want}; "
        "re-create the region file with jaxregion regions"
    )


def _meta_from_header(h: Mapping[str, str], path: str = "region file") -> dict[str, Any]:
    """The region's meta, from the full JSON ``meta`` or the flat keys, type-checked."""
    meta: dict[str, Any] | None = None
    if h.get("meta"):
        try:
            meta = json.loads(h["meta"])
        except (json.JSONDecodeError, RecursionError):
            meta = None
        if meta is not None and not isinstance(meta, dict):
            raise _bad_meta(path, "meta", meta, "a JSON object")
    if meta is None:
        meta = {
            "kind": h.get("kind") or None,
            "scope": h.get("scope") or None,
            "include": h.get("include") or None,
            "exclude": h.get("exclude") or None,
            "model": h.get("model"),
        }
        for key, conv in (("ratio", float), ("seed", int)):
            if h.get(key):
                try:
                    meta[key] = conv(h[key])
                except ValueError:
                    raise _bad_meta(path, key, h[key], "a number") from None
        if h.get("languages"):
            try:
                meta["langs"] = json.loads(h["languages"])
            except (json.JSONDecodeError, RecursionError):
                raise _bad_meta(path, "languages", h["languages"], "a JSON list") from None
    r = meta.get("ratio")
    if r is not None and (isinstance(r, bool) or not isinstance(r, (int, float)) or not 0 < r <= 1):
        raise _bad_meta(path, "ratio", r, "a number in (0, 1]")
    seed = meta.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise _bad_meta(path, "seed", seed, "an integer")
    langs = meta.get("langs")
    if langs is not None and (
        not isinstance(langs, list) or not all(isinstance(x, str) for x in langs)
    ):
        raise _bad_meta(path, "langs", langs, "a list of language names")
    return meta


def _shapes(path: str, header: Mapping[str, str]) -> dict[str, tuple[int, ...]]:
    """The ``shapes`` metadata: a JSON object of name -> list of non-negative ints."""
    try:
        raw = json.loads(header["shapes"])
    except (KeyError, json.JSONDecodeError, RecursionError):
        raise UserError(
            f"region file {path} has no valid 'shapes' metadata; is it a jaxregion region file?"
        ) from None
    if not isinstance(raw, dict):
        raise _bad_meta(path, "shapes", raw, "a JSON object of name -> shape")
    out = {}
    for k, v in raw.items():
        if not isinstance(v, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 2**40 for d in v
        ):
            raise _bad_meta(path, f"shapes[{excerpt(k)}]", v, "a list of non-negative integers")
        out[k] = tuple(v)
    return out


def load_region(path: str, template: PyTree | None = None, *, state: bool = False) -> Region:
    """Read a region file into a bool tree (HF layout).

    With ``template`` (params, abstract params or any tree of that model) the mask has the
    template's full structure — leaves absent from the file are all-False — and a file for
    another model raises UserError naming the key. Without it, the tree has only the
    file's tensors. ``state``: the file is the command's own working state (rewritten
    later), not one of its inputs, so the write guard does not protect it."""
    packed, header = _open(path, "region", record=not state)
    shapes = _shapes(path, header)
    lacking = [n for n in shapes if n not in packed]
    if lacking:  # its metadata says what the region is: every listed tensor must be there
        raise UserError(
            f"region file {path}: 'shapes' lists {lacking[0]!r}"
            f"{f' (and {len(lacking) - 1} more)' if len(lacking) > 1 else ''}, "
            "which the file does not hold; it is truncated or was edited"
        )
    flat: dict[str, np.ndarray] = {}
    for n, t in packed.items():
        if n not in shapes:
            raise UserError(f"region file {path}: tensor {n!r} has no entry in 'shapes'")
        size = math.prod(shapes[n])
        if t.dtype != np.uint8 or t.ndim != 1 or t.size != (size + 7) // 8:
            raise UserError(
                f"region file {path}: tensor {n!r} holds {t.size} {t.dtype} values, "
                f"expected {(size + 7) // 8} uint8 for shape {list(shapes[n])}"
            )
        flat[n] = np.unpackbits(t, bitorder="little", count=size).reshape(shapes[n]).astype(bool)
    meta = _meta_from_header(header, path)
    if template is None:
        tree = T.unflatten({n: jnp.asarray(v) for n, v in flat.items()})
        order = [n for n in T.flatten(tree) if n in flat]
        return Region(tree, meta, tuple(order))
    tflat = T.flatten(template)
    for n, v in flat.items():
        if n not in tflat:
            raise UserError(
                f"region file {path} is for another model: it has key {n!r}, which the model lacks"
            )
        if tuple(v.shape) != shape_of(tflat[n]):
            raise UserError(
                f"region file {path} is for another model: key {n!r} has shape "
                f"{list(v.shape)}, model has {list(shape_of(tflat[n]))}"
            )
    mask = full_mask(template, flat)
    return Region(mask, meta, tuple(n for n in tflat if n in flat))


# --- importance scores ---------------------------------------------------------------------
def save_scores(path: str, tree: PyTree, metadata: Mapping[str, Any] | None = None) -> None:
    """Write a score tree as float32 tensors keyed by HF name, atomically.

    Metadata values that are not str are JSON-encoded; ``format`` and ``model`` (the tree's
    fingerprint) are added unless given. Multi-host: as :func:`save_region`."""
    write_on_main(_write_scores, path, tree, metadata)


def _write_scores(path: str, tree: PyTree, metadata: Mapping[str, Any] | None) -> None:
    """Streams tensor by tensor (a jax array is read in place, never copied whole): the
    file costs one tensor's memory, not the tree's. A non-finite tensor aborts the atomic
    write, so nothing is written."""
    flat = T.flatten(tree)
    meta = {k: v if isinstance(v, str) else json.dumps(v) for k, v in (metadata or {}).items()}
    meta.setdefault("format", SCORES_FORMAT)
    meta.setdefault("model", fingerprint(tree))

    def finite(n: str) -> np.ndarray:
        t = np.asarray(flat[n], dtype=np.float32)
        if not np.isfinite(t).all():
            raise UserError(
                f"{path}: the scores of {n} are not finite (NaN or inf): the model "
                "computes non-finite values; check its config.json and weights. "
                "Nothing written"
            )
        return t

    f32 = np.dtype(np.float32)
    specs = {n: (f32, shape_of(x), functools.partial(finite, n)) for n, x in flat.items()}
    write_tensors(path, specs, meta)


def load_scores(path: str) -> tuple[PyTree, dict[str, str]]:
    """(score tree of float32 numpy arrays, metadata dict of str)."""
    tensors, meta = _open(path, "importance")
    for n, t in tensors.items():
        if t.dtype != np.float32:
            raise UserError(
                f"importance file {path}: tensor {n!r} is {t.dtype}, expected "
                "float32; recompute the scores"
            )
    return T.unflatten(tensors), meta


def importance_path(directory: str, lang: str) -> str:
    """Where the scores of ``lang`` live in an importance directory: ``DIR/LANG.safetensors``.

    ``lang`` is data, never a path: it must be a valid name (:func:`safety.check_name`)."""
    check_name(lang, f"importance directory {directory}")
    return os.path.join(directory, f"{lang}.safetensors")


def _dir_langs(directory: str, langs: Sequence[str] | None) -> dict[str, str]:
    """``{lang: DIR/LANG.safetensors}``, every file checked to exist (``langs=None``: every
    ``*.safetensors`` in the directory, sorted)."""
    if not os.path.isdir(directory):
        raise UserError(f"importance directory {directory} not found")
    if langs is None:
        langs = sorted(
            f[: -len(".safetensors")]
            for f in os.listdir(directory)
            if f.endswith(".safetensors") and not f.startswith(".")
        )
        if not langs:
            raise UserError(f"importance directory {directory} has no LANG.safetensors files")
    paths = {lang: importance_path(directory, lang) for lang in langs}
    for lang, p in paths.items():
        if not os.path.isfile(p):
            raise UserError(
                f"language {lang!r} has no importance file: expected {p}; compute "
                "its importance first or drop the language"
            )
    return paths


def load_importance_dir(directory: str, langs: Sequence[str] | None = None) -> dict[str, PyTree]:
    """``{lang: score tree}`` from ``DIR/LANG.safetensors``, cross-checked for one model.

    ``langs=None`` loads every ``*.safetensors`` in the directory (sorted)."""
    paths = _dir_langs(directory, langs)
    out: dict[str, PyTree] = {}
    metas: dict[str, dict[str, str]] = {}
    for lang, p in paths.items():
        out[lang], metas[p] = load_scores(p)
    check_same_inputs(metas)
    validate_scores(out, paths)
    return out


def open_scores(path: str, *, record: bool = True) -> tuple[LazyScores, dict[str, str]]:
    """(the scores of ``path`` read tensor by tensor, metadata): only the header is read
    now. ``record``: an input of the command (protected from its writes)."""
    if not os.path.isfile(path):
        raise UserError(f"importance file {path} not found")
    f = SafetensorsFile(path)
    if record:
        reading(path)
    for n, info in f.tensors.items():
        if info.dtype != np.float32:
            raise UserError(
                f"importance file {path}: tensor {n!r} is {info.dtype}, expected "
                "float32; recompute the scores"
            )
    shapes = {n: f.tensors[n].shape for n in tree_order(f.tensors)}
    return LazyScores(shapes, f.read), dict(f.metadata)


def open_importance_dir(
    directory: str, langs: Sequence[str] | None = None
) -> dict[str, LazyScores]:
    """:func:`load_importance_dir` without loading: ``{lang: LazyScores}``, headers checked
    (one model, one estimator/seq_len/dtype), tensors read when a selection asks."""
    paths = _dir_langs(directory, langs)
    out: dict[str, LazyScores] = {}
    metas: dict[str, dict[str, str]] = {}
    for lang, p in paths.items():
        out[lang], metas[p] = open_scores(p)
    check_same_inputs(metas)
    validate_scores(out, paths)
    return out


MUST_AGREE = ("estimator", "seq_len", "dtype")


def check_same_inputs(metas: Mapping[str, Mapping[str, str]]) -> None:
    """Importance files combined into one region must share estimator, seq_len and dtype
    (when recorded); else a UserError naming two files that differ."""
    for key in MUST_AGREE:
        have = {p: m[key] for p, m in metas.items() if m.get(key)}
        if len(set(have.values())) > 1:
            (pa, va), (pb, vb) = [
                next(iter(have.items())),
                next((p, v) for p, v in have.items() if v != next(iter(have.values()))),
            ]
            raise UserError(
                f"importance files differ in {key}: {pa} has {key}={va}, {pb} has "
                f"{key}={vb}; recompute them with one {key}"
            )
