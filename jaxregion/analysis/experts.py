"""Which experts each language uses: routing statistics of a mixture of experts per language.

For every layer and expert, over all tokens of a language's windows: the share of tokens
whose top-1 expert it is, the share that route to it among their top-k (a layer's top-k
shares sum to k), and the mean gate weight it gets from the tokens routed to it. An
expert's language specificity is the entropy (nats) of its normalised per-language top-k
share, as LAPE scores neurons: 0 when one language alone reaches it, ``ln(#languages)``
when all reach it equally; experts no token reaches have none.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from jaxregion.errors import UserError
from jaxregion.models import ModelConfig, intermediates
from jaxregion.models.moe import ROUTER_PROBS, top_k


def require_moe(cfg: ModelConfig, what: str) -> None:
    """One line for a dense model where an analysis needs experts."""
    if not cfg.is_moe:
        raise UserError(f"{what} needs a mixture-of-experts model; {cfg.model_type} is dense")


@dataclass
class RoutingStats:
    """Per language ``[layers, experts]`` arrays (see the module docstring)."""

    languages: list[str]
    top_k: int
    tokens: dict[str, int]
    top1: dict[str, np.ndarray]
    topk: dict[str, np.ndarray]
    gate: dict[str, np.ndarray]

    def specificity(self) -> tuple[np.ndarray, np.ndarray]:
        """``(entropy [L, E] (NaN where no token routes), index of the dominant language)``."""
        shares = np.stack([self.topk[lang] for lang in self.languages])  # [n, L, E]
        total = shares.sum(axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            p = shares / total
            ent = -np.sum(np.where(p > 0, p * np.log(p), 0.0), axis=0)
        ent = np.where(total > 0, np.maximum(ent, 0.0), np.nan)
        return ent, np.argmax(shares, axis=0)

    def most_specific(self, n: int) -> list[dict]:
        """The ``n`` experts of lowest entropy (ties: higher top-k share of their language,
        then layer and expert order)."""
        ent, dom = self.specificity()
        rows = []
        for (layer, e), h in np.ndenumerate(ent):
            if np.isnan(h):
                continue
            lang = self.languages[int(dom[layer, e])]
            rows.append(
                {
                    "layer": layer,
                    "expert": e,
                    "entropy": float(h),
                    "language": lang,
                    "share": float(self.topk[lang][layer, e]),
                    "shares": {x: float(self.topk[x][layer, e]) for x in self.languages},
                }
            )
        rows.sort(key=lambda r: (r["entropy"], -r["share"], r["layer"], r["expert"]))
        return rows[:n]

    def to_json(self, top: int = 20) -> dict:
        ent, dom = self.specificity()
        return {
            "languages": self.languages,
            "top_k": self.top_k,
            "tokens": self.tokens,
            "top1_share": {k: v.tolist() for k, v in self.top1.items()},
            "topk_share": {k: v.tolist() for k, v in self.topk.items()},
            "mean_gate": {k: v.tolist() for k, v in self.gate.items()},
            "entropy": [[None if np.isnan(h) else float(h) for h in row] for row in ent],
            "dominant_language": [[self.languages[int(i)] for i in row] for row in dom],
            "most_specific": self.most_specific(top),
        }


@partial(jax.jit, static_argnames=("cfg",))
def _counts(
    params: dict, tokens: jax.Array, cfg: ModelConfig
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Per layer and expert: top-1 hits, top-k hits and summed top-k weights of a batch."""
    _, inter = intermediates(params, tokens, cfg)
    probs = jnp.stack([inter[ROUTER_PROBS.format(i=i)] for i in range(cfg.num_layers)])
    w, idx = top_k(probs, cfg.experts_per_token, cfg.norm_topk_prob)
    hot = jax.nn.one_hot(idx, cfg.num_experts, dtype=jnp.float32)  # [L, b, s, k, E]
    return (
        jnp.sum(hot[..., 0, :], axis=(1, 2)),
        jnp.sum(hot, axis=(1, 2, 3)),
        jnp.einsum("lbske,lbsk->le", hot, w),
    )


def routing_stats(
    params: dict, cfg: ModelConfig, corpora: Mapping[str, np.ndarray], batch_size: int = 8
) -> RoutingStats:
    """Routing statistics of every token of ``corpora`` (``{lang: windows [n, seq]}``)."""
    require_moe(cfg, "routing statistics")
    top1, topk, gate, tokens = {}, {}, {}, {}
    for lang, windows in corpora.items():
        acc = [np.zeros((cfg.num_layers, cfg.num_experts)) for _ in range(3)]
        for s in range(0, len(windows), batch_size):
            out = _counts(params, jnp.asarray(windows[s : s + batch_size]), cfg)
            for a, o in zip(acc, out):
                a += np.asarray(o, np.float64)
        n = int(windows.size)
        tokens[lang] = n
        top1[lang], topk[lang] = acc[0] / n, acc[1] / n
        with np.errstate(invalid="ignore", divide="ignore"):
            gate[lang] = np.where(acc[1] > 0, acc[2] / np.maximum(acc[1], 1), 0.0)
    return RoutingStats(list(corpora), cfg.experts_per_token, tokens, top1, topk, gate)
