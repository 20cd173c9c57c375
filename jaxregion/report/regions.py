"""Markdown for ``jaxregion regions stats`` and ``compare`` (results computed in
:mod:`jaxregion.cli.region_runs`)."""

from __future__ import annotations

from typing import Any

import numpy as np

from jaxregion.errors import UserError
from jaxregion.regions import hidden_dim_profile, roles_for
from jaxregion.report.tables import markdown_table

_META_KEYS = ("kind", "ratio", "langs", "lang", "scope", "seed", "include", "exclude", "model")


def _hidden_size(region: Any) -> int | None:
    """The residual width, read off the first norm on the residual stream in the region's
    universe (roles from the family tables)."""
    flat = region.flat()
    roles = roles_for(region.names())
    for n in region.names():
        r = roles.get(n)
        if r is not None and r.kind == "norm" and r.residual_axis is not None:
            return int(np.shape(flat[n])[r.residual_axis])
    return None


def _density_rows(table: dict[str, dict]) -> list[tuple]:
    return [(k, v["selected"], v["numel"], v["density"]) for k, v in table.items()]


def _summary(region: Any, st: dict) -> list[str]:
    """The title, the region's metadata and its overall size."""
    meta = region.meta
    desc = [
        (k, meta[k] if not isinstance(meta[k], list) else ",".join(map(str, meta[k])))
        for k in _META_KEYS
        if meta.get(k) not in (None, "", [])
    ]
    return [
        f"# Region: {meta.get('kind', '?')}",
        "",
        markdown_table(["key", "value"], desc),
        "",
        markdown_table(
            ["selected", "numel", "density"], [(st["total"], st["numel"], st["density"])], digits=6
        ),
        "",
    ]


def _density_sections(st: dict) -> list[str]:
    """Selected elements per module type, per layer and (MoE) per expert that has any."""
    sections = [
        ("Per module type", "module", st["by_module"]),
        ("Per layer", "layer", st["by_layer"]),
    ]
    if st.get("by_expert"):
        hit = {k: v for k, v in st["by_expert"].items() if v["selected"]}
        sections.append(
            ("Per expert (layer.expert; experts with a selected element)", "expert", hit)
        )
    out = []
    for title, col, table in sections:
        out += [
            f"## {title}",
            "",
            markdown_table([col, "selected", "numel", "density"], _density_rows(table), digits=6),
            "",
        ]
    return out


def _top_dims(region: Any, top: int) -> list[str]:
    """The ``top`` residual dimensions the region selects most (none when the width is
    unknown or nothing lies on the residual stream)."""
    hidden = _hidden_size(region)
    if hidden is None:
        return []
    try:
        prof = hidden_dim_profile(region, hidden)
    except UserError:
        return []
    if not prof.sum() > 0:
        return []
    order = np.argsort(-prof, kind="stable")[:top]
    total = int(prof.sum())
    return [
        f"## Top hidden dimensions (residual width {hidden}; readers' input "
        "columns, writers' output rows, norms)",
        "",
        markdown_table(
            ["dim", "selected", "share"],
            [(int(i), int(prof[i]), prof[i] / total) for i in order if prof[i] > 0],
        ),
        "",
    ]


def _concentration(st: dict) -> list[str]:
    """Per module type: the share in the top 1% rows and columns, and the top indices."""
    if not st["module_dims"]:
        return []
    rows = [
        (
            mt,
            d["rows_top_frac"],
            d["cols_top_frac"],
            " ".join(f"{i}:{c}" for i, c in d["top_rows"][:5]),
            " ".join(f"{i}:{c}" for i, c in d["top_cols"][:5]),
        )
        for mt, d in st["module_dims"].items()
    ]
    headers = [
        "module",
        "share in top 1% rows",
        "share in top 1% cols",
        "top rows (idx:count)",
        "top cols (idx:count)",
    ]
    return [
        "## Concentration per module type (summed over layers)",
        "",
        markdown_table(headers, rows),
        "",
    ]


def stats_markdown(region: Any, st: dict, top: int = 10) -> str:
    """The tables of one region: metadata, size, per module type, per layer, top hidden
    dimensions and per-module row/column concentration."""
    out = _summary(region, st) + _density_sections(st) + _top_dims(region, top)
    return "\n".join(out + _concentration(st))


def compare_markdown(cmp: dict) -> str:
    """Sizes, overlap ratios and per-module Jaccard of two regions."""
    sa, sb, si, su = cmp["size_a"], cmp["size_b"], cmp["intersection"], cmp["union"]
    sizes = markdown_table(
        ["", "size"],
        [
            (cmp["a"], sa),
            (cmp["b"], sb),
            ("intersection", si),
            ("union", su),
            ("A only", sa - si),
            ("B only", sb - si),
        ],
    )
    ratios = markdown_table(
        ["jaccard", "|A∩B|/|A|", "|A∩B|/|B|"],
        [(cmp["jaccard"], si / sa if sa else 0.0, si / sb if sb else 0.0)],
        digits=6,
    )
    per = markdown_table(
        ["module", "A", "B", "A∩B", "jaccard"],
        [(k, v["a"], v["b"], v["intersection"], v["jaccard"]) for k, v in cmp["by_module"].items()],
        digits=6,
    )
    return "\n\n".join([sizes, ratios, per])
