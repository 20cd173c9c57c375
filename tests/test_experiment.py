"""Interventions end to end: exact zeroing vs PyTorch, bad specs, the example script."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import run_cli
from hf_factory import make_model

from jaxregion import regions
from jaxregion.data.packing import load_windows
from jaxregion.data.sources import open_source
from jaxregion.io import hf

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
    code, _, err = run_cli(
        "eval",
        "--model",
        path,
        "--text",
        f"lat={text}",
        "--seq-len",
        "32",
        "--max-seqs",
        "12",
        "--batch-size",
        "4",
        "--region",
        rfile,
        "--json",
        str(out),
    )
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


@pytest.mark.parametrize(
    "spec,msg",
    [
        ("model.layers.9.mlp.down_proj.weight[0,0]*4", "model.layers.9.mlp.down_proj.weight"),
        ("model.layers.1.input_layernorm.weight[640]*4", "640"),
        ("model.layers.1.input_layernorm.weight[2100*4", "malformed"),
    ],
)
def test_bad_perturb_specs(model_factory, corpus_dir, tmp_path, spec, msg):
    code, _, err = run_cli(
        "eval",
        "--model",
        model_factory("llama_mha"),
        "--text",
        f"lat={corpus_dir}/lat.txt",
        "--seq-len",
        "16",
        "--perturb",
        spec,
        "--json",
        str(tmp_path / "o.json"),
    )
    assert code == 2 and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and msg in err
    assert not (tmp_path / "o.json").exists()


def test_perturb_changes_perplexity_exactly_where_asked(model_factory, corpus_dir, tmp_path):
    path = model_factory("llama_mha")
    outs = {}
    for tag, extra in (
        ("base", []),
        ("x0", ["--perturb", "model.layers.0.input_layernorm.weight[:]*0"]),
    ):
        out = tmp_path / f"{tag}.json"
        code, _, err = run_cli(
            "eval",
            "--model",
            path,
            "--text",
            f"lat={corpus_dir}/lat.txt",
            "--seq-len",
            "16",
            "--max-seqs",
            "8",
            *extra,
            "--json",
            str(out),
        )
        assert code == 0, err
        outs[tag] = json.loads(out.read_text())["perplexity"]["lat"]
    assert outs["x0"] != outs["base"]


@pytest.mark.slow
def test_example_functional_script(model_factory, corpus_dir):
    p = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "scripts", "example_functional.py"),
            model_factory("llama_mha"),
            f"lat={corpus_dir}/lat.txt",
            f"cyr={corpus_dir}/cyr.txt",
            "--seq-len",
            "32",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert p.returncode == 0, p.stderr
    rows = [
        line
        for line in p.stdout.splitlines()
        if line.startswith("| lat") or line.startswith("| cyr")
    ]
    assert len(rows) == 2
