"""Cohere (Command R, Aya 23): attention and MLP in parallel from one ``input_layernorm``
(``x + attn(ln(x)) + mlp(ln(x))``), mean-centred LayerNorms without bias, RoPE rotating
adjacent pairs (interleaved, not half-split), ``logit_scale`` on the logits (applied by the
shared head of :class:`~jaxregion.models.module.CausalLM`), optional per-head q/k LayerNorms
(``[heads, head_dim]`` weights), tied head. The table below is the single source of every
parameter's name, axes and role.
"""

from __future__ import annotations

import jax
from flax import nnx

from jaxregion.models.config import ModelConfig, activation_name, get_key, rope_from_hf
from jaxregion.models.decoder import (
    LAYER,
    Attention,
    Body,
    DecoderLM,
    GatedMLP,
    attention_biases,
    attention_specs,
    gated_mlp_specs,
    lm_head,
)
from jaxregion.models.layers import KV
from jaxregion.models.nn import Embedding, LayerNorm, ParamMaker, tap
from jaxregion.models.table import Spec, norm

Array = jax.Array
MODEL_TYPES = ("cohere",)

_L = LAYER
RESIDUAL_TAP = _L + "output"  # the residual stream after layer i


def table(cfg: ModelConfig | None) -> dict[str, Spec]:
    """``{HF name template: Spec}`` for ``cfg`` (``None``: every optional entry).

    ``input_layernorm`` feeds attention and the MLP alike (``attn_norm``); the per-head q/k
    norms span ``heads x head_dim``, not the residual stream."""
    t = {
        "model.embed_tokens.weight": Spec(("vocab", "embed"), "embedding"),
        _L + "input_layernorm.weight": norm(tag="attn_norm"),
        **attention_specs(),
        **gated_mlp_specs(),
        "model.norm.weight": norm(),
    }
    if cfg is None or cfg.qk_norm:
        t[_L + "self_attn.q_norm.weight"] = Spec(("heads", "head"), "norm")
        t[_L + "self_attn.k_norm.weight"] = Spec(("kv_heads", "head"), "norm")
    if cfg is None or cfg.qkv_bias:  # attention_bias: q, k, v and o alike
        t.update(attention_biases(True, True))
    if cfg is None or not cfg.tie_embeddings:
        t["lm_head.weight"] = Spec(("vocab", "embed"), "head")
    return t


def config_from_hf(d: dict, source: str) -> ModelConfig:
    hidden = int(d["hidden_size"])
    heads = int(d["num_attention_heads"])
    layers = int(d["num_hidden_layers"])
    theta, scaling = rope_from_hf(d)
    scale = d.get("logit_scale", 0.0625)
    return ModelConfig(
        model_type="cohere",
        vocab_size=int(d["vocab_size"]),
        hidden_size=hidden,
        intermediate_size=int(d["intermediate_size"]),
        num_layers=layers,
        num_heads=heads,
        num_kv_heads=int(d.get("num_key_value_heads") or heads),
        head_dim=int(d.get("head_dim") or hidden // heads),
        max_position_embeddings=int(d.get("max_position_embeddings", 8192)),
        norm_eps=float(get_key(d, "layer_norm_eps", default=1e-5)),
        activation=activation_name(get_key(d, "hidden_act", default="silu"), source),
        tie_embeddings=bool(d.get("tie_word_embeddings", True)),
        rope_theta=theta,
        rope_scaling=scaling,
        rope_interleaved=True,
        qkv_bias=bool(d.get("attention_bias")),
        o_bias=bool(d.get("attention_bias")),
        qk_norm=bool(d.get("use_qk_norm")),
        sliding_windows=(None,) * layers,
        logit_scale=None if scale is None else float(scale),
        bos_token_id=d.get("bos_token_id"),
        eos_token_id=d.get("eos_token_id"),
        hf_config=dict(d),
    )


# --- modules (attribute paths = HF names) --------------------------------------------------


class DecoderLayer(nnx.Module):
    """One norm, then attention and the MLP side by side: ``x + attn(h) + mlp(h)``."""

    def __init__(self, cfg: ModelConfig, make: ParamMaker):
        a, eps = _L + "self_attn.", cfg.norm_eps
        self.input_layernorm = LayerNorm(make(_L + "input_layernorm.weight"), None, eps)
        self.self_attn = Attention(  # q/k norms per head, weights [heads, dim]
            cfg,
            make,
            q_norm=LayerNorm(make(a + "q_norm.weight"), None, eps) if cfg.qk_norm else None,
            k_norm=LayerNorm(make(a + "k_norm.weight"), None, eps) if cfg.qk_norm else None,
        )
        self.mlp = GatedMLP(cfg, make)

    def __call__(
        self, x: Array, rope: tuple[Array, Array], positions: Array, kv: KV | None = None
    ) -> tuple[Array, KV | None]:
        h = self.input_layernorm(x)
        a, kv = self.self_attn(h, rope, positions, None, kv)
        x = x + a + self.mlp(h)
        tap(self, "output", x)
        return x, kv


class Model(DecoderLM):
    """``CohereForCausalLM``: ``model.*``, the head tied unless ``tie_word_embeddings`` is
    false; ``cfg.logit_scale`` scales the logits in the shared head."""

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs | None = None):
        make = ParamMaker(cfg, table(cfg), rngs)
        self.config = cfg
        self.model = Body(
            Embedding(make("model.embed_tokens.weight")),
            [DecoderLayer(cfg, make) for _ in range(cfg.num_layers)],
            LayerNorm(make("model.norm.weight"), None, cfg.norm_eps),
        )
        self.lm_head = lm_head(cfg, make)
