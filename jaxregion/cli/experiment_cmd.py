"""``jaxregion experiment`` (the paper's battery) and ``jaxregion dims`` (dimension analysis)."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

from jaxregion.cli.options import Context, add_command
from jaxregion.configs import DimsRunConfig, ExperimentConfig


def register(sub: argparse._SubParsersAction) -> None:
    add_command(
        sub,
        "experiment",
        ExperimentConfig,
        run_experiment,
        positional_config=True,
        help="run the paper's battery from a YAML config",
        description="Importance, regions, ablations, monolingual matrix, dimension "
        "sweep and agreement tables -> report.md, results.json and PNG "
        "plots.",
    )
    add_command(
        sub,
        "dims",
        DimsRunConfig,
        run_dims,
        help="which hidden dimensions a region and the model single out",
        description="Region row/column concentration, massive activations, down_proj "
        "super-weight candidates, and a single-parameter scaling sweep on "
        "candidate vs random control dims.",
    )


def run_experiment(cfg: ExperimentConfig, ctx: Context) -> int:
    from jaxregion.analysis import experiment  # deferred: jax (see cli.main)
    from jaxregion.report import battery

    res = experiment.run(
        cfg,
        log=lambda m: print(m, file=sys.stderr),
        source=ctx.source,
        mesh=ctx.mesh,
        command=["jaxregion", *ctx.argv],
    )
    battery.render(res, cfg.out)
    print(f"wrote {os.path.join(cfg.out, 'report.md')}", file=sys.stderr)
    return 0


def run_dims(cfg: DimsRunConfig, ctx: Context) -> int:
    from jaxregion.analysis import dims  # deferred: jax (see cli.main)
    from jaxregion.io import atomic
    from jaxregion.report.battery import dims_markdown

    res = dims.run_dims(cfg, ctx.mesh)
    print("\n".join(dims_markdown(res, list(res.base))))
    if cfg.json_out:
        atomic.write_json(cfg.json_out, {"model": cfg.model, **dataclasses.asdict(res)})
        print(f"wrote {cfg.json_out}", file=sys.stderr)
    return 0
