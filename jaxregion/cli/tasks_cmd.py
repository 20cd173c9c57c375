"""``jaxregion tasks``: lm-evaluation-harness tasks on a (possibly edited) model."""

from __future__ import annotations

import argparse
import json
import os
import sys

from jaxregion.cli import common


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tasks", help="lm-evaluation-harness tasks (needs the tasks extra)",
                       description="Run lm-evaluation-harness tasks through the `jaxregion` "
                                   "lm-eval model, with the same edits as eval. Writes lm-eval's "
                                   "results JSON and a Markdown table.")
    common.add_model(p)
    p.add_argument("--tasks", required=True, help="comma-separated lm-eval task names")
    p.add_argument("--include-path", default=None, help="a folder of extra task YAMLs")
    p.add_argument("--region", default=None, help="a region file (.safetensors) to intervene on")
    p.add_argument("--region-op", default="zero",
                   help="what to do to the region: zero, scale:F, noise:S (relative std), set:V")
    p.add_argument("--perturb", action="append", default=[], metavar="SPEC",
                   help="edit single entries (as in eval); repeatable")
    p.add_argument("--seed", type=int, default=0, help="seed for noise:S")
    p.add_argument("--batch-size", type=int, default=8, help="requests per step (default 8)")
    p.add_argument("--limit", type=int, default=None, help="first N documents of each task")
    p.add_argument("--num-fewshot", type=int, default=None, help="few-shot examples")
    p.add_argument("--json", dest="json_out", default=None,
                   help="write lm-eval's results JSON here (and the table beside it as .md)")
    common.add_debug(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from jaxregion import io
    from jaxregion.errors import UserError

    try:
        from jaxregion import lm_eval as jlm
    except ImportError as e:
        raise UserError(f"lm-evaluation-harness is not installed ({e}); "
                        "pip install -e '.[tasks]'") from None
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    results = jlm.run_tasks(args.model, tasks, args.include_path, args.region, args.region_op,
                            args.perturb, args.seed, args.dtype, args.batch_size, args.limit,
                            args.num_fewshot)
    table = jlm.markdown(results)
    print(table)
    if args.json_out:
        io.write_text(args.json_out, json.dumps(results, indent=2, allow_nan=False) + "\n")
        io.write_text(os.path.splitext(args.json_out)[0] + ".md", table)
        print(f"wrote {args.json_out}", file=sys.stderr)
    return 0
