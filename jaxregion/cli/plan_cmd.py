"""``jaxregion plan``: memory per device for a model, task and mesh (nothing is loaded)."""

from __future__ import annotations

import argparse

from jaxregion.cli.options import Context, add_command
from jaxregion.configs import PlanConfig


def register(sub: argparse._SubParsersAction) -> None:
    add_command(
        sub,
        "plan",
        PlanConfig,
        run,
        help="memory per device for eval / importance / train on a mesh",
        description="Bytes per device for a model (config.json or a preset) on a mesh: "
        "parameter-shaped state exactly (with the real sharding rules), "
        "activations estimated.",
    )


def run(cfg: PlanConfig, ctx: Context) -> int:
    from jaxregion.io import atomic  # deferred: jax (see cli.main)
    from jaxregion.parallel import plan

    p = plan.plan_for(cfg)
    print(plan.format_plan(p))
    if cfg.json_out:
        atomic.write_json(cfg.json_out, p.as_dict())
    return 0
