"""Interventions end to end: exact zeroing vs PyTorch, the battery, bad specs, the example."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml
from conftest import run_cli
from hf_factory import make_model

from jaxregion import hf, regions
from jaxregion.data.packing import load_windows
from jaxregion.data.sources import open_source
from jaxregion.tree import flatten

ROOT = os.path.dirname(os.path.dirname(__file__))


def _torch_ppl(model, windows):
    with torch.no_grad():
        logits = model(torch.tensor(windows, dtype=torch.long)).logits.double()
    logp = torch.log_softmax(logits[:, :-1], -1)
    nll = -logp.gather(-1, torch.tensor(windows[:, 1:, None], dtype=torch.long))[..., 0]
    return float(torch.exp(nll.mean()))


def test_zeroing_matches_pytorch(model_factory, corpus_dir, tokenizer, tmp_path):
    path = model_factory("llama_gqa_llama3")
    _, params = hf.load(path)
    region = regions.random(params, ratio=0.05, seed=3)
    rfile = str(tmp_path / "r.safetensors")
    regions.save_region(rfile, region)
    out = tmp_path / "eval.json"
    text = f"{corpus_dir}/lat.txt"
    code, _, err = run_cli("eval", "--model", path, "--text", f"lat={text}", "--seq-len", "32",
                           "--max-seqs", "12", "--batch-size", "4", "--region", rfile,
                           "--json", str(out))
    assert code == 0, err
    got = json.loads(out.read_text())["perplexity"]["lat"]
    # plain PyTorch: read the region file with numpy, zero the masked HF weights
    from safetensors import safe_open
    from safetensors.numpy import load_file

    with safe_open(rfile, "np") as f:
        shapes = json.loads(f.metadata()["shapes"])
    bits = load_file(rfile)
    model = make_model("llama_gqa_llama3")
    sd = model.state_dict()
    with torch.no_grad():
        for name, packed in bits.items():
            n = int(np.prod(shapes[name]))
            mask = np.unpackbits(packed, bitorder="little")[:n].reshape(shapes[name]).astype(bool)
            sd[name][torch.from_numpy(mask)] = 0.0
    windows = load_windows(open_source(text).documents(), tokenizer, 32, 12)
    ref = _torch_ppl(model, windows)
    base = _torch_ppl(make_model("llama_gqa_llama3"), windows)
    assert abs(ref - base) / base > 1e-3  # the region matters, so the check has teeth
    assert abs(got - ref) / ref < 1e-5


@pytest.mark.parametrize("spec,msg", [
    ("model.layers.9.mlp.down_proj.weight[0,0]*4", "model.layers.9.mlp.down_proj.weight"),
    ("model.layers.1.input_layernorm.weight[640]*4", "640"),
    ("model.layers.1.input_layernorm.weight[2100*4", "malformed"),
])
def test_bad_perturb_specs(model_factory, corpus_dir, tmp_path, spec, msg):
    code, _, err = run_cli("eval", "--model", model_factory("llama_mha"), "--text",
                           f"lat={corpus_dir}/lat.txt", "--seq-len", "16", "--perturb", spec,
                           "--json", str(tmp_path / "o.json"))
    assert code == 2 and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and msg in err
    assert not (tmp_path / "o.json").exists()


def test_perturb_changes_perplexity_exactly_where_asked(model_factory, corpus_dir, tmp_path):
    path = model_factory("llama_mha")
    outs = {}
    for tag, extra in (("base", []), ("x0", ["--perturb",
                                             "model.layers.0.input_layernorm.weight[:]*0"])):
        out = tmp_path / f"{tag}.json"
        code, _, err = run_cli("eval", "--model", path, "--text", f"lat={corpus_dir}/lat.txt",
                               "--seq-len", "16", "--max-seqs", "8", *extra, "--json", str(out))
        assert code == 0, err
        outs[tag] = json.loads(out.read_text())["perplexity"]["lat"]
    assert outs["x0"] != outs["base"]


def test_battery_runs_and_reports_everything(model_factory, corpus_dir, tmp_path):
    cfg = {
        "name": "tiny", "model": model_factory("llama_mha"), "out": str(tmp_path / "exp"),
        "languages": {k: f"{corpus_dir}/{k}.txt" for k in ("lat", "rom", "cyr")},
        "seq_len": 32, "max_seqs": 16, "eval_max_seqs": 6, "batch_size": 8,
        "random_seeds": [0, 1, 2],
        "ratio": 0.01, "ratios": [0.01, 0.05],
        "dims": {"layer": 1, "auto_candidates": 2, "auto_controls": 2, "factors": [4.0, 0.0],
                 "targets": ["input_norm", "down_proj", "q_proj"]},
        "jaccard": {"sample_counts": [8], "estimators": ["fisher", "wanda"]},
        "mask_maps": {"matrices": ["model.layers.1.mlp.up_proj.weight"], "blocks": 8},
    }
    cfg_path = tmp_path / "exp.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    code, _, err = run_cli("experiment", str(cfg_path))
    assert code == 0, err
    out = tmp_path / "exp"
    report = (out / "report.md").read_text()
    res = json.loads((out / "results.json").read_text())
    for png in ("ablations", "monolingual", "core_density", "core_dims", "importance_hist",
                "dims_sweep"):
        assert (out / f"{png}.png").stat().st_size > 1000
        assert f"({png}.png)" in report
    for heading in ("Table 1.", "Table 2.", "Table 3.", "Figure 1.", "Figure 2.", "Figure 3.",
                    "Figure 4.", "Figure 5.", "Caption", "Outcome"):
        assert heading in report
    conds = set(res["perplexity"])
    assert {"base", "core", "bottom", "random-0", "random-1", "random-2",
            "mono-lat", "mono-rom", "mono-cyr"} <= conds
    # random controls: distinct seeds give distinct regions, and the spread is reported
    r0 = regions.load_region(str(out / "regions/random-0.safetensors"))
    r1 = regions.load_region(str(out / "regions/random-1.safetensors"))
    assert regions.jaccard(r0, r1) < 0.5
    assert all(v >= 0 for v in res["random"]["std"].values())
    assert "±" in report
    assert set(res["jaccard"]["estimators"]) == {"taylor", "fisher", "wanda"}
    assert "8" in res["jaccard"]["sample_counts"]
    core = regions.load_region(str(out / "regions/core.safetensors"))
    for name, m in flatten(core.mask).items():
        if name in core.universe:
            assert int(np.asarray(m).sum()) == max(1, int(0.01 * np.asarray(m).size))


def test_example_functional_script(model_factory, corpus_dir):
    p = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "example_functional.py"),
                        model_factory("llama_mha"), f"lat={corpus_dir}/lat.txt",
                        f"cyr={corpus_dir}/cyr.txt", "--seq-len", "32"],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    rows = [line for line in p.stdout.splitlines() if line.startswith("| lat") or
            line.startswith("| cyr")]
    assert len(rows) == 2
