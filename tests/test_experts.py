"""Routing statistics per language: a planted router gives a known answer; the command
writes its JSON, Markdown and heatmaps, and refuses a dense model."""

from __future__ import annotations

import json
import os

import jax.numpy as jnp
import numpy as np
import pytest
from conftest import run_cli

from jaxregion.analysis.experts import routing_stats
from jaxregion.io import hf
from jaxregion.tree import flatten, unflatten


def planted(path: str) -> tuple:
    """The checkpoint's params with routing planted: attention and expert outputs are zero
    (the residual stream stays the token embedding), tokens below 160 carry +8 on hidden dim
    0 and the others +8 on dim 1, and router rows 3 and 5 read dims 0 and 1."""
    cfg, params = hf.load(path)
    flat = dict(flatten(params))
    emb = np.asarray(flat["model.embed_tokens.weight"]).copy()
    emb[:, :2] = 0.0
    emb[:160, 0] = emb[160:, 1] = 8.0
    flat["model.embed_tokens.weight"] = jnp.asarray(emb)
    for i in range(cfg.num_layers):
        p = f"model.layers.{i}."
        flat[p + "self_attn.o_proj.weight"] = jnp.zeros_like(flat[p + "self_attn.o_proj.weight"])
        flat[p + "mlp.experts.down_proj"] = jnp.zeros_like(flat[p + "mlp.experts.down_proj"])
        router = np.zeros((cfg.num_experts, cfg.hidden_size), np.float32)
        router[3, 0] = router[5, 1] = 1.0
        flat[p + "mlp.gate.weight"] = jnp.asarray(router)
        flat[p + "post_attention_layernorm.weight"] = jnp.ones((cfg.hidden_size,))
    return cfg, unflatten(flat)


def test_planted_router_is_found(model_factory):
    cfg, params = planted(model_factory("mixtral"))
    rng = np.random.default_rng(0)
    corpora = {"aa": rng.integers(0, 160, (5, 16)), "bb": rng.integers(160, 320, (3, 16))}
    stats = routing_stats(params, cfg, corpora, batch_size=2)
    assert stats.tokens == {"aa": 80, "bb": 48}
    for lang, e in (("aa", 3), ("bb", 5)):
        want = np.zeros((cfg.num_layers, cfg.num_experts))
        want[:, e] = 1.0
        np.testing.assert_array_equal(stats.top1[lang], want)
        assert np.all(stats.topk[lang][:, e] == 1.0)
        np.testing.assert_allclose(stats.topk[lang].sum(axis=1), cfg.experts_per_token)
        assert np.all(stats.gate[lang][:, e] > 0.99)  # e's probability dwarfs the runner-up's
    ent, _ = stats.specificity()
    # experts 3 and 5 are each reached by one language only; the runner-up (expert 0, the
    # lowest index among the tied rest) by both
    assert np.all(ent[:, 3] == 0) and np.all(ent[:, 5] == 0)
    np.testing.assert_allclose(ent[:, 0], np.log(2), rtol=1e-6)
    assert np.all(np.isnan(ent[:, [1, 2, 4, 6, 7]]))  # no token reaches them
    found = {(r["layer"], r["expert"], r["language"]) for r in stats.most_specific(4)}
    assert found == {
        (i, e, lang) for i in range(cfg.num_layers) for e, lang in ((3, "aa"), (5, "bb"))
    }


def test_experts_command_writes_report(model_factory, corpus_dir, tmp_path):
    out = tmp_path / "exp"
    code, stdout, stderr = run_cli(
        "experts",
        "--model",
        model_factory("qwen2_moe"),
        "--text",
        f"lat={corpus_dir}/lat.txt",
        "--text",
        f"cyr={corpus_dir}/cyr.txt",
        "--seq-len",
        "32",
        "--max-seqs",
        "6",
        "--out",
        str(out),
        "--top",
        "5",
    )
    assert code == 0, stderr
    data = json.loads((out / "experts.json").read_text())
    assert data["languages"] == ["lat", "cyr"] and data["top_k"] == 2
    for lang in ("lat", "cyr"):
        top1, topk = np.asarray(data["top1_share"][lang]), np.asarray(data["topk_share"][lang])
        assert top1.shape == topk.shape == (2, 8)
        np.testing.assert_allclose(top1.sum(axis=1), 1.0)
        np.testing.assert_allclose(topk.sum(axis=1), 2.0)
        assert (out / f"routing_{lang}.png").stat().st_size > 1000
    assert len(data["most_specific"]) == 5
    assert "| layer | expert |" in (out / "experts.md").read_text() and "entropy" in stdout


def test_experts_command_refuses_dense_model(model_factory, corpus_dir, tmp_path):
    code, _, stderr = run_cli(
        "experts",
        "--model",
        model_factory("llama_mha"),
        "--text",
        f"lat={corpus_dir}/lat.txt",
        "--out",
        str(tmp_path / "x"),
    )
    assert code == 2 and len(stderr.strip().splitlines()) == 1 and "dense" in stderr


@pytest.mark.slow
def test_experts_specialise_by_language_in_a_tiny_trained_moe(tokenizer, tmp_path):
    """A tiny Mixtral (8 experts, top-2) trained from random init on two synthetic languages
    of different scripts: routing on held-out text becomes more language-specific than at
    init (measured: mean expert entropy 0.662 -> 0.619 nats, ln 2 = 0.693 being no
    preference), and some experts serve mostly one language (lowest entropy 0.605 -> 0.350):
    a modest specialisation, strongest in the last layer."""
    from flax import nnx
    from hf_factory import make_config

    from jaxregion.configs import TrainConfig
    from jaxregion.data import synthetic
    from jaxregion.data.packing import load_windows
    from jaxregion.models import build, from_hf_dict, params_of
    from jaxregion.train import train

    langs = ("lat", "cyr")
    texts = {x: list(synthetic.generate(x, 600, 0)) for x in langs}
    wins = {x: load_windows(iter(texts[x][:500]), tokenizer, 32, 400) for x in langs}
    held = {x: load_windows(iter(texts[x][500:]), tokenizer, 32, 40) for x in langs}
    cfg = from_hf_dict(make_config("mixtral").to_dict())
    params = params_of(build(cfg, nnx.Rngs(0)))
    before = routing_stats(params, cfg, held, 8)
    res = train(
        params,
        cfg,
        wins,
        TrainConfig(steps=300, batch_size=16, seq_len=32, lr=3e-3, warmup=20, save_every=10000),
        str(tmp_path / "ck"),
        progress=False,
    )
    after = routing_stats(res.params, cfg, held, 8)
    ent0, ent1 = before.specificity()[0], after.specificity()[0]
    assert np.nanmean(ent1) < np.nanmean(ent0) - 0.03
    assert np.nanmin(ent1) < 0.45 < np.nanmin(ent0)
    from jaxregion.report.experts import routing_heatmaps

    for p in routing_heatmaps(after, str(tmp_path), "trained"):  # docs/figures/moe_*.png
        assert os.path.getsize(p) > 1000
