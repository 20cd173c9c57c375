"""Edit params inside a region or at single entries: params in, new params out.

Everything is addressed by HF name and HF index order (``[out, in]`` for linear weights), as
in PyTorch: ``model.layers.1.mlp.down_proj.weight[2100,:]`` is the row that writes residual
dimension 2100, while ``down_proj.weight[:,2100]`` is a whole column on the 11008-wide MLP axis,
not a residual dimension. ``model.layers.1.input_layernorm.weight[2100]`` is that dimension's
norm entry (see :mod:`jaxregion.analysis.dims` for every single-entry target on a dimension).
Edits use ``jnp.where`` / ``.at[]``: dtypes and shardings are kept, untouched leaves are
returned as the same objects.

Perturbation spec grammar (``parse_perturb``)::

    SPEC  := NAME [ "[" IDX ("," IDX)* "]" ] OP VALUE
    IDX   := INT | ":" | INT ":" INT        (numpy-style; negative INT counts from the end)
    OP    := "*" (scale) | "=" (set) | "+" (add)
    e.g.  model.layers.1.mlp.down_proj.weight[2100,:]*4
          model.norm.weight[2100]=0      model.layers.0.self_attn.q_proj.weight[5,7]+0.1

Without ``[...]`` the op applies to the whole tensor.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import zlib
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxregion import tree as T
from jaxregion.errors import UserError
from jaxregion.regions.region import Region, mask_of, shape_of, universe_of

PyTree = Any

PERTURB_GRAMMAR = (
    "NAME[IDX]OP VALUE, IDX = comma-separated ints, ':' or 'a:b'; "
    "OP = '*' scale, '=' set, '+' add; e.g. "
    "model.layers.1.mlp.down_proj.weight[2100,:]*4"
)
REGION_OPS = ("zero", "scale:F", "noise:S", "set:V")


def _close(name: str, names: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, list(names), n=5, cutoff=0.5)
    return f"; close matches: {', '.join(close)}" if close else ""


def _apply_masked(
    params: PyTree, region_or_mask: Any, fn: Callable[[str, jax.Array, jax.Array], jax.Array]
) -> PyTree:
    """Apply ``fn(name, x, mask)`` to every leaf the mask covers (missing leaves: untouched).

    For a Region only its universe is visited (other leaves are all-False by construction),
    so untouched leaves come back as the very same arrays."""
    flat_m = T.flatten(mask_of(region_or_mask))
    if isinstance(region_or_mask, Region):
        keep = set(universe_of(region_or_mask))
        flat_m = {n: m for n, m in flat_m.items() if n in keep}
    flat_p = T.flatten(params)
    for n, m in flat_m.items():
        if n not in flat_p:
            raise UserError(
                f"mask has parameter {n!r} that the model lacks"
                f"{_close(n, flat_p)}; is the region for another model?"
            )
        if shape_of(m) != shape_of(flat_p[n]):
            raise UserError(
                f"mask for {n!r} has shape {list(shape_of(m))}, model has "
                f"{list(shape_of(flat_p[n]))}; is the region for another model?"
            )
    return T.map_named(
        lambda n, x: fn(n, jnp.asarray(x), jnp.asarray(flat_m[n], bool)) if n in flat_m else x,
        params,
    )


def _finite(value: float, what: str, dtype: Any = jnp.float32) -> float:
    """A value that is not finite in ``dtype`` (where it is used: float32 arithmetic, or the
    leaf's own dtype) would turn every masked weight into NaN/inf: refuse it."""
    v = float(value)
    if not math.isfinite(v):
        raise UserError(f"{what} {value!r} is not a finite number")
    fi = jnp.finfo(dtype)
    if abs(v) > float(fi.max):
        raise UserError(
            f"{what} {v!r} is inf in {np.dtype(dtype).name} (largest finite "
            f"{float(fi.max):.4g}); give a smaller value"
        )
    return v


def zero(params: PyTree, region_or_mask: Any) -> PyTree:
    """Masked elements set to 0 (the paper's "remove the region")."""
    return _apply_masked(
        params, region_or_mask, lambda n, x, m: jnp.where(m, jnp.zeros((), x.dtype), x)
    )


def set_value(params: PyTree, region_or_mask: Any, value: float) -> PyTree:
    """Masked elements set to ``value`` (cast to each leaf's dtype)."""
    value = _finite(value, "set value")

    def fn(n: str, x: jax.Array, m: jax.Array) -> jax.Array:
        _finite(value, f"set value (for {n})", x.dtype)
        return jnp.where(m, jnp.asarray(value, x.dtype), x)

    return _apply_masked(params, region_or_mask, fn)


def scale(params: PyTree, region_or_mask: Any, factor: float) -> PyTree:
    """Masked elements multiplied by ``factor`` (in float32, then cast back)."""
    factor = _finite(factor, "scale factor")
    return _apply_masked(
        params,
        region_or_mask,
        lambda n, x, m: jnp.where(m, (x.astype(jnp.float32) * factor).astype(x.dtype), x),
    )


def _leaf_key(seed: int, name: str) -> jax.Array:
    return jax.random.fold_in(jax.random.PRNGKey(int(seed)), zlib.crc32(name.encode()) & 0x7FFFFFFF)


def add_noise(params: PyTree, region_or_mask: Any, rel_std: float, seed: int = 0) -> PyTree:
    """Masked elements plus Gaussian noise of std ``rel_std × std(tensor)``.

    The std is of the whole tensor (float32); each tensor's noise is keyed by (seed, its HF
    name), so results do not depend on which other tensors are masked."""
    rel_std = _finite(rel_std, "noise scale")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise UserError(f"--seed {seed!r}: must be an integer in [0, 2**32)")

    def fn(n: str, x: jax.Array, m: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        noise = jax.random.normal(_leaf_key(seed, n), x.shape, jnp.float32)
        return jnp.where(m, (x32 + noise * (rel_std * jnp.std(x32))).astype(x.dtype), x)

    return _apply_masked(params, region_or_mask, fn)


def parse_region_op(op: str) -> tuple[str, float | None]:
    """``"zero"`` → ("zero", None); ``"scale:F"``, ``"noise:S"``, ``"set:V"`` → (kind, float)."""
    kind, _, arg = op.strip().partition(":")
    if kind == "zero" and not arg:
        return "zero", None
    if kind in ("scale", "noise", "set") and arg:
        try:
            v = float(arg)
        except ValueError:
            v = None
        if v is not None:
            _finite(v, f"region op {op!r}: value")
        if v is not None and kind == "noise" and v < 0:
            raise UserError(f"region op {op!r}: the noise scale must be >= 0")
        if v is not None:
            return kind, v
    raise UserError(
        f"region op {op!r} is malformed; use one of {', '.join(REGION_OPS)} "
        "(e.g. zero, scale:0.5, noise:0.1, set:0)"
    )


def region_op(params: PyTree, region_or_mask: Any, op: str, seed: int = 0) -> PyTree:
    """Apply a CLI op string (``zero``, ``scale:F``, ``noise:S``, ``set:V``) to the region."""
    kind, v = parse_region_op(op)
    if kind == "zero":
        return zero(params, region_or_mask)
    if kind == "scale":
        return scale(params, region_or_mask, v)
    if kind == "noise":
        return add_noise(params, region_or_mask, v, seed)
    return set_value(params, region_or_mask, v)


# --- single entries / rows / columns --------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Perturb:
    """One parsed spec: ``index`` is a tuple of ints/slices (``()`` = whole tensor)."""

    name: str
    index: tuple[int | slice, ...]
    op: str
    value: float
    spec: str = ""


_SPEC_RE = re.compile(
    r"^\s*(?P<name>[A-Za-z_][\w.\-]*?)\s*(?:\[(?P<idx>[^\]]*)\])?\s*"
    r"(?P<op>[*=+])\s*(?P<val>\S+)\s*$"
)
_INT = r"[+-]?\d+"


def _parse_idx(part: str, spec: str) -> int | slice:
    part = part.strip()
    if part == ":":
        return slice(None)
    if re.fullmatch(_INT, part):
        return int(part)
    m = re.fullmatch(rf"({_INT})\s*:\s*({_INT})", part)
    if m:
        return slice(int(m.group(1)), int(m.group(2)))
    raise UserError(
        f"perturbation {spec!r}: index {part!r} is not an int, ':' or 'a:b'; "
        f"grammar: {PERTURB_GRAMMAR}"
    )


def parse_perturb(spec: str) -> Perturb:
    """Parse ``NAME[IDX]OP VALUE`` (see the module doc); UserError with the grammar if bad."""
    m = _SPEC_RE.match(spec)
    if not m:
        raise UserError(f"perturbation {spec!r} is malformed; grammar: {PERTURB_GRAMMAR}")
    try:
        value = float(m.group("val"))
    except ValueError:
        raise UserError(
            f"perturbation {spec!r}: value {m.group('val')!r} is not a number; "
            f"grammar: {PERTURB_GRAMMAR}"
        ) from None
    if not math.isfinite(value):
        raise UserError(
            f"perturbation {spec!r}: value {m.group('val')!r} is not a finite "
            f"number; grammar: {PERTURB_GRAMMAR}"
        )
    _finite(value, f"perturbation {spec!r}: value")
    idx_s = m.group("idx")
    index: tuple[int | slice, ...] = ()
    if idx_s is not None:
        if not idx_s.strip():
            raise UserError(f"perturbation {spec!r} has an empty index; grammar: {PERTURB_GRAMMAR}")
        index = tuple(_parse_idx(p, spec) for p in idx_s.split(","))
    return Perturb(m.group("name"), index, m.group("op"), value, spec.strip())


def _fmt_index(index: tuple[int | slice, ...]) -> str:
    def one(i: int | slice) -> str:
        if isinstance(i, int):
            return str(i)
        return ":" if i.start is None else f"{i.start}:{i.stop}"

    return "[" + ",".join(one(i) for i in index) + "]"


def _check_index(p: Perturb, shape: tuple[int, ...]) -> tuple[int | slice, ...]:
    def bad(why: str) -> UserError:
        return UserError(
            f"perturbation {p.spec or p.name!r}: index {_fmt_index(p.index)} "
            f"{why} for {p.name} of shape {list(shape)}"
        )

    if len(p.index) > len(shape):
        raise bad(f"has {len(p.index)} entries, more than the {len(shape)} dims")
    out: list[int | slice] = []
    for i, dim in zip(p.index, shape):
        if isinstance(i, int):
            if not -dim <= i < dim:
                raise bad(f"is out of range ({i} not in [{-dim}, {dim}))")
            out.append(i % dim)
        elif i.start is None:
            out.append(i)
        else:
            a, b = (
                i.start % dim if -dim <= i.start < dim else None,
                i.stop % dim if -dim <= i.stop < dim else (dim if i.stop == dim else None),
            )
            if a is None or b is None or a >= b:
                raise bad(f"has an empty or out-of-range slice {i.start}:{i.stop}")
            out.append(slice(a, b))
    return tuple(out)


def apply_perturb(params: PyTree, spec: str | Perturb | Sequence[str | Perturb]) -> PyTree:
    """Apply one spec (or several, in order) and return new params."""
    if isinstance(spec, (list, tuple)):
        for s in spec:
            params = apply_perturb(params, s)
        return params
    p = spec if isinstance(spec, Perturb) else parse_perturb(spec)
    flat = T.flatten(params)
    if p.name not in flat:
        raise UserError(
            f"perturbation {p.spec or p.name!r}: no parameter {p.name!r}{_close(p.name, flat)}"
        )
    x = jnp.asarray(flat[p.name])
    idx = _check_index(p, shape_of(x))
    ref = x.at[idx]
    if p.op == "=":
        new = ref.set(jnp.asarray(p.value, x.dtype))
    elif p.op == "*":
        new = ref.set((x[idx].astype(jnp.float32) * p.value).astype(x.dtype))
    else:
        new = ref.set((x[idx].astype(jnp.float32) + p.value).astype(x.dtype))
    if not bool(jnp.isfinite(new[idx]).all()):
        raise UserError(
            f"perturbation {p.spec or p.name!r}: the result is not finite in "
            f"{np.dtype(x.dtype).name}; give a smaller value"
        )
    return T.replace(params, p.name, new)
