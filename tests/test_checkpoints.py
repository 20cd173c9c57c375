"""Checkpoint IO: bitwise round trip through transformers, shards, lazy memory, bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import transformers
from hf_factory import make_model

from jaxregion.errors import UserError
from jaxregion.io import hf, safetensors_io
from jaxregion.tree import flatten


@pytest.mark.parametrize(
    "family",
    [
        "llama_gqa_llama3",
        "gemma",
        "gpt2",
        "qwen2",
        "gemma2",
        "gemma3_text",
        "olmo2",
        "bloom",
        "phi3_longrope",
        "cohere_qk_norm",
    ],
)
def test_export_round_trip_is_bitwise(family, model_factory, tmp_path):
    src = model_factory(family)
    cfg, params = hf.load(src)
    out = str(tmp_path / family)
    hf.export(params, cfg, out, tokenizer_from=src)
    original = transformers.AutoModelForCausalLM.from_pretrained(src).state_dict()
    back = transformers.AutoModelForCausalLM.from_pretrained(out).state_dict()
    assert original.keys() == back.keys()
    for k in original:
        assert torch.equal(original[k], back[k]), k
    assert transformers.AutoTokenizer.from_pretrained(out).vocab_size > 0


def test_bloom_hub_names_without_prefix_load(model_factory, tmp_path):
    """bigscience/bloom-* checkpoints store BloomModel's names (``h.0.…``, no
    ``transformer.``): they load to the same params."""
    import shutil

    from safetensors.numpy import load_file

    src = model_factory("bloom")
    out = tmp_path / "bare"
    shutil.copytree(src, out)
    arrays = load_file(os.path.join(src, "model.safetensors"))
    assert all(k.startswith("transformer.") for k in arrays)
    safetensors_io.save_dict(
        str(out / "model.safetensors"),
        {k.removeprefix("transformer."): v for k, v in arrays.items()},
        {"format": "pt"},
    )
    _, a = hf.load(src)
    _, b = hf.load(str(out))
    fa, fb = flatten(a), flatten(b)
    assert fa.keys() == fb.keys()
    for k in fa:
        assert np.asarray(fa[k]).tobytes() == np.asarray(fb[k]).tobytes(), k


def test_bfloat16_load_and_export(model_factory, tmp_path):
    src = model_factory("llama_mha")
    cfg, params = hf.load(src, "bfloat16")
    leaf = params["model"]["layers"][0]["mlp"]["up_proj"]["weight"]
    assert str(leaf.dtype) == "bfloat16"
    hf.export(params, cfg, str(tmp_path / "bf16"), tokenizer_from=src)
    m = transformers.AutoModelForCausalLM.from_pretrained(
        str(tmp_path / "bf16"), dtype=torch.bfloat16
    )
    ref = make_model("llama_mha").state_dict()["model.layers.0.mlp.up_proj.weight"]
    got = m.state_dict()["model.layers.0.mlp.up_proj.weight"]
    assert torch.equal(got, ref.to(torch.bfloat16))


def test_sharded_checkpoint_loads_identically(model_factory, tmp_path):
    src = model_factory("llama_gqa_llama3")
    sharded = str(tmp_path / "sharded")
    make_model("llama_gqa_llama3").save_pretrained(sharded, max_shard_size="20KB")
    assert os.path.exists(os.path.join(sharded, "model.safetensors.index.json"))
    n_shards = len([f for f in os.listdir(sharded) if f.endswith(".safetensors")])
    assert n_shards > 2
    _, a = hf.load(src)
    _, b = hf.load(sharded)
    fa, fb = flatten(a), flatten(b)
    assert fa.keys() == fb.keys()
    for k in fa:
        np.testing.assert_array_equal(np.asarray(fa[k]), np.asarray(fb[k]))


def test_shape_check_reports_every_mismatch(model_factory, tmp_path):
    src = model_factory("llama_mha")
    f = safetensors_io.SafetensorsFile(os.path.join(src, "model.safetensors"))
    arrays = {k: f.read(k) for k in f.keys()}
    arrays["model.layers.0.mlp.up_proj.weight"] = arrays["model.layers.0.mlp.up_proj.weight"][:5]
    del arrays["model.layers.1.self_attn.k_proj.weight"]
    bad = tmp_path / "bad"
    bad.mkdir()
    safetensors_io.save_dict(str(bad / "model.safetensors"), arrays, {"format": "pt"})
    (bad / "config.json").write_text(open(os.path.join(src, "config.json")).read())
    try:
        hf.open_checkpoint(str(bad))
    except UserError as e:
        msg = str(e)
    assert "model.layers.0.mlp.up_proj.weight has shape [5, 64]" in msg
    assert "missing tensor model.layers.1.self_attn.k_proj.weight" in msg


def test_pickled_weights_refused(tmp_path, model_factory):
    d = tmp_path / "bin"
    d.mkdir()
    (d / "config.json").write_text(
        open(os.path.join(model_factory("llama_mha"), "config.json")).read()
    )
    (d / "pytorch_model.bin").write_bytes(b"not even read")
    try:
        hf.open_checkpoint(str(d))
        raise AssertionError("expected refusal")
    except UserError as e:
        assert "pytorch_model.bin" in str(e) and "safe_serialization=True" in str(e)


def test_hub_id_offline_fails_clearly(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    try:
        hf.resolve("nonexistent-org/nonexistent-model")
        raise AssertionError("expected failure")
    except UserError as e:
        assert "nonexistent-org/nonexistent-model" in str(e) and "hub" in str(e)


_MEMORY_SCRIPT = r"""
import json, os, sys, resource
import numpy as np
d = sys.argv[1]
def rss_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM"):
                return int(line.split()[1]) / 1024
import jax  # imported before the baseline so its own footprint is not counted
from jaxregion.io import hf
jax.numpy.zeros(1).block_until_ready()
base = rss_mb()
cfg, params = hf.load(d)
jax.block_until_ready(params)
print(json.dumps({"base": base, "peak": rss_mb()}))
"""


@pytest.mark.slow
def test_lazy_loading_memory(tmp_path):
    """A ~400 MB checkpoint loads with peak RSS growth below 1.5x its size."""
    cfg = transformers.LlamaConfig(
        vocab_size=16000,
        hidden_size=1024,
        intermediate_size=2816,
        num_hidden_layers=6,
        num_attention_heads=8,
        num_key_value_heads=8,
        max_position_embeddings=512,
    )
    d = tmp_path / "big"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(cfg.to_dict()))
    from jaxregion.models import from_hf_dict
    from jaxregion.models.spec import shapes

    rng = np.random.default_rng(0)
    tensors = {
        k: (np.float32, s, lambda s=s: rng.standard_normal(s, dtype=np.float32))
        for k, s in shapes(from_hf_dict(cfg.to_dict())).items()
    }
    safetensors_io.write(str(d / "model.safetensors"), tensors, {"format": "pt"})
    size_mb = os.path.getsize(d / "model.safetensors") / 2**20
    assert 350 < size_mb < 500
    p = subprocess.run(
        [sys.executable, "-c", _MEMORY_SCRIPT, str(d)], capture_output=True, text=True, check=True
    )
    m = json.loads(p.stdout.strip().splitlines()[-1])
    growth = m["peak"] - m["base"]
    print(f"checkpoint {size_mb:.0f} MB, peak RSS growth {growth:.0f} MB")
    assert growth < 1.5 * size_mb
