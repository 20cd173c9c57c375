"""How a GGUF file (llama.cpp's format) maps onto a family's table: names, layouts, config keys.

Each family file declares ``GGUF``: one :class:`GgufArch` per GGUF architecture it reads.
Names are templates on both sides (``{i}`` = layer index), so a GGUF tensor name becomes
an HF name of the family's table by data, never by a pattern. ``transforms`` name the layout
changes llama.cpp made on the way in (undone by :mod:`jaxregion.io.gguf_import`):

* ``minus_one``: llama.cpp stores Gemma's ``(1 + w)`` RMSNorm weights as ``1 + w``;
* ``rope_q`` / ``rope_k``: llama.cpp permutes Llama's q/k rows for its RoPE layout
  (``k`` over the kv heads);
* ``transpose``: GPT-2's Conv1D weights are stored as ``[out, in]``.

``config`` maps config.json keys to GGUF metadata keys (without the ``{arch}.`` prefix),
as transformers' GGUF loader reads them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from jaxregion.models.decoder import LAYER

TRANSFORMS = ("minus_one", "rope_q", "rope_k", "transpose")
_B = "blk.{i}."


@dataclass(frozen=True)
class GgufArch:
    """One GGUF ``general.architecture`` read as one HF ``model_type``."""

    arch: str
    model_type: str
    architecture: str  # the transformers class config.json names
    names: Mapping[str, str]  # HF name template -> GGUF name template
    config: Mapping[str, str]  # config.json key -> GGUF metadata key (after "{arch}.")
    transforms: Mapping[str, str] = field(default_factory=dict)  # GGUF template -> transform
    defaults: Mapping[str, object] = field(default_factory=dict)  # config.json keys GGUF lacks

    @property
    def head(self) -> str | None:
        """The GGUF name of an untied output head (its absence means tied embeddings)."""
        return self.names.get("lm_head.weight")

    def __post_init__(self) -> None:
        bad = set(self.transforms.values()) - set(TRANSFORMS)
        unknown = set(self.transforms) - set(self.names.values())
        if bad or unknown:
            raise ValueError(f"GGUF {self.arch}: unknown transforms {bad} or names {unknown}")


# config.json key -> GGUF key, shared by the Llama-style decoders
DECODER_CONFIG = {
    "hidden_size": "embedding_length",
    "intermediate_size": "feed_forward_length",
    "num_hidden_layers": "block_count",
    "num_attention_heads": "attention.head_count",
    "num_key_value_heads": "attention.head_count_kv",
    "max_position_embeddings": "context_length",
    "rms_norm_eps": "attention.layer_norm_rms_epsilon",
    "rope_theta": "rope.freq_base",
    "vocab_size": "vocab_size",
}

# HF -> GGUF names of the embedding, the final norm and the untied head
EDGE_NAMES = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}


def decoder_names(biases: bool = False, qk_norm: bool = False, head: bool = True) -> dict[str, str]:
    """HF -> GGUF names of a Llama-style decoder (``head``: an untied output matrix may be
    stored; gemma and gemma2 GGUF files always tie it)."""
    parts = {
        "input_layernorm": "attn_norm",
        "self_attn.q_proj": "attn_q",
        "self_attn.k_proj": "attn_k",
        "self_attn.v_proj": "attn_v",
        "self_attn.o_proj": "attn_output",
        "post_attention_layernorm": "ffn_norm",
        "mlp.gate_proj": "ffn_gate",
        "mlp.up_proj": "ffn_up",
        "mlp.down_proj": "ffn_down",
    }
    out = {LAYER + hf + ".weight": _B + g + ".weight" for hf, g in parts.items()}
    if biases:
        out.update({LAYER + f"self_attn.{p}_proj.bias": _B + f"attn_{p}.bias" for p in "qkv"})
    if qk_norm:
        out[LAYER + "self_attn.q_norm.weight"] = _B + "attn_q_norm.weight"
        out[LAYER + "self_attn.k_norm.weight"] = _B + "attn_k_norm.weight"
    edges = {k: v for k, v in EDGE_NAMES.items() if head or k != "lm_head.weight"}
    return {**edges, **out}


def sandwich_names(qk_norm: bool = False, head: bool = True) -> dict[str, str]:
    """Gemma 2/3: the decoder's names with the pre- and post-sublayer norms."""
    out = decoder_names(qk_norm=qk_norm, head=head)
    out[LAYER + "post_attention_layernorm.weight"] = _B + "post_attention_norm.weight"
    out[LAYER + "pre_feedforward_layernorm.weight"] = _B + "ffn_norm.weight"
    out[LAYER + "post_feedforward_layernorm.weight"] = _B + "post_ffw_norm.weight"
    return out


def norms_minus_one(names: Mapping[str, str]) -> dict[str, str]:
    """``minus_one`` for every norm weight among ``names`` (Gemma's ``1 + w`` storage)."""
    return {g: "minus_one" for g in names.values() if g.endswith("norm.weight")}
