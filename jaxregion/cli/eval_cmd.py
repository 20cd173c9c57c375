"""``jaxregion eval``: perplexity and bits per byte per language."""

from __future__ import annotations

import argparse
import sys

from jaxregion.cli.options import Context, add_command
from jaxregion.configs import EvalConfig


def register(sub: argparse._SubParsersAction) -> None:
    add_command(
        sub,
        "eval",
        EvalConfig,
        run,
        help="perplexity and bits per byte per language under the packing contract",
    )


def run(cfg: EvalConfig, ctx: Context) -> int:
    from jaxregion import runtime
    from jaxregion.io import atomic  # deferred: jax (see cli.main)
    from jaxregion.report.tables import eval_table

    out = runtime.run_eval(cfg, ctx.mesh)
    print(eval_table(out))
    if cfg.json_out:
        atomic.write_json(cfg.json_out, out)
        print(f"wrote {cfg.json_out}", file=sys.stderr)
    return 0
