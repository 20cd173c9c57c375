"""The README's main job, scaled down; and every shipped config loads and validates."""

from __future__ import annotations

import glob
import json
import os

import pytest
from conftest import run_cli

ROOT = os.path.dirname(os.path.dirname(__file__))


def _loader(path: str):
    name = os.path.basename(path)
    if name.startswith("forgetting"):
        from jaxregion.analysis.forgetting import load_config
    elif name.startswith("mesh"):
        from jaxregion.parallel.sharding import load_mesh_config as load_config
    else:
        from jaxregion.analysis.experiment import load_config
    return load_config


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(ROOT, "configs", "*.yaml"))))
def test_shipped_configs_load(path):
    assert _loader(path)(path) is not None


def test_experiment_config_errors_name_the_key(tmp_path):
    from jaxregion.analysis.experiment import load_config
    from jaxregion.errors import UserError

    p = tmp_path / "bad.yaml"
    p.write_text("model: m\nlanguages: {a: x, b: y}\nratoi: 0.01\n")
    with pytest.raises(UserError, match="unknown key 'ratoi'"):
        load_config(str(p))
    p.write_text("model: m\nlanguages: {a: x, b: y}\nratio: 2\n")
    with pytest.raises(UserError, match="ratio"):
        load_config(str(p))


@pytest.mark.slow
def test_quick_demo_end_to_end(tmp_path):
    out = tmp_path / "demo"
    code, _, err = run_cli("demo", "--quick", "--out", str(out))
    assert code == 0, err[-2000:]
    report = (out / "report.md").read_text()
    exp = json.loads((out / "experiment" / "results.json").read_text())
    forg = json.loads((out / "forgetting" / "results.json").read_text())
    base = exp["perplexity"]["base"]
    assert set(base) == {"lat", "rom", "cyr", "grk", "arb", "cjk", "hng"}
    assert "Base perplexity per language" in report
    for cond in ("core removed", "bottom removed", "random removed", "monolingual removed"):
        assert cond in report
    assert "Outcome" in report and "Forgetting" in report
    labels = {r["label"] for r in forg["settings"]}
    assert {
        "none/none",
        "core/element/0.1/none",
        "random/column/0.1/none",
        "none/replay",
        "none/ewc",
        "wanda/column/0.5/none",
    } <= labels
    assert "forgetting/frontier.png" in report and "reproduce" in report
    # case studies inside the battery part; the multiple-choice task and its verdict
    assert "Table 7. Case studies: language fidelity and continuations" in report
    assert set(exp["case_studies"]["prompts"]) == {"lat", "rom", "cyr", "grk", "arb", "cjk"}
    assert "mono-lat removed" in exp["case_studies"]["settings"]
    mcq = json.loads((out / "mc" / "results.json").read_text())
    assert set(mcq["accuracy"]) == {"base", "core", "random"}
    for acc in mcq["accuracy"].values():
        assert set(acc) == set(exp["case_studies"]["prompts"])
        assert all(0.0 <= a <= 1.0 for a in acc.values())
    assert "Part 2. Multiple choice" in report and mcq["verdict"] in report
    assert "Removing the core region " in mcq["verdict"]
    assert "accuracy more than removing a random region" in mcq["verdict"]
    for png in ("experiment/ablations.png", "experiment/dims_sweep.png"):
        assert (out / png).stat().st_size > 1000
        assert png in report
    # cached: a re-run reuses every stage and rewrites the same report
    code, _, err = run_cli("demo", "--quick", "--out", str(out))
    assert code == 0, err[-2000:]
    assert "cached" in err


@pytest.mark.slow
def test_demo_on_a_given_model(model_factory, corpus_dir, tmp_path):
    """``--model`` skips the tokenizer and pretraining stages and runs every other stage on
    the given checkpoint and ``--text`` sources; the report names the model."""
    model = model_factory("llama_mha")
    out = tmp_path / "demo"
    texts = [f"--text={k}={corpus_dir}/{k}.txt" for k in ("lat", "rom", "cyr")]
    code, _, err = run_cli(
        "demo",
        "--quick",
        "--model",
        model,
        *texts,
        "--target",
        "cyr",
        "--valid-text",
        f"lat={corpus_dir}/lat.txt",
        "--forgetting-steps",
        "2",
        "--forgetting-granularities",
        "element",
        "--importance-windows",
        "8",
        "--eval-windows",
        "4",
        "--out",
        str(out),
    )
    assert code == 0, err[-2000:]
    assert "pretraining: skipped, the model is given" in err
    assert not (out / "pretrain").exists() and not (out / "corpus").exists()
    exp = json.loads((out / "experiment" / "results.json").read_text())
    assert exp["setting"]["model"] == model
    assert set(exp["setting"]["importance"]) == {"lat", "rom"}
    assert set(exp["perplexity"]["base"]) == {"lat", "rom", "cyr"}
    assert set(exp["case_studies"]["prompts"]) == {"lat", "rom"}
    forg = json.loads((out / "forgetting" / "results.json").read_text())
    assert forg["target"] == "cyr" and forg["settings"]
    report = (out / "report.md").read_text()
    assert "Not run: the corpus is not the synthetic one" in report
    assert f"The pretrained model `{model}`" in report
    assert "No held-out text was given for rom, cyr" in report and "A tiny Llama" not in report


@pytest.mark.parametrize(
    "args,msg",
    [
        (["--model", "m"], "--model needs real text"),
        (["--text", "a=x.txt", "--corpus", "d"], "not both"),
        (["--text", "a=x.txt", "--valid-text", "b=y.txt"], "--valid-text b: no --text b=SOURCE"),
    ],
)
def test_demo_model_and_text_errors(args, msg, tmp_path):
    code, _, err = run_cli("demo", *args, "--out", str(tmp_path / "o"))
    assert code == 2 and msg in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "o").exists()
