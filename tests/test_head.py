"""The vocabulary-chunked head and scope-only gradients, on a tiny model with Gemma 3's
262,144-token vocabulary (tied, final-logit soft-cap) made here.

* The chunked NLL and its gradient match an unchunked float32 head (the full logits,
  ``log_softmax``) to float32 rounding, both held against a float64 head.
* XLA's memory analysis of the compiled importance step holds no ``[batch, seq, vocab]``
  buffer: its temporaries are far below ``b·s·V·4`` bytes, where the unchunked step's are not.
* Differentiating only the scored scope (``:layers``) compiles to a smaller step (no tied
  embedding/head gradient), leaves the in-scope scores unchanged, and scores the rest 0.
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxregion import importance, models
from jaxregion import tree as T
from jaxregion.models import head
from jaxregion.parallel import sharding as shd
from jaxregion.regions import scope_names

VOCAB, B, SEQ = 262144, 2, 128
BIG = B * (SEQ - 1) * VOCAB * 4  # bytes of one [b, s-1, V] float32 array


@pytest.fixture(scope="module")
def tiny():
    cfg = models.from_hf_dict(
        dict(
            model_type="gemma3_text",
            vocab_size=VOCAB,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=16,
            max_position_embeddings=SEQ,
            sliding_window=8,
            final_logit_softcapping=30.0,
            tie_word_embeddings=True,
        )
    )
    params = models.params_of(models.build(cfg, nnx.Rngs(0)))
    # embeddings large enough that the softmax is peaked on some rows (cancellation matters)
    params = T.replace(
        params, "model.embed_tokens.weight", T.get(params, "model.embed_tokens.weight") * 40.0
    )
    tokens = np.random.default_rng(0).integers(0, VOCAB, (B, SEQ)).astype(np.int32)
    return cfg, params, tokens


def _unchunked_nll(params, tokens, cfg):
    """The head as ``log_softmax`` of the full ``[b, s, V]`` logits (the reference)."""
    logits = models.apply(params, tokens, cfg)[:, :-1].astype(jnp.float32)
    logp = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1)[..., 0]


def _f64_head(h: np.ndarray, w: np.ndarray, t: np.ndarray, cap: float):
    """(nll, d nll_sum / d h, d nll_sum / d w) of the soft-capped head, in float64 numpy."""
    z = h @ w.T
    lg = cap * np.tanh(z / cap)
    m = lg.max(-1, keepdims=True)
    p = np.exp(lg - m)
    p /= p.sum(-1, keepdims=True)
    nll = np.log(np.exp(lg - m).sum(-1)) + m[:, 0] - lg[np.arange(len(t)), t]
    d = p.copy()
    d[np.arange(len(t)), t] -= 1.0
    d *= 1.0 - np.tanh(z / cap) ** 2
    return nll, d @ w, d.T @ h


def test_chunked_head_matches_unchunked_to_float32_rounding():
    rng = np.random.default_rng(1)
    n, d, vocab, cap = 96, 16, 5000, 30.0
    h = rng.standard_normal((n, d)).astype(np.float32) * 3
    w = rng.standard_normal((vocab, d)).astype(np.float32)
    t = rng.integers(0, vocab, n).astype(np.int32)
    w[t[:48]] += 2.0 * h[:48]  # half the rows confident: the softmax peaks on the target
    ref = _f64_head(h.astype(np.float64), w.astype(np.float64), t, cap)

    def unchunked(hh, ww):
        lg = head.transform(hh @ ww.T, None, cap)
        return -jnp.take_along_axis(jax.nn.log_softmax(lg, -1), t[:, None], 1)[:, 0]

    budget = 3 * 4 * n * 700  # 7 full chunks and a last one that overlaps the 7th
    assert head.chunk_size(n, vocab, budget) == 640

    def chunked(hh, ww):
        return head.nll(hh, ww, t, None, cap, budget)

    for f in (unchunked, chunked):
        nll = np.asarray(f(h, w), np.float64)
        gh, gw = jax.grad(lambda a, b, f=f: jnp.sum(f(a, b)), (0, 1))(h, w)
        errs = [np.abs(nll - ref[0]).max() / np.abs(ref[0]).max()]
        errs += [
            np.abs(np.asarray(g, np.float64) - r).max() / np.abs(r).max()
            for g, r in zip((gh, gw), ref[1:], strict=True)
        ]
        if f is unchunked:
            base = errs
        else:
            print("unchunked", base, "chunked", errs)
            for e, b in zip(errs, base, strict=True):
                assert e <= max(2 * b, 4 * np.finfo(np.float32).eps), (errs, base)


def test_chunked_model_loss_and_gradient_match_unchunked(tiny):
    cfg, params, tokens = tiny
    ours = jax.jit(models.token_nll, static_argnums=2)(params, tokens, cfg)
    ref = jax.jit(_unchunked_nll, static_argnums=2)(params, tokens, cfg)
    eps = np.finfo(np.float32).eps
    assert float(jnp.abs(ours - ref).max()) <= 8 * eps * float(jnp.abs(ref).max())
    g1 = jax.jit(jax.grad(lambda p: jnp.sum(models.token_nll(p, tokens, cfg))))(params)
    g2 = jax.jit(jax.grad(lambda p: jnp.sum(_unchunked_nll(p, tokens, cfg))))(params)
    for n, a in T.flatten(g1).items():
        b = T.get(g2, n)
        rel = float(jnp.abs(a - b).max() / jnp.abs(b).max())
        assert rel <= 64 * eps, (n, rel)


def _compiled_step(cfg, params, scope, unchunked=False):
    mesh = shd.make_mesh()
    state = importance.init_state(params, cfg, "taylor", B, mesh, scope)
    acc = state.acc[0]
    if unchunked:  # the same step over the full-logits head, for contrast

        def step(acc, params, tokens, weights):
            g = importance._grad_live(
                lambda p: jnp.sum(jnp.sum(_unchunked_nll(p, tokens, cfg), 1) * weights), params, acc
            )
            return {k: a + g[k] for k, a in acc.items()}

        fn = jax.jit(step, donate_argnums=0)
    else:
        fn = importance.step_function("taylor", cfg, acc)
    tok = jax.ShapeDtypeStruct((B, SEQ), jnp.int32)
    w = jax.ShapeDtypeStruct((B,), jnp.float32)
    return fn.lower(acc, params, tok, w).compile().memory_analysis()


def test_compiled_step_holds_no_batch_seq_vocab_buffer(tiny):
    cfg, params, _ = tiny
    layers = scope_names(list(T.flatten(params)), roles=models.roles(cfg))
    chunked = _compiled_step(cfg, params, layers)
    full = _compiled_step(cfg, params, layers, unchunked=True)
    print(
        f"temp bytes: chunked {chunked.temp_size_in_bytes:,}, unchunked "
        f"{full.temp_size_in_bytes:,}; one [b,s,V] f32 = {BIG:,}"
    )
    assert full.temp_size_in_bytes >= BIG  # the contrast: the check can fail
    assert chunked.temp_size_in_bytes < BIG / 4


def test_scope_only_gradients_are_smaller_and_exact(tiny):
    cfg, params, tokens = tiny
    layers = scope_names(list(T.flatten(params)), roles=models.roles(cfg))
    assert "model.embed_tokens.weight" not in layers
    everything = _compiled_step(cfg, params, None)
    scoped = _compiled_step(cfg, params, layers)
    emb = VOCAB * 32 * 4
    print(
        f"all: temp {everything.temp_size_in_bytes:,} out {everything.output_size_in_bytes:,}"
        f"; :layers: temp {scoped.temp_size_in_bytes:,} out {scoped.output_size_in_bytes:,}"
    )
    # no accumulator and no gradient for the tied embedding/head
    assert scoped.output_size_in_bytes <= everything.output_size_in_bytes - emb
    assert scoped.temp_size_in_bytes + emb <= everything.temp_size_in_bytes
    full = importance.compute_importance(params, cfg, tokens, "taylor", B)
    part = importance.compute_importance(params, cfg, tokens, "taylor", B, scope=layers)
    f, p = T.flatten(full.scores), T.flatten(part.scores)
    assert f.keys() == p.keys()
    for n in f:
        if n in layers:
            np.testing.assert_allclose(
                np.asarray(p[n]),
                np.asarray(f[n]),
                rtol=0,
                atol=4 * np.finfo(np.float32).eps * float(np.abs(f[n]).max()),
                err_msg=n,
            )
        else:
            assert not np.asarray(p[n]).any(), n
    assert np.asarray(f["model.embed_tokens.weight"]).any()  # scored when in scope


def test_cli_scope_metadata_and_regions_check(model_factory, corpus_dir, tmp_path):
    """``importance`` scores :layers by default (the rest 0, named in ``unscored``); a
    region whose scope reaches an unscored tensor is a one-line error; ``--include``
    widens the scored scope (the embedding then scores)."""
    from conftest import run_cli

    from jaxregion.regions import load_scores

    path = model_factory("llama_mha")
    common = [
        "importance",
        "--model",
        path,
        "--text",
        f"lat={corpus_dir}/lat.txt",
        "--seq-len",
        "16",
        "--max-seqs",
        "4",
        "--batch-size",
        "2",
    ]
    code, _, err = run_cli(*common, "--out", str(tmp_path / "a"))
    assert code == 0, err
    scores, meta = load_scores(str(tmp_path / "a" / "lat.safetensors"))
    flat = T.flatten(scores)
    unscored = json.loads(meta["unscored"])
    assert {"model.embed_tokens.weight", "lm_head.weight", "model.norm.weight"} == set(unscored)
    assert all(not flat[n].any() for n in unscored)
    assert flat["model.layers.0.mlp.down_proj.weight"].any()
    code, _, err = run_cli(
        "regions",
        "core",
        "--importance",
        str(tmp_path / "a"),
        "--include",
        "embed",
        "--out",
        str(tmp_path / "r.safetensors"),
    )
    assert code == 2 and "did not score" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli(
        "regions",
        "core",
        "--importance",
        str(tmp_path / "a"),
        "--out",
        str(tmp_path / "r.safetensors"),
    )
    assert code == 0, err
    code, _, err = run_cli(*common, "--include", ".", "--out", str(tmp_path / "b"))
    assert code == 0, err
    scores, meta = load_scores(str(tmp_path / "b" / "lat.safetensors"))
    assert json.loads(meta["unscored"]) == [] and json.loads(meta["scope"])["include"] == "."
    assert T.flatten(scores)["model.embed_tokens.weight"].any()


def test_bfloat16_scores_are_float32_and_close_to_float32():
    """``--dtype bfloat16``: bf16 params and compute (the chunked head included), float32
    accumulators and scores, within a few bf16 roundings (2**-8) of the float32 scores."""
    cfg = models.from_hf_dict(
        dict(
            model_type="gemma3_text",
            vocab_size=4096,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=16,
            max_position_embeddings=64,
            sliding_window=8,
            final_logit_softcapping=30.0,
            tie_word_embeddings=True,
        )
    )
    params = models.params_of(models.build(cfg, nnx.Rngs(0)))
    tokens = np.random.default_rng(0).integers(0, 4096, (8, 64)).astype(np.int32)
    p16 = jax.tree.map(lambda x: x.astype(jnp.bfloat16), params)
    a = T.flatten(importance.compute_importance(params, cfg, tokens, "taylor", 4).scores)
    b = T.flatten(importance.compute_importance(p16, cfg, tokens, "taylor", 4).scores)
    for n, x in a.items():
        x, y = np.asarray(x), np.asarray(b[n])
        assert y.dtype == np.float32 and np.isfinite(y).all(), n
        if x.any():
            assert np.abs(x - y).max() <= 16 * 2.0**-8 * np.abs(x).max(), n
