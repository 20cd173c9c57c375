"""The forward pass with a key/value cache, for generation: prefill once, then one token a step.

Why a cache: recomputing every position at every step costs ``O(steps x length)`` forward
passes; with keys and values kept, a step runs one position per row.

Layout: the cache holds, per layer, ``k`` and ``v`` of shape ``[batch, slots, kv_heads,
head_dim]``, and slot ``j`` holds position ``j``. Rows have their own positions (``[batch,
seq]``): prompts are right-padded, so row ``i`` writes its ``t``-th new token at slot
``len(prompt_i) + t``. A query at position ``p`` attends to slots ``<= p`` (and ``> p - window``
on sliding-window layers); slots past ``p`` may hold padding from the prefill, but every slot
up to ``p`` has been written with the row's own tokens by then, so nothing else is ever seen.

The math is that of :mod:`jaxregion.models.decoder` and :mod:`jaxregion.models.gpt2` (their
MLPs, norms and embeddings are reused); only attention differs, reading keys from the cache.
The tests hold every step's logits to a full recomputation within 1e-4.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxregion.models import decoder, gpt2
from jaxregion.models.config import ModelConfig
from jaxregion.models.layers import activation, conv1d, layer_norm, linear, matmul, rms_norm

Array = jax.Array
Cache = list[dict[str, Array]]  # per layer: {"k": [b, slots, kv, d], "v": ...}


def init_cache(cfg: ModelConfig, batch: int, slots: int, dtype: jnp.dtype) -> Cache:
    """An empty cache for ``batch`` rows of up to ``slots`` positions."""
    shape = (batch, slots, cfg.num_kv_heads, cfg.head_dim)
    return [{"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)}
            for _ in range(cfg.num_layers)]


def _rope(x: Array, positions: Array, cfg: ModelConfig) -> Array:
    """RoPE at per-row positions ``[b, s]`` (HF's half-split layout, float32 angles)."""
    inv = jnp.asarray(cfg.inv_freq())
    freqs = positions.astype(jnp.float32)[..., None] * inv
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    cos, sin = jnp.cos(emb).astype(x.dtype), jnp.sin(emb).astype(x.dtype)
    half = x.shape[-1] // 2
    rot = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos[:, :, None, :] + rot * sin[:, :, None, :]


def _attend(q: Array, k: Array, v: Array, positions: Array, window: int | None,
            scale: float) -> Array:
    """q ``[b, s, h, d]`` against cached k/v ``[b, slots, kv, d]``; softmax in float32."""
    b, s, h, d = q.shape
    slots, kv = k.shape[1], k.shape[2]
    g = h // kv
    key_pos = jnp.arange(slots)[None, None, :]
    mask = key_pos <= positions[:, :, None]
    if window is not None:
        mask &= key_pos > positions[:, :, None] - window
    qg = q.reshape(b, s, kv, g, d)
    logits = jnp.einsum("bskgd,btkd->bkgst", qg, k, preferred_element_type=jnp.float32) * scale
    logits = jnp.where(mask[:, None, None], logits, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    out = jnp.einsum("bkgst,btkd->bskgd", probs, v)
    return out.reshape(b, s, h * d)


def _write(cache: dict[str, Array], k: Array, v: Array, positions: Array) -> dict[str, Array]:
    rows = jnp.arange(k.shape[0])[:, None]
    return {"k": cache["k"].at[rows, positions].set(k.astype(cache["k"].dtype)),
            "v": cache["v"].at[rows, positions].set(v.astype(cache["v"].dtype))}


def _llama_layer(p: dict, x: Array, cfg: ModelConfig, i: int, positions: Array,
                 cache: dict[str, Array]) -> tuple[Array, dict[str, Array]]:
    b, s, _ = x.shape
    a = p["self_attn"]
    h = rms_norm(x, p["input_layernorm"]["weight"], cfg.norm_eps, cfg.norm_plus_one)
    q = linear(h, a["q_proj"]["weight"], a["q_proj"].get("bias"))
    k = linear(h, a["k_proj"]["weight"], a["k_proj"].get("bias"))
    v = linear(h, a["v_proj"]["weight"], a["v_proj"].get("bias"))
    q = q.reshape(b, s, cfg.num_heads, cfg.head_dim)
    k = k.reshape(b, s, cfg.num_kv_heads, cfg.head_dim)
    v = v.reshape(b, s, cfg.num_kv_heads, cfg.head_dim)
    if cfg.qk_norm:
        q = rms_norm(q, a["q_norm"]["weight"], cfg.norm_eps)
        k = rms_norm(k, a["k_norm"]["weight"], cfg.norm_eps)
    q, k = _rope(q, positions, cfg), _rope(k, positions, cfg)
    cache = _write(cache, k, v, positions)
    window = cfg.sliding_windows[i] if cfg.sliding_windows else None
    o = _attend(q, cache["k"], cache["v"], positions, window, cfg.head_dim**-0.5)
    x = x + linear(o, a["o_proj"]["weight"], a["o_proj"].get("bias"))
    h = rms_norm(x, p["post_attention_layernorm"]["weight"], cfg.norm_eps, cfg.norm_plus_one)
    return x + decoder._mlp_block(p, h, cfg, None, ""), cache


def _gpt2_layer(p: dict, x: Array, cfg: ModelConfig, i: int, positions: Array,
                cache: dict[str, Array]) -> tuple[Array, dict[str, Array]]:
    b, s, d = x.shape
    h = layer_norm(x, p["ln_1"]["weight"], p["ln_1"]["bias"], cfg.norm_eps)
    a = p["attn"]
    qkv = conv1d(h, a["c_attn"]["weight"], a["c_attn"]["bias"])
    q, k, v = (t.reshape(b, s, cfg.num_heads, cfg.head_dim) for t in jnp.split(qkv, 3, axis=-1))
    scale = cfg.head_dim**-0.5
    if cfg.attn_scale_by_layer:
        scale /= float(i + 1)
    cache = _write(cache, k, v, positions)
    o = _attend(q, cache["k"], cache["v"], positions, None, scale)
    x = x + conv1d(o, a["c_proj"]["weight"], a["c_proj"]["bias"])
    h = layer_norm(x, p["ln_2"]["weight"], p["ln_2"]["bias"], cfg.norm_eps)
    m = p["mlp"]
    h = activation(cfg.activation, conv1d(h, m["c_fc"]["weight"], m["c_fc"]["bias"]))
    return x + conv1d(h, m["c_proj"]["weight"], m["c_proj"]["bias"]), cache


def forward(params: dict, cfg: ModelConfig, tokens: Array, positions: Array, cache: Cache,
            last: Array | None = None) -> tuple[Array, Cache]:
    """Logits (float32) for ``tokens [b, s]`` at ``positions [b, s]``, and the updated cache.

    With ``last`` (``[b]`` indices into ``s``), only those positions' logits, ``[b, vocab]``
    (the prefill needs one row per prompt, not ``[b, s, vocab]``)."""
    new_cache = []
    if cfg.family == "gpt2":
        t = params["transformer"]
        dtype = t["wte"]["weight"].dtype
        x = (jnp.take(t["wte"]["weight"], tokens, axis=0)
             + jnp.take(t["wpe"]["weight"], positions, axis=0)).astype(dtype)
        for i, p in enumerate(t["h"]):
            x, c = _gpt2_layer(p, x, cfg, i, positions, cache[i])
            new_cache.append(c)
        norm = lambda h: layer_norm(h, t["ln_f"]["weight"], t["ln_f"]["bias"], cfg.norm_eps)  # noqa: E731
        head = gpt2.unembedding(params, cfg)
    else:
        m = params["model"]
        x = decoder.embed(params, tokens, cfg, m["embed_tokens"]["weight"].dtype)
        for i, p in enumerate(m["layers"]):
            x, c = _llama_layer(p, x, cfg, i, positions, cache[i])
            new_cache.append(c)
        norm = lambda h: rms_norm(h, m["norm"]["weight"], cfg.norm_eps, cfg.norm_plus_one)  # noqa: E731
        head = decoder.unembedding(params, cfg)
    if last is not None:
        x = x[jnp.arange(x.shape[0]), last][:, None]
    logits = matmul(norm(x), head, out_dtype=jnp.float32)
    return (logits[:, 0] if last is not None else logits), new_cache
