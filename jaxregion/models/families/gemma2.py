"""Gemma 2: sandwich norms, soft-capped attention scores and logits, alternating sliding and
global layers, ``query_pre_attn_scalar`` attention scale, ``(1 + w)`` RMSNorm, scaled
embeddings. The table below is the single source of every parameter's name, axes and role.

Gemma 3's text model is this decoder plus q/k norms and a second RoPE base for its sliding
layers: ``families/gemma3_text.py`` reuses the modules here with its own table.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
from flax import nnx

from jaxregion.errors import UserError
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
    rms_norm,
    windows,
)
from jaxregion.models.gguf_table import DECODER_CONFIG, GgufArch, norms_minus_one, sandwich_names
from jaxregion.models.layers import KV, rope_tables
from jaxregion.models.nn import Embedding, ParamMaker, tap
from jaxregion.models.table import Spec, norm

Array = jax.Array
MODEL_TYPES = ("gemma2",)

_L = LAYER
RESIDUAL_TAP = _L + "output"  # the residual stream after layer i


def table(cfg: ModelConfig | None) -> dict[str, Spec]:
    """``{HF name template: Spec}`` for ``cfg`` (``None``: every optional entry).

    The post-norms (``post_attention_layernorm``, ``post_feedforward_layernorm``) scale the
    sublayer outputs just before they join the residual stream: residual-axis norms."""
    t = {
        "model.embed_tokens.weight": Spec(("vocab", "embed"), "embedding"),
        _L + "input_layernorm.weight": norm(tag="attn_norm"),
        **attention_specs(),
        _L + "post_attention_layernorm.weight": norm(),
        _L + "pre_feedforward_layernorm.weight": norm(),
        **gated_mlp_specs(),
        _L + "post_feedforward_layernorm.weight": norm(),
        "model.norm.weight": norm(),
    }
    if cfg is None or cfg.qkv_bias:  # attention_bias: q, k, v and o alike
        t.update(attention_biases(True, True))
    if cfg is None or not cfg.tie_embeddings:
        t["lm_head.weight"] = Spec(("vocab", "embed"), "head")
    return t


GGUF_CONFIG = {
    **DECODER_CONFIG,
    "head_dim": "attention.key_length",
    "sliding_window": "attention.sliding_window",
}
_NAMES = sandwich_names(head=False)
GGUF = (
    GgufArch(
        "gemma2",
        "gemma2",
        "Gemma2ForCausalLM",
        _NAMES,
        {
            **GGUF_CONFIG,
            "attn_logit_softcapping": "attn_logit_softcapping",
            "final_logit_softcapping": "final_logit_softcapping",
        },
        transforms=norms_minus_one(_NAMES),
    ),
)


def sliding_windows(d: dict, source: str, default_pattern: int) -> tuple[int | None, ...]:
    """Per layer, the window of a ``sliding_attention`` layer and None for a global one.

    ``layer_types`` when config.json has it; else every ``default_pattern``-th layer is
    global (gemma2: 2, gemma3: ``sliding_window_pattern``, default 6), as transformers does."""
    layers = int(d["num_hidden_layers"])
    pattern = int(d.get("sliding_window_pattern") or default_pattern)
    types = d.get("layer_types") or [
        "sliding_attention" if (i + 1) % pattern else "full_attention" for i in range(layers)
    ]
    if len(types) != layers or not set(types) <= {"sliding_attention", "full_attention"}:
        raise UserError(
            f"{source}: layer_types must list 'sliding_attention' or "
            f"'full_attention' for each of the {layers} layers; got {types!r}"
        )
    window = d.get("sliding_window")
    return tuple(int(window) if t == "sliding_attention" and window else None for t in types)


def common_config(d: dict, source: str, **kw) -> ModelConfig:
    """The keys gemma2 and gemma3_text share; ``kw`` sets the rest."""
    if d.get("use_bidirectional_attention"):
        raise UserError(
            f"{source}: use_bidirectional_attention=true (an encoder) is not "
            "supported; use a causal Gemma checkpoint"
        )
    hidden = int(d["hidden_size"])
    heads = int(d["num_attention_heads"])
    head_dim = int(d.get("head_dim") or hidden // heads)
    return ModelConfig(
        model_type=d["model_type"],
        vocab_size=int(d["vocab_size"]),
        hidden_size=hidden,
        intermediate_size=int(d["intermediate_size"]),
        num_layers=int(d["num_hidden_layers"]),
        num_heads=heads,
        num_kv_heads=int(d.get("num_key_value_heads") or heads),
        head_dim=head_dim,
        max_position_embeddings=int(d.get("max_position_embeddings", 8192)),
        norm_eps=float(get_key(d, "rms_norm_eps", default=1e-6)),
        activation=activation_name(
            get_key(d, "hidden_activation", "hidden_act", default="gelu_pytorch_tanh"), source
        ),
        tie_embeddings=bool(d.get("tie_word_embeddings", True)),
        qkv_bias=bool(d.get("attention_bias")),
        o_bias=bool(d.get("attention_bias")),
        norm_plus_one=True,
        scale_embeddings=True,
        query_pre_attn_scalar=float(get_key(d, "query_pre_attn_scalar", default=head_dim)),
        bos_token_id=d.get("bos_token_id"),
        eos_token_id=d.get("eos_token_id"),
        hf_config=dict(d),
        **kw,
    )


def config_from_hf(d: dict, source: str) -> ModelConfig:
    theta, scaling = rope_from_hf(d)
    cap = d.get("final_logit_softcapping", 30.0)
    attn_cap = d.get("attn_logit_softcapping", 50.0)
    return common_config(
        d,
        source,
        rope_theta=theta,
        rope_scaling=scaling,
        sliding_windows=sliding_windows(d, source, 2),
        logit_softcap=None if cap is None else float(cap),
        attn_softcap=None if attn_cap is None else float(attn_cap),
    )


# --- modules (attribute paths = HF names) --------------------------------------------------


class DecoderLayer(nnx.Module):
    """Pre- and post-norm around both sublayers: ``x + post(f(pre(x)))``."""

    def __init__(self, cfg: ModelConfig, make: ParamMaker, window: int | None):
        a = _L + "self_attn."
        qk = make.has(a + "q_norm.weight")  # gemma3: head-sized (1 + w) norms
        self.input_layernorm = rms_norm(cfg, make, _L + "input_layernorm.weight")
        self.self_attn = Attention(
            cfg,
            make,
            q_norm=rms_norm(cfg, make, a + "q_norm.weight") if qk else None,
            k_norm=rms_norm(cfg, make, a + "k_norm.weight") if qk else None,
        )
        self.post_attention_layernorm = rms_norm(cfg, make, _L + "post_attention_layernorm.weight")
        self.pre_feedforward_layernorm = rms_norm(
            cfg, make, _L + "pre_feedforward_layernorm.weight"
        )
        self.mlp = GatedMLP(cfg, make)
        self.post_feedforward_layernorm = rms_norm(
            cfg, make, _L + "post_feedforward_layernorm.weight"
        )
        self.window = window

    def __call__(
        self,
        x: Array,
        ropes: dict[bool, tuple[Array, Array]],
        positions: Array,
        kv: KV | None = None,
    ) -> tuple[Array, KV | None]:
        rope = ropes[self.window is not None]
        a, kv = self.self_attn(self.input_layernorm(x), rope, positions, self.window, kv)
        x = x + self.post_attention_layernorm(a)
        m = self.mlp(self.pre_feedforward_layernorm(x))
        x = x + self.post_feedforward_layernorm(m)
        tap(self, "output", x)
        return x, kv


class Model(DecoderLM):
    """``Gemma2ForCausalLM`` (and, with its table, ``Gemma3ForCausalLM``). The final-logit
    soft-cap is ``cfg.logit_softcap``, applied by the shared head of :class:`CausalLM`."""

    def __init__(
        self,
        cfg: ModelConfig,
        rngs: nnx.Rngs | None = None,
        table: Callable[[ModelConfig | None], dict[str, Spec]] = table,
    ):
        make = ParamMaker(cfg, table(cfg), rngs)
        self.config = cfg
        self.model = Body(
            Embedding(make("model.embed_tokens.weight")),
            [DecoderLayer(cfg, make, w) for w in windows(cfg)],
            rms_norm(cfg, make, "model.norm.weight"),
        )
        self.lm_head = lm_head(cfg, make)

    def position_inputs(
        self, positions: Array, cache: list[KV] | None
    ) -> tuple[dict[bool, tuple[Array, Array]]]:
        """``{sliding?: (cos, sin)}``: gemma3's sliding layers have their own RoPE base."""
        cfg, dtype = self.config, self._dtype()
        glob = rope_tables(cfg, positions, dtype)
        local = glob
        if cfg.rope_local_theta is not None:
            local = rope_tables(
                cfg.replace(rope_theta=cfg.rope_local_theta, rope_scaling=cfg.rope_local_scaling),
                positions,
                dtype,
            )
        return ({False: glob, True: local},)
