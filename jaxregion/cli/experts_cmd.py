"""``jaxregion experts``: routing statistics of a mixture of experts per language."""

from __future__ import annotations

import argparse
import sys

from jaxregion.cli.options import Context, add_command
from jaxregion.configs import ExpertsConfig


def register(sub: argparse._SubParsersAction) -> None:
    add_command(
        sub,
        "experts",
        ExpertsConfig,
        run,
        help="per layer and expert: each language's routed-token share, mean gate "
        "weight and the experts' language specificity (MoE models)",
    )


def run(cfg: ExpertsConfig, ctx: Context) -> int:
    from jaxregion import runtime
    from jaxregion.analysis import experts  # deferred: jax (see cli.main)
    from jaxregion.io import hf
    from jaxregion.report.experts import specific_table, write_report

    experts.require_moe(hf.load_config(hf.resolve(cfg.model)), "jaxregion experts")
    session = runtime.load_session(cfg.model, cfg.dtype, ctx.mesh)
    corpora = runtime.load_corpora(cfg.text, session, cfg.seq_len, cfg.max_seqs)
    stats = experts.routing_stats(session.params, session.config, corpora, cfg.batch_size)
    paths = write_report(stats, cfg.out, cfg.top, cfg.model)
    print(specific_table(stats, min(cfg.top, 10)))
    print(f"wrote {', '.join(paths)}", file=sys.stderr)
    return 0
