"""Declarative parameter maps: each family's HF names, shapes and logical axes.

One table per family says, for every HF parameter name (``{i}`` = layer index), its shape in
logical axis names. Everything else is derived from it: the abstract params tree, shape checks
against a checkpoint, and (in :mod:`jaxregion.sharding`) a PartitionSpec per tensor. The param
path *is* the HF name, so the map needs no renaming, and HF aliases (e.g. GPT-2's unprefixed
hub names) are resolved here, in one place.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp

from jaxregion.models.config import ModelConfig
from jaxregion.tree import unflatten

# Logical axis names. Sharding rules map these to mesh axes.
#   vocab, embed (the residual stream / hidden size), q (heads*head_dim), kv (kv_heads*head_dim),
#   head (head_dim), mlp (intermediate), pos (positions), qkv (3*hidden for GPT-2's fused c_attn)

_LLAMA: dict[str, tuple[str, ...]] = {
    "model.embed_tokens.weight": ("vocab", "embed"),
    "model.layers.{i}.input_layernorm.weight": ("embed",),
    "model.layers.{i}.self_attn.q_proj.weight": ("q", "embed"),
    "model.layers.{i}.self_attn.k_proj.weight": ("kv", "embed"),
    "model.layers.{i}.self_attn.v_proj.weight": ("kv", "embed"),
    "model.layers.{i}.self_attn.o_proj.weight": ("embed", "q"),
    "model.layers.{i}.post_attention_layernorm.weight": ("embed",),
    "model.layers.{i}.mlp.gate_proj.weight": ("mlp", "embed"),
    "model.layers.{i}.mlp.up_proj.weight": ("mlp", "embed"),
    "model.layers.{i}.mlp.down_proj.weight": ("embed", "mlp"),
    "model.norm.weight": ("embed",),
}
_QKV_BIAS = {
    "model.layers.{i}.self_attn.q_proj.bias": ("q",),
    "model.layers.{i}.self_attn.k_proj.bias": ("kv",),
    "model.layers.{i}.self_attn.v_proj.bias": ("kv",),
}
_O_BIAS = {"model.layers.{i}.self_attn.o_proj.bias": ("embed",)}
_MLP_BIAS = {
    "model.layers.{i}.mlp.gate_proj.bias": ("mlp",),
    "model.layers.{i}.mlp.up_proj.bias": ("mlp",),
    "model.layers.{i}.mlp.down_proj.bias": ("embed",),
}
_QK_NORM = {
    "model.layers.{i}.self_attn.q_norm.weight": ("head",),
    "model.layers.{i}.self_attn.k_norm.weight": ("head",),
}
_LM_HEAD = {"lm_head.weight": ("vocab", "embed")}

_GPT2: dict[str, tuple[str, ...]] = {
    "transformer.wte.weight": ("vocab", "embed"),
    "transformer.wpe.weight": ("pos", "embed"),
    "transformer.h.{i}.ln_1.weight": ("embed",),
    "transformer.h.{i}.ln_1.bias": ("embed",),
    # Conv1D stores [in, out].
    "transformer.h.{i}.attn.c_attn.weight": ("embed", "qkv"),
    "transformer.h.{i}.attn.c_attn.bias": ("qkv",),
    "transformer.h.{i}.attn.c_proj.weight": ("q", "embed"),
    "transformer.h.{i}.attn.c_proj.bias": ("embed",),
    "transformer.h.{i}.ln_2.weight": ("embed",),
    "transformer.h.{i}.ln_2.bias": ("embed",),
    "transformer.h.{i}.mlp.c_fc.weight": ("embed", "mlp"),
    "transformer.h.{i}.mlp.c_fc.bias": ("mlp",),
    "transformer.h.{i}.mlp.c_proj.weight": ("mlp", "embed"),
    "transformer.h.{i}.mlp.c_proj.bias": ("embed",),
    "transformer.ln_f.weight": ("embed",),
    "transformer.ln_f.bias": ("embed",),
}

# Checkpoint keys that are buffers, not parameters: skipped when loading.
IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias", ".rotary_emb.inv_freq")


def param_table(cfg: ModelConfig) -> dict[str, tuple[str, ...]]:
    """``{template: logical axes}`` for this config (``{i}`` still unexpanded)."""
    if cfg.model_type == "gpt2":
        table = dict(_GPT2)
    else:
        table = dict(_LLAMA)
        if cfg.qkv_bias:
            table.update(_QKV_BIAS)
        if cfg.o_bias:
            table.update(_O_BIAS)
        if cfg.mlp_bias:
            table.update(_MLP_BIAS)
        if cfg.qk_norm:
            table.update(_QK_NORM)
    if not cfg.tie_embeddings:
        table.update(_LM_HEAD)
    return table


def axis_sizes(cfg: ModelConfig) -> dict[str, int]:
    return {
        "vocab": cfg.vocab_size, "embed": cfg.hidden_size, "q": cfg.q_dim, "kv": cfg.kv_dim,
        "head": cfg.head_dim, "mlp": cfg.intermediate_size, "pos": cfg.max_position_embeddings,
        "qkv": 3 * cfg.hidden_size,
    }


def logical_axes(cfg: ModelConfig) -> dict[str, tuple[str, ...]]:
    """``{hf_name: logical axes}`` with every layer expanded, in model order."""
    out: dict[str, tuple[str, ...]] = {}
    table = param_table(cfg)
    layered = [k for k in table if "{i}" in k]
    for k in table:
        if "{i}" not in k and ("embed_tokens" in k or ".wte." in k or ".wpe." in k):
            out[k] = table[k]
    for i in range(cfg.num_layers):
        for k in layered:
            out[k.format(i=i)] = table[k]
    for k in table:
        if "{i}" not in k and k not in out:
            out[k] = table[k]
    return out


def shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """``{hf_name: shape}`` expected for this config."""
    sizes = axis_sizes(cfg)
    return {k: tuple(sizes[a] for a in axes) for k, axes in logical_axes(cfg).items()}


def abstract_params(cfg: ModelConfig, dtype: jnp.dtype = jnp.float32) -> dict:
    """The params tree as ``jax.ShapeDtypeStruct`` leaves: no memory allocated."""
    return unflatten({k: jax.ShapeDtypeStruct(s, dtype) for k, s in shapes(cfg).items()})


def canonical_name(cfg: ModelConfig, key: str) -> str | None:
    """The HF name a checkpoint key stands for, or None for buffers to skip."""
    if key.endswith(IGNORED_SUFFIXES):
        return None
    if cfg.model_type == "gpt2" and not key.startswith(("transformer.", "lm_head.")):
        return "transformer." + key
    return key


def check_shapes(
    found: Mapping[str, tuple[int, ...]], cfg: ModelConfig, source: str
) -> list[str]:
    """Every mismatch between a checkpoint and the config, as readable lines."""
    want = shapes(cfg)
    problems = []
    for k, s in want.items():
        if k not in found:
            problems.append(f"missing tensor {k} (expected shape {list(s)})")
        elif tuple(found[k]) != s:
            problems.append(f"tensor {k} has shape {list(found[k])}, expected {list(s)}")
    for k in found:
        if k not in want and not (k == "lm_head.weight" and cfg.tie_embeddings):
            problems.append(f"unexpected tensor {k} {list(found[k])}")
    return problems
