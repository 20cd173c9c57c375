"""Qwen2-MoE (Qwen1.5-MoE): qwen2's attention (q/k/v biases) and a mixture of experts with a
dense shared expert scaled by a sigmoid gate. The table below is the single source of every
parameter's name, axes and role."""

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
from jaxregion.models.nn import Embedding, ParamMaker
from jaxregion.models.table import Spec, norm

MODEL_TYPES = ("qwen2_moe",)
_L = LAYER
RESIDUAL_TAP = _L + "output"


def table(cfg: ModelConfig | None) -> dict[str, Spec]:
    """``{HF name template: Spec}`` for ``cfg`` (``None``: every optional entry)."""
    t = {
        "model.embed_tokens.weight": Spec(("vocab", "embed"), "embedding"),
        _L + "input_layernorm.weight": norm(tag="attn_norm"),
        **attention_specs(),
        _L + "post_attention_layernorm.weight": norm(),
        **moe.moe_specs(shared=True),
        "model.norm.weight": norm(),
    }
    if cfg is None or cfg.qkv_bias:
        t.update(attention_biases(True, False))
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
    moe.check_all_sparse(d, source)
    layers = int(d["num_hidden_layers"])
    window = d.get("sliding_window")
    windows: tuple[int | None, ...] = (None,) * layers
    if d.get("use_sliding_window") and window:
        types = d.get("layer_types") or [
            "sliding_attention"
            if (i + 1) % 2 and i < d.get("max_window_layers", layers)
            else "full_attention"
            for i in range(layers)
        ]
        windows = tuple(window if t == "sliding_attention" else None for t in types)
    return moe.config_from_hf(
        d,
        source,
        num_experts=moe.num_experts(d),
        expert_intermediate=int(d["moe_intermediate_size"]),
        norm_topk=bool(d.get("norm_topk_prob", False)),
        windows=windows,
        shared_expert_intermediate_size=int(d["shared_expert_intermediate_size"]),
        qkv_bias=bool(d.get("qkv_bias", True)),
    )


class Model(DecoderLM):
    """``Qwen2MoeForCausalLM``: ``model.*`` and an optional untied ``lm_head``."""

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs | None = None):
        make = ParamMaker(cfg, table(cfg), rngs)
        self.config = cfg
        self.model = Body(
            Embedding(make("model.embed_tokens.weight")),
            [moe.layer(cfg, make, i, w, Attention(cfg, make)) for i, w in enumerate(windows(cfg))],
            rms_norm(cfg, make, "model.norm.weight"),
        )
        self.lm_head = lm_head(cfg, make)
