"""OLMoE: pre-norm layers, q/k RMSNorms over the whole q and k projections (before the
split into heads, as OLMo 2), optional ``clip_qkv``, and a mixture of experts. The table
below is the single source of every parameter's name, axes and role."""

from __future__ import annotations

from flax import nnx

from jaxregion.models import moe
from jaxregion.models.config import ModelConfig
from jaxregion.models.decoder import (
    LAYER,
    Attention,
    Body,
    DecoderLM,
    attention_biases,
    attention_specs,
    lm_head,
    rms_norm,
    windows,
)
from jaxregion.models.nn import Embedding, ParamMaker, RMSNorm
from jaxregion.models.table import Spec, norm

MODEL_TYPES = ("olmoe",)
_L = LAYER
RESIDUAL_TAP = _L + "output"


def table(cfg: ModelConfig | None) -> dict[str, Spec]:
    """``{HF name template: Spec}`` for ``cfg`` (``None``: every optional entry)."""
    t = {
        "model.embed_tokens.weight": Spec(("vocab", "embed"), "embedding"),
        _L + "input_layernorm.weight": norm(tag="attn_norm"),
        **attention_specs(),
        _L + "self_attn.q_norm.weight": norm("q"),
        _L + "self_attn.k_norm.weight": norm("kv"),
        _L + "post_attention_layernorm.weight": norm(),
        **moe.moe_specs(),
        "model.norm.weight": norm(),
    }
    if cfg is None or cfg.qkv_bias:  # attention_bias: q, k, v and o alike
        t.update(attention_biases(True, True))
    if cfg is None or not cfg.tie_embeddings:
        t["lm_head.weight"] = Spec(("vocab", "embed"), "head")
    return t


def fused_parts(cfg: ModelConfig) -> dict[str, list[list[str]]]:
    """The per-expert checkpoint keys of each fused expert tensor."""
    out = {}
    for i in range(cfg.num_layers):
        out.update(moe.fused_parts(cfg, i, "gate_proj", "up_proj", "down_proj"))
    return out


def config_from_hf(d: dict, source: str) -> ModelConfig:
    layers = int(d["num_hidden_layers"])
    bias = bool(d.get("attention_bias", False))
    clip = d.get("clip_qkv")
    return moe.config_from_hf(
        d,
        source,
        num_experts=moe.num_experts(d),
        expert_intermediate=int(d["intermediate_size"]),
        norm_topk=bool(d.get("norm_topk_prob", False)),
        windows=(None,) * layers,
        qkv_bias=bias,
        o_bias=bias,
        qk_norm=True,
        extra=(("clip_qkv", float(clip)),) if clip is not None else (),
    )


def _attention(cfg: ModelConfig, make: ParamMaker) -> Attention:
    """OLMo 2's attention: q/k RMSNorms over all heads at once, before the split."""
    a = _L + "self_attn."
    return Attention(
        cfg,
        make,
        q_norm=RMSNorm(make(a + "q_norm.weight"), cfg.norm_eps),
        k_norm=RMSNorm(make(a + "k_norm.weight"), cfg.norm_eps),
        qk_norm_across_heads=True,
    )


class Model(DecoderLM):
    """``OlmoeForCausalLM``: ``model.*`` and an optional untied ``lm_head``."""

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs | None = None):
        make = ParamMaker(cfg, table(cfg), rngs)
        self.config = cfg
        self.model = Body(
            Embedding(make("model.embed_tokens.weight")),
            [moe.layer(cfg, make, i, w, _attention(cfg, make)) for i, w in enumerate(windows(cfg))],
            rms_norm(cfg, make, "model.norm.weight"),
        )
        self.lm_head = lm_head(cfg, make)
