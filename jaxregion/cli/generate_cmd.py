"""``jaxregion generate``: what the (edited) model writes after each prompt."""

from __future__ import annotations

import argparse
import json
import sys

from jaxregion.cli import common


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="continue prompts (base and edited side by side)",
                       description="Batched generation with a KV cache. Greedy by default; "
                                   "with --region/--perturb each row shows the base and the "
                                   "edited model's completion.")
    common.add_model(p)
    p.add_argument("--prompt", action="append", default=[], metavar="TEXT",
                   help="a prompt; repeatable")
    p.add_argument("--prompts", default=None, metavar="FILE.jsonl",
                   help='prompts, one JSON object a line with a "prompt" field (or a string)')
    p.add_argument("--max-new-tokens", type=int, default=32, help="tokens to add (default 32)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (default 1)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed, and noise:S's")
    p.add_argument("--batch-size", type=int, default=8, help="prompts per batch (default 8)")
    p.add_argument("--region", default=None, help="a region file (.safetensors) to intervene on")
    p.add_argument("--region-op", default="zero",
                   help="what to do to the region: zero, scale:F, noise:S (relative std), set:V")
    p.add_argument("--perturb", action="append", default=[], metavar="SPEC",
                   help="edit single entries (as in eval); repeatable")
    p.add_argument("--json", dest="json_out", default=None, help="write the rows here")
    common.add_debug(p)
    p.set_defaults(func=run)


def read_prompts(path: str) -> list[tuple[str, str]]:
    """``[(name for errors, text)]`` from a JSONL file."""
    from jaxregion.errors import UserError

    out = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{path}:{n}: not JSON ({e.msg})") from None
            text = obj.get("prompt") if isinstance(obj, dict) else obj
            if not isinstance(text, str):
                raise UserError(f'{path}:{n}: expected a string or an object with a "prompt" '
                                "string")
            out.append((f"{path}:{n}", text))
    return out


def run(args: argparse.Namespace) -> int:
    from jaxregion import io, runtime
    from jaxregion.errors import UserError
    from jaxregion.generate import (
        Sampling,
        check_prompts,
        check_texts,
        completions,
        encode_prompts,
    )
    from jaxregion.report.tables import cell_text, markdown_table

    named = read_prompts(args.prompts) if args.prompts else []
    named += [(f"--prompt {i + 1}", t) for i, t in enumerate(args.prompt)]
    if not named:
        raise UserError("no prompts given; pass --prompt TEXT or --prompts FILE.jsonl")
    if args.max_new_tokens <= 0:
        raise UserError(f"--max-new-tokens {args.max_new_tokens}: must be at least 1")
    sampling = Sampling(args.temperature, args.top_p, args.seed)
    sampling.check()
    names, texts = [n for n, _ in named], [t for _, t in named]
    check_texts(texts, names)
    session = runtime.load_session(args.model, args.dtype)
    check_prompts(encode_prompts(texts, session.tokenizer, names), args.max_new_tokens,
                  session.config, names)
    edited = bool(args.region or args.perturb)
    params = runtime.edit_params(session, args.region, args.region_op, args.perturb, args.seed)

    def write(p: dict) -> list[dict]:
        return completions(p, session.config, session.tokenizer, texts, args.max_new_tokens,
                           sampling, args.batch_size, names)

    rows = write(session.params)
    if edited:
        for row, e in zip(rows, write(params)):
            row["edited"] = {"completion": e["completion"], "token_ids": e["token_ids"]}
    headers = ["prompt", "completion"] + (["edited"] if edited else [])
    table = [[cell_text(r["prompt"], 40), cell_text(r["completion"])]
             + ([cell_text(r["edited"]["completion"])] if edited else []) for r in rows]
    print(markdown_table(headers, table))
    if args.json_out:
        io.write_text(args.json_out, json.dumps(rows, indent=2, ensure_ascii=False,
                                                allow_nan=False) + "\n")
        print(f"wrote {args.json_out}", file=sys.stderr)
    return 0
