"""The Llama-style decoder: llama (2/3), mistral, qwen2, qwen3 and gemma.

Family differences are config switches (biases, q/k norm, ``(1 + w)`` norms, embedding scale,
sliding windows), not subclasses. The table below is the single source of every parameter's
name, logical axes and role.
"""

from __future__ import annotations

from functools import partial

import jax

from jaxregion.models.config import ModelConfig, activation_name, get_key, rope_from_hf
from jaxregion.models.decoder import Attention, Body, DecoderLM, GatedMLP, PreNormLayer
from jaxregion.models.nn import ParamMaker, RMSNorm
from jaxregion.models.table import Spec, bias, linear, norm

Array = jax.Array
MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3", "gemma")

_L = "model.layers.{i}."
RESIDUAL_TAP = _L + "output"  # the residual stream after layer i
_QKV, _O, _GU, _DOWN = (_L + "self_attn.qkv", _L + "self_attn.o_proj", _L + "mlp.gate_up",
                        _L + "mlp.down_proj")


def table(cfg: ModelConfig | None) -> dict[str, Spec]:
    """``{HF name template: Spec}`` for ``cfg`` (``None``: every optional entry)."""

    def on(flag: bool) -> bool:
        return cfg is None or flag

    t = {
        "model.embed_tokens.weight": Spec(("vocab", "embed"), "embedding"),
        _L + "input_layernorm.weight": norm(tag="attn_norm"),
        _L + "self_attn.q_proj.weight": linear("q", "embed", tap=_QKV),
        _L + "self_attn.k_proj.weight": linear("kv", "embed", tap=_QKV),
        _L + "self_attn.v_proj.weight": linear("kv", "embed", tap=_QKV),
        _L + "self_attn.o_proj.weight": linear("embed", "q", tap=_O),
        _L + "post_attention_layernorm.weight": norm(),
        _L + "mlp.gate_proj.weight": linear("mlp", "embed", tap=_GU),
        _L + "mlp.up_proj.weight": linear("mlp", "embed", tap=_GU),
        _L + "mlp.down_proj.weight": linear("embed", "mlp", tap=_DOWN, tag="mlp_out"),
        "model.norm.weight": norm(),
    }
    if on(cfg is not None and cfg.qkv_bias):
        t[_L + "self_attn.q_proj.bias"] = bias("q")
        t[_L + "self_attn.k_proj.bias"] = bias("kv")
        t[_L + "self_attn.v_proj.bias"] = bias("kv")
    if on(cfg is not None and cfg.o_bias):
        t[_L + "self_attn.o_proj.bias"] = bias("embed")
    if on(cfg is not None and cfg.mlp_bias):
        t[_L + "mlp.gate_proj.bias"] = bias("mlp")
        t[_L + "mlp.up_proj.bias"] = bias("mlp")
        t[_L + "mlp.down_proj.bias"] = bias("embed")
    if on(cfg is not None and cfg.qk_norm):  # head-sized: not on the residual stream
        t[_L + "self_attn.q_norm.weight"] = norm("head")
        t[_L + "self_attn.k_norm.weight"] = norm("head")
    if on(cfg is not None and not cfg.tie_embeddings):
        t["lm_head.weight"] = Spec(("vocab", "embed"), "head")
    return t


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
        model_type=mt, vocab_size=int(d["vocab_size"]), hidden_size=hidden,
        intermediate_size=int(d["intermediate_size"]), num_layers=layers, num_heads=heads,
        num_kv_heads=int(d.get("num_key_value_heads") or heads),
        head_dim=int(d.get("head_dim") or hidden // heads),
        max_position_embeddings=int(d.get("max_position_embeddings", 2048)),
        norm_eps=float(get_key(d, "rms_norm_eps", default=1e-6)),
        activation=activation_name(act_name, source),
        tie_embeddings=bool(d.get("tie_word_embeddings", mt == "gemma")),
        rope_theta=theta, rope_scaling=scaling,
        qkv_bias=mt == "qwen2" or (mt != "mistral" and bool(d.get("attention_bias"))),
        o_bias=mt not in ("qwen2", "mistral") and bool(d.get("attention_bias")),
        mlp_bias=mt == "llama" and bool(d.get("mlp_bias")),
        qk_norm=mt == "qwen3", norm_plus_one=mt == "gemma", scale_embeddings=mt == "gemma",
        sliding_windows=windows,
        bos_token_id=d.get("bos_token_id"), eos_token_id=d.get("eos_token_id"),
        hf_config=dict(d),
    )


# --- modules (attribute paths = HF names) --------------------------------------------------


def _body(cfg: ModelConfig, make: ParamMaker) -> Body:
    qk = (lambda w: RMSNorm(w, cfg.norm_eps)) if cfg.qk_norm else None
    return Body(cfg, make,
                lambda w: PreNormLayer(cfg, make, w, partial(Attention, qk_norm=qk), GatedMLP),
                lambda w: RMSNorm(w, cfg.norm_eps, cfg.norm_plus_one))


class Model(DecoderLM):
    """``LlamaForCausalLM`` and friends: ``model.*`` and an optional untied ``lm_head``."""

    TABLE = staticmethod(table)
    BODY = staticmethod(_body)
