"""The Llama-style decoder: llama (2/3), mistral, qwen2, qwen3 and gemma.

Family differences are config switches (biases, q/k norm, ``(1 + w)`` norms, embedding scale,
sliding windows), not subclasses.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxregion.models.config import ModelConfig
from jaxregion.models.layers import (
    activation,
    apply_rope,
    attention,
    attention_mask,
    linear,
    rms_norm,
    rope_tables,
)

Array = jax.Array


def _attn_block(p: dict, x: Array, cfg: ModelConfig, cos: Array, sin: Array, mask: Array,
                taps: dict | None, prefix: str) -> Array:
    b, s, _ = x.shape
    a = p["self_attn"]
    if taps is not None:
        taps[prefix + "self_attn.qkv"] = x
    q = linear(x, a["q_proj"]["weight"], a["q_proj"].get("bias"))
    k = linear(x, a["k_proj"]["weight"], a["k_proj"].get("bias"))
    v = linear(x, a["v_proj"]["weight"], a["v_proj"].get("bias"))
    q = q.reshape(b, s, cfg.num_heads, cfg.head_dim)
    k = k.reshape(b, s, cfg.num_kv_heads, cfg.head_dim)
    v = v.reshape(b, s, cfg.num_kv_heads, cfg.head_dim)
    if cfg.qk_norm:
        q = rms_norm(q, a["q_norm"]["weight"], cfg.norm_eps)
        k = rms_norm(k, a["k_norm"]["weight"], cfg.norm_eps)
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    o = attention(q, k, v, mask, cfg.head_dim**-0.5).reshape(b, s, cfg.q_dim)
    if taps is not None:
        taps[prefix + "self_attn.o_proj"] = o
    return linear(o, a["o_proj"]["weight"], a["o_proj"].get("bias"))


def _mlp_block(p: dict, x: Array, cfg: ModelConfig, taps: dict | None, prefix: str) -> Array:
    m = p["mlp"]
    if taps is not None:
        taps[prefix + "mlp.gate_up"] = x
    h = activation(cfg.activation, linear(x, m["gate_proj"]["weight"], m["gate_proj"].get("bias")))
    h = h * linear(x, m["up_proj"]["weight"], m["up_proj"].get("bias"))
    if taps is not None:
        taps[prefix + "mlp.down_proj"] = h
    return linear(h, m["down_proj"]["weight"], m["down_proj"].get("bias"))


def layer(p: dict, x: Array, cfg: ModelConfig, i: int, cos: Array, sin: Array,
          taps: dict | None = None) -> Array:
    """One decoder layer.

    ``taps`` (if given) receives the inputs of its linear maps (``...self_attn.qkv``,
    ``...self_attn.o_proj``, ``...mlp.gate_up``, ``...mlp.down_proj``) and the residual stream
    after the layer (``...output``).
    """
    mask = attention_mask(x.shape[1], cfg.sliding_windows[i] if cfg.sliding_windows else None)
    prefix = f"model.layers.{i}."
    h = rms_norm(x, p["input_layernorm"]["weight"], cfg.norm_eps, cfg.norm_plus_one)
    x = x + _attn_block(p, h, cfg, cos, sin, mask, taps, prefix)
    h = rms_norm(x, p["post_attention_layernorm"]["weight"], cfg.norm_eps, cfg.norm_plus_one)
    x = x + _mlp_block(p, h, cfg, taps, prefix)
    if taps is not None:
        taps[prefix + "output"] = x  # the residual stream after this layer
    return x


def embed(params: dict, tokens: Array, cfg: ModelConfig, dtype: jnp.dtype) -> Array:
    x = jnp.take(params["model"]["embed_tokens"]["weight"], tokens, axis=0).astype(dtype)
    if cfg.scale_embeddings:
        x = x * jnp.asarray(cfg.hidden_size**0.5, dtype=dtype)
    return x


def unembedding(params: dict, cfg: ModelConfig) -> Array:
    """The output projection ``[vocab, hidden]`` (the embedding when tied)."""
    return params["model"]["embed_tokens"]["weight"] if cfg.tie_embeddings else \
        params["lm_head"]["weight"]


def _scan_layers(layers: list, x: Array, cfg: ModelConfig, cos: Array, sin: Array) -> Array:
    """All layers as one ``lax.scan`` over stacked weights, each step rematerialised.

    Used with ``remat``: a scan bounds live memory to one layer's (gathered) weights and
    activations at a time, where an unrolled loop lets XLA hoist every layer's FSDP
    all-gather and keep them all alive. The math is the same as the loop's (all layers share
    one attention window here, so the layer index is not needed).
    """
    stacked = jax.tree.map(lambda *ws: jnp.stack(ws), *layers)

    @jax.checkpoint
    def body(h, p):
        return layer(p, h, cfg, 0, cos, sin), None

    return jax.lax.scan(body, x, stacked)[0]


def features(params: dict, tokens: Array, cfg: ModelConfig, *, taps: dict | None = None,
             remat: bool = False) -> Array:
    """The final normed hidden states ``[batch, seq, hidden]``: logits are these @ W.T."""
    dtype = params["model"]["embed_tokens"]["weight"].dtype
    x = embed(params, tokens, cfg, dtype)
    cos, sin = rope_tables(cfg, tokens.shape[1], dtype)
    layers = params["model"]["layers"]
    if remat and taps is None and len(set(cfg.sliding_windows)) <= 1:
        x = _scan_layers(layers, x, cfg, cos, sin)
    else:
        for i, p in enumerate(layers):
            x = layer(p, x, cfg, i, cos, sin, taps)
    return rms_norm(x, params["model"]["norm"]["weight"], cfg.norm_eps, cfg.norm_plus_one)
