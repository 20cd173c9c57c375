"""OLMo 2: norms after the sublayers instead of before (``x + norm(f(x))``), and q/k RMSNorms
over the whole q and k projections (``heads * head_dim`` weights, applied before splitting
into heads). The table below is the single source of every parameter's name, axes and role.
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
from jaxregion.models.layers import (
    KV,
    rms_norm_f32_weight,
)
from jaxregion.models.nn import Embedding, ParamMaker, tap
from jaxregion.models.table import Spec, norm

Array = jax.Array
MODEL_TYPES = ("olmo2",)

_L = LAYER
RESIDUAL_TAP = _L + "output"  # the residual stream after layer i


def table(cfg: ModelConfig | None) -> dict[str, Spec]:
    """``{HF name template: Spec}`` for ``cfg`` (``None``: every optional entry).

    Attention reads the raw residual stream, so no norm is tagged ``attn_norm``: the
    attention-output norm is ``attn_out_norm`` (the dims sweep's target). The post-norms
    scale sublayer outputs as they join the residual stream (residual axis). The
    q/k norms span the projections (``q``/``kv`` axes), not the residual stream."""
    t = {
        "model.embed_tokens.weight": Spec(("vocab", "embed"), "embedding"),
        **attention_specs(),
        _L + "self_attn.q_norm.weight": norm("q"),
        _L + "self_attn.k_norm.weight": norm("kv"),
        _L + "post_attention_layernorm.weight": norm(tag="attn_out_norm"),
        **gated_mlp_specs(),
        _L + "post_feedforward_layernorm.weight": norm(),
        "model.norm.weight": norm(),
    }
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
    return ModelConfig(
        model_type="olmo2",
        vocab_size=int(d["vocab_size"]),
        hidden_size=hidden,
        intermediate_size=int(d["intermediate_size"]),
        num_layers=layers,
        num_heads=heads,
        num_kv_heads=int(d.get("num_key_value_heads") or heads),
        head_dim=int(d.get("head_dim") or hidden // heads),
        max_position_embeddings=int(d.get("max_position_embeddings", 2048)),
        norm_eps=float(get_key(d, "rms_norm_eps", default=1e-5)),
        activation=activation_name(get_key(d, "hidden_act", default="silu"), source),
        tie_embeddings=bool(d.get("tie_word_embeddings", False)),
        rope_theta=theta,
        rope_scaling=scaling,
        qkv_bias=bool(d.get("attention_bias")),
        o_bias=bool(d.get("attention_bias")),
        qk_norm=True,
        sliding_windows=(None,) * layers,
        bos_token_id=d.get("bos_token_id"),
        eos_token_id=d.get("eos_token_id"),
        hf_config=dict(d),
    )


# --- modules (attribute paths = HF names) --------------------------------------------------
class RMSNorm(nnx.Module):
    """OLMo 2's RMSNorm: weight times the float32-normalised input, then cast."""

    def __init__(self, weight: nnx.Param, eps: float):
        self.weight = weight
        self.eps = eps

    def __call__(self, x: Array) -> Array:
        return rms_norm_f32_weight(x, self.weight[...], self.eps)


class DecoderLayer(nnx.Module):
    """``x + post_norm(sublayer(x))`` for attention, then the MLP."""

    def __init__(self, cfg: ModelConfig, make: ParamMaker):
        a, eps = _L + "self_attn.", cfg.norm_eps
        self.self_attn = Attention(
            cfg,
            make,
            q_norm=RMSNorm(make(a + "q_norm.weight"), eps),
            k_norm=RMSNorm(make(a + "k_norm.weight"), eps),
            qk_norm_across_heads=True,
        )
        self.post_attention_layernorm = RMSNorm(make(_L + "post_attention_layernorm.weight"), eps)
        self.mlp = GatedMLP(cfg, make)
        self.post_feedforward_layernorm = RMSNorm(
            make(_L + "post_feedforward_layernorm.weight"), eps
        )

    def __call__(
        self, x: Array, rope: tuple[Array, Array], positions: Array, kv: KV | None = None
    ) -> tuple[Array, KV | None]:
        a, kv = self.self_attn(x, rope, positions, None, kv)
        x = x + self.post_attention_layernorm(a)
        x = x + self.post_feedforward_layernorm(self.mlp(x))
        tap(self, "output", x)
        return x, kv


class Model(DecoderLM):
    """``Olmo2ForCausalLM``: ``model.*`` and an ``lm_head`` (untied in the OLMo 2 releases)."""

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs | None = None):
        make = ParamMaker(cfg, table(cfg), rngs)
        self.config = cfg
        self.model = Body(
            Embedding(make("model.embed_tokens.weight")),
            [DecoderLayer(cfg, make) for _ in range(cfg.num_layers)],
            RMSNorm(make("model.norm.weight"), cfg.norm_eps),
        )
        self.lm_head = lm_head(cfg, make)
