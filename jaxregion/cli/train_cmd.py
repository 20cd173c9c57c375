"""``jaxregion train | export | pretrain | forgetting``: training with frozen regions."""

from __future__ import annotations

import argparse
import os
import sys

from jaxregion.cli.options import Context, add_command
from jaxregion.configs import ExportConfig, FinetuneConfig, ForgettingConfig, PretrainConfig

# TrainConfig fields the training commands set themselves (the forgetting sweep's knobs)
_SWEEP_ONLY = {"replay_ratio": 0.0, "ewc_lambda": 0.0, "eval_at": (), "eval_start": True}


def register(sub: argparse._SubParsersAction) -> None:
    add_command(
        sub,
        "train",
        FinetuneConfig,
        run_train,
        fixed=_SWEEP_ONLY,
        help="continued pre-training, optionally with a frozen region",
        description="Continued pre-training with AdamW; --freeze keeps a region's "
        "parameters bitwise fixed. Resumes from --ckpt-dir.",
    )
    add_command(
        sub,
        "export",
        ExportConfig,
        run_export,
        help="write a training checkpoint as an HF directory",
    )
    add_command(
        sub,
        "pretrain",
        PretrainConfig,
        run_pretrain,
        fixed=_SWEEP_ONLY,
        help="train a small Llama from scratch",
        description="Train a Llama-family model from random init on a multilingual mix.",
    )
    add_command(
        sub,
        "forgetting",
        ForgettingConfig,
        run_forgetting,
        positional_config=True,
        help="the forgetting frontier: freeze ratio x granularity x scorer sweep",
        description="Continued pre-training on a target language while protecting the "
        "others, swept over freeze ratio x granularity x scorer x baseline "
        "x seed (resumable); writes report.md, results.json, plots.",
    )


def _finish(res, export: str | None) -> int:
    """Exit code and final lines of a training run."""
    if res.interrupted:
        return 128 + int(res.signum or 15)
    last = res.metrics[-1] if res.metrics else {}
    if last.get("eval_ppl"):
        print(
            "final eval perplexity: "
            + ", ".join(f"{k}={v:.3f}" for k, v in last["eval_ppl"].items())
        )
    if export:
        print(f"wrote {export}", file=sys.stderr)
    return 0


def run_train(cfg: FinetuneConfig, ctx: Context) -> int:
    from jaxregion.train import run  # deferred: jax (see cli.main)

    return _finish(run.run_train(cfg, ctx.mesh, ctx.progress), cfg.export)


def run_pretrain(cfg: PretrainConfig, ctx: Context) -> int:
    from jaxregion.train import pretrain  # deferred: jax (see cli.main)

    return _finish(pretrain.run_pretrain(cfg, ctx.mesh, ctx.progress), cfg.out)


def run_export(cfg: ExportConfig, ctx: Context) -> int:
    from jaxregion.train.run import export_checkpoint  # deferred: jax (see cli.main)

    step = export_checkpoint(cfg.ckpt_dir, cfg.out, cfg.step, cfg.out_dtype, ctx.mesh)
    print(f"wrote step {step} of {cfg.ckpt_dir} to {cfg.out}", file=sys.stderr)
    return 0


def run_forgetting(cfg: ForgettingConfig, ctx: Context) -> int:
    from jaxregion.analysis import forgetting  # deferred: jax (see cli.main)

    res = forgetting.run(cfg, progress=ctx.progress, mesh=ctx.mesh, source=ctx.source)
    if res.interrupted:
        return 128 + int(res.signum or 15)
    print(res.results["table"])
    print(f"wrote {os.path.join(res.out, 'report.md')}", file=sys.stderr)
    return 0
