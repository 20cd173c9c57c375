"""Importance files: one language's scores computed once, resumably, and reused.

``score_language`` is what the ``importance`` command, the experiment battery and the
forgetting run all call, so they share one cache format and one resume mechanism:

- ``DIR/LANG.safetensors`` holds the finished scores; its header metadata records what they
  were computed from (language, estimator, model fingerprint, seq_len, dtype, windows and a
  digest of them). A finished file made from the same input is reused; one made from other
  input is an error (or is recomputed, with ``on_mismatch="recompute"``).
- ``DIR/.partial/LANG/`` holds the orbax-checkpointed accumulator and window position every
  ``save_every`` windows, so an interrupted run resumes and ends bitwise equal.
- ``DIR/.halves/LANG.safetensors`` holds the even split half (the odd one is recovered from
  it and the full scores, see :mod:`jaxregion.analysis.stability`); the full file's metadata records
  the split-half Jaccard of the top-1% (and of any ``ratios`` asked) and its projection.
- ``snapshots=(n1, n2, ...)`` also writes ``DIR/snapshots/N/LANG.safetensors`` (with its own
  ``.halves``): the scores of the first ``N`` windows, equal to a separate run over them, from
  the same pass. Any snapshot directory is an importance directory for ``jaxregion regions``.
- ``until_stable=J`` doubles the windows from one micro-batch (n, 2n, 4n, ... up to all
  given) and stops once the top-``stable_ratio`` regions at n and 2n agree with Jaccard >= J;
  the file's ``windows`` is then the count used (``windows_available`` the count given).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax
import numpy as np
from tqdm.auto import tqdm

from jaxregion import __version__, runtime, safety
from jaxregion import importance as I
from jaxregion import tree as T
from jaxregion.analysis import stability as S
from jaxregion.configs import ImportanceConfig
from jaxregion.errors import UserError
from jaxregion.io.safetensors_io import read_metadata
from jaxregion.models import roles
from jaxregion.regions import (
    DEFAULT_INCLUDE,
    fingerprint,
    importance_path,
    jaccard,
    load_region,
    load_scores,
    save_region,
    save_scores,
    scope_names,
    top,
)

PARTIAL = ".partial"


@dataclass(frozen=True)
class Scored:
    scores: Any  # float32 tree like the params
    meta: dict[str, str]
    status: str  # "computed" | "resumed" | "reused" | "stopped" (scores None, see position)
    path: str
    position: int | None = None  # windows done when stopped


def identity(
    lang: str,
    estimator: str,
    params_fp: str,
    seq_len: int,
    dtype: str,
    windows: np.ndarray | None,
    until_stable: float | None = None,
    scope: str = "all",
) -> dict[str, str]:
    """What a score file must have been computed from to be reused. With ``until_stable`` the
    windows *given* identify the run (the count used is a result, in ``windows``).
    ``scope``: which tensors are scored (:func:`scope_label`)."""
    data_free = windows is None
    out = {
        "language": lang,
        "estimator": estimator,
        "model": params_fp,
        "seq_len": str(seq_len),
        "dtype": dtype,
        "scope": scope,
    }
    n, digest = ("0", "") if data_free else (str(len(windows)), I.windows_digest(windows))
    if until_stable is None:
        return {**out, "windows": n, "windows_digest": digest}
    return {
        **out,
        "until_stable": repr(float(until_stable)),
        "windows_available": n,
        "windows_available_digest": digest,
    }


def is_complete(
    out_dir: str,
    lang: str,
    estimator: str,
    params_fp: str,
    seq_len: int,
    dtype: str,
    windows: np.ndarray | None,
    snapshots: Any = (),
    until_stable: float | None = None,
    scope: str = "all",
) -> bool:
    """Whether ``lang``'s file (and every snapshot's) in ``out_dir`` is finished for this
    input; raises UserError naming the field when one was made from other input."""
    want = identity(lang, estimator, params_fp, seq_len, dtype, windows, until_stable, scope)
    done = check_existing(importance_path(out_dir, lang), want)
    for n in check_schedule(snapshots, until_stable):
        w = identity(lang, estimator, params_fp, seq_len, dtype, windows[:n], scope=scope)
        done = check_existing(importance_path(snapshot_dir(out_dir, n), lang), w) and done
    return done


def scope_label(include: str | None, exclude: str | None) -> str:
    """The ``scope`` field of a score file: ``all``, or the include/exclude it was made with."""
    if include is None and exclude is None:
        return "all"
    return json.dumps({"include": include, "exclude": exclude}, sort_keys=True)


def scoped(params: Any, cfg: Any, include: str | None, exclude: str | None) -> list[str] | None:
    """The names ``include``/``exclude`` score (None: all), with the family's roles."""
    if include is None and exclude is None:
        return None
    return scope_names(list(T.flatten(params)), include, exclude, roles(cfg))


def snapshot_dir(out_dir: str, n: int) -> str:
    """The importance directory of the ``n``-window snapshot: ``DIR/snapshots/N``."""
    return os.path.join(out_dir, "snapshots", str(int(n)))


def parse_snapshots(text: str | None) -> tuple[int, ...]:
    """``"1000,10000"`` -> ``(1000, 10000)``; UserError naming the bad item."""
    if not text:
        return ()
    out = []
    for item in text.split(","):
        try:
            out.append(int(item.strip()))
        except ValueError:
            raise UserError(
                f"--snapshots {text!r}: {item.strip()!r} is not a window count; "
                "give comma-separated integers like 1000,10000"
            ) from None
    return check_schedule(out)


def check_schedule(
    snapshots: Any = (),
    until_stable: float | None = None,
    windows: int | None = None,
    what: str | None = None,
) -> tuple[int, ...]:
    """Validate snapshot counts and the stop-when-stable threshold; sorted unique counts.

    ``windows`` is how many windows there are (None: unknown yet)."""
    snaps = tuple(sorted({int(x) for x in snapshots}))
    if until_stable is not None:
        if not 0.0 < float(until_stable) <= 1.0:
            raise UserError(f"--until-stable {until_stable}: must be in (0, 1]")
        if snaps:
            raise UserError("--snapshots and --until-stable do not combine; use one")
    if snaps and snaps[0] <= 0:
        raise UserError(f"--snapshots {','.join(map(str, snaps))}: counts must be positive")
    if snaps and windows is not None and snaps[-1] > windows:
        raise UserError(
            f"--snapshots {snaps[-1]} is beyond {what or f'--max-seqs {windows}'}"
            f"; give counts up to {windows}"
        )
    return snaps


def check_existing(path: str, want: dict[str, str]) -> bool:
    """True when ``path`` is a finished file for ``want``; False when absent. Raises a
    UserError naming the first differing field when it was made from other input."""
    if not os.path.exists(path):
        return False
    h = read_metadata(path)
    if h is None:
        raise UserError(
            f"{path} exists but is not a readable safetensors file; delete it to recompute"
        )
    bad = [k for k, v in want.items() if h.get(k) != v]
    if bad:
        k = bad[0]
        raise UserError(
            f"{path} exists but was computed with {k}={h.get(k)!r}, not "
            f"{want[k]!r}; use another output directory or delete the file"
        )
    return True


def partial_owner(out_dir: str, lang: str) -> dict[str, str]:
    """The marker of the partial state this tool makes for ``lang`` in ``out_dir``."""
    return {"made_by": "jaxregion importance", "language": lang, "out": os.path.realpath(out_dir)}


def check_partial_owner(partial_dir: str, owner: dict[str, str]) -> None:
    """UserError when ``partial_dir`` exists but was not made by this tool for this
    language and output directory: it is never resumed into, nor removed."""
    if os.path.lexists(partial_dir) and safety.owner_of(partial_dir) != owner:
        raise UserError(
            f"{partial_dir} exists but was not made by jaxregion importance for "
            "this language and output directory (no matching "
            f"{safety.MARKER}); move it away or use another output directory"
        )


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
    snapshots: Any = (),
    until_stable: float | None = None,
    stable_ratio: float = 0.01,
    ratios: Any = (0.01,),
    load: bool = True,
    include: str | None = None,
    exclude: str | None = None,
) -> Scored:
    """Scores of one language (``windows`` ``[n, seq_len]``; None for data-free estimators),
    read from ``out_dir`` when already computed from the same input, else computed (resuming a
    partial accumulation) and written atomically. ``progress(n)`` gets windows done.

    ``snapshots``, ``until_stable`` and ``stable_ratio``: see the module docstring;
    ``ratios``: top-ratios whose split-half Jaccard goes in the metadata (0.01 always).
    ``load=False``: a reused file is not read (scores None).
    ``include``/``exclude``: the scope scored (see :func:`jaxregion.regions.scope_names`;
    both None: every tensor). Only in-scope tensors are differentiated; the others are
    stored as zeros and listed in the metadata's ``unscored``.
    ``stop_after``: stop at the first checkpoint at or past that many windows and return
    status ``"stopped"`` (the partial state stays on disk; resuming tests use it)."""
    I.check_estimator(estimator)
    log = log or (lambda _m: None)
    data_free = estimator in I.DATA_FREE
    if not data_free and windows is None:
        raise UserError(f"{lang}: estimator {estimator!r} needs windows of text")
    if data_free:
        windows, snapshots, until_stable = None, (), None
    snaps = check_schedule(
        snapshots,
        until_stable,
        None if windows is None else len(windows),
        f"the {0 if windows is None else len(windows)} windows given",
    )
    seq_len = int(seq_len if seq_len is not None else windows.shape[1])
    ratios = tuple(sorted({0.01, *map(float, ratios)}))
    path = safety.inside(out_dir, importance_path(out_dir, lang))
    fp = fingerprint(session.params)
    scope = scoped(session.params, session.config, include, exclude)
    label = scope_label(include, exclude)
    want = identity(lang, estimator, fp, seq_len, dtype, windows, until_stable, label)
    snap_want = {
        n: identity(lang, estimator, fp, seq_len, dtype, windows[:n], scope=label) for n in snaps
    }
    try:
        if is_complete(
            out_dir, lang, estimator, fp, seq_len, dtype, windows, snaps, until_stable, label
        ):
            if not load:  # the caller only needs the file
                return Scored(None, read_metadata(path) or {}, "reused", path)
            scores, meta = load_scores(path)
            return Scored(scores, meta, "reused", path)
    except UserError:
        if on_mismatch != "recompute":
            raise
        log(f"{lang}: {path} was made from other input; recomputing")
        for p in [path, *(importance_path(snapshot_dir(out_dir, n), lang) for n in snaps)]:
            if os.path.exists(p):
                os.unlink(p)

    partial_dir = safety.inside(out_dir, os.path.join(out_dir, PARTIAL, lang))
    stable_file = os.path.join(out_dir, PARTIAL, f"{lang}.until-stable.safetensors")
    owner = partial_owner(out_dir, lang)
    state, status = None, "computed"
    arr = np.zeros((0, seq_len), np.int32) if data_free else windows
    b = I.effective_batch_size(batch_size, session.mesh)
    stops = snaps or (doubling_points(b, len(arr)) if until_stable is not None else ())
    run_id = {**want, "stops": ",".join(map(str, stops)), "stable_ratio": repr(stable_ratio)}
    params = I.place_params(session.params, session.mesh)
    if not data_free:
        check_partial_owner(partial_dir, owner)
        like = I.init_state(
            params, session.config, estimator, batch_size, session.mesh, scope, abstract=True
        )
        state = I.load_partial(partial_dir, like, run_id)
        if state is not None:
            status = "resumed"
            log(f"{lang}: resuming at window {state.position}/{len(arr)} from {partial_dir}")
            if progress:
                progress(state.position)
        elif os.path.isdir(partial_dir):
            log(f"{lang}: discarding partial state in {partial_dir} (made from other input)")
            safety.remove_owned(partial_dir, owner)

    def checkpoint(st: I.ImportanceState) -> bool:
        if not os.path.isdir(partial_dir):
            safety.claim(partial_dir, owner)
        I.save_partial(partial_dir, st, run_id)
        return stop_after is not None and st.position >= stop_after

    base = {
        "model_path": session.path,
        "model_fingerprint": fp,
        "jaxregion_version": __version__,
        "batch_size": str(b),
        "source": source,
        "score": "signed" if estimator == "taylor" else "non-negative",
        "unscored": _json([] if scope is None else sorted(set(T.flatten(params)) - set(scope))),
    }
    history: list[list[float]] = []

    def at_stop(st: I.ImportanceState) -> bool:
        res = I.result_of(st, params, session.config, seq_len)
        if until_stable is None:  # a snapshot
            n = st.position
            _write(snapshot_dir(out_dir, n), lang, res, {**snap_want[n], **base}, ratios)
            log(f"{lang}: snapshot at {n} windows -> {snapshot_dir(out_dir, n)}")
            return False
        return _stable_step(
            res, st.position, stable_file, stable_ratio, until_stable, history, run_id, log, lang
        )

    res = I.compute_importance(
        params,
        session.config,
        arr,
        estimator,
        batch_size,
        session.mesh,
        progress=progress,
        state=state,
        remat=remat,
        checkpoint=checkpoint,
        checkpoint_every=save_every,
        stops=stops,
        at_stop=at_stop,
        scope=scope,
    )
    if res.stopped_at is not None:
        return Scored(None, want, "stopped", partial_dir, res.stopped_at)
    meta = {**want, "tokens": str(res.tokens), **base}
    if until_stable is not None:
        used = windows[: res.windows]
        meta.update(
            windows=str(res.windows),
            windows_digest=I.windows_digest(used),
            stable_ratio=repr(stable_ratio),
            doubling_jaccard=_json(history),
        )
        if os.path.exists(stable_file):
            os.unlink(stable_file)
    meta = _write(out_dir, lang, res, meta, ratios)
    safety.remove_owned(partial_dir, owner)
    root = os.path.join(out_dir, PARTIAL)
    if os.path.isdir(root) and not os.listdir(root):
        os.rmdir(root)
    return Scored(res.scores, meta, status, path)


def doubling_points(start: int, n: int) -> tuple[int, ...]:
    """``start, 2·start, 4·start, ...`` below ``n``, then ``n``: where stop-when-stable looks."""
    out, k = [], max(1, int(start))
    while k < n:
        out.append(k)
        k *= 2
    return (*out, n)


def _json(x: Any) -> str:
    return json.dumps(x, allow_nan=False)


def _write(
    directory: str,
    lang: str,
    res: I.ImportanceResult,
    meta: dict[str, str],
    ratios: tuple[float, ...],
) -> dict[str, str]:
    """The scores file (and its even half first, so the full file marks completion)."""
    meta = dict(meta)
    if res.halves is not None:
        sh = S.split_half(res.halves, ratios)
        meta.update(
            windows_even=str(res.counts[0]),
            windows_odd=str(res.counts[1]),
            split_half_jaccard=repr(sh["jaccard"]["0.01"]),
            split_half_jaccard_projected=repr(sh["projected"]["0.01"]),
            split_half=_json(sh),
        )
        save_scores(
            S.halves_path(directory, lang),
            res.halves[0],
            {
                "half": "even",
                "windows": meta["windows"],
                "windows_digest": meta["windows_digest"],
                "windows_even": str(res.counts[0]),
                "windows_odd": str(res.counts[1]),
                "estimator": res.estimator,
            },
        )
    save_scores(importance_path(directory, lang), res.scores, meta)
    return meta


def _stable_step(
    res: I.ImportanceResult,
    n: int,
    stable_file: str,
    ratio: float,
    target: float,
    history: list[list[float]],
    run_id: dict[str, str],
    log: Callable[[str], None],
    lang: str,
) -> bool:
    """Compare the top-``ratio`` region at ``n`` windows with the one at the previous
    doubling point (kept in ``stable_file`` so a resumed run still has it); True = stable."""
    region = top({lang: res.scores}, lang, ratio, "per-tensor", DEFAULT_INCLUDE)
    prev = None
    if os.path.exists(stable_file):
        old = load_region(stable_file, template=res.scores, state=True)  # our own state
        if old.meta.get("run") == run_id:
            prev = old
            history[:] = old.meta.get("history", [])
    stop = False
    if prev is not None:
        j = jaccard(prev, region)
        history.append([n, j])
        log(
            f"{lang}: top-{ratio:g} region at {prev.meta['windows']} vs {n} windows: "
            f"Jaccard {j:.4f} (target {target})"
        )
        stop = j >= target
    region.meta.update(windows=n, run=run_id, history=list(history))
    save_region(stable_file, region)
    return stop


def score_all(
    cfg: ImportanceConfig,
    mesh: jax.sharding.Mesh,
    *,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    stop_after: int | None = None,
) -> dict[str, Scored]:
    """``jaxregion importance``: every language of ``cfg`` scored into ``cfg.out``.

    Languages already complete for the same input are skipped, others computed (or resumed).
    Stops at the first language whose status is ``"stopped"`` (``stop_after``, a test hook:
    see :func:`score_language`); the result then ends with that language."""
    log = log or (lambda m: print(m, file=sys.stderr))
    if os.path.exists(cfg.out) and not os.path.isdir(cfg.out):
        raise UserError(f"--out {cfg.out}: exists and is not a directory")
    snapshots = check_schedule(cfg.snapshots, cfg.until_stable, cfg.max_seqs)
    texts = runtime.parse_texts(cfg.text)
    session = runtime.load_session(cfg.model, cfg.dtype, mesh)
    if cfg.estimator in I.DATA_FREE:
        runtime.check_seq_len(session.config, cfg.seq_len)
        corpora = {lang: None for lang in texts}
    else:
        corpora = runtime.load_corpora(texts, session, cfg.seq_len, cfg.max_seqs)
        for lang, w in corpora.items():  # every language checked before any is computed
            check_schedule(snapshots, cfg.until_stable, len(w), f"the {len(w)} windows of {lang}")
    per_window = cfg.seq_len - 1
    total = sum(0 if w is None else len(w) for w in corpora.values())
    done: dict[str, Scored] = {}
    with tqdm(
        total=total * per_window,
        desc="importance",
        unit="tok",
        unit_scale=True,
        disable=None if progress else True,
        file=sys.stderr,
        leave=False,
    ) as bar:
        for lang, windows in corpora.items():
            bar.set_postfix_str(lang)
            t0 = time.perf_counter()
            got = score_language(
                session,
                lang,
                windows,
                cfg.out,
                estimator=cfg.estimator,
                batch_size=cfg.batch_size,
                seq_len=cfg.seq_len,
                dtype=cfg.dtype,
                source=texts[lang],
                save_every=cfg.save_every,
                remat=cfg.remat,
                progress=lambda n: bar.update(n * per_window),
                stop_after=stop_after,
                log=log,
                load=False,
                snapshots=snapshots,
                until_stable=cfg.until_stable,
                include=cfg.include,
                exclude=cfg.exclude,
            )
            done[lang] = got
            if got.status == "stopped":
                log(f"{lang}: stopped after {got.position} windows; state saved in {got.path}")
                break
            if got.status == "reused":
                log(f"{lang}: {got.path} is complete, skipped")
                bar.update((0 if windows is None else len(windows)) * per_window)
                continue
            dt = time.perf_counter() - t0
            n = 0 if windows is None else int(got.meta.get("windows", 0))
            rate = f", {n * per_window / dt:,.0f} tok/s" if n and dt > 0 else ""
            log(f"{lang}: {n} windows, {n * per_window} tokens, {dt:.1f} s{rate} -> {got.path}")
    return done
