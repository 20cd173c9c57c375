"""``jaxregion regions``: selection from importance files, stats, compare, and bad input."""

from __future__ import annotations

import json
import shutil

import jax.numpy as jnp
import numpy as np
import pytest
from conftest import run_cli_subprocess

from jaxregion import regions
from jaxregion import tree as T
from jaxregion.cli.main import main as cli_main

LANGS = ("lat", "rom", "cyr")


@pytest.fixture(scope="module")
def imp_dir(model_factory, corpus_dir, tmp_path_factory):
    """Taylor importance of three languages, made by the importance command."""
    model = model_factory("llama_gqa_llama3")
    out = tmp_path_factory.mktemp("imp")
    argv = [
        "importance",
        "--model",
        model,
        "--seq-len",
        "32",
        "--max-seqs",
        "6",
        "--batch-size",
        "3",
        "--out",
        str(out),
    ]
    for lang in LANGS:
        argv += ["--text", f"{lang}={corpus_dir}/{lang}.txt"]
    assert cli_main(argv) == 0
    return model, str(out)


def _same_mask(a, b) -> None:
    fa, fb = a.flat(), b.flat()
    assert fa.keys() == fb.keys()
    for n in fa:
        np.testing.assert_array_equal(np.asarray(fa[n]), np.asarray(fb[n]), err_msg=n)


@pytest.mark.slow
def test_core_monolingual_top_match_library(imp_dir, tmp_path):
    _, d = imp_dir
    scores = regions.load_importance_dir(d, list(LANGS))
    f = str(tmp_path / "core.safetensors")
    assert cli_main(["regions", "core", "--importance", d, "--ratio", "0.01", "--out", f]) == 0
    got = regions.load_region(f, scores["lat"])
    _same_mask(got, regions.core(scores, 0.01))
    assert got.meta["kind"] == "core" and got.meta["langs"] == sorted(LANGS)
    assert all(n.startswith("model.layers.") for n in got.names())
    assert 0 < got.density <= 0.01

    f = str(tmp_path / "mono.safetensors")
    assert (
        cli_main(
            [
                "regions",
                "monolingual",
                "--importance",
                d,
                "--langs",
                "lat,cyr",
                "--lang",
                "cyr",
                "--ratio",
                "0.05",
                "--scope",
                "per-layer",
                "--out",
                f,
            ]
        )
        == 0
    )
    sub = {k: scores[k] for k in ("lat", "cyr")}
    mono = regions.load_region(f, scores["lat"])
    _same_mask(mono, regions.monolingual(sub, "cyr", 0.05, scope="per-layer"))
    assert mono.meta["lang"] == "cyr" and mono.meta["langs"] == ["cyr", "lat"]
    top = regions.top(sub, "cyr", 0.05, scope="per-layer")
    assert mono.size < top.size  # lat's top set removed something

    f = str(tmp_path / "bmono.safetensors")
    assert (
        cli_main(
            [
                "regions",
                "bottom-monolingual",
                "--importance",
                d,
                "--lang",
                "rom",
                "--ratio",
                "0.05",
                "--out",
                f,
            ]
        )
        == 0
    )
    bmono = regions.load_region(f, scores["lat"])
    _same_mask(bmono, regions.bottom_monolingual(scores, "rom", 0.05))
    for other in ("lat", "cyr"):
        bottom = regions.bottom({other: scores[other]}, 0.05)
        assert regions.size(regions.intersection(bmono, bottom)) == 0

    f = str(tmp_path / "top.safetensors")
    assert (
        cli_main(
            [
                "regions",
                "top",
                "--importance",
                d,
                "--lang",
                "rom",
                "--ratio",
                "0.02",
                "--include",
                r"mlp\.",
                "--exclude",
                "down_proj",
                "--out",
                f,
            ]
        )
        == 0
    )
    t = regions.load_region(f)
    assert t.names() and all(("mlp." in n and "down_proj" not in n) for n in t.names())


def test_random_reproducible_and_exact(imp_dir, tmp_path):
    model, d = imp_dir
    paths = [str(tmp_path / f"r{i}.safetensors") for i in range(3)]
    for p, seed in zip(paths, (3, 3, 4)):
        assert (
            cli_main(
                [
                    "regions",
                    "random",
                    "--importance",
                    d,
                    "--seed",
                    str(seed),
                    "--ratio",
                    "0.1",
                    "--out",
                    p,
                ]
            )
            == 0
        )
    a, b, c = (regions.load_region(p) for p in paths)
    _same_mask(a, b)
    assert regions.jaccard(a, c) < 0.5
    flat = a.flat()
    assert a.size == sum(regions.k_for(0.1, int(np.prod(flat[n].shape))) for n in a.names())
    # a model directory alone gives the shapes too, with the same draw
    p = str(tmp_path / "rm.safetensors")
    assert (
        cli_main(
            ["regions", "random", "--model", model, "--seed", "3", "--ratio", "0.1", "--out", p]
        )
        == 0
    )
    _same_mask(regions.load_region(p), a)


def test_stats_and_compare(imp_dir, tmp_path, capsys):
    _, d = imp_dir
    core, rnd = str(tmp_path / "core.safetensors"), str(tmp_path / "rnd.safetensors")
    assert cli_main(["regions", "core", "--importance", d, "--ratio", "0.05", "--out", core]) == 0
    assert cli_main(["regions", "random", "--importance", d, "--ratio", "0.05", "--out", rnd]) == 0
    capsys.readouterr()
    js = str(tmp_path / "stats.json")
    assert cli_main(["regions", "stats", core, "--json", js]) == 0
    out = capsys.readouterr().out
    for heading in ("## Per module type", "## Per layer", "## Top hidden dimensions"):
        assert heading in out
    assert "| self_attn.q_proj " in out and "| mlp.down_proj " in out
    st = json.loads(open(js).read())
    region = regions.load_region(core)
    assert st["total"] == region.size and st["by_layer"].keys() == {"0", "1"}
    assert sum(v["selected"] for v in st["by_module"].values()) == region.size

    js = str(tmp_path / "cmp.json")
    assert cli_main(["regions", "compare", core, rnd, "--json", js]) == 0
    out = capsys.readouterr().out
    cmp = json.loads(open(js).read())
    rr = regions.load_region(rnd)
    assert cmp["jaccard"] == pytest.approx(regions.jaccard(region, rr), abs=0)
    assert cmp["intersection"] == (region & rr).size
    assert cmp["size_a"] == region.size and cmp["size_b"] == rr.size
    assert f"{cmp['jaccard']:.6f}" in out and "intersection" in out
    assert cli_main(["regions", "compare", core, core, "--json", js]) == 0
    assert json.loads(open(js).read())["jaccard"] == 1.0


def _bad(argv, capsys, *words):
    capsys.readouterr()
    assert cli_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for w in words:
        assert w in err, err
    return err


def test_bad_input_one_line_nothing_written(imp_dir, model_factory, tmp_path, capsys):
    model, d = imp_dir
    out = tmp_path / "r.safetensors"
    base = ["--out", str(out)]
    # a language without a file
    _bad(["regions", "core", "--importance", d, "--langs", "lat,xx", *base], capsys, "'xx'")
    # ratio outside (0, 1]
    for r in ("0", "1.5", "-0.1", "abc"):
        _bad(["regions", "core", "--importance", d, "--ratio", r, *base], capsys, "ratio")
    # include regex selecting nothing
    _bad(
        ["regions", "core", "--importance", d, "--include", "no_such_param", *base],
        capsys,
        "no_such_param",
    )
    # --lang not among --langs
    _bad(
        ["regions", "top", "--importance", d, "--langs", "lat", "--lang", "cyr", *base],
        capsys,
        "cyr",
    )
    # importance files of different models (shapes differ)
    mixed = tmp_path / "mixed"
    shutil.copytree(d, mixed)
    other, _ = regions.load_scores(f"{d}/rom.safetensors")
    flat = T.flatten(other)
    flat["model.layers.0.mlp.up_proj.weight"] = np.zeros((80, 64), np.float32)
    regions.save_scores(str(mixed / "rom.safetensors"), T.unflatten(flat), {"estimator": "taylor"})
    _bad(["regions", "core", "--importance", str(mixed), *base], capsys, "up_proj")
    # importance files of different estimators
    mixed2 = tmp_path / "mixed2"
    shutil.copytree(d, mixed2)
    regions.save_scores(str(mixed2 / "rom.safetensors"), other, {"estimator": "fisher"})
    _bad(["regions", "core", "--importance", str(mixed2), *base], capsys, "estimator")
    # importance for another model than --model
    gpt2 = model_factory("gpt2")
    _bad(["regions", "core", "--importance", d, "--model", gpt2, *base], capsys, "another model")
    assert not out.exists()
    # a region file for another model
    good = str(tmp_path / "good.safetensors")
    assert cli_main(["regions", "core", "--importance", d, "--out", good]) == 0
    js = tmp_path / "s.json"
    _bad(["regions", "stats", good, "--model", gpt2, "--json", str(js)], capsys, "another model")
    assert not js.exists()
    assert not list(tmp_path.glob(".tmp-*"))


def test_subprocess_error_has_no_traceback(imp_dir, tmp_path):
    _, d = imp_dir
    out = tmp_path / "r.safetensors"
    code, stdout, err = run_cli_subprocess(
        "regions", "monolingual", "--importance", d, "--lang", "xx", "--out", str(out)
    )
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "'xx'" in err and not out.exists()


def test_scores_file_metadata_reaches_region(imp_dir, tmp_path):
    """A region remembers which model its scores came from (the shape fingerprint)."""
    _, d = imp_dir
    scores, meta = regions.load_scores(f"{d}/lat.safetensors")
    f = str(tmp_path / "c.safetensors")
    assert cli_main(["regions", "bottom", "--importance", d, "--out", f]) == 0
    r = regions.load_region(f)
    assert r.meta["model"] == meta["model"] == regions.fingerprint(scores)
    # the bottom set holds the least important elements: below every core element
    core = regions.core(regions.load_importance_dir(d), 0.01)
    total = {
        n: sum(
            jnp.abs(jnp.asarray(T.flatten(s)[n])) for s in regions.load_importance_dir(d).values()
        )
        for n in r.names()
    }
    n = "model.layers.1.mlp.up_proj.weight"
    bmask, cmask = np.asarray(r.flat()[n]), np.asarray(core.flat()[n])
    assert float(jnp.max(total[n][bmask])) <= float(jnp.min(total[n][cmask]))


def test_granularity_flag_writes_element_mask_with_metadata(imp_dir, tmp_path):
    model, d = imp_dir
    scores = regions.load_importance_dir(d, list(LANGS))
    f = str(tmp_path / "cols.safetensors")
    assert (
        cli_main(
            [
                "regions",
                "core",
                "--importance",
                d,
                "--ratio",
                "0.25",
                "--granularity",
                "column",
                "--model",
                model,
                "--out",
                f,
            ]
        )
        == 0
    )
    got = regions.load_region(f, scores["lat"])
    assert got.meta["granularity"] == "column"
    _same_mask(got, regions.core(scores, 0.25, granularity="column"))
    for n in got.names():
        m = np.asarray(got.flat()[n])
        if m.ndim == 2:  # [out, in]: exactly floor(0.25 * in) whole columns
            assert regions.line_counts(m, "column") == max(1, int(0.25 * m.shape[1])), n
            assert m.sum() == regions.line_counts(m, "column") * m.shape[0], n
