"""The Llama-style decoder: llama (2/3), mistral, qwen2, qwen3 and gemma.

Family differences are config switches (biases, q/k norm, ``(1 + w)`` norms, embedding scale,
sliding windows), not subclasses. The table below is the single source of every parameter's
name, logical axes and role.
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
    PreNormLayer,
    attention_biases,
    attention_specs,
    gated_mlp_specs,
    lm_head,
    rms_norm,
    windows,
)
from jaxregion.models.gguf_table import DECODER_CONFIG, GgufArch, decoder_names, norms_minus_one
from jaxregion.models.nn import Embedding, ParamMaker, RMSNorm
from jaxregion.models.table import Spec, norm

Array = jax.Array
MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3", "gemma")

_L = LAYER
RESIDUAL_TAP = _L + "output"  # the residual stream after layer i


def table(cfg: ModelConfig | None) -> dict[str, Spec]:
    """``{HF name template: Spec}`` for ``cfg`` (``None``: every optional entry)."""

    def on(flag: bool) -> bool:
        return cfg is None or flag

    t = {
        "model.embed_tokens.weight": Spec(("vocab", "embed"), "embedding"),
        _L + "input_layernorm.weight": norm(tag="attn_norm"),
        **attention_specs(),
        _L + "post_attention_layernorm.weight": norm(),
        **gated_mlp_specs(),
        "model.norm.weight": norm(),
    }
    if on(cfg is not None and cfg.qkv_bias):
        t.update(attention_biases(True, False))
    if on(cfg is not None and cfg.o_bias):
        t.update(attention_biases(False, True))
    if on(cfg is not None and cfg.mlp_bias):
        t.update(gated_mlp_specs(biases=True))
    if on(cfg is not None and cfg.qk_norm):  # head-sized: not on the residual stream
        t[_L + "self_attn.q_norm.weight"] = norm("head")
        t[_L + "self_attn.k_norm.weight"] = norm("head")
    if on(cfg is not None and not cfg.tie_embeddings):
        t["lm_head.weight"] = Spec(("vocab", "embed"), "head")
    return t


_GEMMA_NAMES = decoder_names(head=False)
GGUF = (
    GgufArch(
        "llama",
        "llama",
        "LlamaForCausalLM",
        decoder_names(biases=True),
        {**DECODER_CONFIG, "head_dim": "rope.dimension_count"},
        transforms={
            "blk.{i}.attn_q.weight": "rope_q",
            "blk.{i}.attn_k.weight": "rope_k",
            "blk.{i}.attn_q.bias": "rope_q",
            "blk.{i}.attn_k.bias": "rope_k",
        },
    ),
    GgufArch("qwen2", "qwen2", "Qwen2ForCausalLM", decoder_names(biases=True), DECODER_CONFIG),
    GgufArch(
        "qwen3",
        "qwen3",
        "Qwen3ForCausalLM",
        decoder_names(qk_norm=True),
        {**DECODER_CONFIG, "head_dim": "attention.key_length"},
    ),
    GgufArch(
        "gemma",
        "gemma",
        "GemmaForCausalLM",
        _GEMMA_NAMES,
        {**DECODER_CONFIG, "head_dim": "attention.key_length"},
        transforms=norms_minus_one(_GEMMA_NAMES),
    ),
)


def config_from_hf(d: dict, source: str) -> ModelConfig:
    mt = d["model_type"]
    hidden = int(d["hidden_size"])
    heads = int(d["num_attention_heads"])
    layers = int(d["num_hidden_layers"])
    theta, scaling = rope_from_hf(d)
    window = d.get("sliding_window")
    if mt == "mistral":
        windows = tuple(window for _ in range(layers))
    elif mt in ("qwen2", "qwen3") and d.get("use_sliding_window") and window:
        types = d.get("layer_types") or [
            "sliding_attention" if i >= d.get("max_window_layers", layers) else "full_attention"
            for i in range(layers)
        ]
        windows = tuple(window if t == "sliding_attention" else None for t in types)
    else:
        windows = (None,) * layers
    act_name = get_key(d, "hidden_activation", "hidden_act", default="silu")
    if mt == "gemma":
        act_name = d.get("hidden_activation") or "gelu_pytorch_tanh"
    return ModelConfig(
        model_type=mt,
        vocab_size=int(d["vocab_size"]),
        hidden_size=hidden,
        intermediate_size=int(d["intermediate_size"]),
        num_layers=layers,
        num_heads=heads,
        num_kv_heads=int(d.get("num_key_value_heads") or heads),
        head_dim=int(d.get("head_dim") or hidden // heads),
        max_position_embeddings=int(d.get("max_position_embeddings", 2048)),
        norm_eps=float(get_key(d, "rms_norm_eps", default=1e-6)),
        activation=activation_name(act_name, source),
        tie_embeddings=bool(d.get("tie_word_embeddings", mt == "gemma")),
        rope_theta=theta,
        rope_scaling=scaling,
        qkv_bias=mt == "qwen2" or (mt != "mistral" and bool(d.get("attention_bias"))),
        o_bias=mt not in ("qwen2", "mistral") and bool(d.get("attention_bias")),
        mlp_bias=mt == "llama" and bool(d.get("mlp_bias")),
        qk_norm=mt == "qwen3",
        norm_plus_one=mt == "gemma",
        scale_embeddings=mt == "gemma",
        sliding_windows=windows,
        bos_token_id=d.get("bos_token_id"),
        eos_token_id=d.get("eos_token_id"),
        hf_config=dict(d),
    )


# --- modules (attribute paths = HF names) --------------------------------------------------
def _layer(cfg: ModelConfig, make: ParamMaker, window: int | None) -> PreNormLayer:
    a = _L + "self_attn."
    qk = cfg.qk_norm  # qwen3: per-head RMSNorms
    attn = Attention(
        cfg,
        make,
        q_norm=RMSNorm(make(a + "q_norm.weight"), cfg.norm_eps) if qk else None,
        k_norm=RMSNorm(make(a + "k_norm.weight"), cfg.norm_eps) if qk else None,
    )
    return PreNormLayer(cfg, make, window, attn, GatedMLP(cfg, make))


class Model(DecoderLM):
    """``LlamaForCausalLM`` and friends: ``model.*`` and an optional untied ``lm_head``."""

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs | None = None):
        make = ParamMaker(cfg, table(cfg), rngs)
        self.config = cfg
        self.model = Body(
            Embedding(make("model.embed_tokens.weight")),
            [_layer(cfg, make, w) for w in windows(cfg)],
            rms_norm(cfg, make, "model.norm.weight"),
        )
        self.lm_head = lm_head(cfg, make)
