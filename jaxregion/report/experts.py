"""The routing report of ``jaxregion experts``: JSON, a layer x expert heatmap per language
and a Markdown table of the most language-specific experts."""

from __future__ import annotations

import os

from jaxregion.analysis.experts import RoutingStats
from jaxregion.io.atomic import write_json, write_text
from jaxregion.report.plots import heatmap
from jaxregion.report.tables import markdown_table
from jaxregion.safety import check_output


def specific_table(stats: RoutingStats, top: int) -> str:
    """The ``top`` most language-specific experts, one row each."""
    rows = [
        [
            r["layer"],
            r["expert"],
            r["entropy"],
            r["language"],
            *(r["shares"][x] for x in stats.languages),
        ]
        for r in stats.most_specific(top)
    ]
    headers = [
        "layer",
        "expert",
        "entropy (nats)",
        "language",
        *(f"top-k share {x}" for x in stats.languages),
    ]
    return markdown_table(headers, rows)


def routing_heatmaps(stats: RoutingStats, out_dir: str, prefix: str = "routing") -> list[str]:
    """One PNG per language: its top-k share per layer (rows) and expert (columns)."""
    paths = []
    for lang in stats.languages:
        m = stats.topk[lang]
        path = os.path.join(out_dir, f"{prefix}_{lang}.png")
        heatmap(
            path,
            m,
            [f"L{i}" for i in range(m.shape[0])],
            [str(e) for e in range(m.shape[1])],
            f"{lang}: share of tokens routed to each expert (top-{stats.top_k})",
            "top-k share",
        )
        paths.append(path)
    return paths


def write_report(stats: RoutingStats, out_dir: str, top: int, model: str) -> list[str]:
    """``experts.json``, ``experts.md`` and ``routing_LANG.png`` in ``out_dir``."""
    os.makedirs(out_dir, exist_ok=True)
    for name in ("experts.json", "experts.md"):
        check_output(os.path.join(out_dir, name))
    data = {"model": model, **stats.to_json(top)}
    write_json(os.path.join(out_dir, "experts.json"), data)
    tokens = ", ".join(f"{k}: {v}" for k, v in stats.tokens.items())
    md = (
        f"# Expert routing per language\n\nModel `{model}`, top-{stats.top_k} routing; "
        f"tokens {tokens}.\n\nSpecificity is the entropy of an expert's top-k share "
        "normalised over the languages (0: one language alone reaches it).\n\n"
        f"## The {top} most language-specific experts\n\n{specific_table(stats, top)}\n"
    )
    write_text(os.path.join(out_dir, "experts.md"), md)
    return [os.path.join(out_dir, n) for n in ("experts.json", "experts.md")] + routing_heatmaps(
        stats, out_dir
    )
