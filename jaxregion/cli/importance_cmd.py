"""``jaxregion importance``: per-parameter importance scores, one file per language.

Writes ``OUT/LANG.safetensors`` (float32, HF names, HF layout; header metadata: language,
estimator, windows, tokens, seq_len, model path and fingerprint, jaxregion version, ...).
A language whose file already exists for the same input is skipped. Within a language the
accumulator is checkpointed with orbax every ``--save-every`` windows under
``OUT/.partial/LANG/``; rerunning the same command resumes from there and ends bitwise
equal to an uninterrupted run (:func:`jaxregion.scorefiles.score_all`).
"""

from __future__ import annotations

import argparse

from jaxregion.cli.options import Context, add_command
from jaxregion.configs import ImportanceConfig


def register(sub: argparse._SubParsersAction) -> None:
    add_command(
        sub,
        "importance",
        ImportanceConfig,
        run,
        help="per-parameter importance scores per language",
        description="Per-parameter importance (default: the paper's θ⊙∇θL over all "
        "windows) for each language, written as OUT/LANG.safetensors.",
    )


def run(cfg: ImportanceConfig, ctx: Context) -> int:
    from jaxregion import scorefiles  # deferred: jax (see cli.main)

    scorefiles.score_all(cfg, ctx.mesh, progress=ctx.progress)
    return 0
