"""Layer-by-layer backpropagation (``jaxregion.models.layerwise``): the same scores as
autodiff of the whole step for every family and gradient estimator, with every tensor scored
(embeddings, a tied or untied head, norms), and temporaries that do not grow with depth."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import run_worker
from hf_factory import FAMILIES, make_config

from jaxregion import importance, models, runtime
from jaxregion import tree as T
from jaxregion.models.layerwise import LayerwiseStep
from jaxregion.parallel import sharding as shd


def _worst(a: dict, b: dict) -> float:
    """max over tensors of max|a - b| / max|b| (0 for an all-zero tensor of both)."""
    fa, fb = T.flatten(a), T.flatten(b)
    assert fa.keys() == fb.keys()
    out = 0.0
    for n, v in fb.items():
        x, y = np.asarray(fa[n], np.float64), np.asarray(v, np.float64)
        scale = np.abs(y).max()
        out = max(out, float(np.abs(x - y).max() / scale) if scale else float(np.abs(x).max()))
    return out


@pytest.mark.parametrize("family", list(FAMILIES))
def test_layerwise_scores_equal_autodiff(family, model_factory):
    """Every family with taylor; the per-batch estimators (whose fold and loss scaling do
    not depend on the family) on the first."""
    s = runtime.load_session(model_factory(family), with_tokenizer=False)
    tok = np.random.default_rng(1).integers(0, s.config.vocab_size, (5, 12)).astype(np.int32)
    first = family == next(iter(FAMILIES))
    for est in ("taylor", "taylor-abs", "fisher") if first else ("taylor",):
        plain = importance.compute_importance(s.params, s.config, tok, est, 2)
        lw = importance.compute_importance(s.params, s.config, tok, est, 2, remat=True)
        assert _worst(lw.scores, plain.scores) <= 1e-5, (family, est)
        for ha, hb in zip(lw.halves, plain.halves):  # both split halves, not only their sum
            assert _worst(ha, hb) <= 1e-5, (family, est)


def test_layerwise_respects_the_scope(model_factory):
    """Scored tensors match autodiff; the others are 0, as with autodiff."""
    s = runtime.load_session(model_factory("llama_mha"), with_tokenizer=False)
    tok = np.random.default_rng(2).integers(0, s.config.vocab_size, (4, 10)).astype(np.int32)
    names = list(T.flatten(s.params))
    scope = [n for n in names if "layers.1." in n or n.endswith("norm.weight")][:5]
    scope.append("model.embed_tokens.weight")
    a = importance.compute_importance(s.params, s.config, tok, "taylor", 2, scope=scope)
    b = importance.compute_importance(s.params, s.config, tok, "taylor", 2, remat=True, scope=scope)
    assert _worst(b.scores, a.scores) <= 1e-5
    fb = T.flatten(b.scores)
    assert all(not np.asarray(fb[n]).any() for n in names if n not in scope)
    assert all(np.asarray(fb[n]).any() for n in scope)


def _temps(layers: int, batch: int = 4, seq: int = 64) -> tuple[int, int]:
    """(largest layerwise program temp, one-program autodiff step temp) in bytes, taylor
    over every layer tensor of a llama with ``layers`` layers, lowered on abstract params."""
    cfg = models.from_hf_dict(make_config("llama_mha", num_hidden_layers=layers).to_dict())
    mesh = shd.make_mesh()
    params = shd.abstract_sharded(cfg, mesh, jnp.float32)
    scope = [n for n, r in models.roles(cfg).items() if r.layer is not None]
    acc = importance.init_state(params, cfg, "taylor", batch, mesh, scope, abstract=True).acc[0]
    tok = jax.ShapeDtypeStruct((batch, seq), jnp.int32)
    w = jax.ShapeDtypeStruct((batch,), jnp.float32)
    lw = LayerwiseStep(cfg, tuple(acc), importance.FOLDS["taylor"], mean=False)
    plain = importance.step_function("taylor", cfg, acc).lower(acc, params, tok, w).compile()
    layerwise = max(lw.temp_bytes(acc, params, tok, w).values())
    return layerwise, plain.memory_analysis().temp_size_in_bytes


@pytest.mark.slow
def test_layerwise_temporaries_do_not_grow_with_depth():
    """Autodiff of the whole step keeps every layer's activations and gradients: its
    temporaries grow with the layer count. Layer by layer they are one layer's, whatever the
    depth (the layer inputs, one ``[batch, seq, hidden]`` each, are the forward's outputs)."""
    lw2, plain2 = _temps(2)
    lw8, plain8 = _temps(8)
    print(f"temp bytes: layerwise {lw2:,} (2 layers) {lw8:,} (8); autodiff {plain2:,} {plain8:,}")
    assert plain8 - plain2 > 2 * (lw8 - lw2) and plain8 > 2 * plain2
    assert lw8 <= lw2 * 1.1


@pytest.mark.slow
def test_layerwise_on_a_sharded_mesh(model_factory):
    """fsdp=2 x tensor=2 over 4 host devices: the same scores as the one-program step, and
    the accumulators keep the params' (split) shardings through the donated updates."""
    path = model_factory("llama_gqa_llama3")
    flags = "--xla_force_host_platform_device_count=4"
    res = run_worker("layerwise_mesh_worker.py", path, timeout=600, XLA_FLAGS=flags)
    assert res["devices"] == 4 and res["kept"] and res["split"], res
    assert res["rel_err"] <= 1e-5, res
