"""Building blocks shared by the families: norms, activations, RoPE, attention.

Arrays are in HF layout: a linear weight is ``[out, in]`` and ``linear`` contracts its last
axis. Norm statistics and softmax run in float32 whatever the compute dtype, as in transformers.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxregion.models.config import ModelConfig

Array = jax.Array


def matmul(x: Array, w: Array, transpose: bool = True, out_dtype=None) -> Array:
    """``x @ w.T`` (or ``x @ w``) over the last axis of ``x``.

    Leading axes are flattened first: XLA:CPU differentiates a plain 2-D matmul about 40%
    faster than the same contraction written as a batched einsum.
    """
    lead = x.shape[:-1]
    w = w.astype(x.dtype)
    x2 = x.reshape(-1, x.shape[-1])
    dims = (((1,), (1,) if transpose else (0,)), ((), ()))
    y = jax.lax.dot_general(x2, w, dims, preferred_element_type=out_dtype)
    return y.reshape(*lead, y.shape[-1])


def linear(x: Array, w: Array, b: Array | None = None) -> Array:
    """``x @ w.T (+ b)`` with ``w`` in HF layout ``[out, in]``."""
    y = matmul(x, w)
    return y if b is None else y + b.astype(y.dtype)


def conv1d(x: Array, w: Array, b: Array) -> Array:
    """GPT-2's Conv1D: ``x @ w + b`` with ``w`` stored ``[in, out]``."""
    return matmul(x, w, transpose=False) + b.astype(x.dtype)


def rms_norm(x: Array, w: Array, eps: float, plus_one: bool = False) -> Array:
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    if plus_one:  # gemma: (x * (1 + w)) then cast
        return (y * (1.0 + w.astype(jnp.float32))).astype(x.dtype)
    return w.astype(x.dtype) * y.astype(x.dtype)  # llama: w * x.to(dtype)


def layer_norm(x: Array, w: Array, b: Array, eps: float) -> Array:
    x32 = x.astype(jnp.float32)
    mean = jnp.mean(x32, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
    y = (x32 - mean) * jax.lax.rsqrt(var + eps)
    return (y * w.astype(jnp.float32) + b.astype(jnp.float32)).astype(x.dtype)


def activation(name: str, x: Array) -> Array:
    if name == "silu":
        return jax.nn.silu(x)
    if name == "gelu_tanh":
        return jax.nn.gelu(x, approximate=True)
    return jax.nn.gelu(x, approximate=False)


def rope_tables(cfg: ModelConfig, positions: Array, dtype: jnp.dtype) -> tuple[Array, Array]:
    """cos, sin of shape ``[seq, head_dim]`` for int ``positions`` ``[seq]``, in HF's
    half-split layout. Explicit positions (not ``arange``) so a KV cache can pass offsets."""
    inv = jnp.asarray(cfg.inv_freq())
    freqs = positions.astype(jnp.float32)[:, None] * inv[None, :]
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb).astype(dtype), jnp.sin(emb).astype(dtype)


def apply_rope(x: Array, cos: Array, sin: Array) -> Array:
    """x: ``[batch, seq, heads, head_dim]``; rotate_half as in transformers."""
    half = x.shape[-1] // 2
    rot = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos[None, :, None, :] + rot * sin[None, :, None, :]


def attention_mask(q_pos: Array, k_pos: Array, window: int | None) -> Array:
    """``[q, k]`` bool from query and key positions: causal, and within ``window`` tokens
    when sliding (keys from a cache simply come with their own positions)."""
    q = q_pos[:, None]
    k = k_pos[None, :]
    mask = k <= q
    if window is not None:
        mask &= k > q - window
    return mask


def attention(q: Array, k: Array, v: Array, mask: Array, scale: float,
              softcap: float | None = None) -> Array:
    """Grouped-query attention. q ``[b, s, h, d]``, k/v ``[b, t, kv, d]``, mask ``[s, t]``
    -> ``[b, s, h, d]`` (``t`` may exceed ``s`` when keys come from a cache).

    Written as batched 3-D matmuls over ``(batch x kv-head)``, the query heads of a group
    stacked along the rows: the shape XLA:CPU runs fastest. Softmax runs in float32.
    ``softcap``: scores -> ``softcap * tanh(scores / softcap)`` before masking (gemma2).
    """
    b, s, h, d = q.shape
    t, kv = k.shape[1], k.shape[2]
    g = h // kv
    qt = q.reshape(b, s, kv, g, d).transpose(0, 2, 3, 1, 4).reshape(b * kv, g * s, d)
    kt = k.transpose(0, 2, 1, 3).reshape(b * kv, t, d)
    vt = v.transpose(0, 2, 1, 3).reshape(b * kv, t, d)
    logits = jax.lax.dot_general(qt, kt, (((2,), (2,)), ((0,), (0,))),
                                 preferred_element_type=jnp.float32) * scale
    logits = soft_cap(logits, softcap)
    logits = jnp.where(mask[None, None], logits.reshape(b * kv, g, s, t),
                       jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype).reshape(b * kv, g * s, t)
    out = jax.lax.dot_general(probs, vt, (((2,), (1,)), ((0,), (0,))))
    return out.reshape(b, kv, g, s, d).transpose(0, 3, 1, 2, 4).reshape(b, s, h, d)


# --- gemma2 / gemma3 / olmo2 ---
def soft_cap(x: Array, cap: float | None) -> Array:
    """``cap * tanh(x / cap)`` (gemma's soft-capping of scores and logits); ``x`` if no cap."""
    return x if cap is None else jnp.tanh(x / cap) * cap


def rms_norm_f32_weight(x: Array, w: Array, eps: float) -> Array:
    """RMSNorm that multiplies by the weight in float32 and then casts (OLMo 2's order;
    llama casts first). Equal to :func:`rms_norm` in float32."""
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    return (w.astype(jnp.float32) * y).astype(x.dtype)
