"""The paper's battery on a real pretrained model, at CI size: Gemma 3 270M (its GGUF file,
assembled from the registry package of the test extra), two languages, a few windows each.

What it checks is what the committed run (docs/real/gemma3_270m/) reports at full size:
removing the core region raises every language's perplexity far more than removing the
bottom or a random region of the same size; the results record the command, the package
versions and each stage's wall time; the dims sweep runs on the model's own massive
activation dims with a non-massive control. Skips, saying why, only where the package is
not installed.
"""

from __future__ import annotations

import json
import shutil

import pytest
import yaml
from conftest import run_cli_subprocess

pytestmark = [pytest.mark.real, pytest.mark.slow]

# A few paragraphs per language (written for this test), enough for 4 windows of 32 tokens.
TEXTS = {
    "es": [
        "La ciudad está a orillas de un río ancho y tranquilo.",
        "En verano la gente se sienta en los jardines de las posadas y escucha música.",
        "Por la mañana los pescadores salen temprano con sus barcas de madera.",
        "Los niños corren por la plaza mientras sus abuelos conversan a la sombra.",
        "Cuando llega el otoño, las hojas de los árboles cubren todas las calles.",
        "El mercado abre los sábados y vende frutas, pan, queso y flores.",
        "Muchos viajeros llegan en tren para visitar la catedral y el museo.",
        "Por la noche las luces del puente se reflejan en el agua oscura.",
    ],
    "ru": [
        "Город стоит на берегу широкой и спокойной реки.",
        "Летом люди сидят в садах трактиров и слушают музыку.",
        "Утром рыбаки рано выходят на своих деревянных лодках.",
        "Дети бегают по площади, а их бабушки беседуют в тени.",
        "Когда приходит осень, листья деревьев покрывают все улицы.",
        "Рынок открыт по субботам, там продают фрукты, хлеб, сыр и цветы.",
        "Многие путешественники приезжают на поезде, чтобы увидеть собор и музей.",
        "Ночью огни моста отражаются в тёмной воде.",
    ],
}
PROMPTS = {"es": ["La capital de España es una ciudad"], "ru": ["Москва — столица России, и в ней"]}


@pytest.fixture(scope="module")
def battery(gemma3_gguf, tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("real_battery")
    langs = {}
    for lang, lines in TEXTS.items():
        (tmp / f"{lang}.txt").write_text("\n".join(lines * 3) + "\n", encoding="utf-8")
        langs[lang] = str(tmp / f"{lang}.txt")
    cfg = {
        "name": "ci-gemma3",
        "model": gemma3_gguf,
        "out": str(tmp / "exp"),
        "languages": langs,
        "seq_len": 32,
        "max_seqs": 4,
        "eval_max_seqs": 2,
        "batch_size": 2,
        "ratio": 0.01,
        "ratios": [0.01],
        "random_seeds": [0],
        "dims": {
            "layer": 1,
            "auto_source": "activations",
            "auto_candidates": 1,
            "auto_controls": 1,
            "targets": ["input_norm"],
            "factors": [4.0],
        },
        "mask_maps": {"matrices": ["model.layers.1.mlp.down_proj.weight"], "blocks": 32},
        "case_studies": {"prompts": PROMPTS, "max_new_tokens": 8, "dims": False},
    }
    path = tmp / "exp.yaml"
    path.write_text(yaml.safe_dump(cfg, allow_unicode=True), encoding="utf-8")
    # its own process: Gemma's battery holds several GB that pytest should not keep (in the
    # full suite, on top of what earlier tests left, XLA's compiler once crashed here)
    code, _, err = run_cli_subprocess("experiment", str(path))
    try:
        assert code == 0, err[-2000:]
        return json.loads((tmp / "exp" / "results.json").read_text(encoding="utf-8"))
    finally:
        # the tests read only results.json; the score files (4 x 1.07 GB) go at once, so the
        # suite's disk peak stays near this module's and CI's disk does not fill
        shutil.rmtree(tmp / "exp" / "importance", ignore_errors=True)


def test_core_ablation_breaks_gemma_more_than_controls(battery):
    res = battery
    assert res["setting"]["model_type"] == "gemma3_text" and res["setting"]["hidden_size"] == 640
    ppl = res["perplexity"]
    for lang in TEXTS:
        base = ppl["base"][lang]
        core, bottom, rnd = (ppl[k][lang] / base for k in ("core", "bottom", "random-0"))
        # the core's damage dwarfs both controls' (the full-size run: x1e2-1e4 vs ~1)
        # on this real model random 1% regions are not harmless (x1.4-11 in the full run,
        # docs/real/README.md), but the core's damage dwarfs both controls'
        assert core > 1000 and core > 100 * max(bottom, rnd), (lang, core, bottom, rnd)
        assert 0.5 < res["bits_per_byte"]["base"][lang] < 6.0


def test_results_record_command_versions_and_stage_times(battery):
    assert battery["command"][:2] == ["jaxregion", "experiment"]
    assert {"jax", "flax", "numpy", "python", "jaxregion"} <= set(battery["versions"])
    stages = battery["stage_seconds"]
    assert list(stages) == [
        "load",
        "importance",
        "regions",
        "ablations",
        "overlap",
        "ratio_sweep",
        "region_maps",
        "dims",
        "agreement",
        "case_studies",
    ]
    # each figure is rounded to 0.1 s, so their sum may exceed the rounded total by 0.05 each
    slack = 0.05 * (len(stages) + 1)
    assert all(v >= 0 for v in stages.values())
    assert sum(stages.values()) <= battery["seconds"] + slack


def test_dims_on_the_models_own_massive_dims(battery):
    d = battery["dims"]
    cand, ctrl = d["candidates"][0], d["controls"][0]
    largest = max(d["massive_activations"], key=lambda m: m["ratio_to_median"])
    assert cand == largest["dims"][0]  # the model's most massive dimension, not the paper's
    assert all(ctrl not in m["dims"] for m in d["massive_activations"])
    assert d["peak_ratio"][str(cand)] > 10 * d["peak_ratio"][str(ctrl)]


def test_case_studies_measure_fidelity(battery):
    cs = battery["case_studies"]
    assert set(cs["prompts"]) == set(PROMPTS)
    assert {"base", "core removed", "random removed"} <= set(cs["settings"])
