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
    # --- mixture of experts (qwen2_moe / qwen3_moe / mixtral / olmoe; models/moe.py) ---
    num_experts: int = 0  # routed experts per layer (0: a dense model)
    experts_per_token: int = 0  # top-k
    expert_intermediate_size: int = 0  # each routed expert's hidden size
    shared_expert_intermediate_size: int = 0  # qwen2_moe's sigmoid-gated shared expert (0: none)
    norm_topk_prob: bool = False  # renormalise the top-k probabilities to sum to one
    # (layer, expert) pairs removed from their router (softmax over the rest): drop-expert
    dropped_experts: tuple[tuple[int, int], ...] = ()

    @property
    def family(self) -> str:
        """The family (table file) this config belongs to."""
        from jaxregion.models.registry import family_name

        return family_name(self.model_type)

    def opt(self, key: str, default: Any = None) -> Any:
        """A family-specific switch from :attr:`extra`."""
        return dict(self.extra).get(key, default)

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0

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
    table = {
        "silu": "silu",
        "swish": "silu",
        "gelu_pytorch_tanh": "gelu_tanh",
        "gelu_new": "gelu_tanh",
        "gelu_fast": "gelu_tanh",
        "gelu": "gelu",
    }
    if name not in table:
        raise UserError(f"{source}: activation {name!r} is not supported ({', '.join(table)})")
    return table[name]


MAX_PARAMS = 10**13  # far above any real checkpoint; refuses absurd configs before allocation
# config.json keys that are counts or sizes, in any supported family
_COUNT_KEYS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "max_position_embeddings",
    "n_embd",
    "n_head",
    "n_layer",
    "n_positions",
    "n_inner",
    "sliding_window",
    "num_experts",
    "num_local_experts",
    "num_experts_per_tok",
    "moe_intermediate_size",
    "shared_expert_intermediate_size",
)
# ... and those that must be positive, finite numbers
_POSITIVE_KEYS = (
    "rms_norm_eps",
    "layer_norm_epsilon",
    "layer_norm_eps",
    "rope_theta",
    "rope_local_base_freq",
)


def _count(d: dict, key: str, source: str) -> int:
    """``d[key]`` as a positive int; a bool, fractional float, string or out-of-range value is
    a UserError naming the file and key."""
    v = d[key]
    if isinstance(v, float) and math.isfinite(v) and v.is_integer():
        v = int(v)
    if not isinstance(v, int) or isinstance(v, bool) or not 0 < v < 2**31:
        raise UserError(f"{source}: {key} = {excerpt(v)} must be a positive integer below 2**31")
    return v


def _positive(d: dict, key: str, source: str) -> float:
    v = d[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
        raise UserError(f"{source}: {key} = {excerpt(v)} must be a positive, finite number")
    return float(v)


def check_hf_dict(d: Any, source: str) -> None:
    """Check a config.json dict before any family code reads it: an object, counts positive
    integers, epsilons and RoPE bases positive and finite, heads dividing the width, and a
    plausible total size, so nothing is ever allocated per layer for an absurd config."""
    if not isinstance(d, dict):
        raise UserError(f"{source}: expected a JSON object, got {type(d).__name__}")
    # sliding_window 0 means none (qwen2_moe writes it when use_sliding_window is off)
    counts = {
        k: _count(d, k, source)
        for k in _COUNT_KEYS
        if d.get(k) is not None and not (k == "sliding_window" and d[k] == 0)
    }
    for k in _POSITIVE_KEYS:
        if d.get(k) is not None:
            _positive(d, k, source)
    rp = d.get("rope_parameters")
    if isinstance(rp, dict) and rp.get("rope_theta") is not None:
        _positive(rp, "rope_theta", f"{source}: rope_parameters")
    hidden = counts.get("hidden_size") or counts.get("n_embd")
    heads = counts.get("num_attention_heads") or counts.get("n_head")
    layers = counts.get("num_hidden_layers") or counts.get("n_layer")
    vocab = counts.get("vocab_size")
    if hidden and heads:
        kv = counts.get("num_key_value_heads") or heads
        if "head_dim" not in counts and hidden % heads:
            raise UserError(
                f"{source}: hidden size {hidden} is not a multiple of "
                f"num_attention_heads {heads}; fix config.json (or give head_dim)"
            )
        if heads % kv:
            raise UserError(
                f"{source}: num_attention_heads {heads} is not a multiple of "
                f"num_key_value_heads {kv}; fix config.json"
            )
    if hidden and layers and vocab:
        inter = counts.get("intermediate_size") or counts.get("n_inner") or 4 * hidden
        est = 2 * vocab * hidden + layers * (4 * hidden * hidden + 3 * hidden * inter)
        if est > MAX_PARAMS:
            raise UserError(
                f"{source}: the config describes ~{est:.3g} parameters (vocab_size "
                f"{vocab}, hidden {hidden}, intermediate {inter}, {layers} layers), "
                f"beyond the {MAX_PARAMS:.0e} this tool accepts; check config.json"
            )
    types = d.get("layer_types")
    if types is not None and layers and (not isinstance(types, list) or len(types) != layers):
        raise UserError(f"{source}: layer_types must list one type per layer ({layers})")


def check_config(cfg: ModelConfig, source: str) -> ModelConfig:
    """The normalised config, whatever family filled it in: sizes positive, epsilon and RoPE
    base positive and finite, heads grouped evenly."""
    for name in (
        "vocab_size",
        "hidden_size",
        "intermediate_size",
        "num_layers",
        "num_heads",
        "num_kv_heads",
        "head_dim",
        "max_position_embeddings",
    ):
        v = getattr(cfg, name)
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise UserError(f"{source}: {name} = {excerpt(v)} must be a positive integer")
    for f in dataclasses.fields(cfg):  # every float a family read: eps, RoPE bases, caps, scales
        v = getattr(cfg, f.name)
        if isinstance(v, float) and not (math.isfinite(v) and v > 0):
            raise UserError(
                f"{source}: {f.name} = {excerpt(v)} must be a positive, finite "
                "number; fix config.json"
            )
    if cfg.num_heads % cfg.num_kv_heads:
        raise UserError(
            f"{source}: {cfg.num_heads} attention heads are not a multiple of "
            f"{cfg.num_kv_heads} key/value heads; fix config.json"
        )
    return cfg


def from_hf_dict(d: dict, source: str = "config.json") -> ModelConfig:
    """A :class:`ModelConfig` from a config.json dict; ``source`` names the file in errors.

    Each family reads its own keys (``config_from_hf`` in its table file)."""
    from jaxregion.models.registry import by_model_type, supported

    if not isinstance(d, dict):
        raise UserError(f"{source}: expected a JSON object, got {type(d).__name__}")
    mt = d.get("model_type")
    fam = by_model_type().get(mt) if isinstance(mt, str) else None
    if fam is None:
        raise UserError(
            f"{source}: model_type {excerpt(mt)} is not supported; supported: "
            f"{', '.join(supported())}"
        )
    check_hf_dict(d, source)
    try:
        cfg = fam.config_from_hf(d, source)
    except KeyError as e:
        raise UserError(f"{source}: required key {e.args[0]!r} is missing") from None
    except (TypeError, ValueError, ZeroDivisionError, AttributeError) as e:
        raise UserError(f"{source}: bad value: {str(e)[:200]}") from None
    return check_config(cfg, source)
