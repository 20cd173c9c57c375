"""``jaxregion eval``: perplexity and bits per byte per language."""

from __future__ import annotations

import argparse
import sys

from jaxregion.cli import common


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="perplexity and bits per byte per language",
                       description="Perplexity and bits per byte per language under the "
                                   "packing contract.")
    common.add_model(p)
    common.add_text(p)
    common.add_windows(p)
    p.add_argument("--region", default=None, help="a region file (.safetensors) to intervene on")
    p.add_argument("--region-op", default="zero",
                   help="what to do to the region: zero, scale:F, noise:S (relative std), set:V")
    p.add_argument("--perturb", action="append", default=[], metavar="SPEC",
                   help="edit single entries, e.g. 'model.layers.1.mlp.down_proj.weight[:,2100]*4'"
                        " (ops * = +); repeatable")
    p.add_argument("--seed", type=int, default=0, help="seed for noise:S")
    p.add_argument("--json", dest="json_out", default=None, help="write results JSON here")
    common.add_debug(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from jaxregion import io, runtime
    from jaxregion.report.tables import markdown_table

    session = runtime.load_session(args.model, args.dtype)
    params = runtime.edit_params(session, args.region, args.region_op, args.perturb, args.seed)
    corpora = runtime.load_corpora(args.text, session, args.seq_len, args.max_seqs)
    results = runtime.evaluate_corpora(session, corpora, args.batch_size, params=params)
    out = {
        "model": args.model, "seq_len": args.seq_len, "dtype": args.dtype,
        "region": args.region, "region_op": args.region_op if args.region else None,
        "perturb": args.perturb,
        "perplexity": {k: r.perplexity for k, r in results.items()},
        "loss": {k: r.loss for k, r in results.items()},
        "tokens": {k: r.tokens for k, r in results.items()},
        "bits_per_byte": {k: r.bits_per_byte for k, r in results.items()},
        "bytes": {k: r.bytes for k, r in results.items()},
    }
    rows = [(k, r.windows, r.tokens, r.loss, r.perplexity,
             "—" if r.bits_per_byte is None else r.bits_per_byte) for k, r in results.items()]
    print(markdown_table(["lang", "windows", "tokens", "loss", "perplexity", "bits/byte"], rows))
    if args.json_out:
        io.write_json(args.json_out, out)
        print(f"wrote {args.json_out}", file=sys.stderr)
    return 0
