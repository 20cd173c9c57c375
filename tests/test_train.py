"""Training: frozen stays frozen, bitwise resume after SIGKILL/SIGTERM, checkpoints across
device counts, export parity with transformers, bad input."""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from jaxregion import tree as T

STEPS = 24


def _train_args(model, corpus_dir, ckpt, steps=STEPS, *extra):
    return [
        "train",
        "--model",
        model,
        "--text",
        f"lat={corpus_dir}/lat.txt",
        "--text",
        f"rom={corpus_dir}/rom.txt",
        "--steps",
        str(steps),
        "--batch-size",
        "4",
        "--seq-len",
        "32",
        "--lr",
        "3e-3",
        "--warmup",
        "3",
        "--weight-decay",
        "0.1",
        "--ckpt-dir",
        ckpt,
        "--save-every",
        "4",
        "--keep",
        "2",
        "--no-progress",
        *extra,
    ]


def _cmd(*argv):
    return [sys.executable, "-m", "jaxregion.cli.main", *argv]


def _load(path):
    from safetensors.numpy import load_file

    return load_file(os.path.join(path, "model.safetensors"))


def _assert_bitwise(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        assert a[k].tobytes() == b[k].tobytes(), f"{k} differs"


def _tree_hash(d):
    h = hashlib.sha1()
    for root, _, files in sorted(os.walk(d)):
        for f in sorted(files):
            p = os.path.join(root, f)
            h.update(p.encode())
            with open(p, "rb") as fh:
                h.update(fh.read())
    return h.hexdigest()


# --- frozen stays frozen -------------------------------------------------------------------
@pytest.mark.slow
def test_frozen_elements_bitwise_fixed(model_factory, tmp_path):
    from jaxregion.io import hf
    from jaxregion.parallel import sharding
    from jaxregion.regions import random as random_region
    from jaxregion.train import TrainConfig, freeze_mask_for, make_optimizer, make_train_step

    cfg_m, params = hf.load(model_factory("llama_mha"))
    region = random_region(params, ratio=0.05, seed=3)
    cfg = TrainConfig(
        steps=50, batch_size=4, seq_len=16, lr=1e-2, warmup=5, weight_decay=0.5, clip=1.0
    )
    mesh = sharding.make_mesh()
    rep = sharding.replicated(mesh)
    mask = freeze_mask_for(params, region, include_norms=True)
    init = {k: np.asarray(v).copy() for k, v in T.flatten(params).items()}
    p = jax.device_put(jax.tree.map(lambda x: x.copy(), params), rep)
    opt = jax.device_put(make_optimizer(cfg, mask).init(p), rep)
    step = make_train_step(cfg_m, cfg, mesh, frozen=True)
    rng = np.random.default_rng(0)
    m_dev = jax.device_put(mask, rep)
    for _ in range(50):
        batch = rng.integers(0, cfg_m.vocab_size, (4, 16)).astype(np.int32)
        p, opt, loss = step(p, opt, sharding.put_batch(batch, mesh), m_dev)
    assert np.isfinite(float(loss))
    flat_m = T.flatten(mask)
    n_frozen = 0
    for k, v in T.flatten(p).items():
        v, m, v0 = np.asarray(v), np.asarray(flat_m[k]), init[k]
        n_frozen += int(m.sum())
        assert v[m].tobytes() == v0[m].tobytes(), f"{k}: a frozen element moved"
        assert np.all(v[~m] != v0[~m]), f"{k}: some trainable element did not move"
    assert n_frozen > 0


# --- bitwise resume ------------------------------------------------------------------------
def _wait_for_step(ckpt, proc, min_step, timeout=120):
    from jaxregion.train import step_dirs

    t0 = time.time()
    while time.time() - t0 < timeout:
        if [s for s in step_dirs(ckpt) if s >= min_step]:
            return
        if proc.poll() is not None:
            pytest.fail(f"training exited early: {proc.stderr.read()}")
        time.sleep(0.05)
    pytest.fail("no checkpoint appeared")


@pytest.mark.slow
def test_resume_bitwise_after_sigkill_and_sigterm(model_factory, corpus_dir, tmp_path, capsys):
    model = model_factory("llama_mha")
    from jaxregion.cli.main import main

    ref, run = str(tmp_path / "ref"), str(tmp_path / "run")
    assert main(_train_args(model, corpus_dir, ref, STEPS, "--export", str(tmp_path / "A"))) == 0

    # 1) SIGKILL at a random moment after the first checkpoint
    p = subprocess.Popen(
        _cmd(*_train_args(model, corpus_dir, run)),
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    _wait_for_step(run, p, 4)
    time.sleep(random.Random().uniform(0.0, 0.5))
    p.kill()
    p.wait()
    # 2) resume, and stop it with SIGTERM: a checkpoint is written before it exits
    from jaxregion.train import step_dirs

    before = max(step_dirs(run))
    # the SIGTERM leg runs on a copy whose recorded identity says 10**6 steps (a run's step
    # count is part of its identity, so the original run could not be resumed that way)
    import json
    import shutil

    leg = str(tmp_path / "leg")
    shutil.copytree(run, leg)
    ident = json.load(open(os.path.join(leg, "identity.json")))
    with open(os.path.join(leg, "identity.json"), "w") as f:
        json.dump({**ident, "steps": 10**6}, f)
    p = subprocess.Popen(
        _cmd(*_train_args(model, corpus_dir, leg, 10**6, "--save-every", "1000000")),
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    # with --save-every huge, any new step dir can only come from the SIGTERM save
    t0 = time.time()
    while "resuming from step" not in (line := p.stderr.readline()):
        assert line or p.poll() is None, "no resume message"
        assert time.time() - t0 < 120
    time.sleep(1.0)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 128 + signal.SIGTERM, err
    assert "checkpoint saved" in err
    assert max(step_dirs(leg)) > before
    assert max(step_dirs(run)) == before  # the original run is untouched
    # 3) finish the original run (in this process: same CPU, same compiled step)
    capsys.readouterr()
    assert main(_train_args(model, corpus_dir, run, STEPS, "--export", str(tmp_path / "B"))) == 0
    assert f"resuming from step {before}" in capsys.readouterr().err
    _assert_bitwise(_load(tmp_path / "A"), _load(tmp_path / "B"))


# --- across device counts --------------------------------------------------------------------
def _env(n):
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={n}"
    env["JAX_PLATFORMS"] = "cpu"
    return env


@pytest.mark.slow
def test_checkpoint_across_device_counts(model_factory, corpus_dir, tmp_path):
    """Saved on 4 devices (subprocess) -> restored here on 1; saved here -> restored on 4."""
    from jaxregion.cli.main import main

    assert jax.device_count() == 1
    model = model_factory("llama_mha")
    # 4 -> 1
    ck4 = str(tmp_path / "ck4")
    p = subprocess.run(
        _cmd(*_train_args(model, corpus_dir, ck4, 4), "--export", str(tmp_path / "direct4")),
        env=_env(4),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 0, p.stderr
    assert main(["export", "--ckpt-dir", ck4, "--out", str(tmp_path / "restored1")]) == 0
    _assert_bitwise(_load(tmp_path / "direct4"), _load(tmp_path / "restored1"))
    # 1 -> 4
    ck1 = str(tmp_path / "ck1")
    assert main(_train_args(model, corpus_dir, ck1, 4, "--export", str(tmp_path / "direct1"))) == 0
    p = subprocess.run(
        _cmd("export", "--ckpt-dir", ck1, "--out", str(tmp_path / "restored4")),
        env=_env(4),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 0, p.stderr
    _assert_bitwise(_load(tmp_path / "direct1"), _load(tmp_path / "restored4"))


# --- export ----------------------------------------------------------------------------------
@pytest.mark.slow
def test_export_matches_transformers(model_factory, corpus_dir, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    from jaxregion.cli.main import main
    from jaxregion.io import hf
    from jaxregion.models import apply

    model = model_factory("llama_mha")
    ck, out = str(tmp_path / "ck"), str(tmp_path / "hf")
    assert main(_train_args(model, corpus_dir, ck, 6)) == 0
    assert main(["export", "--ckpt-dir", ck, "--out", out]) == 0
    assert os.path.isfile(os.path.join(out, "tokenizer.json"))
    cfg, params = hf.load(out)
    tokens = np.random.default_rng(0).integers(0, cfg.vocab_size, (2, 24)).astype(np.int32)
    ours = np.asarray(apply(params, tokens, cfg))
    tm = AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager").eval()
    with torch.no_grad():
        theirs = tm(torch.tensor(tokens, dtype=torch.long)).logits.numpy()
    np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=0)
    # and the export differs from the base model: it really was trained
    base = _load(model)
    assert any(base[k].tobytes() != v.tobytes() for k, v in _load(out).items())


# --- bad input -------------------------------------------------------------------------------
@pytest.mark.slow
def test_bad_input_exits_2_and_keeps_checkpoint(model_factory, corpus_dir, tmp_path, capsys):
    from jaxregion.cli.main import main
    from jaxregion.regions import random as random_region
    from jaxregion.regions import save_region

    model = model_factory("llama_mha")
    ck = str(tmp_path / "ck")
    assert main(_train_args(model, corpus_dir, ck, 4)) == 0
    good = _tree_hash(ck)
    capsys.readouterr()

    other = model_factory("llama_mha", hidden_size=32, intermediate_size=48)
    from jaxregion.io import hf

    _, other_params = hf.load(other)
    region_path = str(tmp_path / "other.safetensors")
    save_region(region_path, random_region(other_params, 0.01, seed=0))
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    capsys.readouterr()
    cases = {
        "another model": _train_args(model, corpus_dir, ck, 8, "--freeze", region_path),
        "unwritable": _train_args(model, corpus_dir, str(ro / "sub"), 8),
        "steps 0": _train_args(model, corpus_dir, ck, 0),
        "lr 0": _train_args(model, corpus_dir, ck, 8) + ["--lr", "0"],
        "lr negative": _train_args(model, corpus_dir, ck, 8) + ["--lr=-1e-3"],
        "ckpt of another model": _train_args(other, corpus_dir, ck, 8),
    }
    for name, argv in cases.items():
        if name == "unwritable" and os.access(str(ro), os.W_OK):
            continue  # running as root: permissions do not bind
        code = main(argv)
        err = capsys.readouterr().err.strip()
        assert code == 2, (name, err)
        assert len(err.splitlines()) == 1 and "error:" in err, (name, err)
        assert _tree_hash(ck) == good, f"{name}: the checkpoint dir changed"
    ro.chmod(0o700)


def test_unwritable_ckpt_dir_is_a_file(model_factory, corpus_dir, tmp_path, capsys):
    from jaxregion.cli.main import main

    blocker = tmp_path / "file"
    blocker.write_text("x")
    code = main(_train_args(model_factory("llama_mha"), corpus_dir, str(blocker / "ck"), 4))
    err = capsys.readouterr().err.strip()
    assert code == 2 and "cannot write" in err and len(err.splitlines()) == 1


@pytest.mark.slow
def test_corrupt_latest_checkpoint_falls_back(model_factory, corpus_dir, tmp_path, capsys):
    from jaxregion.cli.main import main
    from jaxregion.train import step_dirs

    model = model_factory("llama_mha")
    ck = str(tmp_path / "ck")
    assert main(_train_args(model, corpus_dir, ck, 8)) == 0
    assert step_dirs(ck) == [4, 8]
    # damage step 8: truncate every file of its params
    for root, _, files in os.walk(os.path.join(ck, "steps", "8", "params")):
        for f in files:
            with open(os.path.join(root, f), "r+b") as fh:
                fh.truncate(0)
    capsys.readouterr()
    assert main(_train_args(model, corpus_dir, ck, 8)) == 0
    err = capsys.readouterr().err
    assert "step 8" in err and "unreadable" in err and "falling back to step 4" in err
    assert "resuming from step 4" in err
    assert step_dirs(ck) == [4, 8]
    assert os.listdir(os.path.join(ck, "corrupt"))


def test_sampler_is_pure_function_of_step():
    from jaxregion.train import Sampler

    w = {"a": np.arange(10 * 4).reshape(10, 4), "b": 1000 + np.arange(3 * 4).reshape(3, 4)}
    s1, s2 = Sampler(w, 4, seed=1), Sampler(w, 4, seed=1)
    seq = [s1.batch(i) for i in range(20)]
    for i in reversed(range(20)):
        np.testing.assert_array_equal(s2.batch(i), seq[i])
    # languages interleave, and each epoch of a language is a permutation of its windows
    assert all((b[::2] < 1000).all() and (b[1::2] >= 1000).all() for b in seq)
    a_rows = np.concatenate([b[::2] for b in seq])[:10]
    assert sorted(a_rows[:, 0].tolist()) == list(range(0, 40, 4))
    assert not np.array_equal(Sampler(w, 4, seed=2).batch(0), seq[0])


@pytest.mark.slow
def test_train_step_honours_remat():
    """``train --remat`` (the plan's remat figures) runs the layers as one rematerialised
    scan, and trains to the same params as without it."""
    from flax import nnx

    from jaxregion import models
    from jaxregion.parallel import sharding
    from jaxregion.train import TrainConfig, make_optimizer, make_train_step

    cfg_m = models.ModelConfig(
        model_type="llama",
        vocab_size=64,
        hidden_size=16,
        intermediate_size=32,
        num_layers=3,
        num_heads=2,
        num_kv_heads=1,
        head_dim=8,
        max_position_embeddings=32,
        norm_eps=1e-6,
        activation="silu",
        tie_embeddings=True,
    )
    params = models.params_of(models.build(cfg_m, nnx.Rngs(0)))
    mesh = sharding.make_mesh()
    rep = sharding.replicated(mesh)
    batch = np.random.default_rng(0).integers(0, 64, (4, 12)).astype(np.int32)
    out = {}
    for remat in (False, True):
        cfg = TrainConfig(steps=3, batch_size=4, seq_len=12, lr=1e-2, remat=remat)
        step = make_train_step(cfg_m, cfg, mesh, frozen=False)
        p = jax.device_put(jax.tree.map(lambda x: x.copy(), params), rep)
        opt = jax.device_put(make_optimizer(cfg).init(p), rep)
        b = sharding.put_batch(batch, mesh)
        jaxpr = str(jax.make_jaxpr(step)(p, opt, b, None))
        assert ("remat" in jaxpr) == remat  # rematerialised layers only with remat
        for _ in range(3):
            p, opt, loss = step(p, opt, b, None)
        out[remat] = (T.flatten(p), float(loss))
    assert abs(out[True][1] - out[False][1]) <= 1e-5 * abs(out[False][1])
    for n, v in out[False][0].items():
        np.testing.assert_allclose(np.asarray(out[True][0][n]), np.asarray(v), rtol=1e-4, atol=1e-6)
