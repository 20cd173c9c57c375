"""The registry of families, keyed by HF ``model_type``.

Every module in ``jaxregion/models/families/`` is a family: adding one is adding its file.
A family module provides

* ``MODEL_TYPES``: the ``model_type`` values it covers;
* ``table(cfg)``: ``{HF name template: Spec}`` (``cfg=None``: every optional entry, used to
  read roles off bare names);
* ``RESIDUAL_TAP``: the template of the intermediate holding the residual stream after a layer;
* ``config_from_hf(d, source) -> ModelConfig``;
* ``Model``: the :class:`~jaxregion.models.module.CausalLM` subclass;
* optionally ``canonical_name(key)`` (checkpoint aliases; None = a buffer to skip) and
  ``SHARDING_RULES`` (per-family overrides of the logical-axis -> mesh-axis rules).
"""

from __future__ import annotations

import importlib
import pkgutil
from functools import cache
from types import ModuleType

from jaxregion.errors import UserError


@cache
def families() -> dict[str, ModuleType]:
    """``{family name: module}``, discovered in ``models/families/`` (sorted by name)."""
    from jaxregion.models import families as pkg

    out = {}
    for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda m: m.name):
        if not info.name.startswith("_"):
            out[info.name] = importlib.import_module(f"{pkg.__name__}.{info.name}")
    return out


@cache
def by_model_type() -> dict[str, ModuleType]:
    out: dict[str, ModuleType] = {}
    for fam in families().values():
        for mt in fam.MODEL_TYPES:
            out[mt] = fam
    return out


def supported() -> tuple[str, ...]:
    """Every supported ``model_type``."""
    return tuple(by_model_type())


def family(model_type: str) -> ModuleType:
    """The family module of ``model_type``."""
    fam = by_model_type().get(model_type)
    if fam is None:
        raise UserError(
            f"model_type {model_type!r} is not supported; supported: {', '.join(supported())}"
        )
    return fam


def family_name(model_type: str) -> str:
    return family(model_type).__name__.rsplit(".", 1)[-1]
