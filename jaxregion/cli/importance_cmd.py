"""``jaxregion importance``: per-parameter importance scores, one file per language.

Writes ``OUT/LANG.safetensors`` (float32, HF names, HF layout; header metadata: language,
estimator, windows, tokens, seq_len, model path and fingerprint, jaxregion version, ...).
A language whose file already exists for the same input is skipped. Within a language the
accumulator is checkpointed with orbax every ``--save-every`` windows under
``OUT/.partial/LANG/``; rerunning the same command resumes from there and ends bitwise
equal to an uninterrupted run.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from jaxregion.cli import common


def register(sub: argparse._SubParsersAction) -> None:
    from jaxregion.importance import ESTIMATORS

    p = sub.add_parser(
        "importance", help="per-parameter importance scores per language",
        description="Per-parameter importance (default: the paper's θ⊙∇θL over all windows) "
                    "for each language, written as OUT/LANG.safetensors.")
    common.add_model(p)
    common.add_text(p)
    common.add_windows(p)
    p.add_argument("--estimator", default="taylor", choices=ESTIMATORS,
                   help="taylor (θ⊙∇L, signed; default), taylor-abs, fisher, wanda "
                        "(linear weights only, others 0), magnitude (|θ|, no data)")
    p.add_argument("--save-every", type=int, default=1000, metavar="W",
                   help="checkpoint the accumulation every W windows (default 1000)")
    p.add_argument("--remat", action="store_true",
                   help="rematerialise layer activations in the backward pass (less memory)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--snapshots", default=None, metavar="N1,N2,...",
                   help="also write the scores of the first N1, N2, ... windows, from the same "
                        "pass, to OUT/snapshots/N/LANG.safetensors")
    p.add_argument("--until-stable", type=float, default=None, metavar="J",
                   help="double the windows (from one batch, up to --max-seqs) until the "
                        "top-1%% regions at n and 2n windows agree with Jaccard >= J")
    p.add_argument("--stop-after-windows", type=int, default=None, help=argparse.SUPPRESS)
    common.add_debug(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from jaxregion import importance as I
    from jaxregion import runtime, scorefiles
    from jaxregion.errors import UserError
    from jaxregion.regions import fingerprint, importance_path

    # --- validate everything before computing ------------------------------------------
    if args.save_every <= 0:
        raise UserError(f"--save-every {args.save_every}: must be positive")
    if args.batch_size <= 0:
        raise UserError(f"--batch-size {args.batch_size}: must be positive")
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise UserError(f"--out {args.out}: exists and is not a directory")
    snapshots = scorefiles.parse_snapshots(args.snapshots)
    scorefiles.check_schedule(snapshots, args.until_stable, args.max_seqs)
    texts = runtime.parse_texts(args.text)
    session = runtime.load_session(args.model, args.dtype)
    data_free = args.estimator in I.DATA_FREE
    if data_free:
        runtime.check_seq_len(session.config, args.seq_len)
        corpora = {lang: None for lang in texts}
    else:
        corpora = runtime.load_corpora(args.text, session, args.seq_len, args.max_seqs)
    fp = fingerprint(session.params)
    todo = []
    for lang, w in corpora.items():
        if w is not None:
            scorefiles.check_schedule(snapshots, args.until_stable, len(w),
                                      f"the {len(w)} windows of {lang}")
        path = importance_path(args.out, lang)
        if scorefiles.is_complete(args.out, lang, args.estimator, fp, args.seq_len, args.dtype,
                                  w, snapshots, args.until_stable):
            print(f"{lang}: {path} is complete, skipped", file=sys.stderr)
        else:
            todo.append(lang)

    # --- compute -----------------------------------------------------------------------
    def log(msg: str) -> None:
        print(msg, file=sys.stderr)

    total = sum(0 if corpora[lang] is None else len(corpora[lang]) for lang in todo)
    tokens_per_window = args.seq_len - 1
    with tqdm(total=total * tokens_per_window, desc="importance", unit="tok", unit_scale=True,
              disable=None, file=sys.stderr, leave=False) as bar:
        for lang in todo:
            bar.set_postfix_str(lang)
            t0 = time.perf_counter()
            try:
                got = scorefiles.score_language(
                    session, lang, corpora[lang], args.out, estimator=args.estimator,
                    batch_size=args.batch_size, seq_len=args.seq_len, dtype=args.dtype,
                    source=texts[lang], save_every=args.save_every, remat=args.remat,
                    progress=lambda n: bar.update(n * tokens_per_window),
                    stop_after=args.stop_after_windows, log=log, snapshots=snapshots,
                    until_stable=args.until_stable)
            except scorefiles.Stopped as e:
                print(f"{lang}: stopped after {e.args[0]} windows (--stop-after-windows); state "
                      f"saved in {os.path.join(args.out, scorefiles.PARTIAL, lang)}",
                      file=sys.stderr)
                return 3
            dt = time.perf_counter() - t0
            n = 0 if corpora[lang] is None else int(got.meta.get("windows", 0))
            tokens = n * tokens_per_window
            rate = f", {tokens / dt:,.0f} tok/s" if tokens and dt > 0 else ""
            print(f"{lang}: {n} windows, {tokens} tokens, {dt:.1f} s{rate} -> {got.path}",
                  file=sys.stderr)
    return 0
