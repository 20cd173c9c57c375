"""Coarse regions: exact rows/columns/tensors/layers, stored as element masks, frozen exactly."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxregion import freeze as F
from jaxregion import regions as R
from jaxregion import tree as T

SHAPES = {
    "model.layers.0.self_attn.q_proj.weight": (12, 10),
    "model.layers.0.mlp.down_proj.weight": (10, 7),
    "model.layers.0.input_layernorm.weight": (10,),
    "model.layers.1.self_attn.q_proj.weight": (12, 10),
    "model.layers.1.mlp.down_proj.weight": (10, 7),
    "model.layers.1.input_layernorm.weight": (10,),
}


def _scores(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return T.unflatten(
        {n: jnp.asarray(rng.standard_normal(s), jnp.float32) for n, s in SHAPES.items()}
    )


@pytest.mark.parametrize("granularity,axis", [("row", 0), ("column", 1)])
@pytest.mark.parametrize("ratio", [0.01, 0.3, 0.5])
def test_rows_and_columns_are_exact_and_top_by_summed_abs(granularity, axis, ratio):
    scores = {"a": _scores(0), "b": _scores(1)}
    reg = R.core(scores, ratio, granularity=granularity)
    assert reg.meta["granularity"] == granularity
    fa, fb = T.flatten(scores["a"]), T.flatten(scores["b"])
    for n, m in reg.flat().items():
        m = np.asarray(m)
        total = np.abs(np.asarray(fa[n])) + np.abs(np.asarray(fb[n]))
        if m.ndim == 1:  # a norm: one element per line
            k = max(1, math.floor(ratio * m.size))
            assert m.sum() == k
            continue
        n_lines = m.shape[axis]
        k = max(1, math.floor(ratio * n_lines))
        lines = np.all(m, axis=1 - axis)
        assert lines.sum() == k == R.line_counts(m, granularity), n
        assert m.sum() == k * m.shape[1 - axis]  # whole lines only
        sums = total.sum(axis=1 - axis)
        assert set(np.flatnonzero(lines)) == set(np.argsort(-sums, kind="stable")[:k]), n


def test_in_axes_are_data_and_bottom_random_match_counts():
    scores = {"a": _scores(0)}
    # Conv1D-style [in, out]: the input features are axis 0
    name = "model.layers.0.mlp.down_proj.weight"
    reg = R.core(scores, 0.3, granularity="column", in_axes={name: 0})
    m = np.asarray(reg.flat()[name])
    assert np.all(m, axis=1).sum() == math.floor(0.3 * 10)
    for kind in ("bottom", "random"):
        other = R.select(kind, scores, ratio=0.3, granularity="column", seed=3)
        assert R.size(other) == R.size(R.core(scores, 0.3, granularity="column"))
    bot = R.bottom(scores, 0.3, granularity="row")
    top = R.core(scores, 0.3, granularity="row")
    assert R.size(bot & top) == 0
    r1 = R.random(scores["a"], 0.3, seed=1, granularity="row")
    r2 = R.random(scores["a"], 0.3, seed=2, granularity="row")
    assert R.size(r1) == R.size(top) and R.jaccard(r1, r2) < 1.0


@pytest.mark.parametrize("granularity,units", [("tensor", 6), ("layer", 2)])
def test_tensors_and_layers(granularity, units):
    scores = {"a": _scores(0)}
    big = T.flatten(scores["a"])
    big["model.layers.1.mlp.down_proj.weight"] = 100 * big["model.layers.1.mlp.down_proj.weight"]
    scores = {"a": T.unflatten(big)}
    reg = R.core(scores, 0.5, granularity=granularity)
    whole = [n for n, m in reg.flat().items() if np.all(np.asarray(m))]
    assert all(not np.any(np.asarray(m)) or n in whole for n, m in reg.flat().items())
    k = max(1, math.floor(0.5 * units))
    if granularity == "tensor":
        assert len(whole) == k and "model.layers.1.mlp.down_proj.weight" in whole
    else:
        assert {R.layer_index(n) for n in whole} == {1}
    rnd = R.random(scores["a"], 0.5, seed=0, granularity=granularity)
    assert sum(np.all(np.asarray(m)) for m in rnd.flat().values()) == len(whole)


def test_granularity_in_region_file(tmp_path):
    scores = {"a": _scores(0)}
    reg = R.core(scores, 0.25, granularity="column")
    p = str(tmp_path / "r.safetensors")
    R.save_region(p, reg)
    back = R.load_region(p, template=scores["a"])
    assert back.meta["granularity"] == "column"
    from safetensors import safe_open

    with safe_open(p, framework="np") as f:
        assert f.metadata()["granularity"] == "column"
    for n, m in reg.flat().items():
        assert np.array_equal(np.asarray(m), np.asarray(back.flat()[n]))


def test_bad_granularity_and_scope():
    from jaxregion.errors import UserError

    with pytest.raises(UserError, match="granularity 'cols'"):
        R.select("core", {"a": _scores(0)}, granularity="cols")
    with pytest.raises(UserError, match="scope per-tensor"):
        R.core({"a": _scores(0)}, 0.1, scope="global", granularity="row")


@pytest.mark.parametrize("granularity,axis", [("row", 0), ("column", 1)])
def test_frozen_rows_and_columns_bitwise_fixed_through_adamw(granularity, axis):
    rng = np.random.default_rng(0)
    params = T.unflatten(
        {
            n: jnp.asarray(rng.standard_normal(s), jnp.float32)
            for n, s in SHAPES.items()
            if len(s) == 2
        }
    )
    frac = 0.25
    reg = R.core({"x": params}, frac, granularity=granularity)
    mask = F.make_freeze_mask(reg)
    for n, m in T.flatten(mask).items():  # count per tensor = floor(frac * n), at least 1
        n_lines = SHAPES[n][axis]
        assert R.line_counts(m, granularity) == max(1, math.floor(frac * n_lines))
    tx = F.adamw_with_freeze(
        optax.cosine_decay_schedule(1e-2, 40), weight_decay=0.5, clip=1.0, mask=mask
    )
    target = jax.tree.map(lambda p: jnp.asarray(rng.standard_normal(p.shape), jnp.float32), params)

    def loss(p):
        return sum(
            jnp.sum((a - b) ** 2) for a, b in zip(jax.tree.leaves(p), jax.tree.leaves(target))
        )

    @jax.jit
    def step(p, s):
        u, s = tx.update(jax.grad(loss)(p), s, p)
        return optax.apply_updates(p, u), s

    p, s = params, tx.init(params)
    for _ in range(40):
        p, s = step(p, s)
    for n, m in T.flatten(mask).items():
        before = np.asarray(T.flatten(params)[n]).view(np.uint32)
        after = np.asarray(T.flatten(p)[n]).view(np.uint32)
        m = np.asarray(m)
        assert np.array_equal(before[m], after[m]), n
        assert np.all(before[~m] != after[~m]), n  # everything else moved
