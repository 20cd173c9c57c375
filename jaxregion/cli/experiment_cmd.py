"""``jaxregion experiment`` (the paper's battery) and ``jaxregion dims`` (dimension analysis)."""

from __future__ import annotations

import argparse
import dataclasses
import sys

from jaxregion.cli import common


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("experiment", help="run the paper's battery from a YAML config",
                       description="Importance, regions, ablations, monolingual matrix, "
                                   "dimension sweep and agreement tables -> report.md, "
                                   "results.json and PNG plots.")
    p.add_argument("config", help="experiment YAML (see configs/)")
    p.add_argument("--out", default=None, help="output folder (overrides the config's `out`)")
    common.add_debug(p)
    p.set_defaults(func=run_experiment)

    d = sub.add_parser("dims", help="which hidden dimensions a region and the model single out",
                       description="Region row/column concentration, massive activations, "
                                   "down_proj super-weight candidates, and a single-parameter "
                                   "scaling sweep on candidate vs random control dims.")
    common.add_model(d)
    common.add_text(d)
    common.add_windows(d, seq_len=128)
    d.add_argument("--region", default=None, help="region file; its most-selected dims are "
                   "candidates (default: dims of the largest activations)")
    d.add_argument("--layer", type=int, default=1, help="layer whose entries are scaled")
    d.add_argument("--dims", default=None, help="candidate dims, e.g. 2100 (default: auto)")
    d.add_argument("--control-dims", default=None, help="control dims, e.g. 4200 "
                   "(default: seeded random)")
    d.add_argument("--targets", default="input_norm",
                   help="comma-separated roles, e.g. input_norm,post_attention_layernorm,"
                        "o_proj,down_proj,q_proj (default input_norm)")
    d.add_argument("--factors", default="4,0", help="comma-separated scale factors (default 4,0)")
    d.add_argument("--candidates", type=int, default=3, help="candidate dims to auto-pick")
    d.add_argument("--controls", type=int, default=3, help="random control dims to draw")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--json", dest="json_out", default=None)
    common.add_debug(d)
    d.set_defaults(func=run_dims)


def run_experiment(args: argparse.Namespace) -> int:
    from jaxregion import experiment

    cfg = experiment.load_config(args.config)
    if args.out:
        cfg = dataclasses.replace(cfg, out=args.out)
    experiment.run(cfg, log=lambda m: print(m, file=sys.stderr), source=args.config)
    return 0


def _numbers(flag: str, text: str | None, kind: type) -> tuple:
    from jaxregion.errors import UserError

    try:
        return tuple(kind(x) for x in (text or "").split(",") if x.strip())
    except ValueError:
        raise UserError(f"{flag} {text!r}: expected comma-separated numbers") from None


def run_dims(args: argparse.Namespace) -> int:
    import json

    from jaxregion import dims, io, runtime
    from jaxregion.regions import hidden_dim_profile, load_region
    from jaxregion.report.battery import dims_markdown

    dcfg = dims.DimsConfig(
        layer=args.layer, dims=_numbers("--dims", args.dims, int),
        controls=_numbers("--control-dims", args.control_dims, int),
        targets=tuple(t.strip() for t in args.targets.split(",") if t.strip()),
        factors=_numbers("--factors", args.factors, float), auto_candidates=args.candidates,
        auto_controls=args.controls, seed=args.seed)
    s = runtime.load_session(args.model, args.dtype)
    dims.validate(dcfg, s.config, "jaxregion dims")
    region = load_region(args.region, template=s.params) if args.region else None
    corpora = runtime.load_corpora(args.text, s, args.seq_len, args.max_seqs)

    def ppl(params):
        res = runtime.evaluate_corpora(s, corpora, args.batch_size, params=params)
        return {k: r.perplexity for k, r in res.items()}

    profile = hidden_dim_profile(region, s.config.hidden_size) if region is not None else None
    res = dims.analyse(s.params, s.config, ppl, ppl(s.params),
                       next(iter(corpora.values())), dcfg, profile)
    print("\n".join(dims_markdown(res, list(corpora))))
    if args.json_out:
        blob = {"model": args.model, **dataclasses.asdict(res)}
        io.write_text(args.json_out, json.dumps(blob, indent=2, allow_nan=False) + "\n")
    return 0
