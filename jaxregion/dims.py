"""Dimension dependence: which hidden dimensions a region, the activations and the weights
single out, and what scaling one parameter on such a dimension does to perplexity.

The paper finds that the core region concentrates on a few residual-stream dimensions, and that
scaling a single parameter on one (LLaMA-2, layer 1, dim 2100, x4) breaks the model while the
same edit on another dimension does nothing. This module finds the candidate dimensions three
ways (region row/column counts, massive activations, down_proj "super weights"), then sweeps
single-parameter scalings on them and on seeded random control dimensions.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from jaxregion import tree as T
from jaxregion.errors import UserError
from jaxregion.interventions import apply_perturb
from jaxregion.models import ModelConfig, Role, intermediates, residual_taps, roles


@partial(jax.jit, static_argnames=("cfg",))
def _layer_absmax(params: dict, tokens: jax.Array, cfg: ModelConfig) -> tuple[jax.Array, ...]:
    """Per layer: max |hidden state| per dimension ``[hidden]`` and its median over dims."""
    taps = intermediates(params, tokens, cfg)[1]
    outs = [taps[k] for k in residual_taps(cfg)]
    absmax = jnp.stack([jnp.max(jnp.abs(h.astype(jnp.float32)), axis=(0, 1)) for h in outs])
    med = jnp.stack([jnp.median(jnp.abs(h.astype(jnp.float32))) for h in outs])
    return absmax, med


def massive_activations(params: dict, cfg: ModelConfig, windows: np.ndarray, top: int = 5,
                        batch_size: int = 8) -> list[dict]:
    """Per layer, the ``top`` hidden dims with the largest |activation| over the windows."""
    absmax = None
    med = None
    for s in range(0, len(windows), batch_size):
        a, m = _layer_absmax(params, jnp.asarray(windows[s:s + batch_size]), cfg)
        absmax = a if absmax is None else jnp.maximum(absmax, a)
        med = m if med is None else jnp.maximum(med, m)
    absmax, med = np.asarray(absmax), np.asarray(med)
    out = []
    for layer, row in enumerate(absmax):
        idx = np.argsort(-row)[:top]
        out.append({"layer": layer, "median_abs": float(med[layer]),
                    "dims": [int(i) for i in idx], "values": [float(row[i]) for i in idx],
                    "ratio_to_median": float(row[idx[0]] / max(med[layer], 1e-12))})
    return out


def tagged(cfg: ModelConfig, tag: str, layer: int) -> Role:
    """The parameter of ``layer`` that the family table tags ``tag`` (``mlp_out``: the MLP
    output matrix; ``attn_norm``: the norm feeding attention)."""
    found = [r for r in roles(cfg).values() if r.layer == layer and r.tag == tag]
    if len(found) != 1:
        raise UserError(f"the {cfg.model_type} table tags {len(found)} parameters of layer "
                        f"{layer} {tag!r}; expected one")
    return found[0]


def super_weight_candidates(params: dict, cfg: ModelConfig, top: int = 1) -> list[dict]:
    """Per layer, the largest-|w| entries of the MLP output matrix (Yu et al.'s super weights):
    the hidden dim they write to, the intermediate channel they read, and the value."""
    out = []
    for layer in range(cfg.num_layers):
        role = tagged(cfg, "mlp_out", layer)
        name, hid_axis = role.name, role.residual_axis
        w = np.abs(np.asarray(T.get(params, name), np.float32))
        flat = np.argsort(-w, axis=None)[:top]
        for f in flat:
            r, c = np.unravel_index(f, w.shape)
            hidden, inner = (r, c) if hid_axis == 0 else (c, r)
            out.append({"layer": layer, "name": name, "hidden_dim": int(hidden),
                        "channel": int(inner), "abs_value": float(w[r, c]),
                        "ratio_to_mean": float(w[r, c] / max(w.mean(), 1e-12))})
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


@dataclass
class SweepPoint:
    dim: int
    factor: float
    group: str  # "candidate" | "control"
    spec: str
    perplexity: dict[str, float] = field(default_factory=dict)


def sweep(
    params: dict,
    cfg: ModelConfig,
    evaluate_fn: Callable[[dict], dict[str, float]],
    candidates: Sequence[int],
    controls: Sequence[int],
    factors: Sequence[float] = (4.0, 0.0),
    layer: int = 1,
    target: str | None = None,
    progress: Callable[[], None] | None = None,
) -> list[SweepPoint]:
    """Scale one parameter per point and evaluate; ``target`` is an HF name whose entry
    ``[dim]`` is scaled (default: the pre-attention norm weight of ``layer``)."""
    name = target or norm_name(cfg, min(layer, cfg.num_layers - 1))
    points = []
    for group, dims in (("candidate", candidates), ("control", controls)):
        for d in dims:
            for f in factors:
                spec = f"{name}[{d}]*{f:g}"
                ppl = evaluate_fn(apply_perturb(params, spec))
                points.append(SweepPoint(int(d), float(f), group, spec, ppl))
                if progress:
                    progress()
    return points
