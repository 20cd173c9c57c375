"""The one decoder-only causal LM every family parametrises, and the sublayers they share.

Each family's ``Model`` is a :class:`DecoderLM` whose ``__init__`` writes out its body under
the HF names (``self.model = Body(...)`` with ``embed_tokens``/``layers``/``norm``, or gpt2's
and bloom's ``self.transformer`` with ``wte``/``h``/``ln_f``) and ``lm_head``; where it
differs it overrides :meth:`~DecoderLM.parts` (which body attributes the pass reads),
:meth:`~DecoderLM.embed` (bloom's embedding LayerNorm, gpt2's learned positions) or
:meth:`~DecoderLM.position_inputs` (RoPE tables, gemma's local and global tables, bloom's
ALiBi bias, nothing for gpt2). The pass itself (embed, the layers through
:func:`run_layers` or over a KV cache, the final norm) lives only here, so
:meth:`~DecoderLM.features` and :meth:`~DecoderLM.forward_cached` cannot drift apart between
families. Sublayers :func:`~jaxregion.models.nn.tap` their linear maps' inputs and layers
their output (the residual stream) for :func:`~jaxregion.models.intermediates`.
"""

from __future__ import annotations

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
from jaxregion.models.nn import Embedding, Linear, ParamMaker, RMSNorm, tap
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
    """Separate ``q/k/v/o_proj`` (biases where the table has them), optional q/k norms
    (``q_norm``/``k_norm``: qwen3's RMSNorm, gemma3's ``(1 + w)``, cohere's LayerNorm, per
    head; olmo2's over all heads at once before the split: ``qk_norm_across_heads``),
    RoPE (cohere's interleaved when ``cfg.rope_interleaved``), the scale
    ``query_pre_attn_scalar**-0.5`` (default ``head_dim``) and gemma2's score soft-cap."""

    def __init__(
        self,
        cfg: ModelConfig,
        make: ParamMaker,
        q_norm: nnx.Module | None = None,
        k_norm: nnx.Module | None = None,
        qk_norm_across_heads: bool = False,
    ):
        a = _L + "self_attn."
        self.q_proj = Linear(make(a + "q_proj.weight"), make.optional(a + "q_proj.bias"))
        self.k_proj = Linear(make(a + "k_proj.weight"), make.optional(a + "k_proj.bias"))
        self.v_proj = Linear(make(a + "v_proj.weight"), make.optional(a + "v_proj.bias"))
        self.o_proj = Linear(make(a + "o_proj.weight"), make.optional(a + "o_proj.bias"))
        self.q_norm = q_norm
        self.k_norm = k_norm
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
        kv: KV | None = None,
    ) -> tuple[Array, KV | None]:
        b, s, _ = x.shape
        h, n_kv, d = self.shape
        tap(self, "qkv", x)
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
        tap(self, "o_proj", o)
        return self.o_proj(o), kv


class GatedMLP(nnx.Module):
    """``down(act(gate(x)) * up(x))`` with ``mlp.gate_proj/up_proj/down_proj`` (biases
    where the table has them; ``prefix``: another gated MLP of the layer)."""

    def __init__(self, cfg: ModelConfig, make: ParamMaker, prefix: str = "mlp."):
        m = _L + prefix
        self.gate_proj = Linear(make(m + "gate_proj.weight"), make.optional(m + "gate_proj.bias"))
        self.up_proj = Linear(make(m + "up_proj.weight"), make.optional(m + "up_proj.bias"))
        self.down_proj = Linear(make(m + "down_proj.weight"), make.optional(m + "down_proj.bias"))
        self.act = cfg.activation

    def __call__(self, x: Array) -> Array:
        tap(self, "gate_up", x)
        h = activation(self.act, self.gate_proj(x)) * self.up_proj(x)
        tap(self, "down_proj", h)
        return self.down_proj(h)


def rms_norm(cfg: ModelConfig, make: ParamMaker, name: str) -> RMSNorm:
    """The RMSNorm of table entry ``name`` (``(1 + w)`` when ``cfg.norm_plus_one``)."""
    return RMSNorm(make(name), cfg.norm_eps, cfg.norm_plus_one)


class PreNormLayer(nnx.Module):
    """``x + self_attn(input_layernorm(x))``, then ``x + mlp(post_attention_layernorm(x))``
    (llama, phi3, the MoE families): the family builds ``self_attn`` and ``mlp``."""

    def __init__(
        self,
        cfg: ModelConfig,
        make: ParamMaker,
        window: int | None,
        self_attn: nnx.Module,
        mlp: nnx.Module,
    ):
        self.input_layernorm = rms_norm(cfg, make, _L + "input_layernorm.weight")
        self.self_attn = self_attn
        self.post_attention_layernorm = rms_norm(cfg, make, _L + "post_attention_layernorm.weight")
        self.mlp = mlp
        self.window = window

    def __call__(
        self, x: Array, rope: tuple[Array, Array], positions: Array, kv: KV | None = None
    ) -> tuple[Array, KV | None]:
        a, kv = self.self_attn(self.input_layernorm(x), rope, positions, self.window, kv)
        x = x + a
        x = x + self.mlp(self.post_attention_layernorm(x))
        tap(self, "output", x)
        return x, kv


def windows(cfg: ModelConfig) -> tuple[int | None, ...]:
    """Each layer's sliding window (None: global attention)."""
    return cfg.sliding_windows or (None,) * cfg.num_layers


class Body(nnx.Module):
    """``model.embed_tokens``, ``model.layers`` and the final ``model.norm``."""

    def __init__(self, embed_tokens: Embedding, layers: list[nnx.Module], norm: nnx.Module):
        self.embed_tokens = embed_tokens
        self.layers = nnx.List(layers)
        self.norm = norm


def lm_head(cfg: ModelConfig, make: ParamMaker) -> Linear | None:
    """The untied output head, or None when the head is the token embedding."""
    return None if cfg.tie_embeddings else Linear(make("lm_head.weight"))


class DecoderLM(CausalLM):
    """The pass every family shares over its body (see :meth:`parts`) and ``lm_head``.

    Every layer is called ``layer(x, *position_inputs, positions, kv)`` and returns
    ``(x, kv)``."""

    lm_head: Linear | None

    # --- the hooks a family may override ------------------------------------------------
    def parts(self) -> tuple[Embedding, nnx.Module, nnx.Module]:
        """``(token embedding, layers, final norm)`` of the body: here ``model.*``."""
        return self.model.embed_tokens, self.model.layers, self.model.norm

    def embed(self, tokens: Array, positions: Array) -> Array:
        """Token embeddings in the weights' dtype; gemma's scaled by ``sqrt(hidden)``."""
        cfg = self.config
        x = self.parts()[0](tokens).astype(self._dtype())
        if cfg.scale_embeddings:
            x = x * jnp.asarray(cfg.hidden_size**0.5, dtype=self._dtype())
        return x

    def position_inputs(self, positions: Array, cache: list[KV] | None) -> tuple:
        """What every layer gets before ``positions``: here the RoPE ``(cos, sin)`` tables.
        ``cache`` is the KV cache when decoding (its key positions span the past too)."""
        return (rope_tables(self.config, positions, self._dtype()),)

    # --- shared --------------------------------------------------------------------------
    def _dtype(self) -> jnp.dtype:
        """The activations' dtype: the token embedding's."""
        return self.parts()[0].weight.dtype

    def unembedding(self) -> Array:
        w = self.parts()[0] if self.lm_head is None else self.lm_head
        return w.weight[...]

    def features(self, tokens: Array, positions: Array | None = None, remat: bool = False) -> Array:
        x, ctx = self.layer_inputs(tokens, positions)

        def step(layer: nnx.Module, h: Array) -> Array:
            return layer(h, *ctx)[0]

        return self.final_norm(run_layers(self.parts()[1], x, step, remat))

    def layer_inputs(self, tokens: Array, positions: Array | None = None) -> tuple[Array, tuple]:
        pos = jnp.arange(tokens.shape[1]) if positions is None else positions
        return self.embed(tokens, pos), (*self.position_inputs(pos, None), pos)

    def forward_cached(
        self, tokens: Array, positions: Array, cache: list[KV]
    ) -> tuple[Array, list[KV]]:
        x = self.embed(tokens, positions)
        ctx = self.position_inputs(positions, cache)
        _, layers, final_norm = self.parts()
        out = []
        for layer, kv in zip(layers, cache):
            x, kv = layer(x, *ctx, positions, kv)
            out.append(kv)
        return final_norm(x), out
