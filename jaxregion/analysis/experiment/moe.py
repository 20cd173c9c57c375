"""The battery's mixture-of-experts section: which experts each language reaches, what
removing a language's top experts from the routers costs against random experts of equal
count, and where the core region lies (experts, routers, the other layer weights, norms)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from jaxregion import regions as R
from jaxregion.analysis import experts
from jaxregion.models import ModelConfig, roles
from jaxregion.models.moe import drop_experts

#: Where a layer parameter lies, by its role: the order of the core-share table.
PARTS = ("experts", "routers", "attention and dense MLPs", "norms")


@dataclass
class MoEResult:
    routing: dict[str, Any]  # experts.RoutingStats.to_json: shares, gate, entropy, most specific
    per_layer: int  # experts removed per layer and language
    dropped: dict[str, list[list[int]]]  # condition -> [[layer, expert], ...]
    perplexity: dict[str, dict[str, float]]  # condition (base, top-L, random-L) -> lang -> ppl
    core_share: dict[str, float]  # part of PARTS -> share of the core region's elements


def experts_per_layer(cfg: ModelConfig) -> int:
    """How many experts per layer a language's ablation removes: an eighth of them (at least
    one), never so many that a layer keeps fewer than its top-k."""
    return max(1, min(cfg.num_experts // 8, cfg.num_experts - cfg.experts_per_token))


def top_experts(share: np.ndarray, n: int) -> list[list[int]]:
    """Per layer, the ``n`` experts with the highest share (ties: lower index first)."""
    return [
        [layer, int(e)]
        for layer, row in enumerate(share)
        for e in np.argsort(-row, kind="stable")[:n]
    ]


def random_experts(cfg: ModelConfig, n: int, seed: int) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [
        [layer, int(e)]
        for layer in range(cfg.num_layers)
        for e in sorted(rng.choice(cfg.num_experts, size=n, replace=False))
    ]


def part_of(role: Any) -> str:
    """The PARTS entry of a layer parameter's role."""
    if role.is_norm:
        return "norms"
    if role.is_router or role.tag == "shared_gate":
        return "routers"
    if role.expert_axis is not None:
        return "experts"
    return "attention and dense MLPs"


def core_share(core: R.Region, cfg: ModelConfig) -> dict[str, float]:
    """Share of the core region's selected elements in each part (PARTS order)."""
    rl = roles(cfg)
    counts = R.counts_by(core, lambda n: part_of(rl[n]) if rl[n].layer is not None else None)
    total = sum(s for s, _ in counts.values()) or 1
    return {p: counts.get(p, (0, 0))[0] / total for p in PARTS}


def run(
    params: dict,
    cfg: ModelConfig,
    windows: dict[str, np.ndarray],
    batch_size: int,
    ppl: Any,
    core: R.Region,
    seed: int,
    top: int = 20,
) -> MoEResult:
    """``ppl(cfg) -> {lang: perplexity}`` evaluates the model under a routing config."""
    stats = experts.routing_stats(params, cfg, windows, batch_size)
    n = experts_per_layer(cfg)
    dropped = {}
    for i, lang in enumerate(stats.languages):
        dropped[f"top-{lang}"] = top_experts(stats.topk[lang], n)
        dropped[f"random-{lang}"] = random_experts(cfg, n, seed + i)
    perplexity = {"base": ppl(cfg)} | {
        k: ppl(drop_experts(cfg, [tuple(p) for p in v])) for k, v in dropped.items()
    }
    return MoEResult(stats.to_json(top), n, dropped, perplexity, core_share(core, cfg))
