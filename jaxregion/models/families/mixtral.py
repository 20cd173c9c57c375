"""Mixtral: mistral's attention and a mixture of experts whose top-k weights always sum to
one. Checkpoints name the block ``block_sparse_moe`` and the experts' linears ``w1`` (gate),
``w3`` (up) and ``w2`` (down); they load into transformers' ``mlp.gate`` and fused
``mlp.experts`` names. The table below is the single source of every parameter's name,
axes and role."""

from __future__ import annotations

from flax import nnx

from jaxregion.models import moe
from jaxregion.models.config import ModelConfig
from jaxregion.models.decoder import (
    LAYER,
    Attention,
    Body,
    DecoderLM,
    attention_specs,
    lm_head,
    rms_norm,
    windows,
)
from jaxregion.models.nn import Embedding, ParamMaker
from jaxregion.models.table import Spec, norm

MODEL_TYPES = ("mixtral",)
_L = LAYER
RESIDUAL_TAP = _L + "output"
_OLD, _NEW = ".block_sparse_moe.gate.", ".mlp.gate."


def table(cfg: ModelConfig | None) -> dict[str, Spec]:
    """``{HF name template: Spec}`` for ``cfg`` (``None``: every optional entry)."""
    t = {
        "model.embed_tokens.weight": Spec(("vocab", "embed"), "embedding"),
        _L + "input_layernorm.weight": norm(tag="attn_norm"),
        **attention_specs(),
        _L + "post_attention_layernorm.weight": norm(),
        **moe.moe_specs(),
        "model.norm.weight": norm(),
    }
    if cfg is None or not cfg.tie_embeddings:
        t["lm_head.weight"] = Spec(("vocab", "embed"), "head")
    return t


def canonical_name(key: str) -> str:
    """The original checkpoints' router name, as transformers renames it on load."""
    return key.replace(_OLD, _NEW)


def fused_parts(cfg: ModelConfig) -> dict[str, list[list[str]]]:
    """The per-expert checkpoint keys (``w1``/``w3``/``w2``) of each fused expert tensor."""
    out = {}
    for i in range(cfg.num_layers):
        out.update(moe.fused_parts(cfg, i, "w1", "w3", "w2", prefix="block_sparse_moe.experts"))
    return out


def config_from_hf(d: dict, source: str) -> ModelConfig:
    layers = int(d["num_hidden_layers"])
    return moe.config_from_hf(
        d,
        source,
        num_experts=moe.num_experts(d),
        expert_intermediate=int(d["intermediate_size"]),
        norm_topk=True,
        windows=(d.get("sliding_window") or None,) * layers,
    )


class Model(DecoderLM):
    """``MixtralForCausalLM``: ``model.*`` and an optional untied ``lm_head``."""

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs | None = None):
        make = ParamMaker(cfg, table(cfg), rngs)
        self.config = cfg
        self.model = Body(
            Embedding(make("model.embed_tokens.weight")),
            [moe.layer(cfg, make, i, w, Attention(cfg, make)) for i, w in enumerate(windows(cfg))],
            rms_norm(cfg, make, "model.norm.weight"),
        )
        self.lm_head = lm_head(cfg, make)
