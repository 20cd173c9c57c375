"""Importance files: one language's scores computed once, resumably, and reused.

``score_language`` is what the ``importance`` command, the experiment battery and the
forgetting run all call, so they share one cache format and one resume mechanism:

- ``DIR/LANG.safetensors`` holds the finished scores; its header metadata records what they
  were computed from (language, estimator, model fingerprint, seq_len, dtype, windows and a
  digest of them). A finished file made from the same input is reused; one made from other
  input is an error (or is recomputed, with ``on_mismatch="recompute"``).
- ``DIR/.partial/LANG/`` holds the orbax-checkpointed accumulator and window position every
  ``save_every`` windows, so an interrupted run resumes and ends bitwise equal.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax
import numpy as np
from tqdm.auto import tqdm

from jaxregion import __version__, runtime
from jaxregion import importance as I
from jaxregion.configs import ImportanceConfig
from jaxregion.errors import UserError
from jaxregion.regions import fingerprint, importance_path, load_scores, save_scores
from jaxregion.safetensors_io import read_metadata

PARTIAL = ".partial"


@dataclass(frozen=True)
class Scored:
    scores: Any  # float32 tree like the params
    meta: dict[str, str]
    status: str  # "computed" | "resumed" | "reused" | "stopped" (scores None, see position)
    path: str
    position: int | None = None  # windows done when stopped


def identity(lang: str, estimator: str, params_fp: str, seq_len: int, dtype: str,
             windows: np.ndarray | None) -> dict[str, str]:
    """What a score file must have been computed from to be reused."""
    data_free = windows is None
    return {"language": lang, "estimator": estimator, "model": params_fp,
            "seq_len": str(seq_len), "dtype": dtype,
            "windows": "0" if data_free else str(len(windows)),
            "windows_digest": "" if data_free else I.windows_digest(windows)}


def check_existing(path: str, want: dict[str, str]) -> bool:
    """True when ``path`` is a finished file for ``want``; False when absent. Raises a
    UserError naming the first differing field when it was made from other input."""
    if not os.path.exists(path):
        return False
    h = read_metadata(path)
    if h is None:
        raise UserError(f"{path} exists but is not a readable safetensors file; delete it to "
                        "recompute")
    bad = [k for k, v in want.items() if h.get(k) != v]
    if bad:
        k = bad[0]
        raise UserError(f"{path} exists but was computed with {k}={h.get(k)!r}, not "
                        f"{want[k]!r}; use another output directory or delete the file")
    return True


def score_language(
    session: Any,
    lang: str,
    windows: np.ndarray | None,
    out_dir: str,
    *,
    estimator: str = "taylor",
    batch_size: int = 8,
    seq_len: int | None = None,
    dtype: str = "float32",
    source: str = "",
    save_every: int | None = 1000,
    remat: bool = False,
    progress: Callable[[int], None] | None = None,
    on_mismatch: str = "error",
    stop_after: int | None = None,
    log: Callable[[str], None] | None = None,
    load: bool = True,
) -> Scored:
    """Scores of one language (``windows`` ``[n, seq_len]``; None for data-free estimators),
    read from ``out_dir`` when already computed from the same input, else computed (resuming a
    partial accumulation) and written atomically. ``progress(n)`` gets windows done.
    ``load=False``: a reused file is not read (scores None).
    ``stop_after``: stop at the first checkpoint at or past that many windows and return
    status ``"stopped"`` (the partial state stays on disk; resuming tests use it)."""
    I.check_estimator(estimator)
    log = log or (lambda _m: None)
    data_free = estimator in I.DATA_FREE
    if not data_free and windows is None:
        raise UserError(f"{lang}: estimator {estimator!r} needs windows of text")
    if data_free:
        windows = None
    seq_len = int(seq_len if seq_len is not None else windows.shape[1])
    path = importance_path(out_dir, lang)
    fp = fingerprint(session.params)
    want = identity(lang, estimator, fp, seq_len, dtype, windows)
    try:
        if check_existing(path, want):
            if not load:  # the caller only needs the file
                return Scored(None, read_metadata(path) or {}, "reused", path)
            scores, meta = load_scores(path)
            return Scored(scores, meta, "reused", path)
    except UserError:
        if on_mismatch != "recompute":
            raise
        log(f"{lang}: {path} was made from other input; recomputing")
        os.unlink(path)

    partial_dir = os.path.join(out_dir, PARTIAL, lang)
    state, status = None, "computed"
    arr = np.zeros((0, seq_len), np.int32) if data_free else windows
    if not data_free:
        like = I.init_state(I.place_params(session.params, session.mesh), session.config,
                            estimator, batch_size, session.mesh)
        state = I.load_partial(partial_dir, like, want)
        if state is not None:
            status = "resumed"
            log(f"{lang}: resuming at window {state.position}/{len(arr)} from {partial_dir}")
            if progress:
                progress(state.position)
        elif os.path.isdir(partial_dir):
            log(f"{lang}: discarding partial state in {partial_dir} (made from other input)")
            I.clear_partial(partial_dir)

    def checkpoint(st: I.ImportanceState) -> bool:
        I.save_partial(partial_dir, st, want)
        return stop_after is not None and st.position >= stop_after

    res = I.compute_importance(session.params, session.config, arr, estimator, batch_size,
                               session.mesh, progress=progress, state=state, remat=remat,
                               checkpoint=checkpoint, checkpoint_every=save_every)
    if res.stopped_at is not None:
        return Scored(None, want, "stopped", partial_dir, res.stopped_at)
    meta = {**want, "tokens": str(res.tokens), "model_path": session.path,
            "model_fingerprint": fp, "jaxregion_version": __version__,
            "batch_size": str(I.effective_batch_size(batch_size, session.mesh)),
            "source": source, "score": "signed" if estimator == "taylor" else "non-negative"}
    save_scores(path, res.scores, meta)
    I.clear_partial(partial_dir)
    root = os.path.join(out_dir, PARTIAL)
    if os.path.isdir(root) and not os.listdir(root):
        os.rmdir(root)
    return Scored(res.scores, meta, status, path)


def score_all(cfg: ImportanceConfig, mesh: jax.sharding.Mesh, *, progress: bool = True,
              log: Callable[[str], None] | None = None,
              stop_after: int | None = None) -> dict[str, Scored]:
    """``jaxregion importance``: every language of ``cfg`` scored into ``cfg.out``.

    Languages already complete for the same input are skipped, others computed (or resumed).
    Stops at the first language whose status is ``"stopped"`` (``stop_after``, a test hook:
    see :func:`score_language`); the result then ends with that language."""
    log = log or (lambda m: print(m, file=sys.stderr))
    if os.path.exists(cfg.out) and not os.path.isdir(cfg.out):
        raise UserError(f"--out {cfg.out}: exists and is not a directory")
    texts = runtime.parse_texts(cfg.text)
    session = runtime.load_session(cfg.model, cfg.dtype, mesh)
    if cfg.estimator in I.DATA_FREE:
        runtime.check_seq_len(session.config, cfg.seq_len)
        corpora = {lang: None for lang in texts}
    else:
        corpora = runtime.load_corpora(texts, session, cfg.seq_len, cfg.max_seqs)
    per_window = cfg.seq_len - 1
    total = sum(0 if w is None else len(w) for w in corpora.values())
    done: dict[str, Scored] = {}
    with tqdm(total=total * per_window, desc="importance", unit="tok", unit_scale=True,
              disable=None if progress else True, file=sys.stderr, leave=False) as bar:
        for lang, windows in corpora.items():
            bar.set_postfix_str(lang)
            t0 = time.perf_counter()
            got = score_language(
                session, lang, windows, cfg.out, estimator=cfg.estimator,
                batch_size=cfg.batch_size, seq_len=cfg.seq_len, dtype=cfg.dtype,
                source=texts[lang], save_every=cfg.save_every, remat=cfg.remat,
                progress=lambda n: bar.update(n * per_window), stop_after=stop_after,
                log=log, load=False)
            done[lang] = got
            if got.status == "stopped":
                log(f"{lang}: stopped after {got.position} windows; state saved in {got.path}")
                break
            if got.status == "reused":
                log(f"{lang}: {got.path} is complete, skipped")
                bar.update((0 if windows is None else len(windows)) * per_window)
                continue
            dt = time.perf_counter() - t0
            n = 0 if windows is None else len(windows)
            rate = f", {n * per_window / dt:,.0f} tok/s" if n and dt > 0 else ""
            log(f"{lang}: {n} windows, {n * per_window} tokens, {dt:.1f} s{rate} -> {got.path}")
    return done
