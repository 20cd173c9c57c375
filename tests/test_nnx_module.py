"""The NNX module view: same logits, HF-named state, gradients through nnx."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxregion import importance, models
from jaxregion.io import hf
from jaxregion.models import apply
from jaxregion.tree import flatten


def test_module_matches_functional_and_names_state(model_factory):
    path = model_factory("qwen2")
    cfg, params = hf.load(path)
    model = hf.load_model(path)
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, cfg.vocab_size, (2, 16)))
    np.testing.assert_array_equal(
        np.asarray(nnx.jit(lambda m, t: m(t))(model, tokens)),
        np.asarray(jax.jit(apply, static_argnums=2)(params, tokens, cfg)),
    )
    names = {".".join(map(str, p)) for p, _ in nnx.to_flat_state(nnx.state(model, nnx.Param))}
    assert names == set(flatten(params))  # no prefix: the state paths ARE the HF names
    assert "model.layers.1.self_attn.q_proj.bias" in names


@pytest.mark.slow
def test_nnx_grad_is_the_taylor_gradient(model_factory):
    path = model_factory("llama_mha")
    model = hf.load_model(path)
    tokens = jnp.asarray(np.random.default_rng(1).integers(0, 320, (4, 16)), jnp.int32)
    grads = nnx.grad(lambda m: jnp.mean(m.token_nll(tokens)))(model)
    g = {".".join(map(str, p)): v[...] for p, v in nnx.to_flat_state(grads)}
    taylor = flatten(
        importance.compute_importance(
            models.params_of(model), model.config, np.asarray(tokens), batch_size=4
        ).scores
    )
    theta = flatten(models.params_of(model))
    for n, s in taylor.items():
        ref = np.asarray(theta[n] * g[n])
        assert np.max(np.abs(np.asarray(s) - ref)) <= 1e-5 * max(np.max(np.abs(ref)), 1e-12), n
