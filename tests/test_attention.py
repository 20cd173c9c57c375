"""The fused attention path (cuDNN flash attention on a GPU) computes what the reference
:func:`attention` computes: same scale, causal and sliding masks, grouped-query heads.

On CPU the same ``jax.nn.dot_product_attention`` call runs with ``implementation="xla"``,
which checks every convention the GPU path relies on; the GPU itself runs it in
``scripts/device_check.sh`` (the bf16 parity tests go through it there)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxregion.models.layers import (
    attention,
    attention_mask,
    fused_attention,
    fused_attention_applies,
)


@pytest.mark.parametrize("heads,kv_heads,window", [(4, 4, None), (8, 2, None), (8, 4, 5)])
def test_fused_call_matches_the_reference_attention(heads, kv_heads, window):
    b, s, d = 2, 16, 8
    kq, kk, kv = jax.random.split(jax.random.key(0), 3)
    q = jax.random.normal(kq, (b, s, heads, d), jnp.float32)
    k = jax.random.normal(kk, (b, s, kv_heads, d), jnp.float32)
    v = jax.random.normal(kv, (b, s, kv_heads, d), jnp.float32)
    pos = jnp.arange(s)
    scale = 0.3
    ref = attention(q, k, v, attention_mask(pos, pos, window), scale)
    got = fused_attention(q, k, v, window, scale, "xla")
    np.testing.assert_allclose(np.asarray(got), np.asarray(ref), rtol=1e-5, atol=1e-6)


def test_fused_path_only_where_it_is_exact_by_construction():
    q16 = jnp.zeros((1, 4, 2, 8), jnp.bfloat16)
    pos = jnp.arange(4)
    on_gpu = jax.default_backend() == "gpu"
    assert fused_attention_applies(q16, pos, None, None) is on_gpu
    assert not fused_attention_applies(q16.astype(jnp.float32), pos, None, None)
    assert not fused_attention_applies(q16, pos, 50.0, None)  # gemma2's soft-cap
    assert not fused_attention_applies(q16, pos, None, jnp.zeros((2, 1, 4)))  # ALiBi
    assert not fused_attention_applies(q16, jnp.zeros((1, 4), jnp.int32), None, None)
