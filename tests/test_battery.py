"""The battery end to end: every section, the overlap matrix against `regions compare`, the
ratio sweep against separate runs, bottom-monolingual regions, a planted dimension, other
families, and bad configs."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
import yaml
from conftest import run_cli
from hf_factory import make_model, save_model

from jaxregion import interventions, regions, runtime
from jaxregion.analysis.experiment import Results
from jaxregion.analysis.experiment.results import DIM_BREAK_RATIO, DIM_CONTROL_MAX_RATIO
from jaxregion.cli.main import main as cli_main
from jaxregion.errors import UserError
from jaxregion.tree import flatten

LANGS = ("lat", "rom", "cyr")
RATIOS = [0.01, 0.05]
CASE_PROMPTS = {
    "lat": ["Sami ve ni. 41 lavomop"],
    "cyr": ["мупи ву важпытя"],
    "en": ["Fudan University is located in"],
}


def _config(model: str, corpus_dir: str, out: str, **over) -> dict:
    cfg = {
        "name": "tiny",
        "model": model,
        "out": out,
        "languages": {k: f"{corpus_dir}/{k}.txt" for k in LANGS},
        "seq_len": 32,
        "max_seqs": 16,
        "eval_max_seqs": 6,
        "batch_size": 8,
        "random_seeds": [0, 1, 2],
        "ratio": 0.01,
    }
    cfg.update(over)
    return cfg


def _write(tmp, cfg: dict) -> str:
    path = tmp / "exp.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


@pytest.fixture(scope="module")
def battery(model_factory, corpus_dir, tmp_path_factory):
    """One full battery on the tiny Llama, shared by the checks below."""
    tmp = tmp_path_factory.mktemp("battery")
    cfg = _config(
        model_factory("llama_mha"),
        corpus_dir,
        str(tmp / "exp"),
        ratios=RATIOS,
        dims={
            "layer": 1,
            "auto_candidates": 2,
            "auto_controls": 2,
            "factors": [4.0, 0.0],
            "targets": ["input_norm", "down_proj", "q_proj"],
        },
        jaccard={"sample_counts": [8], "estimators": ["fisher", "wanda"]},
        mask_maps={"matrices": ["model.layers.1.mlp.up_proj.weight"], "blocks": 8},
        case_studies={"prompts": CASE_PROMPTS, "max_new_tokens": 5, "width": 30},
    )
    code, _, err = run_cli("experiment", _write(tmp, cfg))
    assert code == 0, err
    return cfg, tmp / "exp"


@pytest.mark.slow
def test_battery_runs_and_reports_everything(battery):
    cfg, out = battery
    report = (out / "report.md").read_text()
    res = json.loads((out / "results.json").read_text())
    for png in (
        "ablations",
        "monolingual",
        "bottom_monolingual",
        "overlap",
        "ratio_sweep",
        "core_density",
        "core_dims",
        "importance_hist",
        "mask_map_0",
        "dims_sweep",
    ):
        assert (out / f"{png}.png").stat().st_size > 1000
        assert f"({png}.png)" in report
    for heading in (
        "Table 1.",
        "Table 2.",
        "Table 3.",
        "Table 4.",
        "Table 5.",
        "Table 6.",
        "Figure 1.",
        "Figure 2.",
        "Figure 3.",
        "Figure 4.",
        "Figure 5.1.",
        "Figure 6.",
        "Caption",
        "Outcome",
        "CORE_OVER_CONTROL = 3",
        "DIM_BREAK_RATIO = 2",
    ):
        assert heading in report
    conds = set(res["perplexity"])
    assert {
        "base",
        "core",
        "bottom",
        "random-0",
        "random-1",
        "random-2",
        "mono-lat",
        "bmono-lat",
        "mono-rom",
        "bmono-rom",
        "mono-cyr",
        "bmono-cyr",
    } <= conds
    # the model is named once per section, as the user gave it, never in a caption
    sections = report.count("\n## ")
    assert report.count(f"`{cfg['model']}`") == sections
    assert not any(
        cfg["model"] in line for line in report.splitlines() if line.startswith("*Caption")
    )
    # stability column present (filled once importance files carry split halves)
    assert "| stability" in report and set(res["regions"]["core"]) >= {"stability"}
    # random controls: distinct seeds give distinct regions, and the spread is reported
    r0 = regions.load_region(str(out / "regions/random-0.safetensors"))
    r1 = regions.load_region(str(out / "regions/random-1.safetensors"))
    assert regions.jaccard(r0, r1) < 0.5
    assert all(v >= 0 for v in res["random"]["std"].values()) and "±" in report
    assert set(res["jaccard"]["estimators"]) == {"taylor", "fisher", "wanda"}
    assert "8" in res["jaccard"]["sample_counts"]
    core = regions.load_region(str(out / "regions/core.safetensors"))
    for name, m in flatten(core.mask).items():
        if name in core.universe:
            assert int(np.asarray(m).sum()) == max(1, int(0.01 * np.asarray(m).size))
    # every sweep row names the exact entry it changed
    entries = {p["entry"] for p in res["dims"]["sweep"]}
    d = res["dims"]["candidates"][0]
    assert {
        f"model.layers.1.input_layernorm.weight[{d}]",
        f"model.layers.1.mlp.down_proj.weight[{d},:]",
        f"model.layers.1.self_attn.q_proj.weight[:,{d}]",
    } <= entries
    # mask maps: one per (matrix, region), block densities average to the region's density
    maps = [m for m in res["mask_maps"] if m["region"] == "core"]
    assert len(maps) == 1 and maps[0]["shape"] == [96, 64] and maps[0]["block"] == [12, 8]
    assert np.mean(maps[0]["density"]) == pytest.approx(
        np.asarray(flatten(core.mask)["model.layers.1.mlp.up_proj.weight"]).mean(), rel=1e-12
    )
    # results.json reads back into the dataclass
    assert Results.load(str(out / "results.json")).perplexity["base"] == res["perplexity"]["base"]


@pytest.mark.slow
def test_battery_differentiates_only_its_scope(battery):
    """The battery's score files score its include (:layers): the embedding and the head
    are never differentiated, and their entries are the format's zeros."""
    from jaxregion.scorefiles import read_metadata

    _, out = battery
    files = sorted((out / "importance").glob("*/*.safetensors"))
    assert len(files) >= 3  # taylor per language, the jaccard estimators' samples
    for f in files:
        meta = read_metadata(str(f))
        assert meta["scope"] != "all", f
        assert "model.embed_tokens.weight" in json.loads(meta["unscored"]), f


@pytest.mark.slow
def test_battery_bits_per_byte_case_studies_and_fidelity(battery):
    """Bits per byte beside every perplexity; continuations and fidelity under base, each
    removal and each dims-sweep point, the base one equal to a plain greedy generation."""
    from jaxregion.evaluate import bits_per_byte
    from jaxregion.generate import completions

    cfg, out = battery
    report = (out / "report.md").read_text()
    res = json.loads((out / "results.json").read_text())
    # bpb: one column per language next to its perplexity, for base and every removal
    table1 = re.sub(r" +", " ", report.split("## Table 1.")[1].split("\n## ")[0])
    assert "| cyr | cyr bpb | lat | lat bpb | rom | rom bpb |" in table1  # YAML keys sorted
    assert set(res["bits_per_byte"]) == set(res["perplexity"])
    s = runtime.load_session(cfg["model"])
    windows = runtime.load_corpora(
        [f"{k}={v}" for k, v in cfg["languages"].items()], s, cfg["seq_len"], cfg["eval_max_seqs"]
    )
    base = runtime.evaluate_corpora(s, windows, cfg["batch_size"])
    for lang in LANGS:
        b = base[lang]
        assert res["bits_per_byte"]["base"][lang] == b.bits_per_byte
        assert b.bits_per_byte == pytest.approx(bits_per_byte(b.loss, b.tokens, b.bytes), rel=1e-12)
        assert res["bits_per_byte"]["core"][lang] > 0
        assert f"{res['bits_per_byte']['core'][lang]:.3f}" in table1
    assert len(res["random"]["bpb_mean"]) == len(LANGS)
    # case studies: every setting the issue names, in order, and the dims points
    cs = res["case_studies"]
    sweep = res["dims"]["sweep"]
    points = [f"{p['group']} `{p['entry']}` x{p['factor']:g}" for p in sweep]
    assert cs["settings"] == [
        "base",
        "core removed",
        "bottom removed",
        "random removed",
        *[f"mono-{x} removed" for x in sorted(LANGS)],
        *[f"bmono-{x} removed" for x in sorted(LANGS)],
        *points,
    ]
    assert len(points) == (len(res["dims"]["candidates"]) + len(res["dims"]["controls"])) * 3 * 2
    assert cs["prompts"] == CASE_PROMPTS and cs["max_new_tokens"] == 5
    for setting in cs["settings"]:
        assert [len(cs["continuations"][setting][x]) for x in CASE_PROMPTS] == [1, 1, 1]
        assert all(0.0 <= cs["fidelity"][setting][x] <= 1.0 for x in CASE_PROMPTS)
    texts = [p for x in CASE_PROMPTS for p in CASE_PROMPTS[x]]
    again = completions(s.params, s.config, s.tokenizer, texts, 5)
    assert [cs["continuations"]["base"][x][0] for x in CASE_PROMPTS] == [
        r["completion"] for r in again
    ]
    # zeroing the core changes what the model writes
    assert cs["continuations"]["core removed"] != cs["continuations"]["base"]
    # the report: fidelity table, then per prompt the continuations side by side, escaped
    section = re.sub(r" +", " ", report.split("## Table 7.")[1].split("\n## ")[0])
    assert "*Model and data:*" in section
    assert "| setting | cyr | en | lat |" in section
    assert "Synthetic languages (cyr, lat)" in section
    for x in CASE_PROMPTS:
        assert f"### {x} · “{CASE_PROMPTS[x][0]}”" in section
    assert f"| {points[0]} |" in section
    assert list(Results.load(str(out / "results.json")).case_studies.settings) == cs["settings"]


@pytest.mark.slow
def test_overlap_matrix_equals_regions_compare(battery, tmp_path):
    _, out = battery
    ov = json.loads((out / "results.json").read_text())["overlap"]
    langs, m = ov["languages"], np.asarray(ov["matrix"])
    assert langs == ["cyr", "lat", "rom"]  # synthetic languages grouped by script
    np.testing.assert_array_equal(m, m.T)
    np.testing.assert_array_equal(np.diag(m), 1.0)
    files = {x: str(out / f"regions/top-{x}.safetensors") for x in langs}
    files["core"] = str(out / "regions/core.safetensors")
    pairs = [(a, b) for i, a in enumerate(langs) for b in langs[i + 1 :]]
    pairs += [(a, "core") for a in langs]
    for a, b in pairs:
        j = tmp_path / f"{a}-{b}.json"
        assert cli_main(["regions", "compare", files[a], files[b], "--json", str(j)]) == 0
        want = json.loads(j.read_text())["jaccard"]
        got = m[langs.index(a), langs.index(b)] if b != "core" else ov["vs_core"][a]
        assert got == want, (a, b)


@pytest.mark.slow
def test_ratio_sweep_rows_equal_separate_runs(battery):
    cfg, out = battery
    res = json.loads((out / "results.json").read_text())
    rows = {(r["ratio"], r["condition"]): r for r in res["ratio_sweep"]}
    assert set(rows) == {(x, c) for x in RATIOS for c in ("core", "bottom", "random")}
    # at the battery's own ratio the sweep equals Table 1
    for cond in ("core", "bottom"):
        assert rows[(0.01, cond)]["perplexity"] == res["perplexity"][cond]
    # at another ratio it equals a separate selection and evaluation
    s = runtime.load_session(cfg["model"])
    windows = runtime.load_corpora(
        [f"{k}={v}" for k, v in cfg["languages"].items()], s, cfg["seq_len"], cfg["eval_max_seqs"]
    )
    scores = regions.load_importance_dir(str(out / "importance/taylor"), list(LANGS))
    separate = {"core": regions.core(scores, 0.05), "bottom": regions.bottom(scores, 0.05)}
    rnd = [regions.random(s.params, 0.05, seed=x) for x in cfg["random_seeds"]]
    for cond, reg in separate.items():
        got = runtime.evaluate_corpora(
            s, windows, cfg["batch_size"], params=interventions.zero(s.params, reg)
        )
        assert rows[(0.05, cond)]["perplexity"] == {k: v.perplexity for k, v in got.items()}
        assert rows[(0.05, cond)]["size"] == regions.size(reg)
    ppl = [
        runtime.evaluate_corpora(
            s, windows, cfg["batch_size"], params=interventions.zero(s.params, r)
        )
        for r in rnd
    ]
    for lang in LANGS:
        mean = float(np.mean([p[lang].perplexity for p in ppl]))
        assert rows[(0.05, "random")]["perplexity"][lang] == mean


@pytest.mark.slow
def test_battery_bottom_monolingual_disjoint(battery):
    _, out = battery
    scores = regions.load_importance_dir(str(out / "importance/taylor"), list(LANGS))
    for lang in LANGS:
        bmono = regions.load_region(
            str(out / f"regions/bmono-{lang}.safetensors"), template=scores[lang]
        )
        assert bmono.size > 0
        for other in LANGS:
            if other != lang:
                bottom = regions.bottom({other: scores[other]}, 0.01)
                assert regions.size(regions.intersection(bmono, bottom)) == 0


PLANTED, WRITE = 17, 33  # the residual dim the model relies on, and the one it writes


def _planted_llama(path: str, tokenizer, corpus_dir: str) -> str:
    """A tiny Llama whose predictions rest on one layer-1 residual dimension.

    Every token embeds a large constant on dim 17 (a massive activation). Layer 1's attention
    reads it through the input-norm entry [17] and one v_proj column, and o_proj writes it onto
    dim 33, where it cancels the embedding's -B and leaves +M: the head reads dim 33 as the
    corpus unigram distribution. Scaling the norm entry by 4 writes 4(B+M) - B instead (a far
    too sharp unigram), by 0 leaves -B (the inverted one); other dims carry nothing."""
    c, m, b = 6.0, 1.0, 2.0
    ids = [
        i
        for lang in LANGS
        for line in open(f"{corpus_dir}/{lang}.txt", encoding="utf-8")
        for i in tokenizer(line.strip())["input_ids"]
    ]
    freq = np.bincount(ids, minlength=320) + 0.5
    logp = np.log(freq / freq.sum())
    model = make_model("llama_mha")
    layer = model.model.layers[1]
    with torch.no_grad():
        model.model.embed_tokens.weight[:, PLANTED] = c
        model.model.embed_tokens.weight[:, WRITE] = -b
        model.model.norm.weight[:] = 1.0
        layer.input_layernorm.weight[PLANTED] = 1.0
        layer.self_attn.v_proj.weight[0, :] = 0.0
        layer.self_attn.v_proj.weight[0, PLANTED] = (m + b) / 8  # the normed entry is ~8
        layer.self_attn.o_proj.weight[:, 0] = 0.0
        layer.self_attn.o_proj.weight[WRITE, 0] = 1.0
        model.lm_head.weight[:, PLANTED] = 0.0
        model.lm_head.weight[:, WRITE] = torch.tensor(
            (logp - logp.mean()) * np.sqrt(c * c + m * m) / (8 * m), dtype=torch.float32
        )
    return save_model(model, path, tokenizer)


@pytest.mark.slow
def test_planted_dimension_is_found(tokenizer, corpus_dir, tmp_path):
    model = _planted_llama(str(tmp_path / "planted"), tokenizer, corpus_dir)
    cfg = _config(
        model,
        corpus_dir,
        str(tmp_path / "exp"),
        random_seeds=[0],
        languages={k: f"{corpus_dir}/{k}.txt" for k in LANGS[:2]},
        max_seqs=8,
        eval_max_seqs=4,
        dims={
            "layer": 1,
            "auto_candidates": 2,
            "auto_controls": 4,
            "targets": ["input_norm", "v_proj", "o_proj"],
            "factors": [4.0],
        },
    )
    code, _, err = run_cli("experiment", _write(tmp_path, cfg))
    assert code == 0, err
    res = json.loads((tmp_path / "exp/results.json").read_text())["dims"]
    assert PLANTED in res["candidates"]  # found without being named
    ratio = {(p["group"], p["entry"]): p["mean_ratio"] for p in res["sweep"]}
    planted = ratio[("candidate", f"model.layers.1.input_layernorm.weight[{PLANTED}]")]
    controls = [v for (g, _), v in ratio.items() if g == "control"]
    assert len(controls) == 4 * 3
    assert planted > 5 * DIM_BREAK_RATIO and max(controls) < DIM_CONTROL_MAX_RATIO
    report = (tmp_path / "exp/report.md").read_text()
    # the writer's row on dim 33 is planted too, and found: both are named
    assert f"dimensions {PLANTED}, {WRITE} break the model while no control does" in report


@pytest.mark.parametrize("family", ["qwen3", "gemma"])
@pytest.mark.slow
def test_battery_runs_on_other_families(model_factory, corpus_dir, tmp_path, family):
    cfg = _config(
        model_factory(family),
        corpus_dir,
        str(tmp_path / "exp"),
        random_seeds=[0],
        languages={k: f"{corpus_dir}/{k}.txt" for k in LANGS[:2]},
        max_seqs=6,
        eval_max_seqs=3,
        ratios=[0.01],
        dims={
            "auto_candidates": 1,
            "auto_controls": 1,
            "factors": [4.0],
            "targets": [
                "input_norm",
                "post_attention_layernorm",
                "o_proj",
                "down_proj",
                "q_proj",
                "k_proj",
                "v_proj",
                "gate_proj",
                "up_proj",
            ],
        },
        mask_maps={"matrices": ["model.layers.0.mlp.down_proj.weight"]},
    )
    code, _, err = run_cli("experiment", _write(tmp_path, cfg))
    assert code == 0, err
    res = json.loads((tmp_path / "exp/results.json").read_text())
    d = res["dims"]
    assert len(d["sweep"]) == (len(d["candidates"]) + len(d["controls"])) * 9
    assert (tmp_path / "exp/report.md").exists()


@pytest.mark.parametrize(
    "family,over,key",
    [
        ("llama_mha", {"dims": {"dims": [64]}}, "dims.dims[0]: dimension 64 is out of range"),
        ("llama_mha", {"dims": {"controls": [3, -1]}}, "dims.controls[1]"),
        ("gpt2", {"dims": {"targets": ["input_norm", "q_proj"]}}, "dims.targets[1]: 'q_proj'"),
        ("llama_mha", {"ratios": [0.01, 1.5]}, "ratios[1]: 1.5 is outside (0, 1)"),
        ("llama_mha", {"ratio": 1.0}, "ratio: 1.0 is outside (0, 1)"),
        (
            "llama_mha",
            {"mask_maps": {"matrices": ["model.layers.0.input_layernorm.weight"]}},
            "mask_maps.matrices[0]",
        ),
        (
            "llama_mha",
            {"case_studies": {"prompts": {"zz": ["hello"]}}},
            "case_studies.prompts: language 'zz'",
        ),
        (
            "llama_mha",
            {"case_studies": {"prompts": {"lat": ["  "]}}},
            "case_studies.prompts.lat[0]: empty prompt",
        ),
        ("llama_mha", {"case_studies": {"prompts": {"lat": []}}}, "prompts.lat: no prompts"),
        (
            "llama_mha",
            {"case_studies": {"prompts": {"lat": ["ba " * 400]}}},
            "prompt tokens + case_studies.max_new_tokens 32 exceed the model's context",
        ),
    ],
)
def test_bad_config_one_line_exit_2(model_factory, corpus_dir, tmp_path, capsys, family, over, key):
    cfg = _config(model_factory(family), corpus_dir, str(tmp_path / "exp"), **over)
    path = _write(tmp_path, cfg)
    capsys.readouterr()  # drop the model factory's progress output
    assert cli_main(["experiment", path]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and path in err and key in err, err
    assert not (tmp_path / "exp").exists()


@pytest.mark.parametrize(
    "name,preset,dims_",
    [
        ("paper_llama2_7b.yaml", "llama2-7b", [1415, 2533]),
        ("paper_llama2_13b.yaml", "llama2-13b", [2100]),
    ],
)
def test_paper_configs_fit_their_models(name, preset, dims_):
    """The paper configs' dims, targets and mapped matrices exist in the model they name
    (checked against the published shapes; nothing is downloaded)."""
    import os

    from jaxregion.analysis.experiment import load_config, validate_for_model
    from jaxregion.models import shapes
    from jaxregion.parallel import plan

    path = os.path.join(os.path.dirname(__file__), "..", "configs", name)
    cfg = load_config(path)
    model = plan.preset_config(preset)
    validate_for_model(cfg, model, shapes(model), path)
    assert list(cfg.dims.dims) == dims_ and cfg.dims.layer == 1 and len(cfg.dims.targets) == 9
    assert cfg.ratios == (0.005, 0.01, 0.03, 0.05)
    if preset == "llama2-13b":
        assert cfg.model == "meta-llama/Llama-2-13b-hf" and cfg.dims.controls == (4200,)
        assert cfg.dims.factors == (4.0,) and next(iter(cfg.eval_languages)) == "zh"
        assert next(iter(cfg.languages)) == "zh"
        # 4200 would not fit 7B: the reason the figure is 13B's
        with pytest.raises(UserError, match=r"dims.controls\[0\]: dimension 4200"):
            small = plan.preset_config("llama2-7b")
            validate_for_model(cfg, small, shapes(small), path)


def test_dims_command_named_dims_and_targets(tokenizer, corpus_dir, tmp_path, capsys):
    model = _planted_llama(str(tmp_path / "planted"), tokenizer, corpus_dir)
    out = tmp_path / "dims.json"
    assert (
        cli_main(
            [
                "dims",
                "--model",
                model,
                "--text",
                f"lat={corpus_dir}/lat.txt",
                "--seq-len",
                "32",
                "--max-seqs",
                "4",
                "--dims",
                str(PLANTED),
                "--control-dims",
                "5",
                "--targets",
                "input_norm,v_proj",
                "--factors",
                "4,0",
                "--json",
                str(out),
            ]
        )
        == 0
    )
    res = json.loads(out.read_text())
    assert res["candidates"] == [PLANTED] and res["controls"] == [5]
    assert [(p["entry"], p["factor"]) for p in res["sweep"]] == [
        (f"model.layers.1.input_layernorm.weight[{PLANTED}]", 4.0),
        (f"model.layers.1.input_layernorm.weight[{PLANTED}]", 0.0),
        (f"model.layers.1.self_attn.v_proj.weight[:,{PLANTED}]", 4.0),
        (f"model.layers.1.self_attn.v_proj.weight[:,{PLANTED}]", 0.0),
        ("model.layers.1.input_layernorm.weight[5]", 4.0),
        ("model.layers.1.input_layernorm.weight[5]", 0.0),
        ("model.layers.1.self_attn.v_proj.weight[:,5]", 4.0),
        ("model.layers.1.self_attn.v_proj.weight[:,5]", 0.0),
    ]
    assert f"dimension {PLANTED} breaks the model" in capsys.readouterr().out
    capsys.readouterr()
    assert (
        cli_main(
            [
                "dims",
                "--model",
                model,
                "--text",
                f"lat={corpus_dir}/lat.txt",
                "--seq-len",
                "32",
                "--dims",
                "64",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "dims.dims[0]: dimension 64 is out of range" in err
