"""Importance scores: an independent PyTorch implementation, invariances, estimators, CLI.

Relative error of a tensor ``a`` against a reference ``b`` is ``max|a - b| / max|b|`` (per
tensor; the max-normalised error, so tiny entries are not blown up by their own size while
every entry is still held to the tensor's scale). Tolerances are never relaxed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from conftest import run_cli_subprocess
from hf_factory import make_model

from jaxregion import importance, regions, scorefiles
from jaxregion import tree as T
from jaxregion.cli.main import main as cli_main
from jaxregion.configs import ImportanceConfig
from jaxregion.data.packing import load_windows
from jaxregion.data.sources import open_source
from jaxregion.io import hf
from jaxregion.parallel import sharding

FAMILY = "llama_gqa_llama3"
SEQ = 32


def rel_err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    scale = np.abs(b).max()
    if scale == 0:
        return float(np.abs(a).max())
    return float(np.abs(a - b).max() / scale)


@pytest.fixture(scope="module")
def llama(model_factory):
    path = model_factory(FAMILY)
    cfg, params = hf.load(path)
    return path, cfg, params


@pytest.fixture(scope="module")
def corpora(corpus_dir, tokenizer):
    out = {}
    for lang in ("lat", "cyr"):
        src = open_source(f"{corpus_dir}/{lang}.txt")
        out[lang] = load_windows(src.documents(), tokenizer, SEQ, 10)
    return out


def torch_taylor(windows: np.ndarray) -> dict[str, np.ndarray]:
    """θ ⊙ ∇θ L in PyTorch, L = transformers' mean causal-LM loss over all windows at once.

    The test config sets pad_token_id=0, which makes torch's embedding zero the gradient of
    row 0 (``padding_idx``); the tokenizer's BOS is also id 0 and starts every window, so
    that masking is switched off to get the true gradient of L."""
    model = make_model(FAMILY)
    model.model.embed_tokens.padding_idx = None
    ids = torch.tensor(windows, dtype=torch.long)
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    return {n: (p.grad * p).detach().numpy() for n, p in model.named_parameters()}


@pytest.mark.slow
def test_taylor_matches_pytorch(llama, corpora):
    _, cfg, params = llama
    ours, ref = {}, {}
    worst = 0.0
    for lang, windows in corpora.items():
        # batch 4 over 10 windows: three micro-batches, the last padded with weight 0
        res = importance.compute_importance(params, cfg, windows, "taylor", batch_size=4)
        assert (res.windows, res.tokens) == (10, 10 * (SEQ - 1))
        ours[lang] = res.scores
        flat, tref = T.flatten(res.scores), torch_taylor(windows)
        assert flat.keys() == tref.keys()
        for n in flat:
            assert flat[n].dtype == jnp.float32 and flat[n].shape == tref[n].shape, n
            assert np.abs(tref[n]).max() > 0, n
            assert rel_err(flat[n], tref[n]) < 1e-4, (lang, n, rel_err(flat[n], tref[n]))
            worst = max(worst, rel_err(flat[n], tref[n]))
        ref[lang] = T.unflatten({n: jnp.asarray(v) for n, v in tref.items()})
    # the paper's core region (top 1% of Σ|score| per tensor) from both implementations
    a, b = regions.core(ours, 0.01), regions.core(ref, 0.01)
    assert a.size > 0
    assert regions.jaccard(a, b) >= 0.999
    print(
        f"taylor vs PyTorch: worst per-tensor max rel err {worst:.2e}, "
        f"core Jaccard {regions.jaccard(a, b):.6f}"
    )
    fa, fb = a.flat(), b.flat()
    for n in a.names():
        inter = int(np.sum(np.asarray(fa[n]) & np.asarray(fb[n])))
        union = int(np.sum(np.asarray(fa[n]) | np.asarray(fb[n])))
        assert inter / union >= 0.999, n


def test_taylor_invariant_to_batch_size(llama, corpora):
    _, cfg, params = llama
    w = np.concatenate(list(corpora.values()))  # 20 windows
    a = T.flatten(importance.compute_importance(params, cfg, w, batch_size=4).scores)
    b = T.flatten(importance.compute_importance(params, cfg, w, batch_size=16).scores)
    for n in a:
        assert rel_err(a[n], b[n]) < 1e-5, n


_DEVICES_SCRIPT = """
import sys, numpy as np, jax
from jaxregion.io import hf
from jaxregion import importance, tree as T
from jaxregion.parallel import sharding
assert len(jax.devices()) == 4, jax.devices()
cfg, params = hf.load(sys.argv[1])
w = np.load(sys.argv[2])
mesh = sharding.make_mesh()
res = importance.compute_importance(params, cfg, w, batch_size=4, mesh=mesh)
leaf = T.flatten(res.scores)["model.layers.0.mlp.up_proj.weight"]
assert len(leaf.sharding.device_set) == 4, leaf.sharding
np.savez(sys.argv[3], **{k: np.asarray(v) for k, v in T.flatten(res.scores).items()})
"""


@pytest.mark.slow
def test_taylor_invariant_to_device_count(llama, corpora, tmp_path):
    path, cfg, params = llama
    w = np.concatenate(list(corpora.values()))[:14]  # 14 windows: last batch padded
    np.save(tmp_path / "w.npy", w)
    env = dict(
        os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu"
    )
    p = subprocess.run(
        [
            sys.executable,
            "-c",
            _DEVICES_SCRIPT,
            path,
            str(tmp_path / "w.npy"),
            str(tmp_path / "s.npz"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    four = np.load(tmp_path / "s.npz")
    one = T.flatten(importance.compute_importance(params, cfg, w, batch_size=4).scores)
    assert set(four.files) == set(one)
    for n in one:
        assert rel_err(four[n], one[n]) < 1e-5, n


# --- estimators --------------------------------------------------------------------------
@pytest.mark.slow
def test_estimators_shapes_and_properties(llama, corpora):
    _, cfg, params = llama
    w = corpora["lat"]
    pflat = T.flatten(params)
    res = {
        e: T.flatten(importance.compute_importance(params, cfg, w, e, batch_size=4).scores)
        for e in importance.ESTIMATORS
    }
    for e, flat in res.items():
        assert flat.keys() == pflat.keys(), e
        for n, x in flat.items():
            assert x.shape == pflat[n].shape and x.dtype == jnp.float32, (e, n)
            assert np.isfinite(np.asarray(x)).all(), (e, n)
            if e != "taylor":
                assert float(jnp.min(x)) >= 0, (e, n)
    for n in pflat:
        np.testing.assert_array_equal(np.asarray(res["magnitude"][n]), np.abs(np.asarray(pflat[n])))
        # taylor-abs = Σ_b |θ g_b| / T >= |θ Σ_b g_b| / T = |taylor| (triangle inequality)
        ta, t = np.asarray(res["taylor-abs"][n]), np.abs(np.asarray(res["taylor"][n]))
        assert (ta >= t - 1e-6 * np.abs(t).max()).all(), n
        assert np.abs(res["fisher"][n]).max() > 0, n
    # one micro-batch holding every window: taylor-abs = |taylor|, fisher = taylor²
    one = {
        e: T.flatten(importance.compute_importance(params, cfg, w, e, batch_size=16).scores)
        for e in ("taylor", "taylor-abs", "fisher")
    }
    for n in pflat:
        t = np.asarray(one["taylor"][n])
        assert rel_err(one["taylor-abs"][n], np.abs(t)) < 1e-6, n
        assert rel_err(one["fisher"][n], t * t) < 1e-5, n
    # wanda scores exactly the linear weights inside layers; everything else is 0
    for n, x in res["wanda"].items():
        linear = importance.wanda_tap(n, cfg) is not None
        assert (float(jnp.max(x)) > 0) == linear, n
    assert sum(importance.wanda_tap(n, cfg) is not None for n in pflat) == 7 * cfg.num_layers


def test_wanda_equals_hand_computation_llama(llama, corpora):
    _, cfg, params = llama
    w = corpora["cyr"]
    got = T.flatten(importance.compute_importance(params, cfg, w, "wanda", batch_size=3).scores)
    p = {n: np.asarray(x, np.float64) for n, x in T.flatten(params).items()}
    x = p["model.embed_tokens.weight"][w]  # [n, seq, hidden]
    h = x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + cfg.norm_eps)
    h = h * p["model.layers.0.input_layernorm.weight"]
    norm = np.sqrt(np.sum(h * h, axis=(0, 1)))  # ‖X_j‖₂ over every token of every window
    for proj in ("q_proj", "k_proj", "v_proj"):
        name = f"model.layers.0.self_attn.{proj}.weight"
        ref = np.abs(p[name]) * norm[None, :]  # [out, in]: in-features are columns
        assert rel_err(got[name], ref) < 1e-5, name


def test_wanda_gpt2_conv1d_layout(model_factory, tokenizer, corpus_dir):
    cfg, params = hf.load(model_factory("gpt2"))
    src = open_source(f"{corpus_dir}/rom.txt")
    w = load_windows(src.documents(), tokenizer, 16, 6)
    got = T.flatten(importance.compute_importance(params, cfg, w, "wanda", batch_size=4).scores)
    p = {n: np.asarray(x, np.float64) for n, x in T.flatten(params).items()}
    x = p["transformer.wte.weight"][w] + p["transformer.wpe.weight"][np.arange(16)][None]
    mu = x.mean(-1, keepdims=True)
    h = (x - mu) / np.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + cfg.norm_eps)
    h = h * p["transformer.h.0.ln_1.weight"] + p["transformer.h.0.ln_1.bias"]
    norm = np.sqrt(np.sum(h * h, axis=(0, 1)))
    name = "transformer.h.0.attn.c_attn.weight"
    assert p[name].shape == (64, 192)  # Conv1D [in, out]: in-features are rows
    assert rel_err(got[name], np.abs(p[name]) * norm[:, None]) < 1e-5
    assert float(jnp.max(got["transformer.h.0.attn.c_attn.bias"])) == 0.0


def test_python_api_resume_is_bitwise(llama, corpora, tmp_path):
    """Stop iterating the states once past window 5 (after saving that one), restore from
    orbax, resume."""
    _, cfg, params = llama
    w = corpora["lat"]
    full = T.flatten(importance.compute_importance(params, cfg, w, "taylor", 2).scores)
    meta = {"windows_digest": importance.windows_digest(w)}
    d = str(tmp_path / "partial")
    mesh = importance.shd.make_mesh()
    start = importance.init_state(params, cfg, "taylor", 2, mesh)
    for st in importance.accumulate(start, params, cfg, w, mesh):
        if st.position >= 5:
            importance.save_partial(d, st, meta)
            break
    like = importance.init_state(params, cfg, "taylor", 2, mesh)
    assert importance.load_partial(d, like, {"windows_digest": "other"}) is None
    state = importance.load_partial(d, like, meta)
    assert state is not None and state.position == 6
    resumed = T.flatten(
        importance.compute_importance(params, cfg, w, "taylor", 2, state=state).scores
    )
    for n in full:
        np.testing.assert_array_equal(np.asarray(resumed[n]), np.asarray(full[n]), err_msg=n)


# --- CLI ---------------------------------------------------------------------------------
def interrupt(cfg: ImportanceConfig, lang: str, after: int) -> int:
    """Score ``lang`` as ``jaxregion importance`` would, but stop iterating at the first state
    at or past ``after`` windows (its checkpoint, if one is due, is written first), as a
    killed run would stop; the position reached."""
    session, texts, corpora = scorefiles.load_inputs(cfg, sharding.make_mesh())
    spec = scorefiles.ScoreSpec.of(cfg, texts[lang])
    run = scorefiles.LanguageRun.plan(session, lang, corpora[lang], cfg.out, spec)
    assert run.reuse() is None
    start = run.start()
    for st in run.states(start):
        if st.position >= after:
            return st.position
    raise AssertionError(f"{lang} ended before window {after}")


def _config(path, corpus_dir, out, **kw) -> ImportanceConfig:
    """The command's config for ``_args``' two languages (batch 2)."""
    text = {"lat": f"{corpus_dir}/lat.txt", "cyr": f"{corpus_dir}/cyr.txt"}
    return ImportanceConfig(model=path, text=text, seq_len=SEQ, batch_size=2, out=str(out), **kw)


def _args(path, corpus_dir, out, *extra):
    return [
        "importance",
        "--model",
        path,
        "--text",
        f"lat={corpus_dir}/lat.txt",
        "--text",
        f"cyr={corpus_dir}/cyr.txt",
        "--seq-len",
        str(SEQ),
        "--max-seqs",
        "10",
        "--batch-size",
        "2",
        "--save-every",
        "4",
        "--out",
        str(out),
        *extra,
    ]


def test_cli_writes_resumes_bitwise_and_skips(llama, corpora, corpus_dir, tmp_path, capsys):
    path, cfg, params = llama
    a, b = tmp_path / "a", tmp_path / "b"
    assert cli_main(_args(path, corpus_dir, a)) == 0
    for lang, windows in corpora.items():
        scores, meta = regions.load_scores(str(a / f"{lang}.safetensors"))
        assert meta["language"] == lang and meta["estimator"] == "taylor"
        assert int(meta["windows"]) == 10 and int(meta["tokens"]) == 10 * (SEQ - 1)
        assert int(meta["seq_len"]) == SEQ and meta["model_path"] == path
        assert meta["model"] == meta["model_fingerprint"] == regions.fingerprint(params)
        assert meta["jaxregion_version"]
        # the default scope, :layers, is the only part differentiated; the rest scores 0
        layers = scorefiles.scoped(params, cfg, ":layers", None)
        assert "model.embed_tokens.weight" in json.loads(meta["unscored"])
        ref = T.flatten(
            importance.compute_importance(params, cfg, windows, "taylor", 2, scope=layers).scores
        )
        got = T.flatten(scores)
        assert got.keys() == ref.keys()
        for n in ref:
            np.testing.assert_array_equal(got[n], np.asarray(ref[n]), err_msg=n)
    assert not (a / ".partial").exists()

    # interrupted after the first checkpoint of the first language (the command's own steps,
    # left where a killed run would leave them), then resumed by the command
    cfg = _config(path, corpus_dir, b, max_seqs=10, save_every=4)
    assert interrupt(cfg, "lat", after=4) == 4
    assert (b / ".partial" / "lat").is_dir() and not (b / "lat.safetensors").exists()
    capsys.readouterr()
    assert cli_main(_args(path, corpus_dir, b)) == 0
    assert "resuming at window 4/10" in capsys.readouterr().err
    for lang in corpora:
        (sa, ma), (sb, mb) = (regions.load_scores(str(d / f"{lang}.safetensors")) for d in (a, b))
        assert ma == mb  # (safetensors orders header keys arbitrarily, so compare parsed)
        fa, fb = T.flatten(sa), T.flatten(sb)
        assert fa.keys() == fb.keys()
        for n in fa:
            assert fa[n].tobytes() == fb[n].tobytes(), (lang, n)  # bitwise

    # a complete language is skipped; a mismatching existing file is an error
    before = {lang: os.stat(a / f"{lang}.safetensors").st_mtime_ns for lang in corpora}
    assert cli_main(_args(path, corpus_dir, a)) == 0
    err = capsys.readouterr().err
    assert err.count("is complete, skipped") == 2
    assert {lang: os.stat(a / f"{lang}.safetensors").st_mtime_ns for lang in corpora} == before
    assert cli_main(_args(path, corpus_dir, a, "--estimator", "fisher")) == 2
    err = capsys.readouterr().err.strip()
    assert "estimator='taylor'" in err and len(err.splitlines()) == 1


def test_command_keeps_no_language_scores(llama, corpus_dir, tmp_path):
    """``jaxregion importance`` writes each language's file and holds none of their score
    trees afterwards (six Gemma 3 270M languages grew by one tree, ~0.4 GB, per language)."""
    cfg = _config(llama[0], corpus_dir, tmp_path / "imp", max_seqs=4)
    done = scorefiles.score_all(cfg, sharding.make_mesh(), progress=False)
    assert set(done) == {"lat", "cyr"}
    for lang, got in done.items():
        assert got.status == "computed" and got.scores is None, lang
        assert os.path.isfile(tmp_path / "imp" / f"{lang}.safetensors")


@pytest.mark.slow
def test_cli_subprocess_errors_are_one_line(model_factory, corpus_dir, tmp_path):
    path = model_factory(FAMILY)
    out = tmp_path / "o"
    code, _, err = run_cli_subprocess(*_args(path, corpus_dir, out, "--max-seqs", "100000"))
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "--max-seqs" in err and not out.exists()
    code, _, err = run_cli_subprocess(*_args(path, corpus_dir, out, "--save-every", "0"))
    assert code == 2 and "--save-every" in err and not out.exists()
