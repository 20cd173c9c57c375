"""Shapes and logical axes of a config's parameters, derived from its family table.

The param path *is* the HF name, so nothing is renamed; checkpoint aliases (e.g. GPT-2's
unprefixed hub names) are resolved by the family's ``canonical_name``, in one place.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp

from jaxregion.models.config import ModelConfig
from jaxregion.models.registry import family
from jaxregion.models.table import axis_sizes, roles, shapes
from jaxregion.tree import unflatten

__all__ = [
    "abstract_params",
    "axis_sizes",
    "canonical_name",
    "check_shapes",
    "logical_axes",
    "shapes",
]

# Checkpoint keys that are buffers in every family, not parameters: skipped when loading.
IGNORED_SUFFIXES = (".rotary_emb.inv_freq",)


def logical_axes(cfg: ModelConfig) -> dict[str, tuple[str, ...]]:
    """``{hf_name: logical axes}`` with every layer expanded, in model order."""
    return {n: r.axes for n, r in roles(cfg).items()}


def abstract_params(cfg: ModelConfig, dtype: jnp.dtype = jnp.float32) -> dict:
    """The params tree as ``jax.ShapeDtypeStruct`` leaves: no memory allocated."""
    return unflatten({k: jax.ShapeDtypeStruct(s, dtype) for k, s in shapes(cfg).items()})


def canonical_name(cfg: ModelConfig, key: str) -> str | None:
    """The HF name a checkpoint key stands for, or None for buffers to skip."""
    if key.endswith(IGNORED_SUFFIXES):
        return None
    fn = getattr(family(cfg.model_type), "canonical_name", None)
    return fn(key) if fn else key


def check_shapes(found: Mapping[str, tuple[int, ...]], cfg: ModelConfig, source: str) -> list[str]:
    """Every mismatch between a checkpoint and the config, as readable lines."""
    want = shapes(cfg)
    problems = []
    for k, s in want.items():
        if k not in found:
            problems.append(f"missing tensor {k} (expected shape {list(s)})")
        elif tuple(found[k]) != s:
            problems.append(f"tensor {k} has shape {list(found[k])}, expected {list(s)}")
    for k in found:
        if k not in want and not (k == "lm_head.weight" and cfg.tie_embeddings):
            problems.append(f"unexpected tensor {k} {list(found[k])}")
    return problems
