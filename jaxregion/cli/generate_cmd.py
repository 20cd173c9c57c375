"""``jaxregion generate``: what the (edited) model writes after each prompt."""

from __future__ import annotations

import argparse
import json
import sys

from jaxregion.cli.options import Context, add_command
from jaxregion.configs import GenerateConfig


def register(sub: argparse._SubParsersAction) -> None:
    add_command(
        sub,
        "generate",
        GenerateConfig,
        run,
        help="continue prompts (base and edited side by side)",
        description="Batched generation with a KV cache. Greedy by default; with "
        "--region/--perturb each row shows the base and the edited model's "
        "completion.",
    )


def run(cfg: GenerateConfig, ctx: Context) -> int:
    from jaxregion import generate  # deferred: jax (see cli.main)
    from jaxregion.io import atomic
    from jaxregion.report.tables import completions_table

    rows = generate.run_generate(cfg, ctx.mesh)
    print(completions_table(rows))
    if cfg.json_out:
        atomic.write_text(
            cfg.json_out, json.dumps(rows, indent=2, ensure_ascii=False, allow_nan=False) + "\n"
        )
        print(f"wrote {cfg.json_out}", file=sys.stderr)
    return 0
