"""Freezing: frozen elements stay bitwise fixed under AdamW + decay + clip + schedule."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxregion import freeze as F
from jaxregion import regions as R
from jaxregion import tree as T


def problem(seed: int = 0):
    """Linear regression y = x W^T + b with HF-like names; returns params, loss, batches."""
    rng = np.random.default_rng(seed)
    params = T.unflatten(
        {
            "model.layers.0.mlp.up_proj.weight": jnp.asarray(
                rng.standard_normal((6, 8)), jnp.float32
            ),
            "model.layers.0.mlp.up_proj.bias": jnp.asarray(rng.standard_normal(6), jnp.float32),
            "model.layers.0.post_attention_layernorm.weight": jnp.ones(8, jnp.float32),
        }
    )
    w = T.get(params, "model.layers.0.mlp.up_proj.weight")
    params = T.replace(params, "model.layers.0.mlp.up_proj.weight", w.at[0, 0].set(-0.0))
    true_w = rng.standard_normal((6, 8)).astype(np.float32)
    xs = rng.standard_normal((50, 16, 8)).astype(np.float32)
    ys = xs @ true_w.T

    def loss(p, x, y):
        layer = p["model"]["layers"][0]
        h = x * layer["post_attention_layernorm"]["weight"]
        pred = h @ layer["mlp"]["up_proj"]["weight"].T + layer["mlp"]["up_proj"]["bias"]
        return jnp.mean((pred - y) ** 2)

    return params, loss, xs, ys


def train(params, loss, xs, ys, tx, steps: int = 50):
    state = tx.init(params)

    @jax.jit
    def step(p, s, x, y):
        g = jax.grad(loss)(p, x, y)
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s

    first = float(loss(params, xs[0], ys[0]))
    for i in range(steps):
        params, state = step(params, state, xs[i % len(xs)], ys[i % len(ys)])
    return params, state, first, float(loss(params, xs[0], ys[0]))


def bits(x) -> np.ndarray:
    return np.asarray(x).view(np.uint32)


@pytest.mark.parametrize("mask_grads", [True, False])
def test_adamw_frozen_elements_bitwise_unchanged(mask_grads: bool) -> None:
    params, loss, xs, ys = problem()
    rng = np.random.default_rng(1)
    mask = T.map_named(lambda n, x: jnp.asarray(rng.random(x.shape) < 0.3), params)
    mask = T.replace(
        mask,
        "model.layers.0.mlp.up_proj.weight",
        T.get(mask, "model.layers.0.mlp.up_proj.weight").at[0, 0].set(True),
    )
    sched = optax.warmup_cosine_decay_schedule(0.0, 0.05, 5, 50)
    tx = F.adamw_with_freeze(sched, weight_decay=0.1, clip=1.0, mask=mask, mask_grads=mask_grads)
    new, _, first, last = train(params, loss, xs, ys, tx)
    assert last < first * 0.5
    for n, p0, p1, m in zip(
        T.flatten(params),
        T.flatten(params).values(),
        T.flatten(new).values(),
        T.flatten(mask).values(),
    ):
        m = np.asarray(m)
        np.testing.assert_array_equal(bits(p1)[m], bits(p0)[m], err_msg=n)
        assert (bits(p1)[~m] != bits(p0)[~m]).all(), n
    assert bits(T.get(new, "model.layers.0.mlp.up_proj.weight"))[0, 0] == 0x80000000  # -0.0


def test_freeze_elements_accepts_region_and_partial_mask() -> None:
    params, loss, xs, ys = problem()
    region = R.random(params, 0.5, seed=0)
    tx = optax.chain(optax.adamw(0.05, weight_decay=0.1), F.freeze_elements(region))
    new, _, _, _ = train(params, loss, xs, ys, tx, steps=10)
    for n, m in region.flat().items():
        m = np.asarray(m)
        assert np.array_equal(bits(T.get(new, n))[m], bits(T.get(params, n))[m])
    partial = T.unflatten({"model.layers.0.mlp.up_proj.bias": jnp.ones(6, bool)})
    tx = optax.chain(optax.sgd(0.1), F.freeze_elements(partial))
    new, _, _, _ = train(params, loss, xs, ys, tx, steps=5)
    assert np.array_equal(
        bits(T.get(new, "model.layers.0.mlp.up_proj.bias")),
        bits(T.get(params, "model.layers.0.mlp.up_proj.bias")),
    )
    assert not np.array_equal(
        np.asarray(T.get(new, "model.layers.0.mlp.up_proj.weight")),
        np.asarray(T.get(params, "model.layers.0.mlp.up_proj.weight")),
    )


def test_freeze_leaves_allocates_no_moments() -> None:
    params, loss, xs, ys = problem()
    frozen = T.map_named(lambda n, x: n.endswith("up_proj.weight"), params)
    tx = F.freeze_leaves(optax.adamw(0.05, weight_decay=0.1), frozen)
    new, state, first, last = train(params, loss, xs, ys, tx)
    shapes = [tuple(x.shape) for x in jax.tree.leaves(state)]
    assert (6, 8) not in shapes  # no mu/nu for the frozen matrix
    assert shapes.count((6,)) == 2 and shapes.count((8,)) == 2  # mu, nu of the others
    w = "model.layers.0.mlp.up_proj.weight"
    assert np.array_equal(bits(T.get(new, w)), bits(T.get(params, w)))
    assert not np.array_equal(
        np.asarray(T.get(new, "model.layers.0.mlp.up_proj.bias")),
        np.asarray(T.get(params, "model.layers.0.mlp.up_proj.bias")),
    )
    # bool arrays work too: a leaf is frozen when all its entries are
    arr = T.map_named(lambda n, x: jnp.full(x.shape, n.endswith("up_proj.weight")), params)
    shapes2 = [
        tuple(x.shape) for x in jax.tree.leaves(F.freeze_leaves(optax.adam(0.1), arr).init(params))
    ]
    assert (6, 8) not in shapes2


def test_optax_masked_is_not_a_freeze() -> None:
    """The pitfall: leaves outside optax.masked's mask get their RAW gradient as update."""
    params, loss, xs, ys = problem()
    train_only = T.map_named(lambda n, x: not n.endswith("up_proj.weight"), params)
    tx = optax.masked(optax.adam(1e-3), train_only)
    g = jax.grad(loss)(params, xs[0], ys[0])
    updates, _ = tx.update(g, tx.init(params), params)
    w = "model.layers.0.mlp.up_proj.weight"
    np.testing.assert_array_equal(np.asarray(T.get(updates, w)), np.asarray(T.get(g, w)))
    assert np.abs(np.asarray(T.get(updates, w))).sum() > 0  # "frozen" leaf would move by -grad
    fixed = F.freeze_leaves(optax.adam(1e-3), jax.tree.map(lambda t: not t, train_only))
    updates, _ = fixed.update(g, fixed.init(params), params)
    assert (np.asarray(T.get(updates, w)) == 0).all()


def test_make_freeze_mask_norms() -> None:
    params, *_ = problem()
    full = jax.tree.map(lambda x: jnp.ones(x.shape, bool), params)
    m = T.flatten(F.make_freeze_mask(full))
    assert not np.asarray(m["model.layers.0.post_attention_layernorm.weight"]).any()
    assert np.asarray(m["model.layers.0.mlp.up_proj.weight"]).all()
    m = T.flatten(F.make_freeze_mask(R.Region(full, {}), include_norms=True))
    assert np.asarray(m["model.layers.0.post_attention_layernorm.weight"]).all()
    gpt2 = {
        "transformer": {
            "h": [
                {
                    "ln_1": {"weight": jnp.ones(3, bool)},
                    "attn": {"c_attn": {"weight": jnp.ones((3, 9), bool)}},
                }
            ]
        }
    }
    g = T.flatten(F.make_freeze_mask(gpt2))
    assert not np.asarray(g["transformer.h.0.ln_1.weight"]).any()
    assert np.asarray(g["transformer.h.0.attn.c_attn.weight"]).all()


def test_freeze_keeps_sharding() -> None:
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",))
    sh = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data", None))
    u = {"w": jax.device_put(jnp.ones((4, 4)), sh)}
    m = {"w": jax.device_put(jnp.eye(4, dtype=bool), sh)}
    tx = F.freeze_elements(m)
    out, _ = jax.jit(tx.update)(u, tx.init(u))
    assert out["w"].sharding.is_equivalent_to(sh, 2)
    assert np.array_equal(np.asarray(out["w"]), 1 - np.eye(4))


def test_mask_as_traced_jit_argument() -> None:
    """One compiled step serves every region: the mask may be a jit argument."""
    params, loss, xs, ys = problem()
    make = lambda m: F.adamw_with_freeze(0.05, weight_decay=0.1, mask=m)  # noqa: E731
    m0 = jax.tree.map(lambda x: jnp.zeros(x.shape, bool), params)
    state = make(m0).init(params)

    @jax.jit
    def step(p, s, x, y, m):
        u, s = make(m).update(jax.grad(loss)(p, x, y), s, p)
        return optax.apply_updates(p, u), s

    m1 = jax.tree.map(lambda x: jnp.ones(x.shape, bool), params)
    same, _ = step(params, state, xs[0], ys[0], m1)
    moved, _ = step(params, state, xs[0], ys[0], m0)
    assert all(
        np.array_equal(bits(a), bits(b))
        for a, b in zip(jax.tree.leaves(same), jax.tree.leaves(params))
    )
    assert not all(
        np.array_equal(bits(a), bits(b))
        for a, b in zip(jax.tree.leaves(moved), jax.tree.leaves(params))
    )
