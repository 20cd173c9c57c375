"""Regions from importance files read tensor by tensor: the same masks, bit for bit, as the
in-memory selection (ties included), and a memory footprint that does not grow with the
score files (checked under an address-space limit in a subprocess)."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
from conftest import run_worker

from jaxregion import regions as R
from jaxregion import tree as T
from jaxregion.analysis import stability
from jaxregion.io import safetensors_io

LANGS = ("a", "b", "c", "d")


def _names() -> dict[str, tuple[int, ...]]:
    out: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (64, 40)}
    for i in range(3):
        out[f"model.layers.{i}.mlp.down_proj.weight"] = (24, 40)
        out[f"model.layers.{i}.self_attn.q_proj.weight"] = (40, 40)
        out[f"model.layers.{i}.input_layernorm.weight"] = (40,)
    return out


def _tied_scores(seed: int) -> dict[str, dict]:
    """Quarter-steps in [-0.75, 0.75]: most elements tie with many others; one language
    has -0.0 where another has +0.0."""
    rng = np.random.default_rng(seed)
    out = {}
    for i, lang in enumerate(LANGS):
        flat = {}
        for n, s in _names().items():
            x = rng.integers(-3, 4, s).astype(np.float32) * np.float32(0.25)
            flat[n] = np.where(x == 0, -0.0, x).astype(np.float32) if i == 1 else x
        out[lang] = T.unflatten(flat)
    return out


def _order_key(x: np.ndarray) -> np.ndarray:
    b = np.where(x == 0, np.float32(0), x).astype(np.float32).view(np.uint32)
    return np.where(b >> 31 == 1, ~b, b | np.uint32(0x80000000)).astype(np.int64)


def _reference_core(scores: dict, ratio: float, scope: str) -> dict[str, np.ndarray]:
    """Top-k of Σ|score| (float32, languages in sorted order) by a stable sort: ties to the
    lower flat index, earlier tensors (tree order) first."""
    names = R.scope_names(list(T.flatten(scores["a"])))
    flats = {lang: T.flatten(scores[lang]) for lang in sorted(scores)}
    totals = {}
    for n in names:
        t = np.abs(flats["a"][n]).astype(np.float32)
        for lang in sorted(scores)[1:]:
            t = t + np.abs(flats[lang][n])
        totals[n] = t
    units = [[n] for n in names] if scope == "per-tensor" else [names]
    out = {}
    for unit in units:
        keys = np.concatenate([_order_key(totals[n]).ravel() for n in unit])
        k = R.k_for(ratio, keys.size)
        order = np.lexsort((np.arange(keys.size), -keys))[:k]
        flat = np.zeros(keys.size, bool)
        flat[order] = True
        at = 0
        for n in unit:
            out[n] = flat[at : at + totals[n].size].reshape(totals[n].shape)
            at += totals[n].size
    return out


def _write_dir(directory, scores: dict, halves: dict | None = None) -> None:
    meta = {"estimator": "taylor", "windows": "4", "windows_digest": "d"}
    for lang, tree in scores.items():
        R.save_scores(os.path.join(directory, f"{lang}.safetensors"), tree, meta)
        if halves is not None:
            R.save_scores(
                os.path.join(directory, ".halves", f"{lang}.safetensors"),
                halves[lang],
                {**meta, "windows_even": "2", "windows_odd": "2"},
            )


def _same(a: R.Region, b: R.Region) -> None:
    fa, fb = a.flat(), b.flat()
    assert list(fa) == list(fb) and a.universe == b.universe and a.meta == b.meta
    for n in fa:
        np.testing.assert_array_equal(np.asarray(fa[n]), np.asarray(fb[n]), err_msg=n)


def test_core_matches_a_stable_sort_reference():
    scores = _tied_scores(0)
    for scope in ("per-tensor", "global"):
        for ratio in (0.01, 0.3, 0.77):
            got = R.core(scores, ratio, scope=scope).flat()
            for n, want in _reference_core(scores, ratio, scope).items():
                np.testing.assert_array_equal(
                    np.asarray(got[n]), want, err_msg=f"{scope} {ratio} {n}"
                )


@pytest.mark.parametrize(
    "kind", ["core", "bottom", "top", "monolingual", "bottom-monolingual", "random"]
)
def test_files_give_the_in_memory_masks(tmp_path, kind):
    scores = _tied_scores(1)
    _write_dir(str(tmp_path), scores)
    lazy = R.open_importance_dir(str(tmp_path))
    assert all(isinstance(v, R.LazyScores) for v in lazy.values())
    cases = [
        ("per-tensor", "element", R.DEFAULT_INCLUDE),
        ("per-layer", "element", None),
        ("global", "element", R.DEFAULT_INCLUDE),
        ("global", "element", ".*"),
        ("per-tensor", "row", ".*"),
        ("per-tensor", "tensor", ".*"),
        ("per-tensor", "layer", R.DEFAULT_INCLUDE),
    ]
    for scope, gran, inc in cases:
        for ratio in (0.01, 0.3, 1.0):
            kw = dict(
                lang="b",
                ratio=ratio,
                scope=scope,
                granularity=gran,
                seed=5,
                include=R.DEFAULT_INCLUDE if inc is None else inc,
            )
            _same(R.select(kind, lazy, **kw), R.select(kind, scores, **kw))


def test_directory_stability_reads_halves_lazily(tmp_path):
    scores, halves = _tied_scores(2), _tied_scores(3)
    _write_dir(str(tmp_path), scores, halves)
    langs = list(LANGS)
    even, odd = stability.load_halves(str(tmp_path), "c")
    assert isinstance(odd, R.LazyScores)
    want_odd = T.flatten(stability.reconstruct_odd(scores["c"], halves["c"], (2, 2), 1))
    for n, x in want_odd.items():
        np.testing.assert_array_equal(odd.read(n), x, err_msg=n)
    in_memory = {
        lang: (halves[lang], stability.reconstruct_odd(scores[lang], halves[lang], (2, 2), 1))
        for lang in langs
    }
    for kind, lang in (("core", None), ("monolingual", "b")):
        got = stability.directory_stability(kind, str(tmp_path), langs, lang=lang, ratio=0.2)
        want = stability.region_stability(kind, in_memory, lang=lang, ratio=0.2)
        assert got == want


# --- under a memory limit -------------------------------------------------------------------
LAYERS = 12
SHAPES = {
    "mlp.gate_proj.weight": (2048, 1024),
    "mlp.up_proj.weight": (2048, 1024),
    "mlp.down_proj.weight": (1024, 2048),
    "self_attn.q_proj.weight": (1024, 1024),
    "self_attn.o_proj.weight": (1024, 1024),
    "input_layernorm.weight": (1024,),
}
BUDGET_MB = 768  # three 100 MB region masks (region + its two halves) and JAX compiles fit


def _big_dir(directory: str, langs: list[str]) -> int:
    """Random score files (and halves) of a 12-layer Llama, ~384 MB each; total bytes."""
    os.makedirs(os.path.join(directory, ".halves"))
    shapes = {f"model.layers.{i}.{k}": s for i in range(LAYERS) for k, s in SHAPES.items()}
    meta = {
        "format": R.files.SCORES_FORMAT,
        "estimator": "taylor",
        "windows": "8",
        "windows_digest": "synthetic",
    }
    total = 0
    for j, lang in enumerate(langs):
        for path, extra in (
            (os.path.join(directory, f"{lang}.safetensors"), {}),
            (
                os.path.join(directory, ".halves", f"{lang}.safetensors"),
                {"windows_even": "4", "windows_odd": "4"},
            ),
        ):
            rng = np.random.default_rng([j, len(extra)])
            safetensors_io.write(
                path,
                {
                    n: (np.float32, s, lambda s=s, r=rng: r.standard_normal(s, dtype=np.float32))
                    for n, s in shapes.items()
                },
                {**meta, **extra},
            )
            total += os.path.getsize(path)
    return total


@pytest.mark.slow
def test_regions_fit_under_a_limit_smaller_than_the_scores(tmp_path):
    langs = ["l0", "l1", "l2"]
    d, out = tmp_path / "imp", tmp_path / "out"
    out.mkdir()
    total = _big_dir(str(d), langs)
    args = (str(d), str(out), str(BUDGET_MB))
    res = run_worker("regions_stream_worker.py", *args, timeout=900, MALLOC_ARENA_MAX="2")
    assert total > res["limit_bytes"]  # the score files alone exceed what the process may map
    assert res["whole_load"] == "MemoryError"  # ... so loading them whole fails under it
    per_tensor_k = sum(R.k_for(0.01, math.prod(s)) for s in SHAPES.values()) * LAYERS
    for kind in ("core", "bottom", "random"):
        assert res[kind]["size"] == per_tensor_k, kind
    assert 0 < res["monolingual"]["size"] <= per_tensor_k
    for kind in ("core", "bottom", "monolingual"):
        assert res[kind]["stability"].startswith("stability: split-half Jaccard"), res[kind]
    assert res["random"]["stability"] is None
    # the file written under the limit is the in-memory selection (no limit here)
    want = R.core(R.load_importance_dir(str(d)), 0.01)
    got = R.load_region(str(out / "core.safetensors"))
    for n, m in want.flat().items():
        np.testing.assert_array_equal(np.asarray(got.flat()[n]), np.asarray(m), err_msg=n)
