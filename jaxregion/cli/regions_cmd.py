"""``jaxregion regions``: select regions from importance files, describe and compare them.

    jaxregion regions {core,bottom,random,monolingual,bottom-monolingual,top}
        --importance DIR [--langs a,b] [--lang L] --ratio 0.01
        [--scope per-tensor|per-layer|global] [--include RE] [--exclude RE] [--seed S]
        [--granularity element|row|column|tensor|layer]
        [--model DIR] --out FILE.safetensors
    jaxregion regions stats FILE [--json OUT] [--model DIR]
    jaxregion regions compare A B [--json OUT] [--model DIR]

Everything is validated before anything is written; bad input exits 2 with one line.
"""

from __future__ import annotations

import argparse
import sys

from jaxregion.cli.options import Context, Parser, add_command
from jaxregion.configs import REGION_KINDS, CompareConfig, SelectConfig, StatsConfig
from jaxregion.io import atomic

HELPS = {
    "core": "top-ratio of Σ_lang |score| (the paper's core region)",
    "bottom": "bottom-ratio of Σ_lang |score| (control)",
    "random": "uniformly random ratio of elements (control; --seed)",
    "monolingual": "top-ratio of --lang and in no other language's top-ratio",
    "bottom-monolingual": "bottom-ratio of --lang and in no other language's bottom-ratio "
    "(the authors' control)",
    "top": "top-ratio of one language's |score|",
}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "regions",
        help="select, describe and compare regions",
        description="Select regions from importance scores, describe and compare region files.",
    )
    p.set_defaults(_help_parser=p)
    rs = p.add_subparsers(dest="regions_command", metavar="ACTION", parser_class=Parser)
    for kind in REGION_KINDS:
        add_command(
            rs, ("regions", kind), SelectConfig, run_select, help=HELPS[kind], fixed={"kind": kind}
        )
    add_command(
        rs,
        ("regions", "stats"),
        StatsConfig,
        run_stats,
        help="Markdown tables: per module type, per layer, hidden dims",
    )
    add_command(
        rs,
        ("regions", "compare"),
        CompareConfig,
        run_compare,
        help="Jaccard, sizes and intersection of two region files",
    )


def _json(path: str | None, obj: dict) -> None:
    if path:
        atomic.write_json(path, obj)
        print(f"wrote {path}", file=sys.stderr)


def run_select(cfg: SelectConfig, ctx: Context) -> int:
    from jaxregion.cli import region_runs  # deferred: jax (see cli.main)

    r, stability = region_runs.select_region(cfg)
    print(
        f"{cfg.kind}: {r.size} of {r.numel} elements ({100 * r.density:.4f}%) in "
        f"{len(r.names())} tensors -> {cfg.out}",
        file=sys.stderr,
    )
    if stability:
        print(stability, file=sys.stderr)
    return 0


def run_stats(cfg: StatsConfig, ctx: Context) -> int:
    from jaxregion.cli import region_runs  # deferred: jax (see cli.main)
    from jaxregion.report.regions import stats_markdown

    region, st = region_runs.region_stats(cfg)
    print(stats_markdown(region, st, cfg.top))
    _json(cfg.json_out, {"file": cfg.file, "meta": dict(region.meta), **st})
    return 0


def run_compare(cfg: CompareConfig, ctx: Context) -> int:
    from jaxregion.cli import region_runs  # deferred: jax (see cli.main)
    from jaxregion.report.regions import compare_markdown

    cmp = region_runs.compare_regions(cfg)
    print(compare_markdown(cmp))
    _json(cfg.json_out, cmp)
    return 0
