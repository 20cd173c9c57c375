"""GPT-2: learned positions, LayerNorm, fused ``c_attn`` Conv1D (stored ``[in, out]``), tied
head. The table below is the single source of every parameter's name, axes and role."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxregion.models.config import ModelConfig, activation_name
from jaxregion.models.decoder import DecoderLM, lm_head
from jaxregion.models.gguf_table import GgufArch
from jaxregion.models.layers import KV, activation, self_attention
from jaxregion.models.nn import Conv1D, Embedding, LayerNorm, ParamMaker, tap
from jaxregion.models.table import Spec, bias, conv1d, norm

Array = jax.Array
MODEL_TYPES = ("gpt2",)

_H = "transformer.h.{i}."
RESIDUAL_TAP = _H + "output"
SHARDING_RULES: dict[str, str | None] = {"pos": None}  # learned positions: small, replicated
# Checkpoint keys that are buffers, not parameters: skipped when loading.
_BUFFERS = (".attn.bias", ".attn.masked_bias")


def table(cfg: ModelConfig | None) -> dict[str, Spec]:
    """``{HF name template: Spec}`` for ``cfg`` (``None``: every optional entry)."""
    t = {
        "transformer.wte.weight": Spec(("vocab", "embed"), "embedding"),
        "transformer.wpe.weight": Spec(("pos", "embed"), "position"),
        _H + "ln_1.weight": norm(tag="attn_norm"),
        _H + "ln_1.bias": norm(),
        _H + "attn.c_attn.weight": conv1d("embed", "qkv", tap=_H + "attn.c_attn"),
        _H + "attn.c_attn.bias": bias("qkv"),
        _H + "attn.c_proj.weight": conv1d("q", "embed", tap=_H + "attn.c_proj"),
        _H + "attn.c_proj.bias": bias("embed"),
        _H + "ln_2.weight": norm(),
        _H + "ln_2.bias": norm(),
        _H + "mlp.c_fc.weight": conv1d("embed", "mlp", tap=_H + "mlp.c_fc"),
        _H + "mlp.c_fc.bias": bias("mlp"),
        _H + "mlp.c_proj.weight": conv1d("mlp", "embed", tap=_H + "mlp.c_proj", tag="mlp_out"),
        _H + "mlp.c_proj.bias": bias("embed"),
        "transformer.ln_f.weight": norm(),
        "transformer.ln_f.bias": norm(),
    }
    if cfg is None or not cfg.tie_embeddings:
        t["lm_head.weight"] = Spec(("vocab", "embed"), "head")
    return t


_GGUF_NAMES = {
    "transformer.wte.weight": "token_embd.weight",
    "transformer.wpe.weight": "position_embd.weight",
    **{
        _H + hf + "." + p: "blk.{i}." + g + "." + p
        for hf, g in (
            ("ln_1", "attn_norm"),
            ("attn.c_attn", "attn_qkv"),
            ("attn.c_proj", "attn_output"),
            ("ln_2", "ffn_norm"),
            ("mlp.c_fc", "ffn_up"),
            ("mlp.c_proj", "ffn_down"),
        )
        for p in ("weight", "bias")
    },
    "transformer.ln_f.weight": "output_norm.weight",
    "transformer.ln_f.bias": "output_norm.bias",
    "lm_head.weight": "output.weight",
}
GGUF = (
    GgufArch(
        "gpt2",
        "gpt2",
        "GPT2LMHeadModel",
        _GGUF_NAMES,
        {
            "n_layer": "block_count",
            "n_positions": "context_length",
            "n_embd": "embedding_length",
            "n_inner": "feed_forward_length",
            "n_head": "attention.head_count",
            "layer_norm_epsilon": "attention.layer_norm_epsilon",
            "vocab_size": "vocab_size",
        },
        transforms={
            "blk.{i}." + g + ".weight": "transpose"
            for g in ("attn_qkv", "attn_output", "ffn_up", "ffn_down")
        },
    ),
)


def canonical_name(key: str) -> str | None:
    """Hub checkpoints store GPT-2's names without ``transformer.``; buffers are skipped."""
    if key.endswith(_BUFFERS):
        return None
    return key if key.startswith(("transformer.", "lm_head.")) else "transformer." + key


def config_from_hf(d: dict, source: str) -> ModelConfig:
    hidden = int(d["n_embd"])
    heads = int(d["n_head"])
    return ModelConfig(
        model_type="gpt2",
        vocab_size=int(d["vocab_size"]),
        hidden_size=hidden,
        intermediate_size=int(d.get("n_inner") or 4 * hidden),
        num_layers=int(d["n_layer"]),
        num_heads=heads,
        num_kv_heads=heads,
        head_dim=hidden // heads,
        max_position_embeddings=int(d["n_positions"]),
        norm_eps=float(d.get("layer_norm_epsilon", 1e-5)),
        activation=activation_name(d.get("activation_function", "gelu_new"), source),
        tie_embeddings=bool(d.get("tie_word_embeddings", True)),
        qkv_bias=True,
        o_bias=True,
        mlp_bias=True,
        attn_scale_by_layer=bool(d.get("scale_attn_by_inverse_layer_idx", False)),
        sliding_windows=(None,) * int(d["n_layer"]),
        bos_token_id=d.get("bos_token_id"),
        eos_token_id=d.get("eos_token_id"),
        hf_config=dict(d),
    )


# --- modules (attribute paths = HF names) --------------------------------------------------
class Attention(nnx.Module):
    def __init__(self, cfg: ModelConfig, make: ParamMaker, scale: float):
        self.c_attn = Conv1D(make(_H + "attn.c_attn.weight"), make(_H + "attn.c_attn.bias"))
        self.c_proj = Conv1D(make(_H + "attn.c_proj.weight"), make(_H + "attn.c_proj.bias"))
        self.heads = (cfg.num_heads, cfg.head_dim)
        self.scale = scale

    def __call__(self, x: Array, positions: Array, kv: KV | None = None) -> tuple[Array, KV | None]:
        b, s, d = x.shape
        tap(self, "c_attn", x)
        q, k, v = (t.reshape(b, s, *self.heads) for t in jnp.split(self.c_attn(x), 3, axis=-1))
        o, kv = self_attention(q, k, v, positions, None, self.scale, kv=kv)
        o = o.reshape(b, s, d)
        tap(self, "c_proj", o)
        return self.c_proj(o), kv


class MLP(nnx.Module):
    def __init__(self, cfg: ModelConfig, make: ParamMaker):
        self.c_fc = Conv1D(make(_H + "mlp.c_fc.weight"), make(_H + "mlp.c_fc.bias"))
        self.c_proj = Conv1D(make(_H + "mlp.c_proj.weight"), make(_H + "mlp.c_proj.bias"))
        self.act = cfg.activation

    def __call__(self, x: Array) -> Array:
        tap(self, "c_fc", x)
        h = activation(self.act, self.c_fc(x))
        tap(self, "c_proj", h)
        return self.c_proj(h)


class Block(nnx.Module):
    def __init__(self, cfg: ModelConfig, make: ParamMaker, i: int):
        eps = cfg.norm_eps
        scale = cfg.head_dim**-0.5
        if cfg.attn_scale_by_layer:
            scale /= float(i + 1)
        self.ln_1 = LayerNorm(make(_H + "ln_1.weight"), make(_H + "ln_1.bias"), eps)
        self.attn = Attention(cfg, make, scale)
        self.ln_2 = LayerNorm(make(_H + "ln_2.weight"), make(_H + "ln_2.bias"), eps)
        self.mlp = MLP(cfg, make)

    def __call__(self, x: Array, positions: Array, kv: KV | None = None) -> tuple[Array, KV | None]:
        a, kv = self.attn(self.ln_1(x), positions, kv)
        x = x + a
        x = x + self.mlp(self.ln_2(x))
        tap(self, "output", x)
        return x, kv


class Transformer(nnx.Module):
    def __init__(self, cfg: ModelConfig, make: ParamMaker):
        self.wte = Embedding(make("transformer.wte.weight"))
        self.wpe = Embedding(make("transformer.wpe.weight"))
        self.h = nnx.List([Block(cfg, make, i) for i in range(cfg.num_layers)])
        self.ln_f = LayerNorm(
            make("transformer.ln_f.weight"), make("transformer.ln_f.bias"), cfg.norm_eps
        )


class Model(DecoderLM):
    """``GPT2LMHeadModel``: ``transformer.*`` and an ``lm_head`` only when untied."""

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs | None = None):
        make = ParamMaker(cfg, table(cfg), rngs)
        self.config = cfg
        self.transformer = Transformer(cfg, make)
        self.lm_head = lm_head(cfg, make)

    def parts(self) -> tuple[Embedding, nnx.Module, nnx.Module]:
        t = self.transformer
        return t.wte, t.h, t.ln_f

    def embed(self, tokens: Array, positions: Array) -> Array:
        """Token plus learned position embeddings."""
        t = self.transformer
        return (t.wte(tokens) + t.wpe(positions)).astype(self._dtype())

    def position_inputs(self, positions: Array, cache: list[KV] | None) -> tuple[()]:
        """Nothing: the positions are in the embeddings."""
        return ()
