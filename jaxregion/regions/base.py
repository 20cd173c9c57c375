"""The naming rules every region function shares: layers, module types, norms, include and
exclude scopes, and how many elements a ratio selects. (The :class:`Region` type and its
operators are in :mod:`jaxregion.regions.region`.)
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from fractions import Fraction
from typing import Any

from jaxregion import configs
from jaxregion.errors import UserError

PyTree = Any

#: Transformer blocks only (norms included), for Llama-style and GPT-2-style names.
DEFAULT_INCLUDE = configs.DEFAULT_INCLUDE

#: How the layer index is found in an HF name (first match wins).
LAYER_RE = re.compile(r"(?:^|\.)(?:layers|h|blocks)\.(\d+)\.")

#: Leaves whose name matches this are normalisation weights/biases.
NORM_RE = re.compile(r"(norm|(?:^|\.)ln_)")


def layer_index(name: str) -> int | None:
    """Transformer layer of an HF name (``model.layers.3.…`` → 3), ``None`` outside layers."""
    m = LAYER_RE.search(name)
    return int(m.group(1)) if m else None


def module_type(name: str) -> str:
    """Name with the layer prefix and ``.weight`` removed: ``self_attn.q_proj``,
    ``mlp.down_proj``, ``input_layernorm``, ``self_attn.q_proj.bias``; non-layer leaves keep
    their full name (minus ``.weight``). Groups the same matrix across layers."""
    m = LAYER_RE.search(name)
    rest = name[m.end():] if m else name
    return rest[: -len(".weight")] if rest.endswith(".weight") else rest


def is_norm(name: str) -> bool:
    """Normalisation parameters (``…layernorm…``, ``…norm…``, GPT-2 ``ln_1``/``ln_f``)."""
    return bool(NORM_RE.search(name))


def k_for(ratio: float, n: int) -> int:
    """How many of ``n`` elements a ratio selects: ``max(1, floor(ratio * n))``, at most n.

    The paper takes ``int(ratio * numel)``; we floor the same way but on the ratio as the
    decimal it prints as (so 0.29 × 100 is 29, not float-rounded 28), and select at least
    one element so a tiny tensor is never silently skipped when ratio > 0.
    """
    if n <= 0:
        return 0
    k = math.floor(Fraction(repr(float(ratio))) * n)
    return int(min(n, max(1, k)))


def check_ratio(ratio: Any) -> float:
    try:
        r = float(ratio)
    except (TypeError, ValueError):
        raise UserError(f"ratio {ratio!r} is not a number; give a fraction in (0, 1], "
                        "e.g. 0.01 for 1%") from None
    if not (0.0 < r <= 1.0) or math.isnan(r):
        raise UserError(f"ratio {ratio!r} is outside (0, 1]; give a fraction such as 0.01 "
                        "for the top 1%")
    return r


def compile_regex(pattern: str | None, what: str) -> re.Pattern | None:
    if pattern is None:
        return None
    try:
        return re.compile(pattern)
    except re.error as e:
        raise UserError(f"{what} regex {pattern!r} is invalid: {e}") from None


def scope_names(all_names: Sequence[str], include: str | None = DEFAULT_INCLUDE,
                exclude: str | None = None) -> list[str]:
    """Names kept by ``include`` (re.search; None = all) and not matched by ``exclude``.

    Raises UserError when nothing is left, naming the regex and a few real names."""
    inc = compile_regex(include, "include")
    exc = compile_regex(exclude, "exclude")
    kept = [n for n in all_names if inc is None or inc.search(n)]
    examples = ", ".join(list(all_names)[:4]) + (" ..." if len(all_names) > 4 else "")
    if not kept:
        raise UserError(f"include regex {include!r} selects no parameter; names look like: "
                        f"{examples}")
    if exc is not None:
        kept = [n for n in kept if not exc.search(n)]
        if not kept:
            raise UserError(f"exclude regex {exclude!r} removes every parameter that include "
                            f"{include!r} selects; names look like: {examples}")
    return kept
