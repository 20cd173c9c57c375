"""Phi-3: a Llama-style decoder with fused ``qkv_proj`` (``[q; k; v]`` rows) and
``gate_up_proj`` (``[gate; up]`` rows), longrope scaling (short factors up to
``original_max_position_embeddings``, long ones past it, cos/sin scaled by the attention
factor), partial rotary and an optional sliding window. The table below is the single
source of every parameter's name, axes and role.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxregion.errors import UserError
from jaxregion.models.config import ModelConfig, activation_name, frozen, get_key
from jaxregion.models.decoder import (
    LAYER,
    Body,
    DecoderLM,
    PreNormLayer,
    lm_head,
    rms_norm,
    windows,
)
from jaxregion.models.gguf_table import DECODER_CONFIG, EDGE_NAMES, GgufArch
from jaxregion.models.layers import KV, activation, apply_rope, self_attention
from jaxregion.models.nn import Embedding, Linear, ParamMaker, tap
from jaxregion.models.table import Spec, linear, norm

Array = jax.Array
MODEL_TYPES = ("phi3",)

_L = LAYER
RESIDUAL_TAP = _L + "output"  # the residual stream after layer i
_QKV, _O, _GU, _DOWN = (
    _L + "self_attn.qkv_proj",
    _L + "self_attn.o_proj",
    _L + "mlp.gate_up_proj",
    _L + "mlp.down_proj",
)


def table(cfg: ModelConfig | None) -> dict[str, Spec]:
    """``{HF name template: Spec}`` for ``cfg`` (``None``: every optional entry).

    The fused maps read the residual stream on their input axis (1); their output axes are
    ``qkv`` (``heads * head_dim + 2 * kv_heads * head_dim``) and ``gate_up``
    (``2 * intermediate``)."""
    t = {
        "model.embed_tokens.weight": Spec(("vocab", "embed"), "embedding"),
        _L + "input_layernorm.weight": norm(tag="attn_norm"),
        _L + "self_attn.qkv_proj.weight": linear("qkv", "embed", tap=_QKV),
        _L + "self_attn.o_proj.weight": linear("embed", "q", tap=_O),
        _L + "post_attention_layernorm.weight": norm(),
        _L + "mlp.gate_up_proj.weight": linear("gate_up", "embed", tap=_GU),
        _L + "mlp.down_proj.weight": linear("embed", "mlp", tap=_DOWN, tag="mlp_out"),
        "model.norm.weight": norm(),
    }
    if cfg is None or not cfg.tie_embeddings:
        t["lm_head.weight"] = Spec(("vocab", "embed"), "head")
    return t


GGUF = (
    GgufArch(
        "phi3",
        "phi3",
        "Phi3ForCausalLM",
        {
            **EDGE_NAMES,
            **{
                _L + hf + ".weight": "blk.{i}." + g + ".weight"
                for hf, g in (
                    ("input_layernorm", "attn_norm"),
                    ("self_attn.qkv_proj", "attn_qkv"),
                    ("self_attn.o_proj", "attn_output"),
                    ("post_attention_layernorm", "ffn_norm"),
                    ("mlp.gate_up_proj", "ffn_up"),
                    ("mlp.down_proj", "ffn_down"),
                )
            },
        },
        {**DECODER_CONFIG, "sliding_window": "attention.sliding_window"},
    ),
)


def _rope(d: dict, source: str) -> tuple[float, tuple | None, float]:
    """``(theta, scaling, partial_rotary_factor)`` from either config.json format.

    transformers 5 writes ``rope_parameters``; older files ``rope_theta`` and ``rope_scaling``
    (type ``longrope``, or its old names ``su`` / ``yarn``). The top-level
    ``original_max_position_embeddings`` wins over the one in the rope dict, as in
    transformers (``Phi3Config`` always has it, default 4096)."""
    params = dict(d.get("rope_parameters") or {})
    scaling = dict(d.get("rope_scaling") or params)
    theta = float(get_key(params, "rope_theta", default=get_key(d, "rope_theta", default=10000.0)))
    factor = float(
        get_key(
            params,
            "partial_rotary_factor",
            default=get_key(d, "partial_rotary_factor", default=1.0),
        )
    )
    kind = scaling.get("rope_type", scaling.get("type")) or "default"
    if kind in ("su", "yarn"):
        kind = "longrope"
    if kind == "default":
        return theta, None, factor
    if kind != "longrope":
        raise UserError(f"{source}: phi3 rope type {kind!r} is not supported (default, longrope)")
    keep = ("short_factor", "long_factor", "factor", "attention_factor")
    out = {k: scaling[k] for k in keep if scaling.get(k) is not None}
    out["rope_type"] = "longrope"
    out["original_max_position_embeddings"] = int(
        get_key(
            d,
            "original_max_position_embeddings",
            default=scaling.get("original_max_position_embeddings", 4096),
        )
    )
    return theta, frozen(out), factor


def config_from_hf(d: dict, source: str) -> ModelConfig:
    hidden = int(d["hidden_size"])
    heads = int(d["num_attention_heads"])
    layers = int(d["num_hidden_layers"])
    theta, scaling, partial = _rope(d, source)
    window = d.get("sliding_window")
    return ModelConfig(
        model_type="phi3",
        vocab_size=int(d["vocab_size"]),
        hidden_size=hidden,
        intermediate_size=int(d["intermediate_size"]),
        num_layers=layers,
        num_heads=heads,
        num_kv_heads=int(d.get("num_key_value_heads") or heads),
        head_dim=int(d.get("head_dim") or hidden // heads),
        max_position_embeddings=int(d.get("max_position_embeddings", 4096)),
        norm_eps=float(get_key(d, "rms_norm_eps", default=1e-5)),
        activation=activation_name(get_key(d, "hidden_act", default="silu"), source),
        tie_embeddings=bool(d.get("tie_word_embeddings", False)),
        rope_theta=theta,
        rope_scaling=scaling,
        partial_rotary_factor=partial,
        sliding_windows=(int(window) if window else None,) * layers,
        bos_token_id=d.get("bos_token_id"),
        eos_token_id=d.get("eos_token_id"),
        hf_config=dict(d),
    )


# --- modules (attribute paths = HF names) --------------------------------------------------
class Attention(nnx.Module):
    def __init__(self, cfg: ModelConfig, make: ParamMaker):
        self.qkv_proj = Linear(make(_QKV + ".weight"))
        self.o_proj = Linear(make(_O + ".weight"))
        self.shape = (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim)

    def __call__(
        self,
        x: Array,
        rope: tuple[Array, Array],
        positions: Array,
        window: int | None,
        kv: KV | None = None,
    ) -> tuple[Array, KV | None]:
        b, s, _ = x.shape
        h, n_kv, d = self.shape
        tap(self, "qkv_proj", x)
        qkv = self.qkv_proj(x)  # [q rows; k rows; v rows], split as transformers does
        q = qkv[..., : h * d].reshape(b, s, h, d)
        k = qkv[..., h * d : (h + n_kv) * d].reshape(b, s, n_kv, d)
        v = qkv[..., (h + n_kv) * d :].reshape(b, s, n_kv, d)
        q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        o, kv = self_attention(q, k, v, positions, window, d**-0.5, kv=kv)
        o = o.reshape(b, s, h * d)
        tap(self, "o_proj", o)
        return self.o_proj(o), kv


class MLP(nnx.Module):
    def __init__(self, cfg: ModelConfig, make: ParamMaker):
        self.gate_up_proj = Linear(make(_GU + ".weight"))
        self.down_proj = Linear(make(_DOWN + ".weight"))
        self.act = cfg.activation

    def __call__(self, x: Array) -> Array:
        tap(self, "gate_up_proj", x)
        gate, up = jnp.split(self.gate_up_proj(x), 2, axis=-1)  # [gate rows; up rows]
        h = up * activation(self.act, gate)
        tap(self, "down_proj", h)
        return self.down_proj(h)


class Model(DecoderLM):
    """``Phi3ForCausalLM``: ``model.*`` and an ``lm_head`` (untied in the Phi-3 releases)."""

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs | None = None):
        make = ParamMaker(cfg, table(cfg), rngs)
        self.config = cfg
        self.model = Body(
            Embedding(make("model.embed_tokens.weight")),
            [
                PreNormLayer(cfg, make, w, Attention(cfg, make), MLP(cfg, make))
                for w in windows(cfg)
            ],
            rms_norm(cfg, make, "model.norm.weight"),
        )
        self.lm_head = lm_head(cfg, make)
