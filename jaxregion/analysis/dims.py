"""Dimension dependence: which residual-stream dimensions a region, the activations and the
weights single out, and what scaling one parameter entry on such a dimension does to perplexity.

The paper reports that scaling one parameter on one dimension ("L1-N2100", x4) breaks the
model while the same edit on another dimension ("L1-N4200") does nothing. Which parameter
"L1-N2100" denotes is not in the released code, so the sweep edits every *target* that touches
a residual dimension in one layer: the norm entries, the rows of the matrices that write the
residual stream and the columns of the matrices that read it. Targets are names from the
family's role table (``input_norm``, the modules' names such as ``post_attention_layernorm``,
``o_proj``, ``down_proj``, ``q_proj``, and table tags such as ``mlp_out``; see
:func:`targets_of`), so one config works for every family that has those modules, and every
sweep row names the exact HF entry it changed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from jaxregion import runtime
from jaxregion import tree as T
from jaxregion.configs import DimsConfig, DimsRunConfig
from jaxregion.errors import UserError
from jaxregion.interventions import apply_perturb
from jaxregion.models import ModelConfig, Role, intermediates, residual_taps, roles
from jaxregion.names import DEFAULT_DIMS_TARGETS
from jaxregion.regions import hidden_dim_profile, load_region

#: Targets swept when a config names none: the norm feeding attention, as the paper's figure.
DEFAULT_TARGETS = DEFAULT_DIMS_TARGETS
#: The target name of the norm feeding attention in every family (the table's ``attn_norm``;
#: in post-norm layers, which have none, ``attn_out_norm``).
INPUT_NORM = "input_norm"


@partial(jax.jit, static_argnames=("cfg",))
def _layer_absmax(params: dict, tokens: jax.Array, cfg: ModelConfig) -> tuple[jax.Array, ...]:
    """Per layer: max |hidden state| per dimension ``[hidden]`` and its median over dims."""
    taps = intermediates(params, tokens, cfg)[1]
    outs = [taps[k] for k in residual_taps(cfg)]
    absmax = jnp.stack([jnp.max(jnp.abs(h.astype(jnp.float32)), axis=(0, 1)) for h in outs])
    med = jnp.stack([jnp.median(jnp.abs(h.astype(jnp.float32))) for h in outs])
    return absmax, med


def activation_absmax(
    params: dict, cfg: ModelConfig, windows: np.ndarray, batch_size: int = 8
) -> tuple[np.ndarray, np.ndarray]:
    """``(absmax [layers, hidden], median [layers])``: per layer, max |hidden state| of each
    dimension over the windows, and the (largest batch's) median |hidden state|."""
    absmax = None
    med = None
    for s in range(0, len(windows), batch_size):
        a, m = _layer_absmax(params, jnp.asarray(windows[s : s + batch_size]), cfg)
        absmax = a if absmax is None else jnp.maximum(absmax, a)
        med = m if med is None else jnp.maximum(med, m)
    return np.asarray(absmax), np.asarray(med)


def peak_ratio(absmax: np.ndarray, med: np.ndarray, dim: int) -> float:
    """How massive ``dim`` is: its largest |activation| over layers, relative to that
    layer's median |activation|."""
    return float(np.max(absmax[:, dim] / np.maximum(med, 1e-12)))


def massive_activations(
    params: dict,
    cfg: ModelConfig,
    windows: np.ndarray,
    top: int = 5,
    batch_size: int = 8,
    absmax_med: tuple[np.ndarray, np.ndarray] | None = None,
) -> list[dict]:
    """Per layer, the ``top`` hidden dims with the largest |activation| over the windows
    (``absmax_med``: :func:`activation_absmax` already computed over them)."""
    absmax, med = absmax_med or activation_absmax(params, cfg, windows, batch_size)
    out = []
    for layer, row in enumerate(absmax):
        idx = np.argsort(-row)[:top]
        out.append(
            {
                "layer": layer,
                "median_abs": float(med[layer]),
                "dims": [int(i) for i in idx],
                "values": [float(row[i]) for i in idx],
                "ratio_to_median": float(row[idx[0]] / max(med[layer], 1e-12)),
            }
        )
    return out


def tagged(cfg: ModelConfig, tag: str, layer: int) -> Role:
    """The parameter of ``layer`` that the family table tags ``tag`` (``mlp_out``: the MLP
    output matrix; ``attn_norm``: the norm feeding attention)."""
    found = [r for r in roles(cfg).values() if r.layer == layer and r.tag == tag]
    if len(found) != 1:
        raise UserError(
            f"the {cfg.model_type} table tags {len(found)} parameters of layer "
            f"{layer} {tag!r}; expected one"
        )
    return found[0]


def super_weight_candidates(params: dict, cfg: ModelConfig, top: int = 1) -> list[dict]:
    """Per layer, the largest-|w| entries of the MLP output matrix (Yu et al.'s super weights):
    the hidden dim they write to, the intermediate channel they read, and the value."""
    out = []
    for layer in range(cfg.num_layers):
        role = tagged(cfg, "mlp_out", layer)
        name = role.name
        w = np.abs(np.asarray(T.get(params, name), np.float32))
        flat = np.argsort(-w, axis=None)[:top]
        for f in flat:
            idx = np.unravel_index(f, w.shape)
            row = {
                "layer": layer,
                "name": name,
                "hidden_dim": int(idx[role.residual_axis]),
                "channel": int(idx[role.input_axis]),
                "abs_value": float(w[idx]),
                "ratio_to_mean": float(w[idx] / max(w.mean(), 1e-12)),
            }
            if role.expert_axis is not None:  # a mixture of experts: which expert holds it
                row["expert"] = int(idx[role.expert_axis])
            out.append(row)
    return out


def norm_name(cfg: ModelConfig, layer: int) -> str:
    """The pre-attention norm weight of ``layer``: one entry per hidden dimension. Post-norm
    layers (OLMo 2) have none: their attention-output norm (``attn_out_norm``) instead."""
    has = any(r.tag == "attn_norm" for r in roles(cfg).values())
    return tagged(cfg, "attn_norm" if has else "attn_out_norm", layer).name


def control_dims(hidden: int, exclude: Sequence[int], n: int, seed: int) -> list[int]:
    """``n`` seeded random dims that are not among ``exclude``."""
    rng = np.random.default_rng(seed)
    pool = np.setdiff1d(np.arange(hidden), np.asarray(list(exclude), dtype=np.int64))
    return sorted(int(d) for d in rng.choice(pool, size=min(n, len(pool)), replace=False))


def _on_residual(r: Role) -> bool:
    return r.kind in ("linear", "norm") and r.residual_axis is not None and r.attr == "weight"


def targets_of(cfg: ModelConfig, layer: int) -> dict[str, str]:
    """``{target: hf_name}``: every weight of ``layer`` on the residual stream, by the names a
    config may use: its module's last part (``q_proj``, ``post_attention_layernorm``; dropped
    when two modules share it, as GPT-2's two ``c_proj``), its whole module (``mlp.c_proj``),
    its table tag (``mlp_out``), and ``input_norm`` for the norm feeding attention."""
    rs = roles(cfg)
    input_tag = "attn_norm" if any(r.tag == "attn_norm" for r in rs.values()) else "attn_out_norm"
    mine = [r for r in rs.values() if r.layer == layer and _on_residual(r)]
    short: dict[str, list[str]] = {}
    for r in mine:
        short.setdefault(r.module.rsplit(".", 1)[-1], []).append(r.name)
    out = {k: v[0] for k, v in short.items() if len(v) == 1}
    for r in mine:
        out[r.module] = r.name
        if r.tag:
            out[r.tag] = r.name
        if r.tag == input_tag:
            out[INPUT_NORM] = r.name
    return out


def check_targets(
    cfg: ModelConfig, layer: int, targets: Sequence[str], where: str
) -> dict[str, str]:
    """``{target: hf_name}`` in ``layer``; UserError naming ``where`` and the bad entry."""
    have = targets_of(cfg, layer)
    for i, t in enumerate(targets):
        if t not in have:
            raise UserError(
                f"{where}: dims.targets[{i}]: {t!r} is not a role of the "
                f"{cfg.model_type} family in layer {layer}; use one of "
                f"{', '.join(sorted(have))}"
            )
    return {t: have[t] for t in targets}


def check_dims(values: Sequence[int], hidden: int, where: str, key: str) -> None:
    for i, d in enumerate(values):
        if not 0 <= int(d) < hidden:
            raise UserError(
                f"{where}: dims.{key}[{i}]: dimension {d} is out of range; the "
                f"model's residual stream has dimensions 0..{hidden - 1}"
            )


def entry(role: Role, dim: int) -> str:
    """The HF entry of ``role``'s tensor on residual dimension ``dim``: ``w[d]`` (a norm),
    ``w[d,:]`` (a writer's row) or ``w[:,d]`` (a reader's column, in ``[out, in]`` layout)."""
    if len(role.axes) == 1:
        return f"{role.name}[{dim}]"
    idx = [":"] * len(role.axes)
    idx[role.residual_axis] = str(dim)
    return f"{role.name}[{','.join(idx)}]"


def auto_candidates(
    profile: np.ndarray | None, massive: Sequence[dict], n: int, source: str = "both"
) -> list[int]:
    """The region's ``n`` most-selected dims, then up to ``n`` massive-activation dims (each
    layer's largest, the most massive first), without repeats; ``source`` ``region`` or
    ``activations`` keeps one of the two."""
    from_region = (
        [int(d) for d in np.argsort(-profile, kind="stable")[:n]]
        if profile is not None and source != "activations"
        else []
    )
    by_size = sorted(massive, key=lambda m: -m["ratio_to_median"])
    from_acts = (
        list(dict.fromkeys(int(m["dims"][0]) for m in by_size))[:n] if source != "region" else []
    )
    return list(dict.fromkeys(from_region + from_acts))


# --- the sweep -----------------------------------------------------------------------------
@dataclass
class SweepPoint:
    group: str  # "candidate" | "control"
    dim: int
    target: str  # role name, e.g. "input_norm"
    entry: str  # the exact HF entry, e.g. "model.layers.1.input_layernorm.weight[2100]"
    factor: float
    perplexity: dict[str, float] = field(default_factory=dict)
    mean_ratio: float = 1.0  # geometric mean over languages of perplexity / base


def gmean_ratio(
    ppl: Mapping[str, float], base: Mapping[str, float], langs: Sequence[str] | None = None
) -> float:
    """Geometric mean over ``langs`` (default: all of ``base``) of ppl / base."""
    langs = list(base) if langs is None else list(langs)
    return float(np.exp(np.mean([np.log(ppl[k] / base[k]) for k in langs])))


def scaled(params: dict, entry_name: str, factor: float) -> dict:
    """``params`` with one sweep point's entry (:func:`entry`) multiplied by ``factor``."""
    return apply_perturb(params, f"{entry_name}*{factor!r}")


def sweep(
    params: dict,
    cfg: ModelConfig,
    evaluate_fn: Callable[[dict], dict[str, float]],
    base: Mapping[str, float],
    candidates: Sequence[int],
    controls: Sequence[int],
    factors: Sequence[float],
    layer: int,
    targets: Sequence[str] = DEFAULT_TARGETS,
    progress: Callable[[], None] | None = None,
) -> list[SweepPoint]:
    """Scale one entry per point and evaluate: every (dim, target, factor) for the candidate
    and the control dims. Targets are resolved through the family's role table
    (:func:`targets_of`)."""
    names = check_targets(cfg, layer, targets, "dims")
    rs = roles(cfg)
    points = []
    for group, dims in (("candidate", candidates), ("control", controls)):
        for d in dims:
            for t in targets:
                e = entry(rs[names[t]], int(d))
                for f in factors:
                    ppl = evaluate_fn(scaled(params, e, f))
                    points.append(
                        SweepPoint(group, int(d), t, e, float(f), ppl, gmean_ratio(ppl, base))
                    )
                    if progress:
                        progress()
    return points


# --- the whole analysis --------------------------------------------------------------------
def validate(d: DimsConfig, cfg: ModelConfig, where: str) -> None:
    """Every model-dependent check of a ``dims:`` section, naming ``where`` and the key."""
    if not 0 <= d.layer < cfg.num_layers:
        raise UserError(
            f"{where}: dims.layer: {d.layer} is out of range; the model has layers "
            f"0..{cfg.num_layers - 1}"
        )
    check_dims(d.dims, cfg.hidden_size, where, "dims")
    check_dims(d.controls, cfg.hidden_size, where, "controls")
    check_targets(cfg, d.layer, d.targets, where)
    if not d.factors:
        raise UserError(f"{where}: dims.factors: empty; give factors such as [4.0, 0.0]")
    if not d.targets:
        raise UserError(f"{where}: dims.targets: empty; give roles such as [input_norm]")


@dataclass
class DimsResult:
    layer: int
    targets: list[str]
    candidates: list[int]
    candidates_from: str  # "config" or how they were picked
    controls: list[int]
    controls_from: str
    massive_activations: list[dict]
    super_weights: list[dict]
    region_top: dict[str, int]  # candidate dim -> entries of the region on it ({} if none)
    base: dict[str, float]
    sweep: list[SweepPoint]
    # swept dim -> its largest |activation| over layers / that layer's median (peak_ratio)
    peak_ratio: dict[str, float] = field(default_factory=dict)


def analyse(
    params: dict,
    cfg: ModelConfig,
    evaluate_fn: Callable[[dict], dict[str, float]],
    base: Mapping[str, float],
    act_windows: np.ndarray,
    d: DimsConfig,
    profile: np.ndarray | None = None,
    progress: Callable[[], None] | None = None,
) -> DimsResult:
    """Candidates (named, or from the region ``profile`` and massive activations), controls
    (named, or seeded random dims away from every candidate and super weight), then the sweep."""
    absmax, med = activation_absmax(params, cfg, act_windows[: d.activation_windows])
    massive = massive_activations(params, cfg, act_windows, absmax_med=(absmax, med))
    supers = super_weight_candidates(params, cfg)
    if d.dims:
        cands, cands_from = [int(x) for x in d.dims], "config"
    else:
        source = d.auto_source if profile is not None else "activations"
        cands = auto_candidates(profile, massive, d.auto_candidates, source)
        cands_from = {
            "both": "the core region's most-selected dims, then the layers' largest activations",
            "region": "the core region's most-selected dims",
            "activations": "the layers' largest activations (most massive first)",
        }[source]
    if d.controls:
        ctrls, ctrls_from = [int(x) for x in d.controls], "config"
    else:  # away from every layer's top activations, so a control is never a massive dim
        avoid = cands + [x for m in massive for x in m["dims"]] + [s["hidden_dim"] for s in supers]
        ctrls = control_dims(cfg.hidden_size, avoid, d.auto_controls, d.seed)
        ctrls_from = (
            f"seeded random dims (seed {d.seed}) that are neither candidates, "
            "among any layer's 5 largest activations, nor super weights"
        )
    points = sweep(
        params, cfg, evaluate_fn, base, cands, ctrls, d.factors, d.layer, d.targets, progress
    )
    top = {str(x): int(profile[x]) for x in cands} if profile is not None else {}
    peaks = {str(x): peak_ratio(absmax, med, x) for x in dict.fromkeys(cands + ctrls)}
    return DimsResult(
        d.layer,
        list(d.targets),
        cands,
        cands_from,
        ctrls,
        ctrls_from,
        massive,
        supers,
        top,
        dict(base),
        points,
        peaks,
    )


def run_dims(cfg: DimsRunConfig, mesh: jax.sharding.Mesh | None = None) -> DimsResult:
    """``jaxregion dims``: the whole analysis on ``cfg.model`` over ``cfg.text`` (every input
    checked before any sweep runs)."""
    s = runtime.load_session(cfg.model, cfg.dtype, mesh)
    d = cfg.dims_config()
    validate(d, s.config, "jaxregion dims")
    region = load_region(cfg.region, template=s.params) if cfg.region else None
    corpora = runtime.load_corpora(cfg.text, s, cfg.seq_len, cfg.max_seqs)

    def ppl(params: dict) -> dict[str, float]:
        res = runtime.evaluate_corpora(s, corpora, cfg.batch_size, params=params)
        return {k: r.perplexity for k, r in res.items()}

    profile = hidden_dim_profile(region, s.config.hidden_size) if region is not None else None
    return analyse(s.params, s.config, ppl, ppl(s.params), next(iter(corpora.values())), d, profile)
