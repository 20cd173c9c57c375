"""``jaxregion demo``: the whole pipeline offline, on the built-in synthetic corpus."""

from __future__ import annotations

import argparse

from jaxregion.cli import common


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo", help="end-to-end demo: corpus, tokenizer, tiny model, regions, report",
        description="Build a synthetic multilingual corpus, train a tokenizer and a tiny Llama, "
                    "compute importance on 6 languages, build core/bottom/random/monolingual "
                    "regions, ablate them, sweep single dimensions, run freeze-vs-no-freeze "
                    "continued pre-training, and write DIR/report.md. Stages are cached.")
    p.add_argument("--corpus", default="synthetic",
                   help="'synthetic' (default) or a directory of LANG.train.txt/LANG.valid.txt")
    p.add_argument("--out", default="demo_out", help="output folder (default demo_out)")
    p.add_argument("--pretrain-steps", type=int, default=None, help="override pretraining steps")
    p.add_argument("--quick", action="store_true", help="a much smaller run (for smoke tests)")
    common.add_debug(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import dataclasses

    from jaxregion import demo

    cfg = demo.DemoConfig(out=args.out, corpus=args.corpus)
    if args.quick:
        cfg = dataclasses.replace(cfg, train_docs=800, valid_docs=100, vocab_size=384,
                                  hidden_size=64, num_layers=2, intermediate_size=128,
                                  pretrain_steps=30, pretrain_batch=8, importance_windows=16,
                                  eval_windows=8, forgetting_steps=6, seq_len=32,
                                  forgetting_ratios=(0.1,))
    if args.pretrain_steps is not None:
        cfg = dataclasses.replace(cfg, pretrain_steps=args.pretrain_steps)
    demo.run(cfg)
    return 0
