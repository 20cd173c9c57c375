"""Split halves, snapshots and stop-when-stable (importance from one pass)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import run_cli_subprocess
from test_importance import FAMILY, SEQ, interrupt, rel_err

from jaxregion import importance, regions, runtime, scorefiles
from jaxregion import tree as T
from jaxregion.analysis import stability
from jaxregion.cli.main import main as cli_main
from jaxregion.configs import ImportanceConfig
from jaxregion.data.packing import load_windows
from jaxregion.data.sources import open_source
from jaxregion.io import hf


@pytest.fixture(scope="module")
def llama(model_factory):
    path = model_factory(FAMILY)
    cfg, params = hf.load(path)
    return path, cfg, params


@pytest.fixture(scope="module")
def corpora(corpus_dir, tokenizer):
    return {
        lang: load_windows(open_source(f"{corpus_dir}/{lang}.txt").documents(), tokenizer, SEQ, 10)
        for lang in ("lat", "cyr")
    }


# --- split halves --------------------------------------------------------------------------
@pytest.mark.parametrize("estimator", ["taylor", "wanda"])
def test_halves_recombine_to_full(llama, corpora, estimator):
    _, cfg, params = llama
    w = corpora["lat"]  # 10 windows, batch 3: batches 3,3,3,1 -> halves 6 + 4
    res = importance.compute_importance(params, cfg, w, estimator, batch_size=3)
    assert res.counts == (6, 4) and res.windows == 10
    even, odd = (T.flatten(h) for h in res.halves)
    full = T.flatten(res.scores)
    q = importance.POWER[estimator]
    for n in full:
        e, o, f = (np.asarray(x, np.float64) for x in (even[n], odd[n], full[n]))
        assert rel_err((6 * e**q + 4 * o**q) / 10, f**q) < 1e-6, n
    rec = T.flatten(stability.reconstruct_odd(res.scores, res.halves[0], res.counts, q))
    for n in full:
        assert rel_err(rec[n], odd[n]) < 1e-5, n
    assert importance.compute_importance(params, cfg, w[:3], batch_size=3).halves is None


def test_identical_halves_have_jaccard_one(llama, corpora):
    _, cfg, params = llama
    w = corpora["cyr"][:4]
    res = importance.compute_importance(params, cfg, np.concatenate([w, w]), batch_size=4)
    even, odd = (T.flatten(h) for h in res.halves)
    for n in even:
        np.testing.assert_array_equal(np.asarray(even[n]), np.asarray(odd[n]), err_msg=n)
    sh = stability.split_half(res.halves, ratios=(0.01, 0.1))
    assert sh["jaccard"] == {"0.01": 1.0, "0.1": 1.0}
    assert sh["projected"] == {"0.01": 1.0, "0.1": 1.0}
    st = stability.region_stability("core", {"a": res.halves, "b": res.halves}, ratio=0.05)
    assert st.jaccard == 1.0 and st.projected == 1.0


def _tree(rng, shapes):
    return T.unflatten(
        {
            f"model.layers.{i}.mlp.up_proj.weight": rng.standard_normal(s).astype(np.float32)
            for i, s in enumerate(shapes)
        }
    )


@pytest.mark.parametrize("ratio", [0.01, 0.1])
def test_random_scores_give_chance_jaccard(ratio):
    rng = np.random.default_rng(0)
    shapes = [(400, 500), (300, 500)]
    sh = stability.split_half((_tree(rng, shapes), _tree(rng, shapes)), ratios=(ratio,))
    j, chance = sh["jaccard"][str(ratio)], stability.chance_jaccard(ratio)
    k = sum(int(ratio * a * b) for a, b in shapes)
    sd = np.sqrt(k * ratio) / k  # overlap ~ binomial(k, ratio); J ≈ overlap / 2
    assert abs(j - chance) < 4 * sd, (j, chance)
    assert abs(sh["projected"][str(ratio)] - chance) < 0.5 * chance + 4 * sd


def test_projection_predicts_full_sample_jaccard():
    """Scores = truth + per-window noise: the halves' Jaccard projected by the method equals
    (within sampling error) the Jaccard of two independent full-size estimates."""
    rng = np.random.default_rng(1)
    m, n, p = 200_000, 16, 0.01
    truth = rng.standard_normal(m)

    def estimate(windows: int) -> np.ndarray:
        return truth + rng.standard_normal(m) * 3.0 / np.sqrt(windows)

    def jac(a, b):
        k = int(p * m)
        ta, tb = set(np.argsort(-a)[:k]), set(np.argsort(-b)[:k])
        return len(ta & tb) / len(ta | tb)

    half = jac(estimate(n // 2), estimate(n // 2))
    full = jac(estimate(n), estimate(n))
    proj = stability.project_jaccard(half, p)
    assert half < full
    assert abs(proj - full) < 0.03, (half, proj, full)
    # the nested n vs 2n Jaccard (what --until-stable compares), predicted from the halves
    first = estimate(n)
    second = (first + estimate(n)) / 2  # the first n windows, then n more
    pred = stability.doubling_jaccard(half, n, n, p)
    assert abs(pred - jac(first, second)) < 0.03, (pred, jac(first, second))
    assert stability.windows_until_stable(half, n, p, pred - 1e-9, n) == 2 * n
    assert stability.project_jaccard(1.0, p) == 1.0
    assert stability.project_jaccard(0.3, p) < stability.project_jaccard(0.5, p)


# --- CLI: snapshots, until-stable, metadata, regions stability -----------------------------
def _args(path, corpus_dir, out, *extra, langs=("lat", "cyr")):
    return [
        "importance",
        "--model",
        path,
        *sum((["--text", f"{x}={corpus_dir}/{x}.txt"] for x in langs), []),
        "--seq-len",
        str(SEQ),
        "--batch-size",
        "2",
        "--save-every",
        "4",
        "--out",
        str(out),
        *extra,
    ]


def _flat(path):
    scores, meta = regions.load_scores(str(path))
    return T.flatten(scores), meta


@pytest.mark.slow
def test_snapshots_equal_separate_runs_and_resume(llama, corpus_dir, tmp_path, capsys):
    path = llama[0]
    a = tmp_path / "a"
    assert (
        cli_main(
            _args(path, corpus_dir, a, "--max-seqs", "10", "--snapshots", "3,8", langs=("lat",))
        )
        == 0
    )
    for n in (3, 8):
        sep = tmp_path / f"sep{n}"
        assert cli_main(_args(path, corpus_dir, sep, "--max-seqs", str(n), langs=("lat",))) == 0
        got, gm = _flat(a / "snapshots" / str(n) / "lat.safetensors")
        ref, rm = _flat(sep / "lat.safetensors")
        assert gm["windows"] == rm["windows"] == str(n)
        assert gm["windows_digest"] == rm["windows_digest"]
        for k in ref:
            assert rel_err(got[k], ref[k]) <= 1e-6, (n, k)
    # a snapshot at a multiple of the batch size leaves the batches (and halves) as they are
    assert (
        cli_main(
            _args(
                path,
                corpus_dir,
                tmp_path / "c",
                "--max-seqs",
                "10",
                "--snapshots",
                "4",
                langs=("lat",),
            )
        )
        == 0
    )
    assert (
        cli_main(_args(path, corpus_dir, tmp_path / "sep4", "--max-seqs", "4", langs=("lat",))) == 0
    )
    (got, gm), (ref, rm) = (
        _flat(tmp_path / d / "lat.safetensors") for d in ("c/snapshots/4", "sep4")
    )
    assert gm["split_half_jaccard"] == rm["split_half_jaccard"]
    for k in ref:
        assert got[k].tobytes() == ref[k].tobytes(), k
    full, meta = _flat(a / "lat.safetensors")
    assert meta["windows"] == "10" and (meta["windows_even"], meta["windows_odd"]) == ("5", "5")
    assert 0 <= float(meta["split_half_jaccard"]) <= 1
    assert set(stability.METHOD.split()) <= set(meta["split_half"].replace('"', " ").split())
    # interrupted at the checkpoint at window 8, where a snapshot is due too (the command's
    # own steps, stopped there as a killed run would be): the snapshot comes first, so the run
    # resumed by the command never skips it; bitwise equal, snapshots too
    b = tmp_path / "b"
    cfg = ImportanceConfig(
        model=path,
        text={"lat": f"{corpus_dir}/lat.txt"},
        seq_len=SEQ,
        max_seqs=10,
        batch_size=2,
        save_every=4,
        out=str(b),
        snapshots=(3, 8),
    )
    assert interrupt(cfg, "lat", after=8) == 8
    assert (b / "snapshots" / "8" / "lat.safetensors").exists()
    assert not (b / "lat.safetensors").exists()
    assert (
        cli_main(
            _args(path, corpus_dir, b, "--max-seqs", "10", "--snapshots", "3,8", langs=("lat",))
        )
        == 0
    )
    for rel in ("lat.safetensors", "snapshots/3/lat.safetensors", "snapshots/8/lat.safetensors"):
        (fa, ma), (fb, mb) = _flat(a / rel), _flat(b / rel)
        assert ma == mb
        for k in fa:
            assert fa[k].tobytes() == fb[k].tobytes(), (rel, k)
    capsys.readouterr()
    # a region from a snapshot, with its stability printed
    assert (
        cli_main(
            [
                "regions",
                "core",
                "--importance",
                str(a / "snapshots" / "8"),
                "--out",
                str(tmp_path / "core.safetensors"),
            ]
        )
        == 0
    )
    assert "stability: split-half Jaccard" in capsys.readouterr().err


def test_regions_print_stability_of_every_language(llama, corpus_dir, tmp_path, capsys):
    path = llama[0]
    out = tmp_path / "imp"
    assert cli_main(_args(path, corpus_dir, out, "--max-seqs", "8")) == 0
    capsys.readouterr()
    assert (
        cli_main(
            [
                "regions",
                "monolingual",
                "--importance",
                str(out),
                "--lang",
                "lat",
                "--ratio",
                "0.05",
                "--out",
                str(tmp_path / "m.safetensors"),
            ]
        )
        == 0
    )
    line = [x for x in capsys.readouterr().err.splitlines() if x.startswith("stability")]
    assert len(line) == 1 and "halves of cyr, lat" in line[0], line
    st = stability.directory_stability(
        "monolingual", str(out), ["lat", "cyr"], lang="lat", ratio=0.05
    )
    assert f"{st.jaccard:.4f}" in line[0]


def test_until_stable_tiny_threshold_stops_after_first_doubling(llama, corpus_dir, tmp_path):
    path = llama[0]
    out = tmp_path / "u"
    assert (
        cli_main(
            _args(
                path, corpus_dir, out, "--max-seqs", "10", "--until-stable", "0.001", langs=("lat",)
            )
        )
        == 0
    )
    _, meta = _flat(out / "lat.safetensors")
    assert meta["windows"] == "4" and meta["windows_available"] == "10"  # batch 2: 2 vs 4
    assert len(eval(meta["doubling_jaccard"])) == 1
    assert not (out / ".partial").exists()


def test_until_stable_one_runs_to_max_unless_identical(llama, corpora, corpus_dir, tmp_path):
    path = llama[0]
    out = tmp_path / "u"
    assert (
        cli_main(
            _args(path, corpus_dir, out, "--max-seqs", "10", "--until-stable", "1", langs=("lat",))
        )
        == 0
    )
    _, meta = _flat(out / "lat.safetensors")
    hist = eval(meta["doubling_jaccard"])
    assert [h[0] for h in hist] == [4, 8, 10][: len(hist)]
    assert meta["windows"] == "10" or hist[-1][1] == 1.0
    assert all(j < 1.0 for _, j in hist[:-1])
    # a known answer: every window the same, so n and 2n give the same region: stops at 4
    session = runtime.load_session(path, "float32")
    same = np.tile(corpora["lat"][:1], (10, 1))
    got = scorefiles.score_language(
        session,
        "x",
        same,
        str(tmp_path / "u2"),
        scorefiles.ScoreSpec(batch_size=2, until_stable=1.0),
    )
    assert got.meta["windows"] == "4", got.meta["doubling_jaccard"]
    assert got.meta["windows_available"] == "10"


@pytest.mark.parametrize(
    "extra,needle",
    [
        (("--until-stable", "0"), "--until-stable"),
        (("--until-stable", "1.5"), "--until-stable"),
        (("--max-seqs", "10", "--snapshots", "4,20"), "--snapshots 20"),
        (("--snapshots", "5000"), "--snapshots 5000"),
        (("--snapshots", "4,x"), "--snapshots"),
    ],
)
def test_bad_schedule_is_one_line_exit_2(llama, corpus_dir, tmp_path, capsys, extra, needle):
    out = tmp_path / "o"
    assert cli_main(_args(llama[0], corpus_dir, out, *extra)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err, err
    assert not out.exists()


def test_bad_schedule_subprocess_no_traceback(model_factory, corpus_dir, tmp_path):
    out = tmp_path / "o"
    code, _, err = run_cli_subprocess(
        *_args(model_factory(FAMILY), corpus_dir, out, "--until-stable", "2")
    )
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()


def test_schedule_helpers():
    assert scorefiles.doubling_points(4, 20) == (4, 8, 16, 20)
    assert scorefiles.doubling_points(8, 8) == (8,)
    assert scorefiles.parse_snapshots("100, 10,100") == (10, 100)
