"""Region selection, algebra, statistics and files, checked against NumPy/PyTorch references."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors import safe_open

from jaxregion import regions as R
from jaxregion import tree as T
from jaxregion.errors import UserError

SHAPES = {
    "model.embed_tokens.weight": (11, 12),
    "model.norm.weight": (12,),
    **{
        f"model.layers.{i}.{k}": s
        for i in range(2)
        for k, s in {
            "input_layernorm.weight": (12,),
            "self_attn.q_proj.weight": (12, 12),
            "self_attn.o_proj.weight": (12, 12),
            "mlp.up_proj.weight": (20, 12),
            "mlp.down_proj.weight": (12, 20),
        }.items()
    },
}


def make_tree(rng: np.random.Generator, fn=None) -> dict:
    fn = fn or (lambda shape: rng.standard_normal(shape).astype(np.float32))
    return T.unflatten({n: fn(s) for n, s in SHAPES.items()})


@pytest.fixture
def scores() -> dict:
    rng = np.random.default_rng(0)
    return {lang: make_tree(rng) for lang in ("en", "fr", "zh")}


def in_scope() -> list[str]:
    return [
        n for n in T.flatten(T.unflatten({n: 0 for n in SHAPES})) if n.startswith("model.layers.")
    ]


def units(scope: str) -> list[list[str]]:
    names = in_scope()
    if scope == "per-tensor":
        return [[n] for n in names]
    if scope == "global":
        return [names]
    return [[n for n in names if n.startswith(f"model.layers.{i}.")] for i in range(2)]


def ref_select(
    values: dict[str, np.ndarray], ratio: float, scope: str, largest: bool = True
) -> dict[str, np.ndarray]:
    """Brute force: per unit, concatenate in tree order, stable sort, take the first k."""
    out = {}
    for unit in units(scope):
        cat = np.concatenate([values[n].ravel() for n in unit])
        k = R.k_for(ratio, cat.size)
        order = np.argsort(-cat if largest else cat, kind="stable")[:k]
        sel = np.zeros(cat.size, bool)
        sel[order] = True
        off = 0
        for n in unit:
            size = values[n].size
            out[n] = sel[off : off + size].reshape(values[n].shape)
            off += size
    return out


def summed_abs(scores: dict, langs: list[str]) -> dict[str, np.ndarray]:
    flats = {lang: T.flatten(scores[lang]) for lang in langs}
    out = {}
    for n in flats[langs[0]]:
        acc = np.abs(flats[langs[0]][n])
        for lang in langs[1:]:
            acc = acc + np.abs(flats[lang][n])
        out[n] = acc
    return out


def flat_np(region) -> dict[str, np.ndarray]:
    return {n: np.asarray(v) for n, v in region.flat().items()}


# --- selection -------------------------------------------------------------------------
def test_k_rule() -> None:
    assert R.k_for(0.29, 100) == 29  # float 0.29*100 = 28.999...
    assert R.k_for(0.01, 45_088_768) == 450_887
    assert R.k_for(1e-9, 10) == 1
    assert R.k_for(1.0, 7) == 7


@pytest.mark.parametrize("scope", ["per-tensor", "per-layer", "global"])
@pytest.mark.parametrize("ratio", [0.01, 0.1, 0.37])
def test_core_equals_bruteforce_reference(scores: dict, scope: str, ratio: float) -> None:
    region = R.core(scores, ratio, scope=scope)
    ref = ref_select(summed_abs(scores, ["en", "fr", "zh"]), ratio, scope)
    got = flat_np(region)
    for n in SHAPES:
        if n in ref:
            np.testing.assert_array_equal(got[n], ref[n], err_msg=n)
        else:
            assert not got[n].any(), f"{n} is out of scope but selected"
    for unit in units(scope):
        assert sum(int(got[n].sum()) for n in unit) == R.k_for(
            ratio, sum(int(np.prod(SHAPES[n])) for n in unit)
        )
    assert region.meta["kind"] == "core" and region.meta["langs"] == ["en", "fr", "zh"]
    assert list(region.universe) == in_scope()


@pytest.mark.parametrize("scope", ["per-tensor", "global"])
def test_bottom_and_top_equal_reference(scores: dict, scope: str) -> None:
    ref_b = ref_select(summed_abs(scores, ["en", "fr", "zh"]), 0.1, scope, largest=False)
    got_b = flat_np(R.bottom(scores, 0.1, scope=scope))
    ref_t = ref_select(summed_abs(scores, ["fr"]), 0.1, scope)
    got_t = flat_np(R.top(scores, "fr", 0.1, scope=scope))
    for n in ref_b:
        np.testing.assert_array_equal(got_b[n], ref_b[n])
        np.testing.assert_array_equal(got_t[n], ref_t[n])


@pytest.mark.parametrize("scope", ["per-tensor", "per-layer", "global"])
def test_ties_give_exact_k_lowest_index_first(scope: str) -> None:
    rng = np.random.default_rng(1)
    s = {"en": make_tree(rng, lambda shape: rng.integers(0, 3, shape).astype(np.float32))}
    got = flat_np(R.core(s, 0.3, scope=scope))
    ref = ref_select(summed_abs(s, ["en"]), 0.3, scope)
    for n in ref:
        np.testing.assert_array_equal(got[n], ref[n])
    # all-equal scores: exactly the first k of each tensor
    z = {"en": make_tree(rng, lambda shape: np.ones(shape, np.float32))}
    got = flat_np(R.core(z, 0.25))
    for n in in_scope():
        k = R.k_for(0.25, int(np.prod(SHAPES[n])))
        assert got[n].ravel()[:k].all() and not got[n].ravel()[k:].any()


def test_negative_and_signed_zero_scores_use_magnitude() -> None:
    rng = np.random.default_rng(2)
    s = {"en": make_tree(rng)}
    neg = {"en": jax.tree.map(lambda x: -x, s["en"])}
    a, b = flat_np(R.core(s, 0.2)), flat_np(R.core(neg, 0.2))
    for n in a:
        np.testing.assert_array_equal(a[n], b[n])
    zeros = {
        "en": make_tree(
            rng, lambda shape: np.where(rng.random(shape) < 0.5, -0.0, 0.0).astype(np.float32)
        )
    }
    got = flat_np(R.core(zeros, 0.25))
    for n in in_scope():  # -0.0 and +0.0 tie, so index order decides
        k = R.k_for(0.25, int(np.prod(SHAPES[n])))
        assert got[n].ravel()[:k].all() and not got[n].ravel()[k:].any()


@pytest.mark.parametrize("scope", ["per-tensor", "per-layer", "global"])
def test_monolingual_disjoint_from_other_languages(scores: dict, scope: str) -> None:
    mono = R.monolingual(scores, "en", 0.2, scope=scope)
    top_en = R.top(scores, "en", 0.2, scope=scope)
    others = [R.top(scores, o, 0.2, scope=scope) for o in ("fr", "zh")]
    assert mono.size > 0
    for o in others:
        assert R.size(R.intersection(mono, o)) == 0
    expected = R.difference(top_en, R.union(*others))
    assert R.jaccard(mono, expected) == 1.0 and R.size(mono) == R.size(expected)
    assert mono.meta["lang"] == "en"


@pytest.mark.parametrize("scope", ["per-tensor", "per-layer", "global"])
def test_bottom_monolingual_disjoint_from_other_bottoms(scores: dict, scope: str) -> None:
    bmono = R.bottom_monolingual(scores, "en", 0.2, scope=scope)
    bottom = {x: R.bottom({x: scores[x]}, 0.2, scope=scope) for x in scores}
    assert bmono.size > 0
    for o in ("fr", "zh"):
        assert R.size(R.intersection(bmono, bottom[o])) == 0
    expected = R.difference(bottom["en"], R.union(bottom["fr"], bottom["zh"]))
    assert R.jaccard(bmono, expected) == 1.0 and R.size(bmono) == R.size(expected)
    assert bmono.meta["kind"] == "bottom-monolingual" and bmono.meta["lang"] == "en"


def test_random_exact_k_and_seeded(scores: dict) -> None:
    tmpl = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, jnp.bfloat16), scores["en"])
    for scope in ("per-tensor", "per-layer", "global"):
        a = R.random(tmpl, 0.15, seed=3, scope=scope)
        b = R.random(scores["en"], 0.15, seed=3, scope=scope)
        c = R.random(tmpl, 0.15, seed=4, scope=scope)
        fa, fb = flat_np(a), flat_np(b)
        for unit in units(scope):
            assert sum(int(fa[n].sum()) for n in unit) == R.k_for(
                0.15, sum(int(np.prod(SHAPES[n])) for n in unit)
            )
        assert all(np.array_equal(fa[n], fb[n]) for n in fa)
        assert R.jaccard(a, c) < 1.0
        assert a.meta["seed"] == 3


@pytest.mark.slow
def test_large_tensor_exact_k() -> None:
    rng = np.random.default_rng(5)
    x = rng.standard_normal((11008, 4096), dtype=np.float32)
    s = {"en": {"model": {"layers": [{"mlp": {"down_proj": {"weight": x}}}]}}}
    region = R.core(s, 0.01)
    m = np.asarray(region.flat()["model.layers.0.mlp.down_proj.weight"])
    k = R.k_for(0.01, x.size)
    assert int(m.sum()) == k
    thresh = np.partition(np.abs(x).ravel(), x.size - k)[x.size - k]
    assert np.all(np.abs(x)[m] >= thresh) and np.all(np.abs(x)[~m] <= thresh)


def test_include_exclude(scores: dict) -> None:
    r = R.core(scores, 0.1, include=r"mlp\.", exclude=r"down_proj")
    assert set(r.universe) == {f"model.layers.{i}.mlp.up_proj.weight" for i in range(2)}
    f = flat_np(r)
    assert not any(f[n].any() for n in f if n not in r.universe)
    r_all = R.core(scores, 0.1, include=None)
    assert "model.embed_tokens.weight" in r_all.universe


@pytest.mark.parametrize("ratio", [0, 1.5, -1, float("nan"), "x"])
def test_bad_ratio(scores: dict, ratio) -> None:
    with pytest.raises(UserError, match="ratio"):
        R.core(scores, ratio)


def test_bad_inputs(scores: dict) -> None:
    with pytest.raises(UserError, match=r"include regex 'nothing_here'.*model\."):
        R.core(scores, 0.1, include="nothing_here")
    with pytest.raises(UserError, match="exclude regex"):
        R.core(scores, 0.1, exclude=".")
    with pytest.raises(UserError, match="'de'.*en, fr, zh"):
        R.monolingual(scores, "de", 0.1)
    with pytest.raises(UserError, match="scope 'per-row'"):
        R.core(scores, 0.1, scope="per-row")
    with pytest.raises(UserError, match="per-layer.*embed_tokens"):
        R.core(scores, 0.1, scope="per-layer", include=None)
    bad = dict(scores)
    bad["fr"] = T.replace(
        scores["fr"], "model.layers.1.mlp.up_proj.weight", np.zeros((3, 3), np.float32)
    )
    with pytest.raises(UserError, match=r"fr\.st.*en\.st.*model\.layers\.1\.mlp\.up_proj\.weight"):
        R.core(bad, 0.1, sources={"en": "en.st", "fr": "fr.st", "zh": "zh.st"})
    nan = {
        "en": T.replace(
            scores["en"], "model.layers.0.mlp.up_proj.weight", np.full((20, 12), np.nan, np.float32)
        )
    }
    with pytest.raises(UserError, match="NaN"):
        R.core(nan, 0.1)


def test_select_dispatcher(scores: dict) -> None:
    a = R.select("core", scores, ratio=0.1)
    assert R.jaccard(a, R.core(scores, 0.1)) == 1.0
    assert R.select("random", scores, ratio=0.1, seed=1).meta["kind"] == "random"
    with pytest.raises(UserError, match="needs a language"):
        R.select("top", scores, ratio=0.1)
    with pytest.raises(UserError, match="kind 'best'"):
        R.select("best", scores)


def test_region_is_a_pytree(scores: dict) -> None:
    r = R.core(scores, 0.1)
    r2 = jax.tree.map(lambda x: ~x, r)
    assert isinstance(r2, R.Region) and r2.meta == r.meta and r2.universe == r.universe
    n = jax.jit(lambda reg: sum(jnp.sum(x) for x in jax.tree.leaves(reg)))(r)
    assert int(n) == r.size
    assert len(jax.tree.leaves(r)) == len(SHAPES)


# --- algebra ---------------------------------------------------------------------------
ALG_SHAPES = {
    "model.layers.0.a.weight": (3, 4),
    "model.layers.0.b.weight": (5,),
    "model.layers.1.a.weight": (3, 4),
}
N_ALG = sum(int(np.prod(s)) for s in ALG_SHAPES.values())


def region_from_bits(bits: list[bool]) -> R.Region:
    arr = np.array(bits, bool)
    flat, off = {}, 0
    for n, s in ALG_SHAPES.items():
        size = int(np.prod(s))
        flat[n] = jnp.asarray(arr[off : off + size].reshape(s))
        off += size
    return R.Region(T.unflatten(flat), {"kind": "test"})


def bits_of(r) -> np.ndarray:
    return np.concatenate([np.asarray(v).ravel() for v in T.flatten(R.mask_of(r)).values()])


masks = st.lists(st.booleans(), min_size=N_ALG, max_size=N_ALG).map(region_from_bits)


@settings(max_examples=40, deadline=None)
@given(masks, masks, masks)
def test_set_laws(a: R.Region, b: R.Region, c: R.Region) -> None:
    def eq(x, y) -> bool:
        return np.array_equal(bits_of(x), bits_of(y))

    assert eq(a | b, b | a) and eq(a & b, b & a)
    assert eq((a | b) | c, a | (b | c)) and eq((a & b) & c, a & (b & c))
    assert eq(~(a | b), ~a & ~b) and eq(~(a & b), ~a | ~b)
    assert eq(a - b, a & ~b) and eq(~~a, a)
    assert eq(a & (b | c), (a & b) | (a & c))
    assert R.jaccard(a, a) == 1.0
    j = R.jaccard(a, b)
    assert j == R.jaccard(b, a) and 0.0 <= j <= 1.0
    assert R.size(a | b) == R.size(a) + R.size(b) - R.size(a & b)
    assert R.size(a) + R.size(~a) == R.numel(a) == N_ALG
    assert bits_of(a).sum() == a.size and a.density == a.size / N_ALG
    # bare masks give the same answers as Regions
    assert np.array_equal(bits_of(R.union(a.mask, b.mask)), bits_of(a | b))


def test_complement_stays_in_universe(scores: dict) -> None:
    r = R.core(scores, 0.1)
    c = ~r
    f = flat_np(c)
    assert not f["model.embed_tokens.weight"].any() and not f["model.norm.weight"].any()
    assert c.size == c.numel - r.size and c.universe == r.universe
    with pytest.raises(UserError, match="different parameters"):
        R.union(r, {"x": jnp.zeros(3, bool)})


# --- stats -----------------------------------------------------------------------------
def test_stats_and_hidden_profile() -> None:
    flat = {n: np.zeros(s, bool) for n, s in SHAPES.items()}
    flat["model.layers.0.self_attn.q_proj.weight"][:, 7] = True  # column 7 = input dim 7
    flat["model.layers.1.mlp.down_proj.weight"][7, :3] = True  # row 7 = output dim 7
    flat["model.layers.1.mlp.up_proj.weight"][0, 5] = True
    flat["model.layers.0.input_layernorm.weight"][[7, 2]] = True
    names = in_scope()
    region = R.Region(T.unflatten({n: jnp.asarray(v) for n, v in flat.items()}), {}, names)
    st_ = R.stats(region)
    assert st_["total"] == 12 + 3 + 1 + 2
    assert st_["numel"] == sum(int(np.prod(SHAPES[n])) for n in names)
    assert st_["by_module"]["self_attn.q_proj"]["selected"] == 12
    assert st_["by_module"]["input_layernorm"] == {"selected": 2, "numel": 24, "density": 2 / 24}
    assert st_["by_layer"]["0"]["selected"] == 14 and st_["by_layer"]["1"]["selected"] == 4
    q = st_["matrices"]["model.layers.0.self_attn.q_proj.weight"]
    assert q["top_cols"] == [[7, 12]] and q["cols_top_frac"] == 1.0
    assert len(q["top_rows"]) == 10 and q["rows_top_frac"] == 1 / 12
    assert st_["module_dims"]["mlp.down_proj"]["top_rows"] == [[7, 3]]
    json.dumps(st_)
    prof = R.hidden_dim_profile(region, 12)
    expected = np.zeros(12, np.int64)
    expected[7] = 12 + 3 + 1
    expected[2] = 1
    expected[5] = 1
    np.testing.assert_array_equal(prof, expected)
    by = R.hidden_dim_profile(region, 12, by_module=True)
    assert int(by["mlp.down_proj"][7]) == 3 and int(by["self_attn.q_proj"][7]) == 12
    with pytest.raises(UserError, match="hidden_size=16"):
        R.hidden_dim_profile(region, 16)
    rows, cols = R.row_col_counts(region)["model.layers.1.mlp.down_proj.weight"]
    assert rows[7] == 3 and cols[:3].tolist() == [1, 1, 1]


# --- files -----------------------------------------------------------------------------
def test_region_file_round_trip_and_foreign_readers(scores: dict, tmp_path) -> None:
    region = R.core(scores, 0.07, scope="per-layer")
    path = str(tmp_path / "core.safetensors")
    R.save_region(path, region)
    back = R.load_region(path)
    assert back.meta == region.meta and back.universe == region.universe
    fr, fb = region.flat(), back.flat()
    assert set(fb) == set(region.universe)
    for n in fb:
        assert fb[n].dtype == jnp.bool_
        np.testing.assert_array_equal(np.asarray(fb[n]), np.asarray(fr[n]))
    with_t = R.load_region(path, template=scores["en"])
    assert all(np.array_equal(np.asarray(with_t.flat()[n]), np.asarray(fr[n])) for n in fr)
    assert not np.asarray(with_t.flat()["model.embed_tokens.weight"]).any()

    with safe_open(path, framework="np") as f:
        header = f.metadata()
        shapes = json.loads(header["shapes"])
        assert header["kind"] == "core" and json.loads(header["languages"]) == ["en", "fr", "zh"]
        assert header["model"] == R.fingerprint(scores["en"]) and header["exclude"] == ""
        assert set(f.keys()) == set(region.universe)
        params = T.flatten(scores["en"])
        for n in f.keys():  # noqa: SIM118
            t = f.get_tensor(n)
            size = int(np.prod(shapes[n]))
            m = np.unpackbits(t, bitorder="little")[:size].reshape(shapes[n]).astype(bool)
            np.testing.assert_array_equal(m, np.asarray(fr[n]))
            # PyTorch: the same entries of an HF-layout torch tensor
            w = torch.from_numpy(np.asarray(params[n]).copy())
            tm = torch.from_numpy(m)
            np.testing.assert_array_equal(w[tm].numpy(), np.asarray(params[n])[np.asarray(fr[n])])
            assert int(tm.sum()) == int(np.asarray(fr[n]).sum())


def test_region_file_for_other_model(scores: dict, tmp_path) -> None:
    path = str(tmp_path / "r.safetensors")
    R.save_region(path, R.core(scores, 0.1))
    other = T.replace(
        scores["en"], "model.layers.1.mlp.up_proj.weight", np.zeros((21, 12), np.float32)
    )
    with pytest.raises(
        UserError,
        match=r"another model: key 'model\.layers\.1\.mlp\.up_proj"
        r"\.weight' has shape \[20, 12\], model has \[21, 12\]",
    ):
        R.load_region(path, template=other)
    small = T.unflatten(
        {n: v for n, v in T.flatten(scores["en"]).items() if not n.startswith("model.layers.1.")}
    )
    with pytest.raises(UserError, match="another model.*model.layers.1"):
        R.load_region(path, template=small)
    with pytest.raises(UserError, match="not found"):
        R.load_region(str(tmp_path / "nope.safetensors"))
    (tmp_path / "junk.safetensors").write_bytes(b"junk")
    with pytest.raises(UserError, match="junk.safetensors"):
        R.load_region(str(tmp_path / "junk.safetensors"))


def test_bare_mask_and_combined_region_save(scores: dict, tmp_path) -> None:
    a, b = R.core(scores, 0.1), R.random(scores["en"], 0.1, seed=0)
    for i, r in enumerate([a | b, a.mask]):
        p = str(tmp_path / f"{i}.safetensors")
        R.save_region(p, r)
        back = R.load_region(p, template=scores["en"])
        assert R.jaccard(back, r) == 1.0 and back.size == R.size(r)


def test_scores_files_and_importance_dir(scores: dict, tmp_path) -> None:
    for lang, tree in scores.items():
        R.save_scores(R.importance_path(str(tmp_path), lang), tree, {"lang": lang, "n": 3})
    tree, meta = R.load_scores(R.importance_path(str(tmp_path), "fr"))
    assert meta["lang"] == "fr" and meta["n"] == "3" and meta["model"] == R.fingerprint(tree)
    for n, v in T.flatten(scores["fr"]).items():
        assert np.array_equal(T.get(tree, n), v) and T.get(tree, n).dtype == np.float32
    loaded = R.load_importance_dir(str(tmp_path), ["en", "zh"])
    assert list(loaded) == ["en", "zh"]
    assert sorted(R.load_importance_dir(str(tmp_path))) == ["en", "fr", "zh"]
    r1, r2 = R.core(scores, 0.1), R.core(R.load_importance_dir(str(tmp_path)), 0.1)
    assert R.jaccard(r1, r2) == 1.0
    with pytest.raises(UserError, match=r"'de'.*de\.safetensors"):
        R.load_importance_dir(str(tmp_path), ["en", "de"])
    R.save_scores(
        R.importance_path(str(tmp_path), "xx"),
        T.replace(scores["en"], "model.norm.weight", np.zeros(5, np.float32)),
    )
    with pytest.raises(
        UserError,
        match=r"xx\.safetensors.*en\.safetensors|en\.safetensors.*"
        r"xx\.safetensors",
    ):
        R.load_importance_dir(str(tmp_path), ["en", "xx"])
