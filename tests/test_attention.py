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


@pytest.mark.skipif(jax.default_backend() != "gpu", reason="the fused kernel needs a GPU")
@pytest.mark.parametrize("window", [None, 7])
def test_fused_kernel_on_gpu_matches_the_reference_in_bf16(window):
    """cuDNN's kernel in bf16 against the reference path in float32: within what bf16
    inputs allow (the reference's own bf16 run is held to the same bound)."""
    b, s, h, kv, d = 2, 256, 8, 2, 64
    kq, kk, kvv = jax.random.split(jax.random.key(1), 3)
    q = jax.random.normal(kq, (b, s, h, d), jnp.bfloat16)
    k = jax.random.normal(kk, (b, s, kv, d), jnp.bfloat16)
    v = jax.random.normal(kvv, (b, s, kv, d), jnp.bfloat16)
    pos = jnp.arange(s)
    mask = attention_mask(pos, pos, window)
    f32 = [x.astype(jnp.float32) for x in (q, k, v)]
    ref = np.asarray(attention(*f32, mask, d**-0.5))
    ref16 = np.asarray(attention(q, k, v, mask, d**-0.5).astype(jnp.float32))
    got = np.asarray(fused_attention(q, k, v, window, d**-0.5, "cudnn").astype(jnp.float32))
    bound = max(2 * float(np.abs(ref16 - ref).max()), 1e-2)
    assert float(np.abs(got - ref).max()) <= bound
