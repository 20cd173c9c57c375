"""``jaxregion demo``: the whole pipeline offline, on the built-in synthetic corpus."""

from __future__ import annotations

import argparse

from jaxregion.cli.options import Context, add_command
from jaxregion.configs import DemoConfig


def register(sub: argparse._SubParsersAction) -> None:
    add_command(
        sub,
        "demo",
        DemoConfig,
        run,
        help="end-to-end demo: corpus, tokenizer, tiny model, regions, report",
        description="Build a synthetic multilingual corpus, train a tokenizer and a tiny "
        "Llama, compute importance on 6 languages, build core/bottom/random/"
        "monolingual regions, ablate them, sweep single dimensions, run "
        "freeze-vs-no-freeze continued pre-training, and write "
        "DIR/report.md. Stages are cached.",
    )


def run(cfg: DemoConfig, ctx: Context) -> int:
    from jaxregion.analysis import demo  # deferred: jax (see cli.main)

    demo.run(cfg, mesh=ctx.mesh)
    return 0
