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
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from jaxregion import __version__, safety
from jaxregion import importance as I
from jaxregion.errors import UserError
from jaxregion.regions import fingerprint, importance_path, load_scores, save_scores

PARTIAL = ".partial"


class Stopped(Exception):
    """Raised after a checkpoint when ``stop_after`` windows are done (a testing hook)."""


@dataclass(frozen=True)
class Scored:
    scores: Any  # float32 tree like the params
    meta: dict[str, str]
    status: str  # "computed" | "resumed" | "reused"
    path: str


def read_header(path: str) -> dict[str, str] | None:
    """A safetensors file's metadata, or None when it is not a readable safetensors file."""
    from jaxregion.safetensors_io import SafetensorsFile

    try:
        return dict(SafetensorsFile(path).metadata)
    except UserError:
        return None


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
    h = read_header(path)
    if h is None:
        raise UserError(f"{path} exists but is not a readable safetensors file; delete it to "
                        "recompute")
    bad = [k for k, v in want.items() if h.get(k) != v]
    if bad:
        k = bad[0]
        raise UserError(f"{path} exists but was computed with {k}={h.get(k)!r}, not "
                        f"{want[k]!r}; use another output directory or delete the file")
    return True


def partial_owner(out_dir: str, lang: str) -> dict[str, str]:
    """The marker of the partial state this tool makes for ``lang`` in ``out_dir``."""
    return {"made_by": "jaxregion importance", "language": lang,
            "out": os.path.realpath(out_dir)}


def check_partial_owner(partial_dir: str, owner: dict[str, str]) -> None:
    """UserError when ``partial_dir`` exists but was not made by this tool for this
    language and output directory: it is never resumed into, nor removed."""
    if os.path.lexists(partial_dir) and safety.owner_of(partial_dir) != owner:
        raise UserError(f"{partial_dir} exists but was not made by jaxregion importance for "
                        "this language and output directory (no matching "
                        f"{safety.MARKER}); move it away or use another output directory")


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
) -> Scored:
    """Scores of one language (``windows`` ``[n, seq_len]``; None for data-free estimators),
    read from ``out_dir`` when already computed from the same input, else computed (resuming a
    partial accumulation) and written atomically. ``progress(n)`` gets windows done."""
    I.check_estimator(estimator)
    log = log or (lambda _m: None)
    data_free = estimator in I.DATA_FREE
    if not data_free and windows is None:
        raise UserError(f"{lang}: estimator {estimator!r} needs windows of text")
    if data_free:
        windows = None
    seq_len = int(seq_len if seq_len is not None else windows.shape[1])
    path = safety.inside(out_dir, importance_path(out_dir, lang))
    fp = fingerprint(session.params)
    want = identity(lang, estimator, fp, seq_len, dtype, windows)
    try:
        if check_existing(path, want):
            scores, meta = load_scores(path)
            return Scored(scores, meta, "reused", path)
    except UserError:
        if on_mismatch != "recompute":
            raise
        log(f"{lang}: {path} was made from other input; recomputing")
        os.unlink(path)

    partial_dir = safety.inside(out_dir, os.path.join(out_dir, PARTIAL, lang))
    owner = partial_owner(out_dir, lang)
    state, status = None, "computed"
    arr = np.zeros((0, seq_len), np.int32) if data_free else windows
    if not data_free:
        check_partial_owner(partial_dir, owner)
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
            safety.remove_owned(partial_dir, owner)

    def checkpoint(st: I.ImportanceState) -> None:
        if not os.path.isdir(partial_dir):
            safety.claim(partial_dir, owner)
        I.save_partial(partial_dir, st, want)
        if stop_after is not None and st.position >= stop_after:
            raise Stopped(st.position)

    res = I.compute_importance(session.params, session.config, arr, estimator, batch_size,
                               session.mesh, progress=progress, state=state, remat=remat,
                               checkpoint=checkpoint, checkpoint_every=save_every)
    meta = {**want, "tokens": str(res.tokens), "model_path": session.path,
            "model_fingerprint": fp, "jaxregion_version": __version__,
            "batch_size": str(I.effective_batch_size(batch_size, session.mesh)),
            "source": source, "score": "signed" if estimator == "taylor" else "non-negative"}
    save_scores(path, res.scores, meta)
    safety.remove_owned(partial_dir, owner)
    root = os.path.join(out_dir, PARTIAL)
    if os.path.isdir(root) and not os.listdir(root):
        os.rmdir(root)
    return Scored(res.scores, meta, status, path)
