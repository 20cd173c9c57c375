"""Region and importance-score files (safetensors, HF names, HF layout, no transposes).

Region file: one uint8 tensor per HF name in the region's universe, holding
``numpy.packbits(mask.ravel(), bitorder="little")``; header ``__metadata__`` (all str):
``format``, ``shapes`` (JSON name → shape), ``kind``, ``ratio``, ``languages`` (JSON list),
``scope``, ``seed``, ``include``, ``exclude`` (``""`` = none), ``model`` (fingerprint) and
``meta`` (the full JSON meta). Any numpy/PyTorch user can apply it:
``np.unpackbits(t, bitorder="little")[:n].reshape(shape).astype(bool)``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from jaxregion import tree as T
from jaxregion.distributed import write_on_main
from jaxregion.errors import UserError
from jaxregion.io import atomic_path
from jaxregion.regions.region import Region, fingerprint, full_mask, shape_of, universe_of
from jaxregion.regions.select import validate_scores

PyTree = Any
REGION_FORMAT = "jaxregion.region.v1"
SCORES_FORMAT = "jaxregion.scores.v1"


def _s(v: Any) -> str:
    return "" if v is None else str(v)


def save_region(path: str, region: Region | PyTree, model: str | None = None) -> None:
    """Write ``region`` (or a bare mask) to ``path`` atomically; every universe tensor is
    stored, all-False ones included, so the file fully describes the mask.

    Multi-host: every process calls it; the mask is gathered one tensor at a time and
    process 0 writes (:func:`jaxregion.distributed.write_on_main`)."""
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
        "seed": _s(meta.get("seed")),
        "include": _s(meta.get("include")),
        "exclude": _s(meta.get("exclude")),
        "model": model,
        "meta": json.dumps(meta),
    }
    with atomic_path(path) as tmp:
        save_file(tensors, tmp, metadata=header)


def _open(path: str, what: str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    if not os.path.isfile(path):
        raise UserError(f"{what} file {path} not found")
    try:
        with safe_open(path, framework="np") as f:
            meta = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    except Exception as e:  # safetensors raises several types for corrupt files
        raise UserError(f"{what} file {path} is not a readable safetensors file: {e}") from None
    return tensors, meta


def _meta_from_header(h: Mapping[str, str]) -> dict[str, Any]:
    if h.get("meta"):
        try:
            return dict(json.loads(h["meta"]))
        except json.JSONDecodeError:
            pass
    meta: dict[str, Any] = {"kind": h.get("kind") or None, "scope": h.get("scope") or None,
                            "include": h.get("include") or None,
                            "exclude": h.get("exclude") or None, "model": h.get("model")}
    if h.get("ratio"):
        meta["ratio"] = float(h["ratio"])
    if h.get("seed"):
        meta["seed"] = int(h["seed"])
    if h.get("languages"):
        meta["langs"] = json.loads(h["languages"])
    return meta


def load_region(path: str, template: PyTree | None = None) -> Region:
    """Read a region file into a bool tree (HF layout).

    With ``template`` (params, abstract params or any tree of that model) the mask has the
    template's full structure — leaves absent from the file are all-False — and a file for
    another model raises UserError naming the key. Without it, the tree has only the
    file's tensors."""
    packed, header = _open(path, "region")
    try:
        shapes = {k: tuple(int(d) for d in v) for k, v in json.loads(header["shapes"]).items()}
    except (KeyError, json.JSONDecodeError, TypeError, ValueError):
        raise UserError(f"region file {path} has no valid 'shapes' metadata; is it a "
                        "jaxregion region file?") from None
    flat: dict[str, np.ndarray] = {}
    for n, t in packed.items():
        if n not in shapes:
            raise UserError(f"region file {path}: tensor {n!r} has no entry in 'shapes'")
        size = int(np.prod(shapes[n]))
        if t.dtype != np.uint8 or t.ndim != 1 or t.size != (size + 7) // 8:
            raise UserError(f"region file {path}: tensor {n!r} holds {t.size} {t.dtype} values, "
                            f"expected {(size + 7) // 8} uint8 for shape {list(shapes[n])}")
        flat[n] = np.unpackbits(t, bitorder="little", count=size).reshape(shapes[n]).astype(bool)
    meta = _meta_from_header(header)
    if template is None:
        tree = T.unflatten({n: jnp.asarray(v) for n, v in flat.items()})
        order = [n for n in T.flatten(tree) if n in flat]
        return Region(tree, meta, tuple(order))
    tflat = T.flatten(template)
    for n, v in flat.items():
        if n not in tflat:
            raise UserError(f"region file {path} is for another model: it has key {n!r}, which "
                            "the model lacks")
        if tuple(v.shape) != shape_of(tflat[n]):
            raise UserError(f"region file {path} is for another model: key {n!r} has shape "
                            f"{list(v.shape)}, model has {list(shape_of(tflat[n]))}")
    mask = full_mask(template, flat)
    return Region(mask, meta, tuple(n for n in tflat if n in flat))


# --- importance scores ---------------------------------------------------------------------
def save_scores(path: str, tree: PyTree, metadata: Mapping[str, Any] | None = None) -> None:
    """Write a score tree as float32 tensors keyed by HF name, atomically.

    Metadata values that are not str are JSON-encoded; ``format`` and ``model`` (the tree's
    fingerprint) are added unless given. Multi-host: as :func:`save_region`."""
    write_on_main(_write_scores, path, tree, metadata)


def _write_scores(path: str, tree: PyTree, metadata: Mapping[str, Any] | None) -> None:
    tensors = {n: np.ascontiguousarray(np.asarray(x, dtype=np.float32))
               for n, x in T.flatten(tree).items()}
    meta = {k: v if isinstance(v, str) else json.dumps(v) for k, v in (metadata or {}).items()}
    meta.setdefault("format", SCORES_FORMAT)
    meta.setdefault("model", fingerprint(tree))
    with atomic_path(path) as tmp:
        save_file(tensors, tmp, metadata=meta)


def load_scores(path: str) -> tuple[PyTree, dict[str, str]]:
    """(score tree of float32 numpy arrays, metadata dict of str)."""
    tensors, meta = _open(path, "importance")
    for n, t in tensors.items():
        if t.dtype != np.float32:
            raise UserError(f"importance file {path}: tensor {n!r} is {t.dtype}, expected "
                            "float32; recompute the scores")
    return T.unflatten(tensors), meta


def importance_path(directory: str, lang: str) -> str:
    """Where the scores of ``lang`` live in an importance directory: ``DIR/LANG.safetensors``."""
    return os.path.join(directory, f"{lang}.safetensors")


def load_importance_dir(directory: str, langs: Sequence[str] | None = None) -> dict[str, PyTree]:
    """``{lang: score tree}`` from ``DIR/LANG.safetensors``, cross-checked for one model.

    ``langs=None`` loads every ``*.safetensors`` in the directory (sorted)."""
    if not os.path.isdir(directory):
        raise UserError(f"importance directory {directory} not found")
    if langs is None:
        langs = sorted(f[: -len(".safetensors")] for f in os.listdir(directory)
                       if f.endswith(".safetensors") and not f.startswith("."))
        if not langs:
            raise UserError(f"importance directory {directory} has no LANG.safetensors files")
    out: dict[str, PyTree] = {}
    sources: dict[str, str] = {}
    for lang in langs:
        p = importance_path(directory, lang)
        if not os.path.isfile(p):
            raise UserError(f"language {lang!r} has no importance file: expected {p}; compute "
                            "its importance first or drop the language")
        out[lang], _ = load_scores(p)
        sources[lang] = p
    validate_scores(out, sources)
    return out
