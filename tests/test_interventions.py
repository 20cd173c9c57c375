"""Interventions: exact semantics in HF names and index order, specs and their errors."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from jaxregion import interventions as I
from jaxregion import regions as R
from jaxregion import tree as T
from jaxregion.errors import UserError

DOWN = "model.layers.1.mlp.down_proj.weight"


@pytest.fixture
def params() -> dict:
    rng = np.random.default_rng(0)
    return T.unflatten(
        {
            "model.embed_tokens.weight": jnp.asarray(rng.standard_normal((7, 6)), jnp.float32),
            "model.layers.0.mlp.down_proj.weight": jnp.asarray(
                rng.standard_normal((6, 9)), jnp.bfloat16
            ),
            DOWN: jnp.asarray(rng.standard_normal((6, 9)), jnp.float32),
            "model.layers.1.input_layernorm.weight": jnp.ones((6,), jnp.float32),
        }
    )


@pytest.fixture
def mask(params: dict) -> dict:
    rng = np.random.default_rng(1)
    return T.map_named(lambda n, x: jnp.asarray(rng.random(x.shape) < 0.3), params)


def pairs(a: dict, b: dict, m: dict):
    fa, fb, fm = T.flatten(a), T.flatten(b), T.flatten(m)
    for n in fa:
        yield n, np.asarray(fa[n], np.float32), np.asarray(fb[n], np.float32), np.asarray(fm[n])


def test_zero_set_scale_exact(params: dict, mask: dict) -> None:
    for n, x, y, m in pairs(params, I.zero(params, mask), mask):
        assert (y[m] == 0).all() and np.array_equal(y[~m], x[~m]), n
    for n, x, y, m in pairs(params, I.set_value(params, mask, 2.5), mask):
        assert (y[m] == 2.5).all() and np.array_equal(y[~m], x[~m]), n
    out = I.scale(params, mask, 4.0)
    for n, x, y, m in pairs(params, out, mask):
        assert np.array_equal(y[m], x[m] * 4) and np.array_equal(y[~m], x[~m]), n
    for n, v in T.flatten(out).items():
        assert v.dtype == T.get(params, n).dtype


def test_noise_relative_and_seeded(params: dict) -> None:
    big = {"w": jnp.asarray(np.random.default_rng(2).standard_normal((300, 300)) * 3, jnp.float32)}
    m = {"w": jnp.ones((300, 300), bool).at[:, :10].set(False)}
    a = I.add_noise(big, m, 0.5, seed=1)
    b = I.add_noise(big, m, 0.5, seed=1)
    c = I.add_noise(big, m, 0.5, seed=2)
    d = np.asarray(a["w"] - big["w"])
    assert np.array_equal(np.asarray(a["w"]), np.asarray(b["w"]))
    assert not np.array_equal(np.asarray(a["w"]), np.asarray(c["w"]))
    assert (d[:, :10] == 0).all()
    assert abs(d[:, 10:].std() / (0.5 * float(jnp.std(big["w"]))) - 1) < 0.03
    assert abs(d[:, 10:].mean()) < 0.05


def test_region_and_partial_mask(params: dict) -> None:
    region = R.random(params, 0.2, seed=0)
    out = I.zero(params, region)
    assert all(
        (y[m] == 0).all() and np.array_equal(y[~m], x[~m])
        for _, x, y, m in pairs(params, out, region.mask)
    )
    assert out["model"]["embed_tokens"]["weight"] is params["model"]["embed_tokens"]["weight"]
    out = I.zero(params, T.unflatten({DOWN: jnp.ones((6, 9), bool)}))
    assert (np.asarray(T.get(out, DOWN)) == 0).all()
    assert out["model"]["embed_tokens"]["weight"] is params["model"]["embed_tokens"]["weight"]
    with pytest.raises(UserError, match="shape"):
        I.zero(params, T.unflatten({DOWN: jnp.ones((9, 6), bool)}))
    with pytest.raises(UserError, match="lacks"):
        I.zero(params, {"lm_head": {"weight": jnp.ones((2,), bool)}})


def test_region_op(params: dict, mask: dict) -> None:
    for op, expect in (
        ("zero", lambda x: 0 * x),
        ("scale:-2", lambda x: -2 * x),
        ("set:1.5", lambda x: 0 * x + 1.5),
    ):
        for n, x, y, m in pairs(params, I.region_op(params, mask, op), mask):
            assert np.array_equal(y[m], expect(x[m]).astype(np.float32)), (op, n)
    noisy = I.region_op(params, mask, "noise:0.1", seed=3)
    assert all(np.array_equal(y[~m], x[~m]) for _, x, y, m in pairs(params, noisy, mask))
    for bad in ("zero:1", "scale", "scale:x", "noise:", "drop", "set:"):
        with pytest.raises(UserError, match="zero, scale:F, noise:S, set:V"):
            I.region_op(params, mask, bad)


def test_parse_perturb_grammar() -> None:
    p = I.parse_perturb(f"{DOWN}[:,2100]*4")
    assert (p.name, p.index, p.op, p.value) == (DOWN, (slice(None), 2100), "*", 4.0)
    assert I.parse_perturb("a.b[2100]=0").index == (2100,)
    assert I.parse_perturb("a.b[5, 2100]+-0.5").index == (5, 2100)
    assert I.parse_perturb("a.b[2100,:]*0").index == (2100, slice(None))
    assert I.parse_perturb("a.b[1:3,-1]=1").index == (slice(1, 3), -1)
    assert I.parse_perturb("a.b*2").index == ()
    for bad in ("a.b[1]", "a.b[1]/2", "a.b[x]=1", "a.b[]=1", "[1]=2", "a.b[1]=abc", "a.b[1::2]=1"):
        with pytest.raises(UserError, match="grammar"):
            I.parse_perturb(bad)


def test_apply_perturb_hf_index_order(params: dict) -> None:
    x = np.asarray(T.get(params, DOWN))
    col = np.asarray(T.get(I.apply_perturb(params, f"{DOWN}[:,3]*4"), DOWN))
    exp = x.copy()
    exp[:, 3] *= 4
    np.testing.assert_array_equal(col, exp)
    row = np.asarray(T.get(I.apply_perturb(params, f"{DOWN}[2,:]=0"), DOWN))
    exp = x.copy()
    exp[2, :] = 0
    np.testing.assert_array_equal(row, exp)
    one = np.asarray(T.get(I.apply_perturb(params, f"{DOWN}[-1,4]+1"), DOWN))
    exp = x.copy()
    exp[5, 4] += 1
    np.testing.assert_array_equal(one, exp)
    both = I.apply_perturb(params, [f"{DOWN}[0]=7", "model.layers.1.input_layernorm.weight[3]*0"])
    assert (np.asarray(T.get(both, DOWN))[0] == 7).all()
    assert float(T.get(both, "model.layers.1.input_layernorm.weight")[3]) == 0
    bf = I.apply_perturb(params, "model.layers.0.mlp.down_proj.weight[1,1]*2")
    assert T.get(bf, "model.layers.0.mlp.down_proj.weight").dtype == jnp.bfloat16
    assert T.get(params, DOWN) is T.get(
        I.apply_perturb(params, "model.embed_tokens.weight=0"), DOWN
    )


def test_apply_perturb_errors(params: dict) -> None:
    with pytest.raises(UserError, match=r"no parameter.*close matches: model\.layers\.1\.mlp"):
        I.apply_perturb(params, "model.layers.1.mlp.down_prj.weight[0]=1")
    with pytest.raises(UserError, match=r"index \[:,2100\].*out of range.*\[6, 9\]"):
        I.apply_perturb(params, f"{DOWN}[:,2100]*4")
    with pytest.raises(UserError, match=r"3 entries.*2 dims"):
        I.apply_perturb(params, f"{DOWN}[0,0,0]*4")
    with pytest.raises(UserError, match="slice"):
        I.apply_perturb(params, f"{DOWN}[4:2]*4")
