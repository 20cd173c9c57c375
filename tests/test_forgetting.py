"""The forgetting frontier end to end (tiny), its config checks, and ``pretrain``."""

from __future__ import annotations

import json
import os
import signal

import numpy as np
import pytest
import yaml


def _config(model, corpus_dir, out, core_path):
    c = corpus_dir
    return {
        "name": "test",
        "model": model,
        "out_dir": out,
        "target": "cyr",
        "target_train": f"{c}/cyr.txt",
        "evals": {"cyr": f"{c}/cyr.txt", "lat": f"{c}/lat.txt", "rom": f"{c}/rom.txt"},
        "importance": {
            "texts": {"lat": f"{c}/lat.txt", "rom": f"{c}/rom.txt"},
            "max_seqs": 4,
            "batch_size": 4,
        },
        "train": {
            "steps": 4,
            "batch_size": 4,
            "seq_len": 16,
            "lr": 3e-3,
            "warmup": 1,
            "eval_samples": [8],
            "eval_max_seqs": 4,
            "save_every": 2,
        },
        "baselines": {"replay_ratio": 0.25, "ewc_lambda": 5.0},
        "sweep": [
            {
                "scorers": ["core", "random", "wanda"],
                "ratios": [0.5],
                "granularities": ["element", "column"],
                "seeds": [0],
            },
            {
                "scorers": ["none", "fisher"],
                "ratios": [0.1],
                "baselines": ["replay", "ewc"],
                "seeds": [0, 1],
            },
            {
                "scorers": ["magnitude", "bottom", "top:lat"],
                "ratios": [0.1],
                "granularities": ["row"],
            },
        ],
        "settings": {"file": {"region": core_path}, "layer0": {"layers": [0]}},
    }


@pytest.mark.slow
def test_tiny_frontier_run(model_factory, corpus_dir, tmp_path, capsys):
    from jaxregion.analysis.forgetting import load_config, points
    from jaxregion.cli.main import main
    from jaxregion.io import hf
    from jaxregion.regions import core, load_region, save_region
    from jaxregion.scorefiles import read_metadata

    model = model_factory("llama_mha")
    _, params = hf.load(model)
    core_path = str(tmp_path / "core.safetensors")
    save_region(core_path, core({"x": params}, ratio=0.01))
    out = str(tmp_path / "out")
    cfg_path = tmp_path / "exp.yaml"
    cfg_path.write_text(yaml.safe_dump(_config(model, corpus_dir, out, core_path)))
    pts = points(load_config(str(cfg_path)))
    # references for every baseline and seed; 3 scorers x 2 granularities; fisher
    # x 2 baselines x 2 seeds; 2 explicit settings; 3 more scorers at row granularity
    assert len(pts) == 1 + 4 + 6 + 4 + 2 + 3
    assert main(["forgetting", str(cfg_path), "--no-progress"]) == 0
    assert "| setting" in capsys.readouterr().out
    # region scores differentiate only the regions' include (:layers); EWC's Fisher all
    imp = os.path.join(out, "importance")
    for folder, everything in (("taylor", False), ("fisher", False), ("fisher-all", True)):
        meta = read_metadata(os.path.join(imp, folder, "lat.safetensors"))
        assert (meta["scope"] == "all") == everything, (folder, meta["scope"])
        unscored = json.loads(meta.get("unscored", "[]"))
        assert ("model.embed_tokens.weight" in unscored) != everything, folder

    res = json.load(open(os.path.join(out, "results.json"), encoding="utf-8"))
    assert {r["key"] for r in res["points"]} == {p.key for p in pts}  # an entry per point
    labels = {r["label"] for r in res["settings"]}
    assert {
        "none/none",
        "none/replay",
        "none/ewc",
        "core/column/0.5/none",
        "fisher/element/0.1/ewc",
        "file/none",
        "layer0/none",
        "magnitude/row/0.1/none",
        "bottom/row/0.1/none",
        "top:lat/row/0.1/none",
    } <= labels
    for r in res["points"]:
        assert [c["samples"] for c in r["curve"]] == [8, 16]
        m = r["metrics"]
        base, fin = res["base_ppl"], r["final"]
        assert m["target_gain"] == pytest.approx(np.log(base["cyr"]) - np.log(fin["cyr"]))
        assert m["forgetting_pct"] == pytest.approx(
            np.mean([(fin[o] - base[o]) / base[o] * 100 for o in ("lat", "rom")])
        )
    by = {r["label"]: r for r in res["settings"]}
    assert by["fisher/element/0.1/ewc"]["seeds"] == [0, 1]
    # same ratio and granularity: the random region freezes as many elements as core
    assert by["random/column/0.5/none"]["frozen_pct"] == by["core/column/0.5/none"]["frozen_pct"]
    assert by["none/none"]["frozen_pct"] == 0
    assert by["top:lat/row/0.1/none"]["frozen_pct"] == by["bottom/row/0.1/none"]["frozen_pct"]
    reg = load_region(os.path.join(out, "regions", "core__column__0.5.safetensors"), params)
    assert reg.meta["granularity"] == "column"
    assert res["pareto"] and set(res["pareto"]) <= labels
    md = open(os.path.join(out, "report.md"), encoding="utf-8").read()
    assert "**Outcome.**" in md and "Pareto frontier" in md and "frontier.png" in md
    for png in ("frontier.png", "curves.png"):
        with open(os.path.join(out, png), "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert not os.listdir(os.path.join(out, "runs"))  # finished runs leave no checkpoints
    # a rerun reuses every finished point and the cached base eval
    mtimes = {
        p: os.path.getmtime(os.path.join(out, "points", p))
        for p in os.listdir(os.path.join(out, "points"))
    }
    assert main(["forgetting", str(cfg_path), "--no-progress"]) == 0
    assert json.load(open(os.path.join(out, "results.json")))["settings"] == res["settings"]
    assert mtimes == {p: os.path.getmtime(os.path.join(out, "points", p)) for p in mtimes}


@pytest.mark.slow
def test_interrupted_sweep_resumes(model_factory, corpus_dir, tmp_path, monkeypatch):
    """A signal mid-run returns (no exception); the rerun resumes and matches a clean run."""

    from jaxregion.analysis.forgetting import config_from_dict, run
    from jaxregion.train import Sampler

    model = model_factory("llama_mha")
    d = _config(model, corpus_dir, "", "")
    d.pop("settings")
    d["sweep"] = [{"scorers": ["core"], "ratios": [0.1]}]
    d["train"]["steps"] = 6
    cfg = config_from_dict(d)
    clean = run(cfg, str(tmp_path / "clean"), progress=False)
    orig = Sampler.batch
    calls = {"n": 0}

    def batch(self, step):
        calls["n"] += 1
        if calls["n"] == 9:  # inside the second point
            os.kill(os.getpid(), signal.SIGTERM)
        return orig(self, step)

    monkeypatch.setattr(Sampler, "batch", batch)
    got = run(cfg, str(tmp_path / "b"), progress=False)
    assert got.interrupted and got.signum == signal.SIGTERM and got.results is None
    monkeypatch.setattr(Sampler, "batch", orig)
    again = run(cfg, str(tmp_path / "b"), progress=False)
    a = {r["key"]: r["final"] for r in clean.results["points"]}
    b = {r["key"]: r["final"] for r in again.results["points"]}
    assert a == b


def test_forgetting_config_errors(tmp_path, capsys):
    from jaxregion.cli.main import main

    bad = {
        "target": "x",
        "target_train": "a.txt",
        "evals": {"y": "b.txt"},
        "model": "m",
        "sweep": {"scorers": ["random"]},
    }
    ok = {"x": "a", "y": "b"}
    cases = [
        ({**bad}, "evals must include the target"),
        ({**bad, "evals": ok, "train": {"stepz": 3}}, "unknown key"),
        ({**bad, "evals": ok, "sweep": {"scorers": ["core"]}}, "importance"),
        ({**bad, "evals": ok, "model": None}, "pretrain"),
        ({**bad, "evals": ok, "sweep": {"scorers": ["taylor"]}}, "scorer 'taylor' is unknown"),
        ({**bad, "evals": ok, "sweep": {"scorers": ["top"]}}, "top:LANG"),
        (
            {**bad, "evals": ok, "sweep": {"granularities": ["cols"]}},
            "sweep[0].granularities[0]: 'cols' is not one of",
        ),
        ({**bad, "evals": ok, "sweep": {"ratios": [0]}}, "ratio"),
        (
            {
                **bad,
                "evals": ok,
                "sweep": {"baselines": ["replay"]},
                "baselines": {"replay_ratio": 0.3},
            },
            "whole number",
        ),
        (
            {**bad, "evals": ok, "sweep": {"baselines": ["distill"]}},
            "sweep[0].baselines[0]: 'distill' is not one of",
        ),
        ({**bad, "evals": ok, "settings": {"s": {}}}, "exactly one of region, layers"),
    ]
    for i, (d, msg) in enumerate(cases):
        p = tmp_path / f"c{i}.yaml"
        p.write_text(yaml.safe_dump(d))
        assert main(["forgetting", str(p)]) == 2
        err = capsys.readouterr().err.strip()
        assert msg in err and len(err.splitlines()) == 1, (msg, err)


@pytest.mark.slow
def test_pretrain_from_scratch(tokenizer_dir, corpus_dir, tmp_path):
    import jax

    from jaxregion.cli.main import main
    from jaxregion.io import hf

    cfg = {
        "tokenizer": tokenizer_dir,
        "text": {"lat": f"{corpus_dir}/lat.txt", "rom": f"{corpus_dir}/rom.txt"},
        "hidden_size": 32,
        "layers": 2,
        "heads": 2,
        "max_positions": 64,
        "steps": 5,
        "batch_size": 4,
        "seq_len": 32,
        "lr": 1e-2,
    }
    p = tmp_path / "pre.yaml"
    p.write_text(yaml.safe_dump(cfg))
    out, ck = str(tmp_path / "model"), str(tmp_path / "ck")
    assert (
        main(["pretrain", "--config", str(p), "--ckpt-dir", ck, "--out", out, "--no-progress"]) == 0
    )
    mcfg, params = hf.load(out)
    assert mcfg.model_type == "llama" and mcfg.hidden_size == 32 and mcfg.num_layers == 2
    init = hf.load(os.path.join(ck, "init"))[1]
    assert float(
        np.std(np.asarray(init["model"]["layers"][0]["mlp"]["up_proj"]["weight"]))
    ) == pytest.approx(0.02, rel=0.1)
    assert np.all(np.asarray(init["model"]["norm"]["weight"]) == 1)
    # config.json is transformers' own LlamaConfig (export parity is tested in test_train)
    from transformers import AutoConfig

    assert AutoConfig.from_pretrained(out).model_type == "llama"
    assert any(
        np.asarray(a).tobytes() != np.asarray(b).tobytes()
        for a, b in zip(jax.tree.leaves(init), jax.tree.leaves(params))
    )


def test_cli_exit_code_of_an_interrupted_sweep(tmp_path, monkeypatch, capsys):
    """``jaxregion forgetting``: a sweep stopped by a signal exits 128 + the signal number
    and prints no table (the library returns the signal, the handler turns it into a code)."""
    from jaxregion.analysis import forgetting
    from jaxregion.cli.main import main

    cfg = tmp_path / "f.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "target": "x",
                "target_train": "a.txt",
                "model": "m",
                "evals": {"x": "a", "y": "b"},
                "sweep": {"scorers": ["random"]},
            }
        )
    )
    seen = {}

    def fake_run(c, **kw):
        seen.update(cfg=c, **kw)
        return forgetting.SweepResult(
            str(tmp_path / "o"), None, interrupted=True, signum=signal.SIGINT
        )

    monkeypatch.setattr(forgetting, "run", fake_run)
    assert main(["forgetting", str(cfg), "--out", str(tmp_path / "o")]) == 128 + signal.SIGINT
    assert seen["cfg"].out_dir == str(tmp_path / "o") and seen["source"] == str(cfg)
    assert seen["mesh"] is not None and capsys.readouterr().out == ""
