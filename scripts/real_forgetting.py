#!/usr/bin/env python
"""Catastrophic forgetting on real text, small enough for a laptop CPU (<= ~10 min on 2 cores).

Needs ``../shared/corpora/text/LANG.{train,valid}.txt`` (next to the repository; never copied
into it). Steps:

1. a byte-level BPE on the base languages + the new one (so the new language is not
   penalised by tokenization; its embeddings are still untrained in the base model);
2. a small Llama pretrained from scratch on the base languages (``jaxregion pretrain`` code);
3. importance scores per base language (``taylor``, the paper's |θ·∇L|; ``magnitude`` |θ| if
   the importance API is missing -- said so in the output) and the core region = top 1% of
   the summed scores per tensor;
4. continued pre-training on the new language with nothing / the core / a random region of
   the same per-tensor size frozen (same data order and seeds), via ``jaxregion.forgetting``;
5. a table: target-language gain and forgetting (perplexity increase on the others).

    python scripts/real_forgetting.py [--out DIR] [--target ko] [--base en,es,de,fr,ru,zh]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
from itertools import islice

HERE = os.path.dirname(os.path.abspath(__file__))
SHARED = os.path.normpath(os.path.join(HERE, "..", "..", "shared", "corpora", "text"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpora", default=SHARED)
    ap.add_argument("--out", default="/tmp/jaxregion_real_forgetting")
    ap.add_argument("--base", default="en,es,de,fr,ru,zh")
    ap.add_argument("--target", default="ko")
    ap.add_argument("--vocab", type=int, default=2048)
    ap.add_argument("--pretrain-steps", type=int, default=500)
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args()
    if not os.path.isdir(args.corpora):
        print(f"{args.corpora}: not found; this script needs the shared corpora", file=sys.stderr)
        return 2
    from jaxregion.data.sources import open_source
    from jaxregion.data.tokenizer import train_bpe
    from jaxregion.forgetting import config_from_dict, run_experiment

    t0 = time.time()
    base = args.base.split(",")
    langs = [*base, args.target]
    tr = {lang: os.path.join(args.corpora, f"{lang}.train.txt") for lang in langs}
    va = {lang: os.path.join(args.corpora, f"{lang}.valid.txt") for lang in langs}
    for p in [*tr.values(), *va.values()]:
        if not os.path.isfile(p):
            print(f"{p}: missing", file=sys.stderr)
            return 2
    os.makedirs(args.out, exist_ok=True)
    tok = os.path.join(args.out, "tokenizer")
    if not os.path.isfile(os.path.join(tok, "tokenizer.json")):
        print(f"[{time.time() - t0:5.0f}s] tokenizer: BPE {args.vocab} on {langs}", flush=True)
        train_bpe({lang: list(islice(open_source(tr[lang]).documents(), 4000)) for lang in langs},
                  args.vocab, tok)
    has_importance = importlib.util.find_spec("jaxregion.importance") is not None
    estimator = "taylor" if has_importance else "magnitude"
    if not has_importance:
        print("NOTE: jaxregion.importance is missing; the core region is MAGNITUDE-based (|θ|), "
              "not the paper's gradient importance", flush=True)
    cfg = config_from_dict({
        "name": f"real text: {'+'.join(base)} -> {args.target}",
        "out_dir": args.out,
        "target": args.target,
        "target_train": tr[args.target],
        "evals": {lang: va[lang] for lang in [args.target, *base]},
        "pretrain": {
            "texts": {lang: tr[lang] for lang in base}, "tokenizer": tok,
            "hidden_size": 96, "num_layers": 3, "num_heads": 4, "intermediate_size": 256,
            "max_positions": 256,
            "train": {"steps": args.pretrain_steps, "batch_size": 16, "seq_len": 64,
                      "lr": 3e-3, "warmup": 50, "eval_every": 0, "save_every": 250,
                      "keep": 1},
        },
        "importance": {"texts": {lang: tr[lang] for lang in base}, "estimator": estimator,
                       "max_seqs": 32, "batch_size": 8},
        "train": {"steps": args.steps, "batch_size": 16, "seq_len": 64, "lr": 1e-3,
                  "warmup": 15, "schedule": "cosine", "seed": 0, "eval_every": 50,
                  "eval_max_seqs": 32, "save_every": 100, "keep": 1},
        "settings": {"none": {}, "core": {"kind": "core", "ratio": 0.01},
                     "random": {"kind": "random", "like": "core", "seed": 0}},
    }, "real_forgetting")
    out = run_experiment(cfg, progress=not args.no_progress)
    with open(os.path.join(out, "results.json"), encoding="utf-8") as f:
        res = json.load(f)
    from jaxregion.report.tables import markdown_table

    rows = [(name, s["target_ppl"], s["target_gain"], s["others_ppl"], s["forgetting"],
             s["forgetting_pct"]) for name, s in res["settings"].items()]
    print()
    print(f"base: {args.target} ppl {res['base'][args.target]:.2f}; others "
          + ", ".join(f"{k} {v:.2f}" for k, v in res["base"].items() if k != args.target))
    print(f"core region from {estimator} importance over {', '.join(base)} (1% per tensor)")
    print(markdown_table(["setting", f"{args.target} ppl", "target gain", "others ppl",
                          "forgetting (ppl +)", "forgetting %"], rows))
    print(f"report: {os.path.join(out, 'report.md')}  ({time.time() - t0:.0f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
