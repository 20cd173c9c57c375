"""The family tables as data: every HF parameter name, its logical axes and its role.

Each family file (``models/families/<family>.py``) declares ``table(cfg)``: a mapping from
HF name templates (``{i}`` = layer index) to :class:`Spec`. Everything else is derived here:
the expanded names in model order, their shapes, and the :class:`Role` of every parameter
that the rest of the library reads as data (region scopes, norm detection, hidden-dimension
profiles, wanda taps, dims targets, sharding). Nothing outside ``models/`` parses a name.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache, lru_cache

from jaxregion.models.config import ModelConfig

KINDS = ("linear", "norm", "embedding", "bias", "head", "position")

# Logical axis names. Sharding rules map these to mesh axes.
#   vocab, embed (the residual stream / hidden size), q (heads*head_dim), kv (kv_heads*head_dim),
#   head (head_dim), mlp (intermediate), pos (positions), qkv (a fused q/k/v output: GPT-2's
#   c_attn, BLOOM's query_key_value, Phi-3's qkv_proj), gate_up (Phi-3's fused gate and up
#   projection), heads / kv_heads (head counts: cohere's per-head q/k norm weights), expert
#   (the routed experts: a fused expert tensor's index axis, a router's output), expert_mlp /
#   expert_gate_up (a routed expert's hidden size, and twice it), shared_mlp (qwen2_moe's
#   shared expert), one (a single output: the shared expert's gate)
RESIDUAL = "embed"
EXPERT = "expert"


@dataclass(frozen=True)
class Spec:
    """One table entry.

    ``axes``: logical axes in HF layout. ``kind``: one of :data:`KINDS`. ``input_axis``: the
    axis indexing a linear map's input features (1 for ``nn.Linear`` ``[out, in]``, 0 for
    GPT-2's Conv1D ``[in, out]``). ``tap``: the intermediate (a template like the names)
    holding those input features, read by wanda. ``tag``: a named anchor the analyses look
    for (``mlp_out``: the matrix writing the MLP output into the residual stream;
    ``attn_norm``: the norm feeding attention; ``attn_out_norm``: in post-norm layers, where
    attention reads the raw residual stream (OLMo 2), the norm of attention's output, which
    stands in for ``attn_norm`` as the dims sweep's target; ``router``: a mixture of
    experts' router, whose rows are the experts; ``shared_gate``: the sigmoid gate of a
    shared expert). ``residual_axis`` defaults to the axis named ``embed``, when there is
    one; ``expert_axis`` (derived) is the axis named ``expert``: the routed experts.
    """

    axes: tuple[str, ...]
    kind: str
    input_axis: int | None = None
    tap: str | None = None
    tag: str | None = None
    residual_axis: int | None = -1  # -1: derive from the axes

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind {self.kind!r} is not one of {KINDS}")
        if self.residual_axis == -1:
            object.__setattr__(
                self, "residual_axis", self.axes.index(RESIDUAL) if RESIDUAL in self.axes else None
            )

    @property
    def expert_axis(self) -> int | None:
        return self.axes.index(EXPERT) if EXPERT in self.axes else None


def linear(out: str, inp: str, tap: str | None = None, tag: str | None = None) -> Spec:
    """An ``nn.Linear`` weight ``[out, in]``."""
    return Spec((out, inp), "linear", input_axis=1, tap=tap, tag=tag)


def conv1d(inp: str, out: str, tap: str | None = None, tag: str | None = None) -> Spec:
    """A GPT-2 Conv1D weight, stored ``[in, out]``."""
    return Spec((inp, out), "linear", input_axis=0, tap=tap, tag=tag)


def bias(axis: str) -> Spec:
    return Spec((axis,), "bias")


def norm(axis: str = RESIDUAL, tag: str | None = None) -> Spec:
    return Spec((axis,), "norm", tag=tag)


@dataclass(frozen=True)
class Role:
    """What one parameter is, for code that must not parse names.

    ``module`` groups the same tensor across layers (``self_attn.q_proj``,
    ``mlp.down_proj.bias``; non-layer tensors keep their name, minus ``.weight``). ``attr``
    is the tensor's attribute in its module (``weight`` or ``bias``). ``expert_axis`` indexes
    the routed experts (fused expert tensors and routers; None elsewhere).
    """

    name: str
    template: str
    module: str
    layer: int | None
    kind: str
    axes: tuple[str, ...]
    residual_axis: int | None
    input_axis: int | None
    tap: str | None
    tag: str | None
    attr: str
    expert_axis: int | None = None

    @property
    def is_norm(self) -> bool:
        return self.kind == "norm"

    @property
    def is_router(self) -> bool:
        return self.tag == "router"


def _module_of(template: str) -> str:
    head, sep, rest = template.partition("{i}.")
    name = rest if sep else head
    return name[: -len(".weight")] if name.endswith(".weight") else name


def _role(template: str, spec: Spec, layer: int | None) -> Role:
    fmt = (lambda s: s.format(i=layer)) if layer is not None else (lambda s: s)
    return Role(
        fmt(template),
        template,
        _module_of(template),
        layer,
        spec.kind,
        spec.axes,
        spec.residual_axis,
        spec.input_axis,
        fmt(spec.tap) if spec.tap else None,
        spec.tag,
        template.rsplit(".", 1)[-1],
        spec.expert_axis,
    )


def expand(table: Mapping[str, Spec], num_layers: int) -> dict[str, Role]:
    """``{hf_name: Role}`` in model order: embeddings, the layers in turn, then the rest."""
    out: dict[str, Role] = {}
    layered = [t for t in table if "{i}" in t]
    for t, s in table.items():
        if "{i}" not in t and s.kind in ("embedding", "position"):
            out[t] = _role(t, s, None)
    for i in range(num_layers):
        for t in layered:
            r = _role(t, table[t], i)
            out[r.name] = r
    for t, s in table.items():
        if "{i}" not in t and t not in out:
            out[t] = _role(t, s, None)
    return out


def axis_sizes(cfg: ModelConfig) -> dict[str, int]:
    return {
        "vocab": cfg.vocab_size,
        "embed": cfg.hidden_size,
        "q": cfg.q_dim,
        "kv": cfg.kv_dim,
        "head": cfg.head_dim,
        "mlp": cfg.intermediate_size,
        "pos": cfg.max_position_embeddings,
        "qkv": cfg.q_dim + 2 * cfg.kv_dim,
        "gate_up": 2 * cfg.intermediate_size,
        "heads": cfg.num_heads,
        "kv_heads": cfg.num_kv_heads,
        "expert": cfg.num_experts,
        "expert_mlp": cfg.expert_intermediate_size,
        "expert_gate_up": 2 * cfg.expert_intermediate_size,
        "shared_mlp": cfg.shared_expert_intermediate_size,
        "one": 1,
    }


@lru_cache(maxsize=64)
def roles(cfg: ModelConfig) -> dict[str, Role]:
    """``{hf_name: Role}`` of every parameter of this config, in model order.

    Cached per config: treat the result as read-only."""
    from jaxregion.models.registry import family

    return expand(family(cfg.model_type).table(cfg), cfg.num_layers)


def shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """``{hf_name: shape}`` expected for this config."""
    sizes = axis_sizes(cfg)
    return {n: tuple(sizes[a] for a in r.axes) for n, r in roles(cfg).items()}


def input_axes(cfg: ModelConfig) -> dict[str, int]:
    """``{hf_name: axis of input features}`` of every linear map: the columns of row/column
    granularity, read by freezing and region selection as data."""
    return {n: r.input_axis for n, r in roles(cfg).items() if r.input_axis is not None}


def residual_taps(cfg: ModelConfig) -> list[str]:
    """The intermediates holding the residual stream after each layer, in layer order."""
    from jaxregion.models.registry import family

    tmpl = family(cfg.model_type).RESIDUAL_TAP
    return [tmpl.format(i=i) for i in range(cfg.num_layers)]


# --- roles of bare names (score and region files carry no config) -----------------------
def _pattern(template: str) -> re.Pattern:
    """A template as a pattern: the table's own text, ``{i}`` standing for any index."""
    return re.compile(re.escape(template).replace(re.escape("{i}"), r"(\d+)") + r"\Z")


@cache
def _compiled() -> tuple[tuple[str, tuple[tuple[re.Pattern, str, Spec], ...]], ...]:
    from jaxregion.models.registry import families

    out = []
    for name, fam in families().items():
        out.append((name, tuple((_pattern(t), t, s) for t, s in fam.table(None).items())))
    return tuple(out)


def _match(name: str, entries: tuple[tuple[re.Pattern, str, Spec], ...]) -> Role | None:
    for pat, t, s in entries:
        m = pat.match(name)
        if m:
            return _role(t, s, int(m.group(1)) if m.groups() else None)
    return None


def infer_roles(names: Iterable[str]) -> dict[str, Role | None]:
    """Roles of HF names without a config, from the family tables (superset entries).

    The family matching the most names decides, and among those the one whose table has the
    fewest entries none of the names fills (OLMo 2's names are a subset of Gemma 3's table);
    a name no table knows maps to None."""
    names = list(names)
    return dict(_infer(tuple(names)))


@lru_cache(maxsize=4096)
def _infer(names: tuple[str, ...]) -> tuple[tuple[str, Role | None], ...]:
    best: dict[str, Role | None] = {}
    best_key = (-1, 0)
    for _, entries in _compiled():
        found = {n: _match(n, entries) for n in names}
        k = sum(r is not None for r in found.values())
        unfilled = len(entries) - len({r.template for r in found.values() if r is not None})
        if (k, -unfilled) > best_key:
            best, best_key = found, (k, -unfilled)
    for n, r in best.items():
        if r is None:
            best[n] = next((x for _, e in _compiled() if (x := _match(n, e)) is not None), None)
    return tuple(best.items())
