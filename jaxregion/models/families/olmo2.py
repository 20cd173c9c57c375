"""OLMo 2: norms after the sublayers instead of before (``x + norm(f(x))``), and q/k RMSNorms
over the whole q and k projections (``heads * head_dim`` weights, applied before splitting
into heads). The table below is the single source of every parameter's name, axes and role.
"""

from __future__ import annotations

import jax
from flax import nnx

from jaxregion.models.config import ModelConfig, activation_name, get_key, rope_from_hf
from jaxregion.models.decoder import Body, DecoderLM, GatedMLP
from jaxregion.models.layers import (
    KV,
    apply_rope,
    rms_norm_f32_weight,
    self_attention,
)
from jaxregion.models.nn import Linear, ParamMaker
from jaxregion.models.table import Spec, bias, linear, norm

Array = jax.Array
MODEL_TYPES = ("olmo2",)

_L = "model.layers.{i}."
RESIDUAL_TAP = _L + "output"  # the residual stream after layer i
_QKV, _O, _GU, _DOWN = (_L + "self_attn.qkv", _L + "self_attn.o_proj", _L + "mlp.gate_up",
                        _L + "mlp.down_proj")


def table(cfg: ModelConfig | None) -> dict[str, Spec]:
    """``{HF name template: Spec}`` for ``cfg`` (``None``: every optional entry).

    Attention reads the raw residual stream, so no norm is tagged ``attn_norm``: the
    attention-output norm is ``attn_out_norm`` (the dims sweep's target). The post-norms
    scale sublayer outputs as they join the residual stream (residual axis). The
    q/k norms span the projections (``q``/``kv`` axes), not the residual stream."""
    t = {
        "model.embed_tokens.weight": Spec(("vocab", "embed"), "embedding"),
        _L + "self_attn.q_proj.weight": linear("q", "embed", tap=_QKV),
        _L + "self_attn.k_proj.weight": linear("kv", "embed", tap=_QKV),
        _L + "self_attn.v_proj.weight": linear("kv", "embed", tap=_QKV),
        _L + "self_attn.o_proj.weight": linear("embed", "q", tap=_O),
        _L + "self_attn.q_norm.weight": norm("q"),
        _L + "self_attn.k_norm.weight": norm("kv"),
        _L + "post_attention_layernorm.weight": norm(tag="attn_out_norm"),
        _L + "mlp.gate_proj.weight": linear("mlp", "embed", tap=_GU),
        _L + "mlp.up_proj.weight": linear("mlp", "embed", tap=_GU),
        _L + "mlp.down_proj.weight": linear("embed", "mlp", tap=_DOWN, tag="mlp_out"),
        _L + "post_feedforward_layernorm.weight": norm(),
        "model.norm.weight": norm(),
    }
    if cfg is None or cfg.qkv_bias:  # attention_bias: q, k, v and o alike
        t[_L + "self_attn.q_proj.bias"] = bias("q")
        t[_L + "self_attn.k_proj.bias"] = bias("kv")
        t[_L + "self_attn.v_proj.bias"] = bias("kv")
        t[_L + "self_attn.o_proj.bias"] = bias("embed")
    if cfg is None or not cfg.tie_embeddings:
        t["lm_head.weight"] = Spec(("vocab", "embed"), "head")
    return t


def config_from_hf(d: dict, source: str) -> ModelConfig:
    hidden = int(d["hidden_size"])
    heads = int(d["num_attention_heads"])
    layers = int(d["num_hidden_layers"])
    theta, scaling = rope_from_hf(d)
    return ModelConfig(
        model_type="olmo2", vocab_size=int(d["vocab_size"]), hidden_size=hidden,
        intermediate_size=int(d["intermediate_size"]), num_layers=layers, num_heads=heads,
        num_kv_heads=int(d.get("num_key_value_heads") or heads),
        head_dim=int(d.get("head_dim") or hidden // heads),
        max_position_embeddings=int(d.get("max_position_embeddings", 2048)),
        norm_eps=float(get_key(d, "rms_norm_eps", default=1e-5)),
        activation=activation_name(get_key(d, "hidden_act", default="silu"), source),
        tie_embeddings=bool(d.get("tie_word_embeddings", False)),
        rope_theta=theta, rope_scaling=scaling,
        qkv_bias=bool(d.get("attention_bias")), o_bias=bool(d.get("attention_bias")),
        qk_norm=True, sliding_windows=(None,) * layers,
        bos_token_id=d.get("bos_token_id"), eos_token_id=d.get("eos_token_id"),
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


class Attention(nnx.Module):
    def __init__(self, cfg: ModelConfig, make: ParamMaker):
        a = _L + "self_attn."
        for p in ("q_proj", "k_proj", "v_proj", "o_proj"):
            setattr(self, p, Linear(make(a + p + ".weight"), make.optional(a + p + ".bias")))
        self.q_norm = RMSNorm(make(a + "q_norm.weight"), cfg.norm_eps)
        self.k_norm = RMSNorm(make(a + "k_norm.weight"), cfg.norm_eps)
        self.shape = (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim)

    def __call__(self, x: Array, rope: tuple[Array, Array], positions: Array, collect: bool,
                 kv: KV | None = None) -> tuple[Array, dict[str, Array], KV | None]:
        b, s, _ = x.shape
        h, n_kv, d = self.shape
        q = self.q_norm(self.q_proj(x)).reshape(b, s, h, d)  # normed over all heads at once
        k = self.k_norm(self.k_proj(x)).reshape(b, s, n_kv, d)
        v = self.v_proj(x).reshape(b, s, n_kv, d)
        q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        o, kv = self_attention(q, k, v, positions, None, d**-0.5, kv=kv)
        o = o.reshape(b, s, h * d)
        aux = {"self_attn.qkv": x, "self_attn.o_proj": o} if collect else {}
        return self.o_proj(o), aux, kv


class DecoderLayer(nnx.Module):
    """``x + post_norm(sublayer(x))`` for attention, then the MLP."""

    def __init__(self, cfg: ModelConfig, make: ParamMaker):
        self.self_attn = Attention(cfg, make)
        self.post_attention_layernorm = RMSNorm(make(_L + "post_attention_layernorm.weight"),
                                                cfg.norm_eps)
        self.mlp = GatedMLP(cfg, make)
        self.post_feedforward_layernorm = RMSNorm(make(_L + "post_feedforward_layernorm.weight"),
                                                  cfg.norm_eps)

    def __call__(self, x: Array, rope: tuple[Array, Array], positions: Array, collect: bool,
                 kv: KV | None = None) -> tuple[Array, dict[str, Array], KV | None]:
        a, aux, kv = self.self_attn(x, rope, positions, collect, kv)
        x = x + self.post_attention_layernorm(a)
        m, aux_m = self.mlp(x, collect)
        x = x + self.post_feedforward_layernorm(m)
        return x, ({**aux, **aux_m, "output": x} if collect else {}), kv


def _body(cfg: ModelConfig, make: ParamMaker) -> Body:
    return Body(cfg, make, lambda _: DecoderLayer(cfg, make),
                lambda w: RMSNorm(w, cfg.norm_eps))


class Model(DecoderLM):
    """``Olmo2ForCausalLM``: ``model.*`` and an ``lm_head`` (untied in the OLMo 2 releases)."""

    TABLE = staticmethod(table)
    BODY = staticmethod(_body)
