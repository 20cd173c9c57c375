"""The forgetting experiment end to end (tiny), its config checks, and ``pretrain``."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import yaml


def _config(model, corpus_dir, core_path, out):
    return {
        "name": "test", "model": model, "out_dir": out, "target": "cyr",
        "target_train": f"{corpus_dir}/cyr.txt",
        "evals": {"cyr": f"{corpus_dir}/cyr.txt", "lat": f"{corpus_dir}/lat.txt",
                  "rom": f"{corpus_dir}/rom.txt"},
        "train": {"steps": 6, "batch_size": 4, "seq_len": 32, "lr": 3e-3, "warmup": 1,
                  "eval_every": 3, "eval_max_seqs": 4, "save_every": 3},
        "settings": {"none": {}, "core": {"region": core_path},
                     "random": {"kind": "random", "like": "core", "seed": 1},
                     "layer0": {"layers": [0]}},
    }


def test_small_forgetting_run_writes_report(model_factory, corpus_dir, tmp_path, capsys):
    from jaxregion import hf
    from jaxregion.cli.main import main
    from jaxregion.regions import load_region, save_region, size, top

    model = model_factory("llama_mha")
    _, params = hf.load(model)
    scores = {"x": {k: v for k, v in params.items()}}
    core = top(scores, "x", ratio=0.01)
    core_path = str(tmp_path / "core.safetensors")
    save_region(core_path, core)
    out = str(tmp_path / "out")
    cfg_path = tmp_path / "exp.yaml"
    cfg_path.write_text(yaml.safe_dump(_config(model, corpus_dir, core_path, out)))
    assert main(["forgetting", str(cfg_path), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "| setting" in printed and "layer0" in printed

    md = open(os.path.join(out, "report.md"), encoding="utf-8").read()
    for s in ("none", "core", "random", "layer0", "forgetting", "target gain", "cyr ppl",
              "plot_target.png", "plot_others.png", "6 steps", model):
        assert s in md, s
    for png in ("plot_target.png", "plot_others.png"):
        with open(os.path.join(out, png), "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    res = json.load(open(os.path.join(out, "results.json"), encoding="utf-8"))
    assert set(res["settings"]) == {"none", "core", "random", "layer0"}
    # same size random region; same data order and seeds: same base for all settings
    assert res["frozen_elements"]["random"] == res["frozen_elements"]["core"] == size(core)
    rnd = load_region(os.path.join(out, "regions", "random.safetensors"), template=params)
    assert size(rnd & core) < size(core)
    for name, curve in res["curves"].items():
        assert [r["step"] for r in curve] == [0, 3, 6], name
        assert curve[0]["eval_ppl"] == res["base"]
    s = res["settings"]["none"]
    assert s["target_gain"] == pytest.approx(res["base"]["cyr"] - s["target_ppl"])
    others = [res["base"][o] for o in ("lat", "rom")]
    assert s["forgetting"] == pytest.approx(
        np.mean([s["ppl"]["lat"], s["ppl"]["rom"]]) - np.mean(others))
    # rerunning resumes the finished runs instead of training again
    assert main(["forgetting", str(cfg_path), "--no-progress"]) == 0
    assert json.load(open(os.path.join(out, "results.json")))["settings"] == res["settings"]


def test_forgetting_config_errors(tmp_path, capsys):
    from jaxregion.cli.main import main

    bad = {"target": "x", "target_train": "a.txt", "evals": {"y": "b.txt"},
           "settings": {"none": {}}, "model": "m"}
    cases = [
        ({**bad}, "evals must include the target"),
        ({**bad, "evals": {"x": "a", "y": "b"}, "train": {"stepz": 3}}, "unknown key"),
        ({**bad, "evals": {"x": "a", "y": "b"}, "settings": {"c": {"kind": "core"}}},
         "importance"),
        ({**bad, "evals": {"x": "a", "y": "b"}, "model": None}, "pretrain"),
    ]
    for i, (d, msg) in enumerate(cases):
        p = tmp_path / f"c{i}.yaml"
        p.write_text(yaml.safe_dump(d))
        assert main(["forgetting", str(p)]) == 2
        err = capsys.readouterr().err.strip()
        assert msg in err and len(err.splitlines()) == 1, err


def test_pretrain_from_scratch(tokenizer_dir, corpus_dir, tmp_path):
    import jax

    from jaxregion import hf
    from jaxregion.cli.main import main

    cfg = {"tokenizer": tokenizer_dir, "text": {"lat": f"{corpus_dir}/lat.txt",
                                                 "rom": f"{corpus_dir}/rom.txt"},
           "hidden_size": 32, "layers": 2, "heads": 2, "max_positions": 64, "steps": 5,
           "batch_size": 4, "seq_len": 32, "lr": 1e-2}
    p = tmp_path / "pre.yaml"
    p.write_text(yaml.safe_dump(cfg))
    out, ck = str(tmp_path / "model"), str(tmp_path / "ck")
    assert main(["pretrain", "--config", str(p), "--ckpt-dir", ck, "--out", out,
                 "--no-progress"]) == 0
    mcfg, params = hf.load(out)
    assert mcfg.model_type == "llama" and mcfg.hidden_size == 32 and mcfg.num_layers == 2
    init = hf.load(os.path.join(ck, "init"))[1]
    assert float(np.std(np.asarray(init["model"]["layers"][0]["mlp"]["up_proj"]["weight"]))) \
        == pytest.approx(0.02, rel=0.1)
    assert np.all(np.asarray(init["model"]["norm"]["weight"]) == 1)
    # config.json is transformers' own LlamaConfig (export parity is tested in test_train)
    from transformers import AutoConfig

    assert AutoConfig.from_pretrained(out).model_type == "llama"
    assert any(np.asarray(a).tobytes() != np.asarray(b).tobytes() for a, b in
               zip(jax.tree.leaves(init), jax.tree.leaves(params)))
