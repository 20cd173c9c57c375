"""BLOOM: ALiBi instead of positions, a LayerNorm on the word embeddings, LayerNorms with
biases, a fused ``query_key_value`` in HF's head-interleaved layout, bloom's tanh GELU, tied
head. The table below is the single source of every parameter's name, axes and role.

``query_key_value.weight`` is ``[heads * 3 * head_dim, hidden]``: its output axis holds, per
head, that head's query, key and value rows in turn (not all queries, then all keys).
"""

from __future__ import annotations

import jax
from flax import nnx

from jaxregion.models.config import ModelConfig, get_key
from jaxregion.models.decoder import DecoderLM, lm_head
from jaxregion.models.layers import KV, activation, alibi_bias, self_attention
from jaxregion.models.nn import Embedding, LayerNorm, Linear, ParamMaker, tap
from jaxregion.models.table import Spec, bias, linear, norm

Array = jax.Array
MODEL_TYPES = ("bloom",)

_H = "transformer.h.{i}."
RESIDUAL_TAP = _H + "output"  # the residual stream after layer i
_QKV, _DENSE, _UP, _DOWN = (
    _H + "self_attention.query_key_value",
    _H + "self_attention.dense",
    _H + "mlp.dense_h_to_4h",
    _H + "mlp.dense_4h_to_h",
)


def table(cfg: ModelConfig | None) -> dict[str, Spec]:
    """``{HF name template: Spec}`` for ``cfg`` (``None``: every optional entry).

    The fused ``query_key_value`` reads the residual stream on its input axis (1) and writes
    ``qkv`` features; wanda's tap for it is the normed input every head's q, k and v share.
    The embedding LayerNorm sits on the residual stream before layer 0 (no layer index)."""
    t = {
        "transformer.word_embeddings.weight": Spec(("vocab", "embed"), "embedding"),
        "transformer.word_embeddings_layernorm.weight": norm(),
        "transformer.word_embeddings_layernorm.bias": norm(),
        _H + "input_layernorm.weight": norm(tag="attn_norm"),
        _H + "input_layernorm.bias": norm(),
        _H + "self_attention.query_key_value.weight": linear("qkv", "embed", tap=_QKV),
        _H + "self_attention.query_key_value.bias": bias("qkv"),
        _H + "self_attention.dense.weight": linear("embed", "q", tap=_DENSE),
        _H + "self_attention.dense.bias": bias("embed"),
        _H + "post_attention_layernorm.weight": norm(),
        _H + "post_attention_layernorm.bias": norm(),
        _H + "mlp.dense_h_to_4h.weight": linear("mlp", "embed", tap=_UP),
        _H + "mlp.dense_h_to_4h.bias": bias("mlp"),
        _H + "mlp.dense_4h_to_h.weight": linear("embed", "mlp", tap=_DOWN, tag="mlp_out"),
        _H + "mlp.dense_4h_to_h.bias": bias("embed"),
        "transformer.ln_f.weight": norm(),
        "transformer.ln_f.bias": norm(),
    }
    if cfg is None or not cfg.tie_embeddings:
        t["lm_head.weight"] = Spec(("vocab", "embed"), "head")
    return t


def canonical_name(key: str) -> str:
    """Hub checkpoints (``bigscience/bloom-*``) store BloomModel's names, without
    ``transformer.``."""
    return key if key.startswith(("transformer.", "lm_head.")) else "transformer." + key


def config_from_hf(d: dict, source: str) -> ModelConfig:
    """BLOOM's config.json has no ``max_position_embeddings`` (ALiBi has no position
    table): the limit the CLI checks ``--seq-len`` against is ``seq_length`` when given,
    else BLOOM's training length, 2048."""
    hidden = int(get_key(d, "n_embed", "hidden_size"))  # n_embed wins, as in transformers
    heads = int(get_key(d, "n_head", "num_attention_heads"))
    layers = int(get_key(d, "n_layer", "num_hidden_layers"))
    return ModelConfig(
        model_type="bloom",
        vocab_size=int(d["vocab_size"]),
        hidden_size=hidden,
        intermediate_size=4 * hidden,
        num_layers=layers,
        num_heads=heads,
        num_kv_heads=heads,
        head_dim=hidden // heads,
        max_position_embeddings=int(d.get("seq_length") or d.get("n_positions") or 2048),
        norm_eps=float(d.get("layer_norm_epsilon", 1e-5)),
        activation="bloom_gelu",
        tie_embeddings=bool(d.get("tie_word_embeddings", True)),
        qkv_bias=True,
        o_bias=True,
        mlp_bias=True,
        sliding_windows=(None,) * layers,
        residual_from_norm=bool(d.get("apply_residual_connection_post_layernorm", False)),
        bos_token_id=d.get("bos_token_id"),
        eos_token_id=d.get("eos_token_id"),
        hf_config=dict(d),
    )


# --- modules (attribute paths = HF names) --------------------------------------------------
def _ln(make: ParamMaker, name: str, eps: float) -> LayerNorm:
    return LayerNorm(make(name + ".weight"), make(name + ".bias"), eps)


def _linear(make: ParamMaker, name: str) -> Linear:
    return Linear(make(name + ".weight"), make(name + ".bias"))


class Attention(nnx.Module):
    def __init__(self, cfg: ModelConfig, make: ParamMaker):
        self.query_key_value = _linear(make, _QKV)
        self.dense = _linear(make, _DENSE)
        self.heads = (cfg.num_heads, cfg.head_dim)

    def __call__(
        self, x: Array, alibi: Array, positions: Array, kv: KV | None = None
    ) -> tuple[Array, KV | None]:
        b, s, _ = x.shape
        h, d = self.heads
        tap(self, "query_key_value", x)
        qkv = self.query_key_value(x).reshape(b, s, h, 3, d)  # head-interleaved
        q, k, v = qkv[..., 0, :], qkv[..., 1, :], qkv[..., 2, :]
        o, kv = self_attention(q, k, v, positions, None, d**-0.5, kv=kv, bias=alibi)
        o = o.reshape(b, s, h * d)
        tap(self, "dense", o)
        return self.dense(o), kv


class MLP(nnx.Module):
    def __init__(self, cfg: ModelConfig, make: ParamMaker):
        self.dense_h_to_4h = _linear(make, _UP)
        self.dense_4h_to_h = _linear(make, _DOWN)
        self.act = cfg.activation

    def __call__(self, x: Array) -> Array:
        tap(self, "dense_h_to_4h", x)
        h = activation(self.act, self.dense_h_to_4h(x))
        tap(self, "dense_4h_to_h", h)
        return self.dense_4h_to_h(h)


class Block(nnx.Module):
    """Pre-norm block; with ``residual_from_norm`` (bloom's
    ``apply_residual_connection_post_layernorm``) the residual is the normed input."""

    def __init__(self, cfg: ModelConfig, make: ParamMaker):
        self.input_layernorm = _ln(make, _H + "input_layernorm", cfg.norm_eps)
        self.self_attention = Attention(cfg, make)
        self.post_attention_layernorm = _ln(make, _H + "post_attention_layernorm", cfg.norm_eps)
        self.mlp = MLP(cfg, make)
        self.residual_from_norm = cfg.residual_from_norm

    def __call__(
        self, x: Array, alibi: Array, positions: Array, kv: KV | None = None
    ) -> tuple[Array, KV | None]:
        h = self.input_layernorm(x)
        a, kv = self.self_attention(h, alibi, positions, kv)
        x = (h if self.residual_from_norm else x) + a
        h = self.post_attention_layernorm(x)
        x = (h if self.residual_from_norm else x) + self.mlp(h)
        tap(self, "output", x)
        return x, kv


class BloomModel(nnx.Module):
    def __init__(self, cfg: ModelConfig, make: ParamMaker):
        self.word_embeddings = Embedding(make("transformer.word_embeddings.weight"))
        self.word_embeddings_layernorm = _ln(
            make, "transformer.word_embeddings_layernorm", cfg.norm_eps
        )
        self.h = nnx.List([Block(cfg, make) for _ in range(cfg.num_layers)])
        self.ln_f = _ln(make, "transformer.ln_f", cfg.norm_eps)


class Model(DecoderLM):
    """``BloomForCausalLM``: ``transformer.*`` and an ``lm_head`` only when untied."""

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs | None = None):
        make = ParamMaker(cfg, table(cfg), rngs)
        self.config = cfg
        self.transformer = BloomModel(cfg, make)
        self.lm_head = lm_head(cfg, make)

    def parts(self) -> tuple[Embedding, nnx.Module, nnx.Module]:
        t = self.transformer
        return t.word_embeddings, t.h, t.ln_f

    def embed(self, tokens: Array, positions: Array) -> Array:
        """The token embeddings through bloom's embedding LayerNorm."""
        return self.transformer.word_embeddings_layernorm(super().embed(tokens, positions))

    def position_inputs(self, positions: Array, cache: list[KV] | None) -> tuple[Array]:
        """The ALiBi bias over the keys' positions (the cache's, past ones included)."""
        keys = positions if cache is None else cache[0].key_positions()
        return (alibi_bias(self.config.num_heads, keys, self._dtype()),)
