"""The naming rules every region function shares: layers, module types and norms (roles,
read off the family tables), include and exclude scopes, and how many elements a ratio
selects. (The :class:`Region` type and its operators are in :mod:`jaxregion.regions.region`.)
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from fractions import Fraction
from typing import Any

from jaxregion import names
from jaxregion.errors import UserError

PyTree = Any

#: The default include scope: every parameter the family table puts in a transformer layer
#: (norms included). Not a regex; any other ``include`` string is one.
LAYERS = DEFAULT_INCLUDE = names.DEFAULT_INCLUDE


def roles_for(names: Sequence[str], roles: Mapping[str, Any] | None = None) -> Mapping[str, Any]:
    """``{name: Role or None}``: ``roles`` when the caller has them (``models.roles(cfg)``),
    else read off the family tables by name (score and region files carry no config).

    Roles are data here (``.layer``, ``.module``, ``.kind``, ``.residual_axis``): this
    package imports no model family, and the lookup below happens only on demand."""
    if roles is not None:
        return roles
    from jaxregion.models.table import infer_roles

    return infer_roles(names)


def _role(name: str, roles: Mapping[str, Any] | None) -> Any:
    return roles_for([name], roles).get(name)


def layer_index(name: str, roles: Mapping[str, Any] | None = None) -> int | None:
    """Transformer layer of a parameter (``model.layers.3.…`` → 3), ``None`` outside layers."""
    r = _role(name, roles)
    return None if r is None else r.layer


def module_type(name: str, roles: Mapping[str, Any] | None = None) -> str:
    """The tensor's name within its layer, minus ``.weight``: ``self_attn.q_proj``,
    ``mlp.down_proj``, ``input_layernorm``, ``self_attn.q_proj.bias``; non-layer tensors
    keep their name (minus ``.weight``). Groups the same matrix across layers."""
    r = _role(name, roles)
    return name if r is None else r.module


def is_norm(name: str, roles: Mapping[str, Any] | None = None) -> bool:
    """Normalisation parameters (weights and biases), per the family table."""
    r = _role(name, roles)
    return r is not None and r.kind == "norm"


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
        raise UserError(
            f"ratio {ratio!r} is not a number; give a fraction in (0, 1], e.g. 0.01 for 1%"
        ) from None
    if not (0.0 < r <= 1.0) or math.isnan(r):
        raise UserError(
            f"ratio {ratio!r} is outside (0, 1]; give a fraction such as 0.01 for the top 1%"
        )
    return r


def compile_regex(pattern: str | None, what: str) -> re.Pattern | None:
    if pattern is None:
        return None
    try:
        return re.compile(pattern)
    except re.error as e:
        raise UserError(f"{what} regex {pattern!r} is invalid: {e}") from None


def scope_names(
    all_names: Sequence[str],
    include: str | None = DEFAULT_INCLUDE,
    exclude: str | None = None,
    roles: Mapping[str, Any] | None = None,
) -> list[str]:
    """Names kept by ``include`` (:data:`LAYERS`: the transformer layers' parameters; else
    a regex, re.search; None = all) and not matched by ``exclude`` (a regex).

    Raises UserError when nothing is left, naming the scope and a few real names."""
    examples = ", ".join(list(all_names)[:4]) + (" ..." if len(all_names) > 4 else "")
    if include == LAYERS:
        r = roles_for(all_names, roles)
        kept = [n for n in all_names if r.get(n) is not None and r[n].layer is not None]
        if not kept:
            raise UserError(
                f"include {LAYERS!r} (the default) selects no parameter: none is in "
                f"a transformer layer of a known family; names look like: "
                f"{examples}. Pass --include REGEX"
            )
    else:
        inc = compile_regex(include, "include")
        kept = [n for n in all_names if inc is None or inc.search(n)]
        if not kept:
            raise UserError(
                f"include regex {include!r} selects no parameter; names look like: {examples}"
            )
    exc = compile_regex(exclude, "exclude")
    if exc is not None:
        kept = [n for n in kept if not exc.search(n)]
        if not kept:
            raise UserError(
                f"exclude regex {exclude!r} removes every parameter that include "
                f"{include!r} selects; names look like: {examples}"
            )
    return kept
