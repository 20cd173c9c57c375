"""GPT-2: learned positions, LayerNorm, fused ``c_attn`` Conv1D, tied head."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxregion.models.config import ModelConfig
from jaxregion.models.layers import activation, attention, attention_mask, conv1d, layer_norm

Array = jax.Array


def layer(p: dict, x: Array, cfg: ModelConfig, i: int, taps: dict | None = None) -> Array:
    b, s, d = x.shape
    prefix = f"transformer.h.{i}."
    h = layer_norm(x, p["ln_1"]["weight"], p["ln_1"]["bias"], cfg.norm_eps)
    if taps is not None:
        taps[prefix + "attn.c_attn"] = h
    a = p["attn"]
    qkv = conv1d(h, a["c_attn"]["weight"], a["c_attn"]["bias"])
    q, k, v = (t.reshape(b, s, cfg.num_heads, cfg.head_dim) for t in jnp.split(qkv, 3, axis=-1))
    scale = cfg.head_dim**-0.5
    if cfg.attn_scale_by_layer:
        scale /= float(i + 1)
    o = attention(q, k, v, attention_mask(s, None), scale).reshape(b, s, d)
    if taps is not None:
        taps[prefix + "attn.c_proj"] = o
    x = x + conv1d(o, a["c_proj"]["weight"], a["c_proj"]["bias"])
    h = layer_norm(x, p["ln_2"]["weight"], p["ln_2"]["bias"], cfg.norm_eps)
    m = p["mlp"]
    if taps is not None:
        taps[prefix + "mlp.c_fc"] = h
    h = activation(cfg.activation, conv1d(h, m["c_fc"]["weight"], m["c_fc"]["bias"]))
    if taps is not None:
        taps[prefix + "mlp.c_proj"] = h
    x = x + conv1d(h, m["c_proj"]["weight"], m["c_proj"]["bias"])
    if taps is not None:
        taps[prefix + "output"] = x
    return x


def unembedding(params: dict, cfg: ModelConfig) -> Array:
    """The output projection ``[vocab, hidden]`` (the token embedding when tied)."""
    return params["transformer"]["wte"]["weight"] if cfg.tie_embeddings else \
        params["lm_head"]["weight"]


def features(params: dict, tokens: Array, cfg: ModelConfig, *, taps: dict | None = None,
             remat: bool = False) -> Array:
    """The final LayerNorm output ``[batch, seq, hidden]``."""
    t = params["transformer"]
    dtype = t["wte"]["weight"].dtype
    pos = jnp.arange(tokens.shape[1])
    x = (jnp.take(t["wte"]["weight"], tokens, axis=0) + t["wpe"]["weight"][pos][None]).astype(dtype)
    for i, p in enumerate(t["h"]):
        if remat and taps is None:
            x = jax.checkpoint(layer, static_argnums=(2, 3))(p, x, cfg, i)
        else:
            x = layer(p, x, cfg, i, taps)
    return layer_norm(x, t["ln_f"]["weight"], t["ln_f"]["bias"], cfg.norm_eps)
