"""The one decoder-only causal LM every family parametrises, and the sublayers they share.

Each family's ``Model`` is a :class:`DecoderLM` naming its body module and that body's
attributes (the HF names: ``model.embed_tokens``/``layers``/``norm`` or
``transformer.wte``/``h``/``ln_f``) and, where it differs, overriding :meth:`embed` (bloom's
embedding LayerNorm, gpt2's learned positions) or :meth:`position_inputs` (RoPE tables,
gemma's local and global tables, bloom's ALiBi bias, nothing for gpt2). The pass itself
(embed, the layers through :func:`run_layers` or over a KV cache, the final norm) and the
untied ``lm_head`` live only here, so :meth:`forward` and :meth:`forward_cached` cannot drift
apart between families.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import jax
import jax.numpy as jnp
from flax import nnx

from jaxregion.models.config import ModelConfig
from jaxregion.models.layers import (
    KV,
    activation,
    apply_rope,
    apply_rope_interleaved,
    rope_tables,
    self_attention,
)
from jaxregion.models.module import CausalLM, run_layers
from jaxregion.models.nn import Embedding, Linear, ParamMaker, RMSNorm
from jaxregion.models.table import Spec, bias, linear

Array = jax.Array
LAYER = "model.layers.{i}."  # the HF names of a ``model.layers`` body's layer
_L = LAYER
_QKV, _O = _L + "self_attn.qkv", _L + "self_attn.o_proj"


def attention_specs() -> dict[str, Spec]:
    """The table entries of :class:`Attention`'s ``q/k/v/o_proj`` weights (wanda taps: the
    attention input and ``o_proj``'s input)."""
    a = _L + "self_attn."
    return {
        a + "q_proj.weight": linear("q", "embed", tap=_QKV),
        a + "k_proj.weight": linear("kv", "embed", tap=_QKV),
        a + "v_proj.weight": linear("kv", "embed", tap=_QKV),
        a + "o_proj.weight": linear("embed", "q", tap=_O),
    }


def attention_biases(qkv: bool, o: bool) -> dict[str, Spec]:
    """The table entries of the ``q/k/v`` biases (with ``qkv``) and ``o_proj``'s (with ``o``)."""
    a = _L + "self_attn."
    t = (
        {a + "q_proj.bias": bias("q"), a + "k_proj.bias": bias("kv"), a + "v_proj.bias": bias("kv")}
        if qkv
        else {}
    )
    return {**t, a + "o_proj.bias": bias("embed")} if o else t


def gated_mlp_specs(
    biases: bool = False, prefix: str = "mlp.", hidden: str = "mlp"
) -> dict[str, Spec]:
    """The table entries of :class:`GatedMLP`'s weights, or with ``biases`` its biases
    (``prefix``/``hidden``: another gated MLP in the layer, as qwen2_moe's shared expert)."""
    m = _L + prefix
    if biases:
        return {
            m + "gate_proj.bias": bias(hidden),
            m + "up_proj.bias": bias(hidden),
            m + "down_proj.bias": bias("embed"),
        }
    return {
        m + "gate_proj.weight": linear(hidden, "embed", tap=m + "gate_up"),
        m + "up_proj.weight": linear(hidden, "embed", tap=m + "gate_up"),
        m + "down_proj.weight": linear(
            "embed", hidden, tap=m + "down_proj", tag="mlp_out" if prefix == "mlp." else None
        ),
    }


class Attention(nnx.Module):
    """Separate ``q/k/v/o_proj`` (biases where the table has them), optional per-head q/k
    norms built by ``qk_norm`` (qwen3's RMSNorm, gemma3's ``(1 + w)``, cohere's LayerNorm;
    olmo2's over all heads at once before the split: ``qk_norm_across_heads``),
    RoPE (cohere's interleaved when ``cfg.rope_interleaved``), the scale
    ``query_pre_attn_scalar**-0.5`` (default ``head_dim``) and gemma2's score soft-cap."""

    def __init__(
        self,
        cfg: ModelConfig,
        make: ParamMaker,
        qk_norm: Callable[[nnx.Param], nnx.Module] | None = None,
        qk_norm_across_heads: bool = False,
    ):
        a = _L + "self_attn."
        for p in ("q_proj", "k_proj", "v_proj", "o_proj"):
            setattr(self, p, Linear(make(a + p + ".weight"), make.optional(a + p + ".bias")))
        self.q_norm = qk_norm(make(a + "q_norm.weight")) if qk_norm else None
        self.k_norm = qk_norm(make(a + "k_norm.weight")) if qk_norm else None
        self.shape = (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim)
        self.scale = (cfg.query_pre_attn_scalar or cfg.head_dim) ** -0.5
        self.softcap = cfg.attn_softcap
        self.interleaved = cfg.rope_interleaved
        self.across_heads = qk_norm_across_heads
        self.clip = cfg.opt("clip_qkv")  # olmoe: q, k, v clamped to [-clip, clip]

    def __call__(
        self,
        x: Array,
        rope: tuple[Array, Array],
        positions: Array,
        window: int | None,
        collect: bool,
        kv: KV | None = None,
    ) -> tuple[Array, dict[str, Array], KV | None]:
        b, s, _ = x.shape
        h, n_kv, d = self.shape
        q, k = self.q_proj(x), self.k_proj(x)
        if self.q_norm is not None and self.across_heads:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = q.reshape(b, s, h, d), k.reshape(b, s, n_kv, d)
        v = self.v_proj(x)
        if self.clip is not None:
            q, k, v = (jnp.clip(t, -self.clip, self.clip) for t in (q, k, v))
        v = v.reshape(b, s, n_kv, d)
        if self.q_norm is not None and not self.across_heads:
            q, k = self.q_norm(q), self.k_norm(k)
        rot = apply_rope_interleaved if self.interleaved else apply_rope
        q, k = rot(q, *rope), rot(k, *rope)
        o, kv = self_attention(q, k, v, positions, window, self.scale, self.softcap, kv)
        o = o.reshape(b, s, h * d)
        aux = {"self_attn.qkv": x, "self_attn.o_proj": o} if collect else {}
        return self.o_proj(o), aux, kv


class GatedMLP(nnx.Module):
    """``down(act(gate(x)) * up(x))`` with ``mlp.gate_proj/up_proj/down_proj`` (biases
    where the table has them; ``prefix``: another gated MLP of the layer)."""

    def __init__(self, cfg: ModelConfig, make: ParamMaker, prefix: str = "mlp."):
        for p in ("gate_proj", "up_proj", "down_proj"):
            w = _L + prefix + p
            setattr(self, p, Linear(make(w + ".weight"), make.optional(w + ".bias")))
        self.act = cfg.activation
        self.prefix = prefix

    def __call__(self, x: Array, collect: bool) -> tuple[Array, dict[str, Array]]:
        h = activation(self.act, self.gate_proj(x)) * self.up_proj(x)
        p = self.prefix
        aux = {p + "gate_up": x, p + "down_proj": h} if collect else {}
        return self.down_proj(h), aux


class PreNormLayer(nnx.Module):
    """``x + attn(norm(x))``, then ``x + mlp(norm(x))`` (llama, phi3): ``attn`` and ``mlp``
    build the family's sublayers from ``(cfg, make)``."""

    def __init__(
        self,
        cfg: ModelConfig,
        make: ParamMaker,
        window: int | None,
        attn: Callable[[ModelConfig, ParamMaker], nnx.Module],
        mlp: Callable[[ModelConfig, ParamMaker], nnx.Module],
    ):
        eps, plus = cfg.norm_eps, cfg.norm_plus_one
        self.input_layernorm = RMSNorm(make(_L + "input_layernorm.weight"), eps, plus)
        self.self_attn = attn(cfg, make)
        self.post_attention_layernorm = RMSNorm(
            make(_L + "post_attention_layernorm.weight"), eps, plus
        )
        self.mlp = mlp(cfg, make)
        self.window = window

    def __call__(
        self,
        x: Array,
        rope: tuple[Array, Array],
        positions: Array,
        collect: bool,
        kv: KV | None = None,
    ) -> tuple[Array, dict[str, Array], KV | None]:
        a, aux, kv = self.self_attn(
            self.input_layernorm(x), rope, positions, self.window, collect, kv
        )
        x = x + a
        m, aux_m = self.mlp(self.post_attention_layernorm(x), collect)
        x = x + m
        return x, ({**aux, **aux_m, "output": x} if collect else {}), kv


class Body(nnx.Module):
    """``model.embed_tokens``, ``model.layers`` (``layer(window)`` per entry of
    ``cfg.sliding_windows``) and the final ``model.norm`` (``norm(weight)``)."""

    def __init__(
        self,
        cfg: ModelConfig,
        make: ParamMaker,
        layer: Callable[[int | None], nnx.Module],
        norm: Callable[[nnx.Param], nnx.Module],
    ):
        windows = cfg.sliding_windows or (None,) * cfg.num_layers
        self.embed_tokens = Embedding(make("model.embed_tokens.weight"))
        self.layers = nnx.List([layer(w) for w in windows])
        self.norm = norm(make("model.norm.weight"))


class DecoderLM(CausalLM):
    """``{PREFIX}.*`` (the body) and an ``lm_head`` only when the embeddings are untied.

    Every layer is called ``layer(x, *position_inputs, positions, collect, kv)`` and returns
    ``(x, intermediates, kv)``."""

    TABLE: ClassVar[Callable[[ModelConfig | None], dict[str, Spec]]]
    BODY: ClassVar[Callable[[ModelConfig, ParamMaker], nnx.Module]]  # ``BODY(cfg, make)``
    PREFIX: ClassVar[str] = "model"  # the body's attribute (and HF name prefix)
    EMBED: ClassVar[str] = "embed_tokens"
    LAYERS: ClassVar[str] = "layers"
    FINAL_NORM: ClassVar[str] = "norm"

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs | None = None):
        make = ParamMaker(cfg, self.TABLE(cfg), rngs)
        self.config = cfg
        setattr(self, self.PREFIX, self.BODY(cfg, make))
        self.lm_head = None if cfg.tie_embeddings else Linear(make("lm_head.weight"))

    # --- the hooks a family may override ------------------------------------------------
    def embed(self, tokens: Array, positions: Array) -> Array:
        """Token embeddings in the weights' dtype; gemma's scaled by ``sqrt(hidden)``."""
        cfg, emb = self.config, self._part(self.EMBED)
        x = emb(tokens).astype(self._dtype())
        if cfg.scale_embeddings:
            x = x * jnp.asarray(cfg.hidden_size**0.5, dtype=self._dtype())
        return x

    def position_inputs(self, positions: Array, cache: list[KV] | None) -> tuple:
        """What every layer gets before ``positions``: here the RoPE ``(cos, sin)`` tables.
        ``cache`` is the KV cache when decoding (its key positions span the past too)."""
        return (rope_tables(self.config, positions, self._dtype()),)

    # --- shared --------------------------------------------------------------------------
    def _part(self, name: str) -> nnx.Module:
        return getattr(getattr(self, self.PREFIX), name)

    def _dtype(self) -> jnp.dtype:
        """The activations' dtype: the token embedding's."""
        return self._part(self.EMBED).weight.dtype

    def unembedding(self) -> Array:
        w = self._part(self.EMBED) if self.lm_head is None else self.lm_head
        return w.weight[...]

    def forward(
        self,
        tokens: Array,
        positions: Array | None = None,
        remat: bool = False,
        collect: bool = False,
    ) -> tuple[Array, dict[str, Array]]:
        pos = jnp.arange(tokens.shape[1]) if positions is None else positions
        x = self.embed(tokens, pos)
        ctx = self.position_inputs(pos, None)
        x, aux = run_layers(
            self._part(self.LAYERS),
            x,
            lambda layer, h: layer(h, *ctx, pos, collect)[:2],
            f"{self.PREFIX}.{self.LAYERS}",
            remat,
            collect,
        )
        return self._part(self.FINAL_NORM)(x), aux

    def forward_cached(
        self, tokens: Array, positions: Array, cache: list[KV]
    ) -> tuple[Array, list[KV]]:
        x = self.embed(tokens, positions)
        ctx = self.position_inputs(positions, cache)
        out = []
        for layer, kv in zip(self._part(self.LAYERS), cache):
            x, _, kv = layer(x, *ctx, positions, False, kv)
            out.append(kv)
        return self._part(self.FINAL_NORM)(x), out
