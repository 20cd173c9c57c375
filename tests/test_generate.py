"""Generation: greedy parity with transformers, the KV cache against full recomputation."""

from __future__ import annotations

import json

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from conftest import run_cli
from hf_factory import FAMILIES, make_model

from jaxregion.data import synthetic
from jaxregion.data.packing import document_tokens
from jaxregion.generate import Sampling, generate
from jaxregion.io import hf
from jaxregion.models import apply

NEW = 32


def _prompts(tokenizer, lengths: tuple[int, ...] = (5, 11, 17)) -> list[list[int]]:
    """Prompts of different lengths, BOS first."""
    docs = list(synthetic.generate("grk", len(lengths), seed=4))
    ids = list(document_tokens(docs, tokenizer))
    return [d[:n] for d, n in zip(ids, lengths)]


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.slow
def test_greedy_equals_transformers_and_cache_is_exact(family, model_factory, tokenizer):
    path = model_factory(family)
    cfg, params = hf.load(path)
    # longrope: start past original_max_position_embeddings (16), see test_longrope_switch
    prompts = _prompts(tokenizer, (17, 20, 23) if cfg.rope_kind == "longrope" else (5, 11, 17))
    assert len({len(p) for p in prompts}) == 3
    gen = generate(params, cfg, prompts, NEW, with_logits=True)

    model = make_model(family)
    model.generation_config.eos_token_id = None  # compare all NEW tokens, EOS or not
    for p, got, logits in zip(prompts, gen.token_ids, gen.logits):
        with torch.no_grad():
            x = torch.tensor([p])  # an explicit mask: BOS may share the pad id
            ref = model.generate(
                x,
                attention_mask=torch.ones_like(x),
                max_new_tokens=NEW,
                do_sample=False,
                pad_token_id=0,
            )
        assert got == ref[0, len(p) :].tolist(), family
        # The cached step logits equal a full forward over prompt + generated tokens.
        full = apply(params, jnp.asarray([p + got]), cfg)[0]
        want = np.asarray(full[len(p) - 1 : len(p) - 1 + NEW], np.float32)
        assert logits.shape == want.shape
        assert np.max(np.abs(logits - want)) < 1e-4, family


@pytest.mark.slow
def test_eos_cuts_and_sampling_is_seeded(model_factory, tokenizer):
    cfg, params = hf.load(model_factory("llama_mha"))
    prompts = _prompts(tokenizer)
    greedy = generate(params, cfg, prompts, 8).token_ids
    eos = greedy[1][2]  # pretend the third token of row 1 is EOS
    cut = generate(params, cfg, prompts, 8, eos_token_id=eos).token_ids
    assert cut[1] == greedy[1][:3]
    for g, c in zip(greedy, cut):
        assert c == (g[: g.index(eos) + 1] if eos in g else g)
    s = Sampling(temperature=1.5, top_p=0.9, seed=7)
    a = generate(params, cfg, prompts, 8, s, batch_size=2).token_ids
    assert a == generate(params, cfg, prompts, 8, s, batch_size=2).token_ids
    assert (
        a != generate(params, cfg, prompts, 8, Sampling(1.5, 0.9, seed=8), batch_size=2).token_ids
    )
    # Each batch draws its own stream: the same prompt in two batches samples differently.
    rep = generate(params, cfg, [prompts[0]] * 4, 8, s, batch_size=2).token_ids
    assert rep[0] != rep[2] and rep[1] != rep[3]
    # top_p -> 0 keeps only the most likely token: greedy again.
    assert generate(params, cfg, prompts, 8, Sampling(1.0, 1e-6, 3)).token_ids == greedy


def test_generate_cli_with_edit(model_factory, tmp_path):
    path = model_factory("llama_mha")
    out = tmp_path / "gen.json"
    prompts = tmp_path / "p.jsonl"
    docs = list(synthetic.generate("lat", 2, seed=1))
    prompts.write_text("".join(json.dumps({"prompt": d[:20]}) + "\n" for d in docs))
    code, stdout, err = run_cli(
        "generate",
        "--model",
        path,
        "--prompts",
        str(prompts),
        "--prompt",
        "Ana |x",
        "--max-new-tokens",
        "6",
        "--perturb",
        "model.layers.0.mlp.down_proj.weight[:,3]*40",
        "--json",
        str(out),
    )
    assert code == 0, err
    rows = json.loads(out.read_text())
    assert [r["prompt"] for r in rows] == [d[:20] for d in docs] + ["Ana |x"]
    for r in rows:
        assert set(r) >= {"prompt", "completion", "token_ids", "edited"}
        assert 1 <= len(r["token_ids"]) <= 6 and isinstance(r["completion"], str)
        assert set(r["edited"]) == {"completion", "token_ids"}
    assert "| prompt" in stdout and "edited" in stdout and "Ana \\|x" in stdout


def test_longrope_switch_mid_generation_is_refused(model_factory, tokenizer):
    """transformers re-prefills when a phi3 longrope sequence crosses its original length;
    the cache does not (yet), so such a request is bad input rather than a silent mismatch."""
    from jaxregion.errors import UserError

    cfg, params = hf.load(model_factory("phi3_longrope"))
    with pytest.raises(UserError, match="original_max_position_embeddings"):
        generate(params, cfg, _prompts(tokenizer, (5,)), 16)
    assert len(generate(params, cfg, _prompts(tokenizer, (5,)), 12).token_ids[0]) == 12


@pytest.mark.parametrize(
    "args, what",
    [
        (["--prompt", ""], "empty prompt"),
        (["--prompt", "Ana " * 200], "context"),
        (["--prompt", "Ana", "--max-new-tokens", "0"], "--max-new-tokens"),
        (["--prompt", "Ana", "--max-new-tokens", "-3"], "--max-new-tokens"),
    ],
)
def test_generate_bad_input(args, what, model_factory, tmp_path):
    out = tmp_path / "gen.json"
    code, stdout, err = run_cli(
        "generate", "--model", model_factory("llama_mha"), *args, "--json", str(out)
    )
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and what in err
    assert not out.exists()
