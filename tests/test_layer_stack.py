"""The layers stacked once (``models.stack_layers``): the same numbers as the HF-named layout,
the HF names back bitwise, and a remat importance step that no longer copies the weights."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxregion import importance, models
from jaxregion import tree as T
from jaxregion.parallel import sharding as shd

# gemma2-shaped: alternating sliding/global layers scan two a step, the fifth runs after
CFG = models.ModelConfig(
    model_type="gemma2",
    vocab_size=64,
    hidden_size=64,
    intermediate_size=128,
    num_layers=5,
    num_heads=2,
    num_kv_heads=1,
    head_dim=32,
    max_position_embeddings=64,
    norm_eps=1e-6,
    activation="gelu_tanh",
    tie_embeddings=True,
    norm_plus_one=True,
    scale_embeddings=True,
    sliding_windows=(4, None, 4, None, 4),
    attn_softcap=50.0,
    logit_softcap=30.0,
)


@pytest.fixture(scope="module")
def params():
    return models.params_of(models.build(CFG, nnx.Rngs(0)))


def _tokens(seed: int = 0) -> jax.Array:
    return jnp.asarray(np.random.default_rng(seed).integers(0, CFG.vocab_size, (2, 12)))


def test_stack_round_trip_and_names(params):
    st = models.stack_layers(params, CFG)
    names = T.flatten(st)
    assert "model.layers.period.1.mlp.down_proj.weight" in names
    assert "model.layers.tail.0.mlp.down_proj.weight" in names
    assert names["model.layers.period.0.mlp.down_proj.weight"].shape[0] == 2
    back = T.flatten(models.unstack_layers(st, CFG))
    flat = T.flatten(params)
    assert list(back) == list(flat)
    assert all(np.asarray(back[n]).tobytes() == np.asarray(v).tobytes() for n, v in flat.items())
    for n in flat:  # stacked_index finds every HF name's row
        s, j = models.stacked_index(n, CFG)
        got = names[s] if j is None else names[s][j]
        assert np.asarray(got).tobytes() == np.asarray(flat[n]).tobytes(), n


@pytest.mark.slow
def test_stacked_layout_computes_the_same(params):
    st = models.stack_layers(params, CFG)
    tok = _tokens()
    ref = models.token_nll(params, tok, CFG)
    for p, remat in ((st, True), (st, False), (params, True)):
        got = models.token_nll(p, tok, CFG, remat=remat)
        assert float(jnp.max(jnp.abs(got - ref))) <= 1e-5 * float(jnp.max(jnp.abs(ref)))
    _, a = models.intermediates(params, tok, CFG)
    _, b = models.intermediates(st, tok, CFG, remat=True)
    assert a.keys() == b.keys()
    assert "model.layers.4.mlp.down_proj" in b and "model.layers.3.output" in b
    for k in a:
        np.testing.assert_allclose(np.asarray(b[k]), np.asarray(a[k]), rtol=1e-5, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("estimator", ["taylor", "fisher", "wanda"])
def test_remat_importance_equals_plain(params, estimator):
    tok = np.asarray(jnp.concatenate([_tokens(1), _tokens(2)]))
    a = importance.compute_importance(params, CFG, tok, estimator, batch_size=2).scores
    b = importance.compute_importance(params, CFG, tok, estimator, 2, remat=True).scores
    fa, fb = T.flatten(a), T.flatten(b)
    assert fa.keys() == fb.keys()
    for n, v in fa.items():
        np.testing.assert_allclose(np.asarray(fb[n]), np.asarray(v), rtol=2e-5, atol=1e-7)


@pytest.mark.slow
def test_stacked_once_step_holds_no_copy_of_the_weights(params):
    """The remat step's temporaries shrink by at least the stacked layers' weights when the
    layers come stacked (what ``compute_importance`` passes) instead of being stacked inside."""
    mesh = shd.make_mesh()
    scope = [n for n, r in models.roles(CFG).items() if r.layer is not None]
    acc = importance.init_state(params, CFG, "taylor", 2, mesh, scope).acc[0]
    step = importance.step_function("taylor", CFG, acc, remat=True)
    tok = jax.ShapeDtypeStruct((2, 12), jnp.int32)
    w = jax.ShapeDtypeStruct((2,), jnp.float32)
    st = models.stack_layers(params, CFG)
    per_call, once = (step.lower(acc, p, tok, w).compile().memory_analysis() for p in (params, st))
    stacked = sum(x.nbytes for x in jax.tree.leaves(st["model"]["layers"]["period"]))
    print(
        f"temp: stacked per call {per_call.temp_size_in_bytes:,}, once "
        f"{once.temp_size_in_bytes:,}; stacked weights {stacked:,}"
    )
    assert per_call.temp_size_in_bytes - once.temp_size_in_bytes >= stacked
