"""``jaxregion tasks``: lm-evaluation-harness tasks on a (possibly edited) model."""

from __future__ import annotations

import argparse
import json
import os
import sys

from jaxregion.cli.options import Context, add_command
from jaxregion.configs import TasksConfig
from jaxregion.errors import UserError


def register(sub: argparse._SubParsersAction) -> None:
    add_command(
        sub,
        "tasks",
        TasksConfig,
        run,
        help="lm-evaluation-harness tasks (needs the tasks extra)",
        description="Run lm-evaluation-harness tasks through the `jaxregion` lm-eval "
        "model, with the same edits as eval. Writes lm-eval's results JSON "
        "and a Markdown table.",
    )


def run(cfg: TasksConfig, ctx: Context) -> int:
    from jaxregion.io import atomic, hub  # deferred: jax (see cli.main)

    with hub.datasets_cache():  # set before lm-eval imports `datasets`
        try:
            from jaxregion import lm_eval as jlm  # deferred: lm-eval imports slowly
        except ImportError as e:
            raise UserError(
                f"lm-evaluation-harness is not installed ({e}); it is a "
                "dependency: pip install -e ."
            ) from None
        results = jlm.run_tasks_config(cfg, ctx.mesh)
    table = jlm.markdown(results)
    print(table)
    if cfg.json_out:
        atomic.write_text(cfg.json_out, json.dumps(results, indent=2, allow_nan=False) + "\n")
        atomic.write_text(os.path.splitext(cfg.json_out)[0] + ".md", table)
        print(f"wrote {cfg.json_out}", file=sys.stderr)
    return 0
