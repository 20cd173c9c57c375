#!/usr/bin/env python
"""The forgetting frontier on real text, small enough for a laptop CPU.

Needs ``../shared/corpora/text/LANG.{train,valid}.txt`` (next to the repository; never copied
into it). One ``jaxregion forgetting`` sweep (the library's ``forgetting.run``):

1. a byte-level BPE on the base languages + the target (so the target is not penalised by
   tokenization; its text is still unseen by the base model);
2. a small Llama pretrained from scratch on the base languages (the ``jaxregion pretrain``
   path);
3. continued pre-training on the target while protecting the base languages: core (taylor)
   vs random regions at several ratios x {element, column}, SSU-style 50% wanda columns, and
   the unfrozen reference alone, with replay and with EWC; several seeds;
4. the frontier: results.json, report.md, frontier.png in ``--out``.

    python scripts/real_forgetting.py [--out DIR] [--target it] [--base en,es,de,fr,ru]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SHARED = os.path.normpath(os.path.join(HERE, "..", "..", "shared", "corpora", "text"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpora", default=SHARED)
    ap.add_argument("--out", default="/tmp/jaxregion_real_forgetting")
    ap.add_argument("--base", default="en,es,de,fr,ru")
    ap.add_argument("--target", default="it")
    ap.add_argument("--vocab", type=int, default=2048)
    ap.add_argument("--pretrain-steps", type=int, default=500)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--ratios", default="0.01,0.1,0.5")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args()
    if not os.path.isdir(args.corpora):
        print(f"{args.corpora}: not found; this script needs the shared corpora", file=sys.stderr)
        return 2
    from jaxregion.analysis.forgetting import config_from_dict, run
    from jaxregion.train.pretrain import ensure_tokenizer

    t0, c0 = time.time(), time.process_time()
    base = args.base.split(",")
    langs = [*base, args.target]
    tr = {lang: os.path.join(args.corpora, f"{lang}.train.txt") for lang in langs}
    va = {lang: os.path.join(args.corpora, f"{lang}.valid.txt") for lang in langs}
    for p in [*tr.values(), *va.values()]:
        if not os.path.isfile(p):
            print(f"{p}: missing", file=sys.stderr)
            return 2
    tok = ensure_tokenizer(tr, os.path.join(args.out, "tokenizer"), args.vocab, 4000)
    seeds = [int(s) for s in args.seeds.split(",")]
    cfg = config_from_dict(
        {
            "name": f"real text: {'+'.join(base)} -> {args.target}",
            "out_dir": args.out,
            "target": args.target,
            "target_train": tr[args.target],
            "evals": {lang: va[lang] for lang in [args.target, *base]},
            "pretrain": {
                "texts": {lang: tr[lang] for lang in base},
                "tokenizer": tok,
                "hidden_size": 96,
                "num_layers": 3,
                "num_heads": 4,
                "intermediate_size": 256,
                "max_positions": 256,
                "train": {
                    "steps": args.pretrain_steps,
                    "batch_size": 16,
                    "seq_len": 64,
                    "lr": 3e-3,
                    "warmup": 50,
                    "save_every": 250,
                    "keep": 1,
                },
            },
            "importance": {
                "texts": {lang: tr[lang] for lang in base},
                "max_seqs": 32,
                "batch_size": 8,
            },
            "sweep": [
                {
                    "scorers": ["core", "random"],
                    "ratios": [float(r) for r in args.ratios.split(",")],
                    "granularities": ["element", "column"],
                    "seeds": seeds,
                },
                {"scorers": ["none"], "baselines": ["replay", "ewc"], "seeds": seeds},
                {
                    "scorers": ["wanda"],
                    "ratios": [0.5],
                    "granularities": ["column"],
                    "seeds": seeds,
                },
            ],
            "baselines": {"replay_ratio": 0.25, "ewc_lambda": 1.0, "replay_max_seqs": 256},
            "train": {
                "steps": args.steps,
                "batch_size": 16,
                "seq_len": 64,
                "lr": args.lr,
                "warmup": max(1, args.steps // 10),
                "seed": 0,
                "eval_max_seqs": 32,
                "save_every": 1000,
                "keep": 1,
            },
        },
        "real_forgetting",
    )
    res = run(cfg, progress=not args.no_progress)
    if res.interrupted:
        print("interrupted; run again to resume", file=sys.stderr)
        return 130
    r = res.results
    print()
    print("base ppl: " + ", ".join(f"{k} {v:.2f}" for k, v in r["base_ppl"].items()))
    print(r["table"])
    print()
    print("\n".join(f"Outcome: {line}" for line in r["outcome"]))
    print(
        f"report: {os.path.join(res.out, 'report.md')}  (wall {time.time() - t0:.0f} s, "
        f"CPU {time.process_time() - c0:.0f} s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
