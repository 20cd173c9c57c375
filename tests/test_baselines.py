"""Forgetting baselines: replay batches are exact and resumable, the EWC term is right."""

from __future__ import annotations

import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxregion import tree as T
from jaxregion.train import EWC, ReplaySampler, ewc_penalty, fisher_from_scores, replay_slots


def _windows(lo: int, n: int, seq: int = 8) -> np.ndarray:
    return (lo + np.arange(n * seq, dtype=np.int32).reshape(n, seq) % 97).astype(np.int32)


def test_replay_batches_exact_share_and_deterministic():
    target = {"t": _windows(0, 13)}
    source = {"a": _windows(1000, 5), "b": _windows(2000, 7)}
    s = ReplaySampler(target, source, batch_size=8, ratio=0.25, seed=3)
    again = ReplaySampler(target, source, batch_size=8, ratio=0.25, seed=3)
    other = ReplaySampler(target, source, batch_size=8, ratio=0.25, seed=4)
    assert replay_slots(8, 2).tolist() == [False, False, False, True] * 2  # spread evenly
    differs = False
    for step in range(40):
        b = s.batch(step)
        assert b.shape == (8, 8)
        is_src = b[:, 0] >= 1000
        assert is_src.sum() == 2 and np.array_equal(is_src, s.slots)  # exactly 25%
        assert np.array_equal(b, again.batch(step))  # pure function of (seed, step)
        differs |= not np.array_equal(b, other.batch(step))
    assert differs
    # the source part cycles through every source window of every source language
    seen = {tuple(r) for step in range(40) for r in s.batch(step)[s.slots]}
    assert len(seen) == 12
    from jaxregion.errors import UserError

    with pytest.raises(UserError, match="whole number"):
        ReplaySampler(target, source, batch_size=8, ratio=0.3)


def test_ewc_penalty_gradient_finite_differences():
    rng = np.random.default_rng(0)
    with jax.enable_x64(True):
        shapes = {"model.layers.0.a.weight": (3, 4), "model.layers.0.b.weight": (5,)}

        def mk():
            return T.unflatten({n: jnp.asarray(rng.standard_normal(s)) for n, s in shapes.items()})

        params, anchor = mk(), mk()
        fisher = jax.tree.map(jnp.abs, mk())
        ewc = EWC(anchor, fisher)
        lam = 0.7

        def f(p):  # the penalty written out in float64
            return (
                0.5
                * lam
                * sum(
                    jnp.sum(fi * (pi - ai) ** 2)
                    for pi, ai, fi in zip(
                        jax.tree.leaves(p), jax.tree.leaves(anchor), jax.tree.leaves(fisher)
                    )
                )
            )

        assert float(ewc_penalty(params, ewc, lam)) == pytest.approx(float(f(params)), rel=1e-6)
        g = T.flatten(jax.grad(ewc_penalty)(params, ewc, lam))
        flat = T.flatten(params)
        eps = 1e-5
        for n, x in flat.items():
            for idx in np.ndindex(x.shape):
                up = T.unflatten({**flat, n: x.at[idx].add(eps)})
                dn = T.unflatten({**flat, n: x.at[idx].add(-eps)})
                fd = (float(f(up)) - float(f(dn))) / (2 * eps)
                assert float(g[n][idx]) == pytest.approx(fd, rel=1e-5, abs=1e-6), (n, idx)


def test_fisher_from_scores_divides_theta_squared_and_normalises():
    params = {"w": jnp.asarray([0.5, -2.0, 0.0, 1.0], jnp.float32)}
    g2 = np.asarray([4.0, 1.0, 9.0, 2.0], np.float32)  # E[grad^2]
    scores = {"w": jnp.asarray(np.asarray(params["w"]) ** 2 * g2)}
    f = np.asarray(fisher_from_scores([scores, scores], params)["w"])
    raw = np.asarray([8.0, 2.0, 0.0, 4.0])
    np.testing.assert_allclose(f, raw / raw.mean(), rtol=1e-6)


def test_replay_ewc_freeze_resume_bitwise(model_factory, corpus_dir, tmp_path, monkeypatch):
    """Interrupted (SIGINT at step 3) + resumed == uninterrupted, with replay, EWC and a
    frozen region together; frozen elements stay bitwise fixed."""
    from jaxregion import runtime
    from jaxregion.regions import random as random_region
    from jaxregion.train import TrainConfig, freeze_mask_for, make_ewc, train

    session = runtime.load_session(model_factory("llama_mha"))
    c = runtime.load_corpora(
        [f"cyr={corpus_dir}/cyr.txt", f"lat={corpus_dir}/lat.txt"], session, 16, 24
    )
    params = session.params
    region = random_region(params, 0.05, seed=1, granularity="column")
    fisher = jax.tree.map(lambda p: jnp.ones(p.shape, jnp.float32), params)
    ewc = make_ewc(params, fisher)
    cfg = TrainConfig(
        steps=6,
        batch_size=4,
        seq_len=16,
        lr=1e-2,
        warmup=1,
        weight_decay=0.5,
        save_every=2,
        keep=5,
        replay_ratio=0.5,
        ewc_lambda=10.0,
        eval_start=False,
    )
    kw = dict(region=region, mesh=session.mesh, progress=False, replay={"lat": c["lat"]}, ewc=ewc)
    full = train(params, session.config, {"cyr": c["cyr"]}, cfg, str(tmp_path / "a"), **kw)
    assert not full.interrupted and full.step == 6

    orig = ReplaySampler.batch

    def batch(self, step):
        if step == 3:
            os.kill(os.getpid(), signal.SIGINT)
        return orig(self, step)

    monkeypatch.setattr(ReplaySampler, "batch", batch)
    part = train(params, session.config, {"cyr": c["cyr"]}, cfg, str(tmp_path / "b"), **kw)
    assert part.interrupted and part.step == 4
    monkeypatch.setattr(ReplaySampler, "batch", orig)
    rest = train(params, session.config, {"cyr": c["cyr"]}, cfg, str(tmp_path / "b"), **kw)
    assert rest.resumed_from == 4 and rest.step == 6
    mask = T.flatten(freeze_mask_for(params, region, False))
    p0 = T.flatten(params)
    for n, v in T.flatten(full.params).items():
        assert np.asarray(v).tobytes() == np.asarray(T.flatten(rest.params)[n]).tobytes(), n
        m = np.asarray(mask[n])
        assert np.asarray(v)[m].tobytes() == np.asarray(p0[n])[m].tobytes(), n
    # replay and EWC change the run: without them the params differ
    plain = train(
        params,
        session.config,
        {"cyr": c["cyr"]},
        TrainConfig(**{**cfg.__dict__, "replay_ratio": 0.0, "ewc_lambda": 0.0}),
        str(tmp_path / "c"),
        region=region,
        mesh=session.mesh,
        progress=False,
    )
    name = "model.layers.0.mlp.up_proj.weight"
    assert not np.array_equal(
        np.asarray(T.flatten(plain.params)[name]), np.asarray(T.flatten(full.params)[name])
    )
