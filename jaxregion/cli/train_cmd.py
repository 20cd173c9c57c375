"""``jaxregion train | export | pretrain | forgetting``: training with frozen regions."""

from __future__ import annotations

import argparse
import os
import sys

from jaxregion.cli import common


def _add_training(p: argparse.ArgumentParser, text_required: bool = True) -> None:
    common.add_text(p, required=text_required)
    g = p.add_argument_group("training")
    g.add_argument("--steps", type=int, default=None, help="optimizer steps (required)")
    g.add_argument("--batch-size", type=int, default=8, help="windows per step (default 8)")
    g.add_argument("--seq-len", type=int, default=128, help="window length (default 128)")
    g.add_argument("--max-seqs", type=int, default=None, help="keep the first N training "
                   "windows per language")
    g.add_argument("--lr", type=float, default=3e-4, help="peak learning rate (default 3e-4)")
    g.add_argument("--warmup", type=int, default=0, help="linear warmup steps (default 0)")
    g.add_argument("--schedule", default="cosine", choices=["cosine", "constant", "linear"])
    g.add_argument("--weight-decay", type=float, default=0.1, help="AdamW decay (default 0.1)")
    g.add_argument("--clip", type=float, default=1.0, help="global-norm clip, 0 = none")
    g.add_argument("--b1", type=float, default=0.9)
    g.add_argument("--b2", type=float, default=0.95)
    g.add_argument("--grad-accum", type=int, default=1, help="micro-batches per step")
    g.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                   help="compute dtype; master weights stay float32")
    g.add_argument("--seed", type=int, default=0, help="data order seed (default 0)")
    c = p.add_argument_group("checkpoints and evaluation")
    c.add_argument("--ckpt-dir", default=None, help="checkpoints, metrics.jsonl; resumes from it")
    c.add_argument("--restart", action="store_true",
                   help="the ckpt-dir holds a different run: move it to CKPT_DIR/previous/ and "
                        "start afresh (default: resume, or refuse when the run differs)")
    c.add_argument("--save-every", type=int, default=100, help="checkpoint period (default 100)")
    c.add_argument("--keep", type=int, default=3, help="checkpoints kept (default 3)")
    common.add_text(p, required=False, flag="--eval")
    c.add_argument("--eval-every", type=int, default=0, help="eval period in steps (0 = end)")
    c.add_argument("--eval-max-seqs", type=int, default=None, help="eval windows per language")
    c.add_argument("--eval-batch-size", type=int, default=8)
    c.add_argument("--export", default=None, metavar="HF_DIR", help="write an HF dir at the end")
    c.add_argument("--no-progress", action="store_true", help="no progress bar")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="continued pre-training, optionally with a frozen region",
                       description="Continued pre-training with AdamW; --freeze keeps a region's "
                                   "parameters bitwise fixed. Resumes from --ckpt-dir.")
    p.add_argument("--model", required=True, help="HF checkpoint directory to start from")
    p.add_argument("--freeze", default=None, metavar="REGION.safetensors",
                   help="region file whose elements stay frozen")
    p.add_argument("--freeze-norms", action="store_true",
                   help="also freeze the region's norm weights (default: norms train)")
    _add_training(p)
    common.add_debug(p)
    p.set_defaults(func=run_train, _parser=p)

    e = sub.add_parser("export", help="write a training checkpoint as an HF directory")
    e.add_argument("--ckpt-dir", required=True)
    e.add_argument("--step", type=int, default=None, help="default: the latest readable step")
    e.add_argument("--out", required=True, metavar="HF_DIR")
    e.add_argument("--out-dtype", default=None, choices=["float32", "bfloat16", "float16"])
    common.add_debug(e)
    e.set_defaults(func=run_export)

    q = sub.add_parser("pretrain", help="train a small Llama from scratch",
                       description="Train a Llama-family model from random init on a "
                                   "multilingual mix; flags or --config YAML (keys = flag "
                                   "names; flags given on the command line win).")
    q.add_argument("--config", default=None, help="YAML with any of the flags below")
    q.add_argument("--tokenizer", default=None, help="tokenizer directory (e.g. from train_bpe)")
    q.add_argument("--out", default=None, metavar="HF_DIR", help="where the model goes")
    a = q.add_argument_group("architecture")
    a.add_argument("--hidden-size", type=int, default=256)
    a.add_argument("--layers", type=int, default=4)
    a.add_argument("--heads", type=int, default=4)
    a.add_argument("--kv-heads", type=int, default=None)
    a.add_argument("--intermediate-size", type=int, default=None)
    a.add_argument("--max-positions", type=int, default=512)
    a.add_argument("--init-seed", type=int, default=0)
    _add_training(q, text_required=False)
    common.add_debug(q)
    q.set_defaults(func=run_pretrain, _parser=q)

    f = sub.add_parser("forgetting", help="the paper's freezing experiment, end to end",
                       description="Continued pre-training on a target language under several "
                                   "freeze settings; writes report.md, results.json, plots.")
    f.add_argument("config", help="experiment YAML (see configs/forgetting_small.yaml)")
    f.add_argument("--out", default=None, help="output dir (overrides the config's out_dir)")
    f.add_argument("--no-progress", action="store_true")
    common.add_debug(f)
    f.set_defaults(func=run_forgetting)


def train_config(args: argparse.Namespace):
    from jaxregion.errors import UserError
    from jaxregion.train import TrainConfig

    if args.steps is None:
        raise UserError("--steps is required")
    if not args.ckpt_dir:
        raise UserError("--ckpt-dir is required")
    cfg = TrainConfig(
        steps=args.steps, batch_size=args.batch_size, seq_len=args.seq_len, lr=args.lr,
        warmup=args.warmup, schedule=args.schedule, weight_decay=args.weight_decay,
        clip=args.clip, grad_accum=args.grad_accum, dtype=args.dtype, b1=args.b1, b2=args.b2,
        save_every=args.save_every, keep=args.keep, eval_every=args.eval_every,
        eval_batch_size=args.eval_batch_size, seed=args.seed,
        freeze_norms=getattr(args, "freeze_norms", False))
    cfg.validate()
    if not args.text:
        raise UserError("give at least one --text LANG=SOURCE to train on")
    return cfg


def _train(args: argparse.Namespace, model: str, freeze: str | None) -> int:
    from jaxregion import hf, runtime
    from jaxregion.regions import load_region
    from jaxregion.train import train
    from jaxregion.train.run import prepare_ckpt_dir, weights_digest

    cfg = train_config(args)
    session = runtime.load_session(model, "float32")
    region = load_region(freeze, template=session.params) if freeze else None
    windows = runtime.load_corpora(args.text, session, args.seq_len, args.max_seqs)
    evals = runtime.load_corpora(args.eval, session, args.seq_len, args.eval_max_seqs) \
        if args.eval else {}
    info = {"command": "train", "texts": args.text, "evals": args.eval, "freeze": freeze,
            "freeze_norms": cfg.freeze_norms}
    prepare_ckpt_dir(args.ckpt_dir, session.path, session.config, info,
                     restart=getattr(args, "restart", False))
    res = train(session.params, session.config, windows, cfg, args.ckpt_dir, region=region,
                evals=evals, mesh=session.mesh, progress=not args.no_progress, run_info=info,
                model_id=weights_digest(session.path))
    if res.interrupted:
        return 128 + int(res.signum or 15)
    last = res.metrics[-1] if res.metrics else {}
    if last.get("eval_ppl"):
        print("final eval perplexity: " + ", ".join(f"{k}={v:.3f}" for k, v in
                                                     last["eval_ppl"].items()))
    if args.export:
        hf.export(res.params, session.config, args.export, tokenizer_from=session.path)
        print(f"wrote {args.export}", file=sys.stderr)
    return 0


def run_train(args: argparse.Namespace) -> int:
    return _train(args, args.model, args.freeze)


def run_export(args: argparse.Namespace) -> int:
    from jaxregion.train.run import export_checkpoint

    step = export_checkpoint(args.ckpt_dir, args.out, args.step, args.out_dtype)
    print(f"wrote step {step} of {args.ckpt_dir} to {args.out}", file=sys.stderr)
    return 0


def _merge_yaml(args: argparse.Namespace) -> None:
    """Config keys fill in flags that were left at their defaults."""

    from jaxregion.config import read_yaml
    from jaxregion.errors import UserError

    d = read_yaml(args.config) or {}
    if not isinstance(d, dict):
        raise UserError(f"--config {args.config}: expected a mapping of flag names to values")
    parser = args._parser
    for k, v in d.items():
        key = str(k).replace("-", "_")
        if not hasattr(args, key) or key.startswith("_") or key in ("func", "config"):
            raise UserError(f"--config {args.config}: unknown key {k!r}")
        if key in ("text", "eval"):
            if isinstance(v, dict):
                v = [f"{lang}={src}" for lang, src in v.items()]
            if not getattr(args, key):
                setattr(args, key, list(v))
        elif getattr(args, key) == parser.get_default(key):
            setattr(args, key, v)


def run_pretrain(args: argparse.Namespace) -> int:
    from jaxregion.errors import UserError
    from jaxregion.runtime import parse_texts
    from jaxregion.train.pretrain import Arch, pretrain
    from jaxregion.train.run import check_writable

    if args.config:
        _merge_yaml(args)
    args.text = args.text or []
    if not args.tokenizer:
        raise UserError("--tokenizer is required (a tokenizer directory, e.g. from train_bpe)")
    if not args.out:
        raise UserError("--out is required (where the HF model goes)")
    cfg = train_config(args)
    check_writable(args.ckpt_dir)
    arch = Arch(hidden_size=args.hidden_size, num_layers=args.layers, num_heads=args.heads,
                num_kv_heads=args.kv_heads, intermediate_size=args.intermediate_size,
                max_positions=args.max_positions, init_seed=args.init_seed)
    res = pretrain(parse_texts(args.text), args.tokenizer, arch, cfg, args.ckpt_dir, args.out,
                   max_seqs=args.max_seqs, evals=parse_texts(args.eval or []),
                   eval_max_seqs=args.eval_max_seqs, progress=not args.no_progress)
    if res.interrupted:
        return 128 + int(res.signum or 15)
    last = res.metrics[-1] if res.metrics else {}
    if last.get("eval_ppl"):
        print("final eval perplexity: " + ", ".join(f"{k}={v:.3f}" for k, v in
                                                     last["eval_ppl"].items()))
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


def run_forgetting(args: argparse.Namespace) -> int:
    from jaxregion.forgetting import load_config, run

    cfg = load_config(args.config)
    res = run(cfg, out_dir=args.out, progress=not args.no_progress)
    if res.interrupted:
        return 128 + int(res.signum or 15)
    print(res.results["table"])
    print(f"wrote {os.path.join(res.out, 'report.md')}", file=sys.stderr)
    return 0
