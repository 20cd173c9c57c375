"""Model configuration: one frozen dataclass for every supported family, read from config.json."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from jaxregion.errors import UserError

SUPPORTED = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gpt2")


@dataclass(frozen=True)
class ModelConfig:
    """Everything the forward pass needs, normalised across families.

    ``hf_config`` keeps the original config.json dict so export writes it back unchanged.
    """

    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    max_position_embeddings: int
    norm_eps: float
    activation: str  # "silu" | "gelu_tanh" | "gelu"
    tie_embeddings: bool
    rope_theta: float = 10000.0
    rope_scaling: tuple[tuple[str, Any], ...] | None = None
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    qk_norm: bool = False
    norm_plus_one: bool = False  # gemma: (1 + w) * x
    scale_embeddings: bool = False  # gemma: x * sqrt(hidden)
    sliding_windows: tuple[int | None, ...] = ()  # per layer; None = full causal attention
    attn_scale_by_layer: bool = False  # gpt2's scale_attn_by_inverse_layer_idx
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    hf_config: dict = field(default_factory=dict, compare=False, hash=False, repr=False)

    @property
    def family(self) -> str:
        return "gpt2" if self.model_type == "gpt2" else "llama"

    @property
    def q_dim(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.num_kv_heads * self.head_dim

    def replace(self, **kw: Any) -> ModelConfig:
        return dataclasses.replace(self, **kw)

    def inv_freq(self) -> np.ndarray:
        """RoPE inverse frequencies, float32, computed exactly as transformers does."""
        dim = self.head_dim
        exponent = np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / np.float32(dim)
        inv = (1.0 / (np.float32(self.rope_theta) ** exponent)).astype(np.float32)
        scaling = dict(self.rope_scaling or ())
        kind = scaling.get("rope_type", scaling.get("type", "default"))
        if kind in ("default", None):
            return inv
        if kind == "linear":
            return (inv / np.float32(scaling["factor"])).astype(np.float32)
        if kind == "llama3":
            factor = scaling["factor"]
            low, high = scaling["low_freq_factor"], scaling["high_freq_factor"]
            old = scaling["original_max_position_embeddings"]
            low_wl, high_wl = old / low, old / high
            wavelen = 2 * math.pi / inv
            scaled = np.where(wavelen > low_wl, inv / factor, inv).astype(np.float32)
            smooth = (old / wavelen - low) / (high - low)
            smoothed = (1 - smooth) * scaled / factor + smooth * scaled
            medium = ~(wavelen < high_wl) & ~(wavelen > low_wl)
            return np.where(medium, smoothed, scaled).astype(np.float32)
        raise UserError(
            f"rope scaling type {kind!r} is not supported (supported: default, linear, llama3)"
        )


def _get(d: dict, *keys: str, default: Any = None) -> Any:
    for k in keys:
        if d.get(k) is not None:
            return d[k]
    return default


def _rope(d: dict) -> tuple[float, tuple | None]:
    params = d.get("rope_parameters") or {}
    theta = float(_get(params, "rope_theta", default=_get(d, "rope_theta", default=10000.0)))
    scaling = d.get("rope_scaling") or {k: v for k, v in params.items() if k != "rope_theta"}
    kind = scaling.get("rope_type", scaling.get("type", "default")) if scaling else "default"
    if not scaling or kind == "default":
        return theta, None
    return theta, tuple(sorted(scaling.items()))


def _act(name: str, source: str) -> str:
    table = {"silu": "silu", "swish": "silu", "gelu_pytorch_tanh": "gelu_tanh",
             "gelu_new": "gelu_tanh", "gelu_fast": "gelu_tanh", "gelu": "gelu"}
    if name not in table:
        raise UserError(f"{source}: activation {name!r} is not supported ({', '.join(table)})")
    return table[name]


def from_hf_dict(d: dict, source: str = "config.json") -> ModelConfig:
    """A :class:`ModelConfig` from a config.json dict; ``source`` names the file in errors."""
    mt = d.get("model_type")
    if mt not in SUPPORTED:
        raise UserError(
            f"{source}: model_type {mt!r} is not supported; supported: {', '.join(SUPPORTED)}"
        )
    try:
        if mt == "gpt2":
            hidden = int(d["n_embd"])
            heads = int(d["n_head"])
            return ModelConfig(
                model_type=mt, vocab_size=int(d["vocab_size"]), hidden_size=hidden,
                intermediate_size=int(d.get("n_inner") or 4 * hidden),
                num_layers=int(d["n_layer"]), num_heads=heads, num_kv_heads=heads,
                head_dim=hidden // heads, max_position_embeddings=int(d["n_positions"]),
                norm_eps=float(d.get("layer_norm_epsilon", 1e-5)),
                activation=_act(d.get("activation_function", "gelu_new"), source),
                tie_embeddings=bool(d.get("tie_word_embeddings", True)),
                qkv_bias=True, o_bias=True, mlp_bias=True,
                attn_scale_by_layer=bool(d.get("scale_attn_by_inverse_layer_idx", False)),
                sliding_windows=(None,) * int(d["n_layer"]),
                bos_token_id=d.get("bos_token_id"), eos_token_id=d.get("eos_token_id"),
                hf_config=dict(d),
            )
        hidden = int(d["hidden_size"])
        heads = int(d["num_attention_heads"])
        layers = int(d["num_hidden_layers"])
        theta, scaling = _rope(d)
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
        default_tie = mt == "gemma"
        act_name = _get(d, "hidden_activation", "hidden_act", default="silu")
        if mt == "gemma":
            act_name = d.get("hidden_activation") or "gelu_pytorch_tanh"
        return ModelConfig(
            model_type=mt, vocab_size=int(d["vocab_size"]), hidden_size=hidden,
            intermediate_size=int(d["intermediate_size"]), num_layers=layers, num_heads=heads,
            num_kv_heads=int(d.get("num_key_value_heads") or heads),
            head_dim=int(d.get("head_dim") or hidden // heads),
            max_position_embeddings=int(d.get("max_position_embeddings", 2048)),
            norm_eps=float(_get(d, "rms_norm_eps", default=1e-6)),
            activation=_act(act_name, source),
            tie_embeddings=bool(d.get("tie_word_embeddings", default_tie)),
            rope_theta=theta, rope_scaling=scaling,
            qkv_bias=mt == "qwen2" or (mt != "mistral" and bool(d.get("attention_bias"))),
            o_bias=mt not in ("qwen2", "mistral") and bool(d.get("attention_bias")),
            mlp_bias=mt == "llama" and bool(d.get("mlp_bias")),
            qk_norm=mt == "qwen3", norm_plus_one=mt == "gemma", scale_embeddings=mt == "gemma",
            sliding_windows=windows,
            bos_token_id=d.get("bos_token_id"), eos_token_id=d.get("eos_token_id"),
            hf_config=dict(d),
        )
    except KeyError as e:
        raise UserError(f"{source}: required key {e.args[0]!r} is missing") from None
    except (TypeError, ValueError) as e:
        raise UserError(f"{source}: bad value: {e}") from None
