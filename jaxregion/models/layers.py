"""Building blocks shared by the families: norms, activations, RoPE, attention.

Arrays are in HF layout: a linear weight is ``[out, in]`` and ``linear`` contracts its last
axis. Norm statistics and softmax run in float32 whatever the compute dtype, as in transformers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

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


def layer_norm(x: Array, w: Array, b: Array | None, eps: float) -> Array:
    """LayerNorm over the last axis; ``b=None``: no bias (cohere). ``w`` may carry more
    axes than the last (cohere's per-head q/k norms: ``[heads, head_dim]``)."""
    x32 = x.astype(jnp.float32)
    mean = jnp.mean(x32, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
    y = (x32 - mean) * jax.lax.rsqrt(var + eps) * w.astype(jnp.float32)
    return (y if b is None else y + b.astype(jnp.float32)).astype(x.dtype)


def activation(name: str, x: Array) -> Array:
    if name == "silu":
        return jax.nn.silu(x)
    if name == "gelu_tanh":
        return jax.nn.gelu(x, approximate=True)
    if name == "bloom_gelu":  # bloom's own tanh approximation, its constants as written
        return x * 0.5 * (1.0 + jnp.tanh(0.79788456 * x * (1 + 0.044715 * x * x)))
    return jax.nn.gelu(x, approximate=False)


def rope_tables(cfg: ModelConfig, positions: Array, dtype: jnp.dtype) -> tuple[Array, Array]:
    """cos, sin of shape ``[seq, rotary_dim]`` for int ``positions`` ``[seq]``, in HF's
    half-split layout (cohere's pairwise layout with ``cfg.rope_interleaved``). Explicit
    positions (not ``arange``) so a KV cache can pass each row's own offsets: per-row
    ``[batch, seq]`` positions give ``[batch, seq, rotary_dim]`` tables.

    longrope (phi3) switches to its long factors once ``max(positions) + 1`` passes
    ``original_max_position_embeddings``, as transformers does per forward pass (per row for
    ``[batch, seq]`` positions, where padding marked -1 does not count), and scales cos and
    sin by its attention factor."""
    inv = jnp.asarray(cfg.inv_freq())
    if cfg.rope_kind == "longrope":
        long = jnp.asarray(cfg.inv_freq(long=True))
        extent = jnp.max(positions, axis=-1, keepdims=True)[..., None] + 1
        inv = jnp.where(extent > cfg.rope_original_max(), long, inv)
    freqs = positions.astype(jnp.float32)[..., None] * inv
    if cfg.rope_interleaved:
        emb = jnp.repeat(freqs, 2, axis=-1)
    else:
        emb = jnp.concatenate([freqs, freqs], axis=-1)
    scale = cfg.rope_attention_scaling()
    cos, sin = jnp.cos(emb), jnp.sin(emb)
    if scale != 1.0:
        cos, sin = cos * scale, sin * scale
    return cos.astype(dtype), sin.astype(dtype)


def apply_rope(x: Array, cos: Array, sin: Array) -> Array:
    """x: ``[batch, seq, heads, head_dim]``; rotate_half as in transformers. With tables
    narrower than ``head_dim`` (partial rotary), the remaining dims pass unchanged."""
    r = cos.shape[-1]
    if r < x.shape[-1]:
        return jnp.concatenate([apply_rope(x[..., :r], cos, sin), x[..., r:]], axis=-1)
    half = r // 2
    rot = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    cos, sin = (t[None, :, None, :] if t.ndim == 2 else t[:, :, None, :] for t in (cos, sin))
    return x * cos + rot * sin


def apply_rope_interleaved(x: Array, cos: Array, sin: Array) -> Array:
    """Cohere's RoPE: pairs ``(x[2i], x[2i+1]) -> (-x[2i+1], x[2i])``, computed in float32
    and cast back, as in transformers. Tables from ``rope_tables`` with ``rope_interleaved``."""
    x32 = x.astype(jnp.float32)
    rot = jnp.stack([-x32[..., 1::2], x32[..., ::2]], axis=-1).reshape(x.shape)
    c, s = (
        t.astype(jnp.float32)[None, :, None, :]
        if t.ndim == 2
        else t.astype(jnp.float32)[:, :, None, :]
        for t in (cos, sin)
    )
    return (x32 * c + rot * s).astype(x.dtype)


def attention_mask(q_pos: Array, k_pos: Array, window: int | None) -> Array:
    """``[q, k]`` bool from query and key positions (``[batch, q, k]`` for per-row query
    positions ``[batch, q]``): causal, and within ``window`` tokens when sliding. Keys from
    a cache come with their own positions (slot ``j`` holds position ``j``)."""
    q = q_pos[..., :, None]
    k = k_pos[..., None, :]
    mask = k <= q
    if window is not None:
        mask &= k > q - window
    return mask


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class KV:
    """One attention layer's key/value cache, ``[batch, slots, kv_heads, head_dim]`` each;
    slot ``j`` holds position ``j`` of its row."""

    k: Array
    v: Array

    @classmethod
    def empty(cls, batch: int, slots: int, kv_heads: int, head_dim: int, dtype: jnp.dtype) -> KV:
        z = jnp.zeros((batch, slots, kv_heads, head_dim), dtype)
        return cls(z, z)

    def write(self, k: Array, v: Array, positions: Array) -> KV:
        """The cache with ``k``/``v`` ``[batch, seq, kv, d]`` stored at ``positions``
        ``[batch, seq]`` (each row at its own slots)."""
        rows = jnp.arange(k.shape[0])[:, None]
        return KV(
            self.k.at[rows, positions].set(k.astype(self.k.dtype)),
            self.v.at[rows, positions].set(v.astype(self.v.dtype)),
        )

    def attend(
        self,
        q: Array,
        k: Array,
        v: Array,
        positions: Array,
        window: int | None,
        scale: float,
        softcap: float | None = None,
        bias: Array | None = None,
    ) -> tuple[Array, KV]:
        """Store this step's keys/values, then attend ``q`` over every cached slot
        (``bias``, if any, is over the slots: see :meth:`key_positions`)."""
        kv = self.write(k, v, positions)
        mask = attention_mask(positions, self.key_positions(), window)
        return attention(q, kv.k, kv.v, mask, scale, softcap, bias), kv

    def key_positions(self) -> Array:
        """The position each slot holds: ``0..slots-1``."""
        return jnp.arange(self.k.shape[1])


def self_attention(
    q: Array,
    k: Array,
    v: Array,
    positions: Array,
    window: int | None,
    scale: float,
    softcap: float | None = None,
    kv: KV | None = None,
    bias: Array | None = None,
) -> tuple[Array, KV | None]:
    """A layer's attention: over its own keys (``kv`` None: the plain forward), or, when
    generating, over a cache that first stores this call's keys and values. ``bias``
    (ALiBi) is over the keys attended: ``positions``, or the cache's slots."""
    if kv is None:
        if fused_attention_applies(q, positions, softcap, bias):
            return fused_attention(q, k, v, window, scale, "cudnn"), None
        mask = attention_mask(positions, positions, window)
        return attention(q, k, v, mask, scale, softcap, bias), None
    return kv.attend(q, k, v, positions, window, scale, softcap, bias)


def fused_attention_applies(
    q: Array, positions: Array, softcap: float | None, bias: Array | None
) -> bool:
    """Whether a layer's uncached attention runs as one fused (flash) kernel: on a GPU, in
    16-bit, with a plain causal (or sliding) mask over contiguous positions and neither a
    soft-cap nor a bias. There the ``[b, h, s, t]`` float32 scores dominate memory traffic;
    on CPU (and in float32, where parity is held to float64) :func:`attention` stays the
    one reference path."""
    return (
        jax.default_backend() == "gpu"
        and q.dtype in (jnp.bfloat16, jnp.float16)
        and q.shape[-1] <= 128
        and positions.ndim == 1
        and softcap is None
        and bias is None
    )


def fused_attention(
    q: Array,
    k: Array,
    v: Array,
    window: int | None,
    scale: float,
    implementation: Literal["xla", "cudnn"],
) -> Array:
    """:func:`attention` with the causal (sliding: ``window`` keys) mask over contiguous
    positions, as :func:`jax.nn.dot_product_attention` (``implementation`` ``"cudnn"``: the
    fused kernel; ``"xla"``: the same call, testable on CPU)."""
    lw = None if window is None else (window - 1, 0)
    return jax.nn.dot_product_attention(
        q,
        k,
        v,
        scale=scale,
        is_causal=True,
        local_window_size=lw,
        implementation=implementation,
    )


def attention(
    q: Array,
    k: Array,
    v: Array,
    mask: Array,
    scale: float,
    softcap: float | None = None,
    bias: Array | None = None,
) -> Array:
    """Grouped-query attention. q ``[b, s, h, d]``, k/v ``[b, t, kv, d]``, mask ``[s, t]``
    or ``[b, s, t]`` -> ``[b, s, h, d]`` (``t`` may exceed ``s`` when keys come from a cache).

    Written as batched 3-D matmuls over ``(batch x kv-head)``, the query heads of a group
    stacked along the rows: the shape XLA:CPU runs fastest. Softmax runs in float32.
    ``softcap``: scores -> ``softcap * tanh(scores / softcap)`` before masking (gemma2).
    ``bias``: float32 added to the scores before masking, ``[heads, s or 1, t]`` (ALiBi).
    """
    b, s, h, d = q.shape
    t, kv = k.shape[1], k.shape[2]
    g = h // kv
    qt = q.reshape(b, s, kv, g, d).transpose(0, 2, 3, 1, 4).reshape(b * kv, g * s, d)
    kt = k.transpose(0, 2, 1, 3).reshape(b * kv, t, d)
    vt = v.transpose(0, 2, 1, 3).reshape(b * kv, t, d)
    logits = (
        jax.lax.dot_general(
            qt, kt, (((2,), (2,)), ((0,), (0,))), preferred_element_type=jnp.float32
        )
        * scale
    )
    logits = soft_cap(logits, softcap).reshape(b, kv, g, s, t)
    if bias is not None:
        logits = logits + bias.astype(jnp.float32).reshape(kv, g, -1, t)[None]
    mask = mask[None, None, None] if mask.ndim == 2 else mask[:, None, None]
    logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
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


# --- bloom / phi3 / cohere ---
def alibi_slopes(num_heads: int) -> np.ndarray:
    """BLOOM's ALiBi slopes, float32, as transformers defines them: powers of a float32 base
    (the largest power of two ``<= num_heads`` sets a geometric series; the remaining heads
    take odd powers of the next one). Each power is rounded once from float64, so it may
    differ from torch's vectorised float32 ``pow`` by one ulp."""

    def powers(base: float, exps: np.ndarray) -> np.ndarray:
        return (np.float64(np.float32(base)) ** exps).astype(np.float32)

    closest = 2 ** math.floor(math.log2(num_heads))
    slopes = powers(2 ** (-(2 ** -(math.log2(closest) - 3))), np.arange(1, 1 + closest))
    if closest != num_heads:
        n = min(closest, num_heads - closest)
        extra = powers(2 ** (-(2 ** -(math.log2(2 * closest) - 3))), np.arange(1, 1 + 2 * n, 2))
        slopes = np.concatenate([slopes, extra])
    return slopes


def alibi_bias(num_heads: int, k_pos: Array, dtype: jnp.dtype) -> Array:
    """``[heads, 1, t]``: slope times key position (softmax ignores the per-query offset
    of the textbook ``slope * (k - q)``), rounded to the compute dtype as transformers does."""
    slopes = jnp.asarray(alibi_slopes(num_heads))
    return (slopes[:, None, None] * k_pos.astype(jnp.float32)[None, None, :]).astype(dtype)
