"""``jaxregion experiment`` (the paper's battery) and ``jaxregion dims`` (dimension analysis)."""

from __future__ import annotations

import argparse
import dataclasses
import sys

from jaxregion.cli.options import Context, add_command
from jaxregion.configs import DimsRunConfig, ExperimentConfig


def register(sub: argparse._SubParsersAction) -> None:
    add_command(sub, "experiment", ExperimentConfig, run_experiment, positional_config=True,
                help="run the paper's battery from a YAML config",
                description="Importance, regions, ablations, monolingual matrix, dimension "
                            "sweep and agreement tables -> report.md, results.json and PNG "
                            "plots.")
    add_command(sub, "dims", DimsRunConfig, run_dims,
                help="which hidden dimensions a region and the model single out",
                description="Region row/column concentration, massive activations, down_proj "
                            "super-weight candidates, and a single-parameter scaling sweep on "
                            "candidate vs random control dims.")


def run_experiment(cfg: ExperimentConfig, ctx: Context) -> int:
    from jaxregion import experiment  # deferred: jax (see cli.main)

    experiment.run(cfg, log=lambda m: print(m, file=sys.stderr), mesh=ctx.mesh)
    return 0


def run_dims(args: DimsRunConfig, ctx: Context) -> int:
    import numpy as np

    from jaxregion import dims, io, runtime
    from jaxregion.errors import UserError
    from jaxregion.regions import hidden_dim_profile, load_region
    from jaxregion.report.tables import markdown_table

    factors = list(args.factors)
    s = runtime.load_session(args.model, args.dtype, ctx.mesh)
    if not 0 <= args.layer < s.config.num_layers:
        raise UserError(f"--layer {args.layer}: the model has layers 0..{s.config.num_layers - 1}")
    region = load_region(args.region, template=s.params) if args.region else None
    corpora = runtime.load_corpora(args.text, s, args.seq_len, args.max_seqs)
    first = next(iter(corpora.values()))
    massive = dims.massive_activations(s.params, s.config, first[:8])
    supers = dims.super_weight_candidates(s.params, s.config)
    hidden = s.config.hidden_size
    if region is not None:
        profile = hidden_dim_profile(region, hidden)
        cands = [int(d) for d in np.argsort(-profile, kind="stable")[: args.candidates]]
    else:
        profile = None
        cands = list(dict.fromkeys(d for m in massive for d in m["dims"][:1]))[: args.candidates]
    controls = dims.control_dims(hidden, cands + [sw["hidden_dim"] for sw in supers],
                                 args.controls, args.seed)
    base = runtime.evaluate_corpora(s, corpora, args.batch_size)

    def ppl(params):
        res = runtime.evaluate_corpora(s, corpora, args.batch_size, params=params)
        return {k: r.perplexity for k, r in res.items()}

    points = dims.sweep(s.params, s.config, ppl, cands, controls, factors, args.layer)
    langs = list(corpora)
    print("## Candidate dimensions\n")
    print(markdown_table(["source", "dims"], [
        ["region (top entries per dim)",
         ", ".join(f"{d}:{int(profile[d])}" for d in cands) if profile is not None else "—"],
        ["massive activations (layer: dim)",
         ", ".join(f"{m['layer']}:{m['dims'][0]}" for m in massive)],
        ["super weights (layer: dim)", ", ".join(f"{w['layer']}:{w['hidden_dim']}"
                                                 for w in supers)],
        ["random controls", ", ".join(map(str, controls))]]))
    print("\n## Single-parameter scaling sweep\n")
    rows = [["base", "—", "—", *[base[k].perplexity for k in langs]]]
    rows += [[p.group, p.dim, f"x{p.factor:g}", *[p.perplexity[k] for k in langs]]
             for p in points]
    print(markdown_table(["group", "dim", "factor", *langs], rows))
    if args.json_out:
        io.write_json(args.json_out, {
            "model": args.model, "candidates": cands, "controls": controls,
            "massive_activations": massive, "super_weights": supers,
            "base": {k: r.perplexity for k, r in base.items()},
            "sweep": [dataclasses.asdict(p) for p in points]})
    return 0
