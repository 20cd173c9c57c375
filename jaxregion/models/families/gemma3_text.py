"""Gemma 3's text decoder (``Gemma3ForCausalLM``, the 1B model and the text tower's layout):
Gemma 2's sandwich-normed layers plus head-sized ``(1 + w)`` q/k norms, and two RoPE bases,
one for the sliding-window layers (``rope_local_base_freq``) and one, with the checkpoint's
scaling, for the global layers. No attention soft-capping (transformers ignores
``attn_logit_softcapping`` here); the final-logit cap applies when set. The modules are
those of :mod:`~jaxregion.models.families.gemma2`; this file is the table and config.
"""

from __future__ import annotations

from flax import nnx

from jaxregion.models.config import ModelConfig, rope_from_hf
from jaxregion.models.families import gemma2
from jaxregion.models.gguf_table import GgufArch, norms_minus_one, sandwich_names
from jaxregion.models.table import Spec, norm

MODEL_TYPES = ("gemma3_text",)
RESIDUAL_TAP = gemma2.RESIDUAL_TAP

_A = "model.layers.{i}.self_attn."


def table(cfg: ModelConfig | None) -> dict[str, Spec]:
    """Gemma 2's table plus the q/k norms (over ``head_dim``: not on the residual stream)."""
    t = gemma2.table(cfg)
    t[_A + "q_norm.weight"] = norm("head")
    t[_A + "k_norm.weight"] = norm("head")
    return t


_NAMES = sandwich_names(qk_norm=True)
GGUF = (
    GgufArch(
        "gemma3",
        "gemma3_text",
        "Gemma3ForCausalLM",
        _NAMES,
        gemma2.GGUF_CONFIG,
        transforms=norms_minus_one(_NAMES),
    ),
)


def _ropes(d: dict) -> tuple[tuple[float, tuple | None], tuple[float, tuple | None]]:
    """(global, local) ``(theta, scaling)``: transformers 5 writes ``rope_parameters`` per
    layer type; older config.json files have ``rope_theta``, ``rope_scaling`` (global) and
    ``rope_local_base_freq``."""
    params = d.get("rope_parameters") or {}
    if "full_attention" in params or "sliding_attention" in params:
        glob = rope_from_hf(
            {"rope_parameters": params.get("full_attention") or {}, "rope_theta": 1_000_000.0}
        )
        local = rope_from_hf(
            {"rope_parameters": params.get("sliding_attention") or {}, "rope_theta": 10_000.0}
        )
        return glob, local
    glob = rope_from_hf(
        {
            "rope_theta": d.get("rope_theta", 1_000_000.0),
            "rope_scaling": d.get("rope_scaling"),
            "rope_parameters": params,
        }
    )
    return glob, (float(d.get("rope_local_base_freq", 10_000.0)), None)


def config_from_hf(d: dict, source: str) -> ModelConfig:
    (theta, scaling), (local_theta, local_scaling) = _ropes(d)
    cap = d.get("final_logit_softcapping")
    return gemma2.common_config(
        d,
        source,
        rope_theta=theta,
        rope_scaling=scaling,
        rope_local_theta=local_theta,
        rope_local_scaling=local_scaling,
        sliding_windows=gemma2.sliding_windows(d, source, 6),
        logit_softcap=None if cap is None else float(cap),
        qk_norm=True,
    )


class Model(gemma2.Model):
    """``Gemma3ForCausalLM``: the gemma2 modules built from this family's table."""

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs | None = None):
        super().__init__(cfg, rngs, table)
