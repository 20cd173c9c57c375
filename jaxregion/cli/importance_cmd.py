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

PARTIAL = ".partial"


class _Stopped(Exception):
    """Raised by the hidden --stop-after-windows testing hook once a checkpoint is saved."""


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
    p.add_argument("--stop-after-windows", type=int, default=None, help=argparse.SUPPRESS)
    common.add_debug(p)
    p.set_defaults(func=run)


def _header(path: str) -> dict[str, str] | None:
    from safetensors import safe_open

    try:
        with safe_open(path, framework="np") as f:
            return dict(f.metadata() or {})
    except Exception:
        return None


def run(args: argparse.Namespace) -> int:
    import numpy as np
    from tqdm.auto import tqdm

    from jaxregion import __version__, runtime
    from jaxregion import importance as I
    from jaxregion.errors import UserError
    from jaxregion.regions import fingerprint, importance_path, save_scores

    # --- validate everything before computing ------------------------------------------
    if args.save_every <= 0:
        raise UserError(f"--save-every {args.save_every}: must be positive")
    if args.batch_size <= 0:
        raise UserError(f"--batch-size {args.batch_size}: must be positive")
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise UserError(f"--out {args.out}: exists and is not a directory")
    texts = runtime.parse_texts(args.text)
    session = runtime.load_session(args.model, args.dtype)
    cfg = session.config
    data_free = args.estimator in I.DATA_FREE
    if data_free:
        corpora = {lang: np.zeros((0, args.seq_len), np.int32) for lang in texts}
    else:
        corpora = runtime.load_corpora(args.text, session, args.seq_len, args.max_seqs)
    fp = fingerprint(session.params)
    batch = I.effective_batch_size(args.batch_size, session.mesh)

    def identity(lang: str) -> dict[str, str]:
        w = corpora[lang]
        return {"language": lang, "estimator": args.estimator, "model": fp,
                "seq_len": str(args.seq_len), "dtype": args.dtype,
                "windows": str(0 if data_free else len(w)),
                "windows_digest": "" if data_free else I.windows_digest(w)}

    todo = []
    for lang in corpora:
        path = importance_path(args.out, lang)
        if os.path.exists(path):
            h = _header(path)
            want = identity(lang)
            if h is None:
                raise UserError(f"{path} exists but is not a readable safetensors file; delete it "
                                "to recompute")
            bad = [k for k, v in want.items() if h.get(k) != v]
            if bad:
                k = bad[0]
                raise UserError(f"{path} exists but was computed with {k}={h.get(k)!r}, not "
                                f"{want[k]!r}; use another --out or delete the file")
            print(f"{lang}: {path} is complete, skipped", file=sys.stderr)
            continue
        todo.append(lang)

    # --- compute -----------------------------------------------------------------------
    total = sum(len(corpora[lang]) * (args.seq_len - 1) for lang in todo)
    with tqdm(total=total, desc="importance", unit="tok", unit_scale=True, disable=None,
              file=sys.stderr, leave=False) as bar:
        for lang in todo:
            windows = corpora[lang]
            path = importance_path(args.out, lang)
            partial_dir = os.path.join(args.out, PARTIAL, lang)
            run_meta = {k: v for k, v in identity(lang).items()}
            state = None
            if not data_free:
                like = I.init_state(I.place_params(session.params, session.mesh), cfg,
                                    args.estimator, args.batch_size, session.mesh)
                state = I.load_partial(partial_dir, like, run_meta)
                if state is not None:
                    print(f"{lang}: resuming at window {state.position}/{len(windows)} from "
                          f"{partial_dir}", file=sys.stderr)
                    bar.update(state.position * (args.seq_len - 1))
                elif os.path.isdir(partial_dir):
                    print(f"{lang}: discarding partial state in {partial_dir} (made from other "
                          "input)", file=sys.stderr)
                    I.clear_partial(partial_dir)

            def checkpoint(st: I.ImportanceState, partial_dir: str = partial_dir,
                           run_meta: dict = run_meta) -> None:
                I.save_partial(partial_dir, st, run_meta)
                if args.stop_after_windows is not None and st.position >= args.stop_after_windows:
                    raise _Stopped(st.position)

            bar.set_postfix_str(lang)
            t0 = time.perf_counter()
            try:
                res = I.compute_importance(
                    session.params, cfg, windows, args.estimator, args.batch_size, session.mesh,
                    progress=lambda n: bar.update(n * (args.seq_len - 1)), state=state,
                    remat=args.remat, checkpoint=checkpoint, checkpoint_every=args.save_every)
            except _Stopped as e:
                print(f"{lang}: stopped after {e.args[0]} windows (--stop-after-windows); state "
                      f"saved in {partial_dir}", file=sys.stderr)
                return 3
            dt = time.perf_counter() - t0
            meta = {**run_meta, "tokens": str(res.tokens), "model_path": session.path,
                    "model_fingerprint": fp, "jaxregion_version": __version__,
                    "batch_size": str(batch), "source": texts[lang],
                    "score": "signed" if args.estimator == "taylor" else "non-negative"}
            save_scores(path, res.scores, meta)
            I.clear_partial(partial_dir)
            done = res.tokens - (state.position * (args.seq_len - 1) if state else 0)
            rate = f", {done / dt:,.0f} tok/s" if done and dt > 0 else ""
            print(f"{lang}: {res.windows} windows, {res.tokens} tokens, {dt:.1f} s{rate} -> "
                  f"{path}", file=sys.stderr)
    partial_root = os.path.join(args.out, PARTIAL)
    if os.path.isdir(partial_root) and not os.listdir(partial_root):
        os.rmdir(partial_root)
    return 0
