"""Model configuration: one frozen dataclass for every supported family, read from config.json."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from jaxregion.errors import UserError
from jaxregion.safety import excerpt


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
    activation: str  # "silu" | "gelu_tanh" | "gelu" | "bloom_gelu"
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
    # Family-specific switches as ((key, value), ...): a new family adds its own here
    # without a new field (read them with :meth:`opt`).
    extra: tuple[tuple[str, Any], ...] = ()
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    hf_config: dict = field(default_factory=dict, compare=False, hash=False, repr=False)
    # --- gemma2 / gemma3 / olmo2 ---
    logit_softcap: float | None = None  # final logits -> cap * tanh(logits / cap)
    attn_softcap: float | None = None  # attention scores, the same way (gemma2)
    query_pre_attn_scalar: float | None = None  # attention scale scalar**-0.5 (else head_dim)
    rope_local_theta: float | None = None  # gemma3: RoPE base of the sliding-window layers
    rope_local_scaling: tuple[tuple[str, Any], ...] | None = None  # ... and their scaling
    # --- bloom / phi3 / cohere ---
    residual_from_norm: bool = False  # bloom's apply_residual_connection_post_layernorm
    partial_rotary_factor: float = 1.0  # phi3: RoPE on the first int(head_dim * f) dims only
    rope_interleaved: bool = False  # cohere: RoPE rotates pairs (2i, 2i+1), not half-split
    logit_scale: float | None = None  # cohere: logits * scale (before any soft-cap)

    @property
    def family(self) -> str:
        """The family (table file) this config belongs to."""
        from jaxregion.models.registry import family_name

        return family_name(self.model_type)

    def opt(self, key: str, default: Any = None) -> Any:
        """A family-specific switch from :attr:`extra`."""
        return dict(self.extra).get(key, default)

    @property
    def q_dim(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.num_kv_heads * self.head_dim

    def replace(self, **kw: Any) -> ModelConfig:
        return dataclasses.replace(self, **kw)

    @property
    def rotary_dim(self) -> int:
        """The leading head dims RoPE rotates (``head_dim`` unless ``partial_rotary_factor``)."""
        return int(self.head_dim * self.partial_rotary_factor)

    @property
    def rope_kind(self) -> str:
        scaling = dict(self.rope_scaling or ())
        return scaling.get("rope_type", scaling.get("type", "default")) or "default"

    def rope_attention_scaling(self) -> float:
        """The factor transformers multiplies cos and sin by (longrope: from the ratio of
        ``max_position_embeddings`` to ``original_max_position_embeddings``); else 1."""
        if self.rope_kind != "longrope":
            return 1.0
        s = dict(self.rope_scaling or ())
        old = self.rope_original_max()
        factor = s.get("factor") or self.max_position_embeddings / old
        if s.get("attention_factor") is not None:
            return float(s["attention_factor"])
        return 1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(old))

    def rope_original_max(self) -> int:
        """longrope's pretraining length (transformers' default: ``max_position_embeddings``)."""
        s = dict(self.rope_scaling or ())
        return int(s.get("original_max_position_embeddings") or self.max_position_embeddings)

    def inv_freq(self, long: bool = False) -> np.ndarray:
        """RoPE inverse frequencies, float32, computed exactly as transformers does.

        ``long``: longrope's long-context factors (used once a sequence passes
        ``original_max_position_embeddings``); the short ones otherwise."""
        dim = self.rotary_dim
        exponent = np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / np.float32(dim)
        base = np.float32(self.rope_theta) ** exponent
        inv = (1.0 / base).astype(np.float32)
        scaling = dict(self.rope_scaling or ())
        kind = self.rope_kind
        if kind == "default":
            return inv
        if kind == "longrope":
            ext = np.asarray(scaling["long_factor" if long else "short_factor"], np.float32)
            return (1.0 / (ext * base)).astype(np.float32)
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
            f"rope scaling type {kind!r} is not supported (supported: default, linear, llama3, "
            "longrope)"
        )


def get_key(d: dict, *keys: str, default: Any = None) -> Any:
    for k in keys:
        if d.get(k) is not None:
            return d[k]
    return default


def rope_from_hf(d: dict) -> tuple[float, tuple | None]:
    params = d.get("rope_parameters") or {}
    theta = float(get_key(params, "rope_theta", default=get_key(d, "rope_theta", default=10000.0)))
    scaling = d.get("rope_scaling") or {k: v for k, v in params.items() if k != "rope_theta"}
    kind = scaling.get("rope_type", scaling.get("type", "default")) if scaling else "default"
    if not scaling or kind == "default":
        return theta, None
    return theta, frozen(scaling)


def frozen(d: dict) -> tuple[tuple[str, Any], ...]:
    """A dict as sorted ``(key, value)`` pairs, lists as tuples: hashable, so a config can be
    a static argument of ``jax.jit`` (longrope's factors are lists)."""
    return tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in d.items()))


def activation_name(name: str, source: str) -> str:
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

    Each family reads its own keys (``config_from_hf`` in its table file). Every count and
    epsilon is checked (positive, finite, plausible size) before the family builds anything
    per layer."""
    from jaxregion.models.registry import by_model_type, supported

    if not isinstance(d, dict):
        raise UserError(f"{source}: expected a JSON object, got {type(d).__name__}")
    mt = d.get("model_type")
    fam = by_model_type().get(mt) if isinstance(mt, str) else None
    if fam is None:
        raise UserError(f"{source}: model_type {excerpt(mt)} is not supported; "
                        f"supported: {', '.join(supported())}")
    _check_numbers(d, source)
    try:
        cfg = fam.config_from_hf(d, source)
    except KeyError as e:
        raise UserError(f"{source}: required key {e.args[0]!r} is missing") from None
    except (TypeError, ValueError, AttributeError, ZeroDivisionError) as e:
        raise UserError(f"{source}: bad value: {str(e)[:200]}") from None
    _check_floats(cfg, source)
    exact = bool(d.get("head_dim")) or cfg.num_heads * cfg.head_dim == cfg.hidden_size
    _check_heads(source, cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, exact)
    return cfg


_COUNT_KEYS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
               "num_attention_heads", "num_key_value_heads", "head_dim",
               "max_position_embeddings", "sliding_window", "n_embd", "n_head", "n_layer",
               "n_positions", "n_inner")
_POSITIVE_KEYS = ("rms_norm_eps", "layer_norm_epsilon", "layer_norm_eps", "rope_theta")


def _check_floats(cfg: ModelConfig, source: str) -> None:
    """Every float a family read (epsilons, RoPE bases, caps, scales; wherever config.json kept
    it) must be positive and finite: a bad one would make NaN logits, not an error."""
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        if isinstance(v, float) and not (math.isfinite(v) and v > 0):
            key = {"norm_eps": "rms_norm_eps / layer_norm_eps", "rope_theta": "rope_theta",
                   "rope_local_theta": "rope_local_base_freq"}.get(f.name, f.name)
            raise UserError(f"{source}: {key} = {excerpt(v)} must be a positive, finite number; "
                            "fix config.json")


def _check_numbers(d: dict, source: str) -> None:
    """The config.json numbers every family reads, checked before anything is built."""
    for k in _COUNT_KEYS:
        if d.get(k) is not None:
            _count(d, k, source)
    for k in _POSITIVE_KEYS:
        if d.get(k) is not None:
            _positive(d, k, source, 1.0)
    hidden = d.get("hidden_size") or d.get("n_embd")
    layers = d.get("num_hidden_layers") or d.get("n_layer")
    vocab = d.get("vocab_size")
    if all(isinstance(v, int) for v in (hidden, layers, vocab)):
        inter = d.get("intermediate_size") or d.get("n_inner") or 4 * hidden
        _check_size(source, vocab, hidden, int(inter), layers)
