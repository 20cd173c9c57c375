"""Model configuration: one frozen dataclass for every supported family, read from config.json."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from jaxregion.errors import UserError
from jaxregion.safety import excerpt

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


MAX_PARAMS = 10**13  # far above any real checkpoint; refuses absurd configs before allocation


def _count(d: dict, key: str, source: str, default: Any = None, zero: bool = False) -> int:
    """``d[key]`` as a positive int (``zero``: non-negative); a bool, float with a fraction,
    string or out-of-range value is a UserError naming the file and key."""
    v = d[key] if default is None else (d[key] if d.get(key) is not None else default)
    if isinstance(v, float) and v.is_integer() and math.isfinite(v):
        v = int(v)
    if not isinstance(v, int) or isinstance(v, bool) or v < (0 if zero else 1) or v >= 2**31:
        raise UserError(f"{source}: {key} = {excerpt(v)} must be a "
                        f"{'non-negative' if zero else 'positive'} integer below 2**31")
    return v


def _positive(d: dict, key: str, source: str, default: float) -> float:
    v = d.get(key)
    v = default if v is None else v
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
        raise UserError(f"{source}: {key} = {excerpt(v)} must be a positive, finite number")
    return float(v)


def _check_size(source: str, vocab: int, hidden: int, inter: int, layers: int) -> None:
    """Refuse a config whose parameter count is implausible, before anything per layer."""
    est = 2 * vocab * hidden + layers * (4 * hidden * hidden + 3 * hidden * inter)
    if est > MAX_PARAMS:
        raise UserError(f"{source}: the config describes ~{est:.3g} parameters (vocab_size "
                        f"{vocab}, hidden {hidden}, intermediate {inter}, {layers} layers), beyond "
                        f"the {MAX_PARAMS:.0e} this tool accepts; check config.json")


def _check_heads(source: str, hidden: int, heads: int, kv: int, head_dim_given: bool) -> None:
    if not head_dim_given and hidden % heads:
        raise UserError(f"{source}: hidden size {hidden} is not a multiple of "
                        f"num_attention_heads {heads}; fix config.json (or give head_dim)")
    if heads % kv:
        raise UserError(f"{source}: num_attention_heads {heads} is not a multiple of "
                        f"num_key_value_heads {kv}; fix config.json")


def from_hf_dict(d: dict, source: str = "config.json") -> ModelConfig:
    """A :class:`ModelConfig` from a config.json dict; ``source`` names the file in errors.

    Every number is checked (positive, finite, plausible size) before anything per layer."""
    if not isinstance(d, dict):
        raise UserError(f"{source}: expected a JSON object, got {type(d).__name__}")
    mt = d.get("model_type")
    if not isinstance(mt, str) or mt not in SUPPORTED:
        raise UserError(
            f"{source}: model_type {excerpt(mt)} is not supported; "
            f"supported: {', '.join(SUPPORTED)}"
        )
    try:
        if mt == "gpt2":
            hidden = _count(d, "n_embd", source)
            heads = _count(d, "n_head", source)
            vocab, layers = _count(d, "vocab_size", source), _count(d, "n_layer", source)
            inter = _count(d, "n_inner", source) if d.get("n_inner") is not None else 4 * hidden
            _check_heads(source, hidden, heads, heads, False)
            _check_size(source, vocab, hidden, inter, layers)
            return ModelConfig(
                model_type=mt, vocab_size=vocab, hidden_size=hidden,
                intermediate_size=inter,
                num_layers=layers, num_heads=heads, num_kv_heads=heads,
                head_dim=hidden // heads, max_position_embeddings=_count(d, "n_positions", source),
                norm_eps=_positive(d, "layer_norm_epsilon", source, 1e-5),
                activation=_act(d.get("activation_function", "gelu_new"), source),
                tie_embeddings=bool(d.get("tie_word_embeddings", True)),
                qkv_bias=True, o_bias=True, mlp_bias=True,
                attn_scale_by_layer=bool(d.get("scale_attn_by_inverse_layer_idx", False)),
                sliding_windows=(None,) * layers,
                bos_token_id=d.get("bos_token_id"), eos_token_id=d.get("eos_token_id"),
                hf_config=dict(d),
            )
        hidden = _count(d, "hidden_size", source)
        heads = _count(d, "num_attention_heads", source)
        layers = _count(d, "num_hidden_layers", source)
        vocab, inter = _count(d, "vocab_size", source), _count(d, "intermediate_size", source)
        kv = _count(d, "num_key_value_heads", source) if d.get("num_key_value_heads") else heads
        head_dim = _count(d, "head_dim", source) if d.get("head_dim") else hidden // heads
        _check_heads(source, hidden, heads, kv, bool(d.get("head_dim")))
        _check_size(source, vocab, hidden, inter, layers)
        norm_eps = _positive(d, "rms_norm_eps", source, 1e-6)
        max_pos = _count(d, "max_position_embeddings", source, default=2048)
        theta, scaling = _rope(d)
        if not math.isfinite(theta) or theta <= 0:
            raise UserError(f"{source}: rope_theta = {theta} must be a positive, finite number")
        window = d.get("sliding_window")
        if window is not None and (isinstance(window, bool) or not isinstance(window, int)
                                   or window <= 0):
            raise UserError(f"{source}: sliding_window = {excerpt(window)} must be a positive "
                            "integer or null")
        if mt == "mistral":
            windows = tuple(window for _ in range(layers))
        elif mt in ("qwen2", "qwen3") and d.get("use_sliding_window") and window:
            types = d.get("layer_types") or [
                "sliding_attention" if i >= d.get("max_window_layers", layers) else "full_attention"
                for i in range(layers)
            ]
            if not isinstance(types, list) or len(types) != layers:
                raise UserError(f"{source}: layer_types must list one type per layer "
                                f"({layers})")
            windows = tuple(window if t == "sliding_attention" else None for t in types)
        else:
            windows = (None,) * layers
        default_tie = mt == "gemma"
        act_name = _get(d, "hidden_activation", "hidden_act", default="silu")
        if mt == "gemma":
            act_name = d.get("hidden_activation") or "gelu_pytorch_tanh"
        return ModelConfig(
            model_type=mt, vocab_size=vocab, hidden_size=hidden,
            intermediate_size=inter, num_layers=layers, num_heads=heads,
            num_kv_heads=kv, head_dim=head_dim, max_position_embeddings=max_pos,
            norm_eps=norm_eps,
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
    except (TypeError, ValueError, AttributeError) as e:
        raise UserError(f"{source}: bad value: {str(e)[:200]}") from None
