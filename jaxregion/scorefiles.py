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

import functools
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
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
logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Scored:
    scores: Any  # float32 tree like the params
    meta: dict[str, str]
    status: str  # "computed" | "resumed" | "reused"
    path: str


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


@dataclass(frozen=True)
class ScoreSpec:
    """How :func:`score_language` scores a language (the ``importance`` command's options)."""

    estimator: str = "taylor"
    batch_size: int = 8
    seq_len: int | None = None  # None: the windows' length
    dtype: str = "float32"
    source: str = ""  # where the text came from, for the metadata
    save_every: int | None = 1000  # windows between checkpoints of the accumulation
    remat: bool = True  # layer by layer (see jaxregion.models.layerwise), as the command
    on_mismatch: str = "error"  # or "recompute": a file made from other input is replaced
    snapshots: tuple[int, ...] = ()  # see the module docstring
    until_stable: float | None = None
    stable_ratio: float = 0.01
    ratios: tuple[float, ...] = (0.01,)  # top-ratios whose split-half Jaccard is recorded
    load: bool = True  # False: scores None (a reused file is not read, computed ones not kept)
    include: str | None = None  # the scope scored (see jaxregion.regions.scope_names)
    exclude: str | None = None

    @classmethod
    def of(cls, cfg: ImportanceConfig, source: str = "") -> ScoreSpec:
        """The ``importance`` command's spec: it writes files and never reads them back."""
        return cls(
            estimator=cfg.estimator,
            batch_size=cfg.batch_size,
            seq_len=cfg.seq_len,
            dtype=cfg.dtype,
            source=source,
            save_every=cfg.save_every,
            remat=cfg.remat,
            snapshots=check_schedule(cfg.snapshots, cfg.until_stable, cfg.max_seqs),
            until_stable=cfg.until_stable,
            load=False,
            include=cfg.include,
            exclude=cfg.exclude,
        )


def score_language(
    session: Any,
    lang: str,
    windows: np.ndarray | None,
    out_dir: str,
    spec: ScoreSpec = ScoreSpec(),
    *,
    progress: Callable[[int], None] | None = None,
    log: Callable[[str], None] | None = None,
) -> Scored:
    """Scores of one language (``windows`` ``[n, seq_len]``; None for data-free estimators),
    read from ``out_dir`` when already computed from the same input, else computed (resuming a
    partial accumulation) and written atomically. ``progress(n)`` gets windows done.

    Only the scope's tensors (``spec.include``/``spec.exclude``; both None: all) are
    differentiated; the others are stored as zeros and listed in the metadata's ``unscored``.
    To stop a run early (its partial state stays on disk), iterate :meth:`LanguageRun.states`."""
    run = LanguageRun.plan(session, lang, windows, out_dir, spec, log)
    reused = run.reuse()
    if reused is not None:
        return reused
    if run.data_free:
        res = I.compute_importance(
            run.params,
            session.config,
            run.windows,
            spec.estimator,
            spec.batch_size,
            session.mesh,
            scope=run.scope,
        )
        return run.finish(res)
    end = start = run.start(progress)
    for end in run.states(start, progress):  # noqa: B007
        pass
    return run.finish(I.result_of(end, run.params, session.config, run.seq_len, consume=True))


@dataclass
class LanguageRun:
    """One language's scoring, in steps: :meth:`plan` (names and identity), :meth:`reuse` (a
    finished file), :meth:`start` (a saved partial state, or none), :meth:`states` (the
    accumulation with its policies: checkpoints, snapshots, stop-when-stable), :meth:`finish`."""

    session: Any
    lang: str
    windows: np.ndarray  # [0, seq_len] for a data-free estimator
    out_dir: str
    spec: ScoreSpec
    log: Callable[[str], None]
    seq_len: int
    snaps: tuple[int, ...]
    scope: list[str] | None
    want: dict[str, str]  # the finished file's identity
    status: str = "computed"
    history: list[list[float]] = field(default_factory=list)  # stop-when-stable's Jaccards

    @classmethod
    def plan(
        cls,
        session: Any,
        lang: str,
        windows: np.ndarray | None,
        out_dir: str,
        spec: ScoreSpec = ScoreSpec(),
        log: Callable[[str], None] | None = None,
    ) -> LanguageRun:
        """Check ``spec`` against the windows and name what the run reads and writes."""
        I.check_estimator(spec.estimator)
        if spec.estimator not in I.DATA_FREE and windows is None:
            raise UserError(f"{lang}: estimator {spec.estimator!r} needs windows of text")
        if spec.estimator in I.DATA_FREE:
            windows, spec = None, replace(spec, snapshots=(), until_stable=None)
        n = None if windows is None else len(windows)
        snaps = check_schedule(spec.snapshots, spec.until_stable, n, f"the {n or 0} windows given")
        seq_len = int(spec.seq_len if spec.seq_len is not None else windows.shape[1])
        scope = scoped(session.params, session.config, spec.include, spec.exclude)
        want = identity(
            lang,
            spec.estimator,
            fingerprint(session.params),
            seq_len,
            spec.dtype,
            windows,
            spec.until_stable,
            scope_label(spec.include, spec.exclude),
        )
        arr = np.zeros((0, seq_len), np.int32) if windows is None else windows
        return cls(session, lang, arr, out_dir, spec, log or _no_log, seq_len, snaps, scope, want)

    # --- names ---------------------------------------------------------------------------
    @property
    def data_free(self) -> bool:
        return self.spec.estimator in I.DATA_FREE

    @property
    def path(self) -> str:
        return safety.inside(self.out_dir, importance_path(self.out_dir, self.lang))

    @property
    def partial_dir(self) -> str:
        return safety.inside(self.out_dir, os.path.join(self.out_dir, PARTIAL, self.lang))

    @property
    def stable_file(self) -> str:
        return os.path.join(self.out_dir, PARTIAL, f"{self.lang}.until-stable.safetensors")

    @property
    def owner(self) -> dict[str, str]:
        return partial_owner(self.out_dir, self.lang)

    @functools.cached_property
    def params(self) -> Any:
        return I.place_params(self.session.params, self.session.mesh)

    @functools.cached_property
    def stops(self) -> tuple[int, ...]:
        """Where a micro-batch ends for a snapshot or a stop-when-stable comparison."""
        if self.spec.until_stable is None:
            return self.snaps
        return doubling_points(self.batch_size, len(self.windows))

    @property
    def batch_size(self) -> int:
        return I.effective_batch_size(self.spec.batch_size, self.session.mesh)

    @property
    def run_id(self) -> dict[str, str]:
        """What a saved partial state must have been accumulated for to be resumed."""
        stops = ",".join(map(str, self.stops))
        return {**self.want, "stops": stops, "stable_ratio": repr(self.spec.stable_ratio)}

    def snapshot_identity(self, n: int) -> dict[str, str]:
        """What the ``n``-window snapshot's file was computed from."""
        w, s = self.want, self.spec
        return identity(
            self.lang,
            s.estimator,
            w["model"],
            self.seq_len,
            s.dtype,
            self.windows[:n],
            scope=w["scope"],
        )

    # --- steps ---------------------------------------------------------------------------
    def reuse(self) -> Scored | None:
        """The finished file when it was made from this input; a mismatching one is an error
        (or, with ``on_mismatch="recompute"``, removed)."""
        s, path = self.spec, self.path
        windows = None if self.data_free else self.windows
        scope = scope_label(s.include, s.exclude)
        args = (self.want["model"], self.seq_len, s.dtype, windows, self.snaps, s.until_stable)
        try:
            if is_complete(self.out_dir, self.lang, s.estimator, *args, scope):
                if not s.load:  # the caller only needs the file
                    return Scored(None, read_metadata(path) or {}, "reused", path)
                scores, meta = load_scores(path)
                return Scored(scores, meta, "reused", path)
        except UserError:
            if s.on_mismatch != "recompute":
                raise
            self.log(f"{self.lang}: {path} was made from other input; recomputing")
            snaps = (importance_path(snapshot_dir(self.out_dir, n), self.lang) for n in self.snaps)
            for p in [path, *snaps]:
                if os.path.exists(p):
                    os.unlink(p)
        return None

    def start(self, progress: Callable[[int], None] | None = None) -> I.ImportanceState:
        """The saved partial state made from this input (status ``resumed``), else a new one;
        a partial state made from other input is removed."""
        s, partial_dir = self.spec, self.partial_dir
        check_partial_owner(partial_dir, self.owner)
        cfg, mesh = self.session.config, self.session.mesh
        like = I.init_state(  # a template only: no second pair of accumulators
            self.params, cfg, s.estimator, s.batch_size, mesh, self.scope, abstract=True
        )
        state = I.load_partial(partial_dir, like, self.run_id)
        if state is not None:
            self.status = "resumed"
            n = len(self.windows)
            self.log(f"{self.lang}: resuming at window {state.position}/{n} from {partial_dir}")
            if progress:
                progress(state.position)
            return state
        if os.path.isdir(partial_dir):
            self.log(
                f"{self.lang}: discarding partial state in {partial_dir} (made from other input)"
            )
            safety.remove_owned(partial_dir, self.owner)
        return I.init_state(self.params, cfg, s.estimator, s.batch_size, mesh, self.scope)

    def states(
        self, state: I.ImportanceState, progress: Callable[[int], None] | None = None
    ) -> Iterator[I.ImportanceState]:
        """The states after each micro-batch from ``state`` on, each handled first: a snapshot
        or a stop-when-stable comparison at its stop (before a checkpoint at the same position,
        so a run resumed from that checkpoint never skips it), then a checkpoint every
        ``save_every`` windows. Ends at the last window, or once the regions are stable."""
        n, every = len(self.windows), self.spec.save_every
        it = I.accumulate(
            state,
            self.params,
            self.session.config,
            self.windows,
            self.session.mesh,
            remat=self.spec.remat,
            stops=self.stops,
        )
        for st in it:
            prev, state = state, st
            if progress:
                progress(state.position - prev.position)
            stable = state.position in self.stops and self._at_stop(state)
            if stable:
                yield state
                return
            if every and state.position < n and state.position // every > prev.position // every:
                self.checkpoint(state)
            yield state

    def checkpoint(self, state: I.ImportanceState) -> None:
        """Save ``state`` in the partial directory (claimed for this language first)."""
        if not os.path.isdir(self.partial_dir):
            safety.claim(self.partial_dir, self.owner)
        I.save_partial(self.partial_dir, state, self.run_id)

    def _at_stop(self, state: I.ImportanceState) -> bool:
        """A snapshot's file, or stop-when-stable's comparison (True: stable, stop here)."""
        res = I.result_of(state, self.params, self.session.config, self.seq_len)
        n = state.position
        if self.spec.until_stable is None:
            d = snapshot_dir(self.out_dir, n)
            _write(d, self.lang, res, {**self.snapshot_identity(n), **self.base}, self.ratios)
            self.log(f"{self.lang}: snapshot at {n} windows -> {d}")
            return False
        s = self.spec
        return _stable_step(
            res,
            n,
            self.stable_file,
            s.stable_ratio,
            s.until_stable,
            self.history,
            self.run_id,
            self.log,
            self.lang,
        )

    @property
    def ratios(self) -> tuple[float, ...]:
        return tuple(sorted({0.01, *map(float, self.spec.ratios)}))

    @functools.cached_property
    def base(self) -> dict[str, str]:
        """The metadata every file of this run shares, besides its identity."""
        s, est = self.spec, self.spec.estimator
        unscored = (
            [] if self.scope is None else sorted(set(T.flatten(self.params)) - set(self.scope))
        )
        return {
            "model_path": self.session.path,
            "model_fingerprint": self.want["model"],
            "jaxregion_version": __version__,
            "batch_size": str(self.batch_size),
            "source": s.source,
            "score": "signed" if est == "taylor" else "non-negative",
            "unscored": _json(unscored),
        }

    def finish(self, res: I.ImportanceResult) -> Scored:
        """Write the scores (and their halves), then remove the partial state."""
        meta = {**self.want, "tokens": str(res.tokens), **self.base}
        if self.spec.until_stable is not None:
            used = self.windows[: res.windows]
            meta.update(
                windows=str(res.windows),
                windows_digest=I.windows_digest(used),
                stable_ratio=repr(self.spec.stable_ratio),
                doubling_jaccard=_json(self.history),
            )
            if os.path.exists(self.stable_file):
                os.unlink(self.stable_file)
        meta = _write(self.out_dir, self.lang, res, meta, self.ratios)
        safety.remove_owned(self.partial_dir, self.owner)
        root = os.path.join(self.out_dir, PARTIAL)
        if os.path.isdir(root) and not os.listdir(root):
            os.rmdir(root)
        # a caller that reads the file back (or not at all) must not hold every language's
        # scores: `jaxregion importance` over six languages grew by a score tree per language
        return Scored(res.scores if self.spec.load else None, meta, self.status, self.path)


def _no_log(_msg: str) -> None:
    """:func:`score_language`'s default: the caller decides what is said."""


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
) -> dict[str, Scored]:
    """``jaxregion importance``: every language of ``cfg`` scored into ``cfg.out``.

    Languages already complete for the same input are skipped, others computed (or resumed)."""
    log = log or logger.info
    session, texts, corpora = load_inputs(cfg, mesh)
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
                ScoreSpec.of(cfg, texts[lang]),
                progress=lambda n: bar.update(n * per_window),
                log=log,
            )
            done[lang] = got
            if got.status == "reused":
                log(f"{lang}: {got.path} is complete, skipped")
                bar.update((0 if windows is None else len(windows)) * per_window)
                continue
            dt = time.perf_counter() - t0
            n = 0 if windows is None else int(got.meta.get("windows", 0))
            rate = f", {n * per_window / dt:,.0f} tok/s" if n and dt > 0 else ""
            log(f"{lang}: {n} windows, {n * per_window} tokens, {dt:.1f} s{rate} -> {got.path}")
    return done


def load_inputs(
    cfg: ImportanceConfig, mesh: jax.sharding.Mesh
) -> tuple[Any, dict[str, str], dict[str, np.ndarray | None]]:
    """The ``importance`` command's session, texts (``{lang: source}``) and windows (None
    for a data-free estimator), every language's schedule checked before any is scored."""
    if os.path.exists(cfg.out) and not os.path.isdir(cfg.out):
        raise UserError(f"--out {cfg.out}: exists and is not a directory")
    snapshots = check_schedule(cfg.snapshots, cfg.until_stable, cfg.max_seqs)
    texts = runtime.parse_texts(cfg.text)
    session = runtime.load_session(cfg.model, cfg.dtype, mesh)
    if cfg.estimator in I.DATA_FREE:
        runtime.check_seq_len(session.config, cfg.seq_len)
        return session, texts, {lang: None for lang in texts}
    corpora = runtime.load_corpora(texts, session, cfg.seq_len, cfg.max_seqs)
    for lang, w in corpora.items():
        check_schedule(snapshots, cfg.until_stable, len(w), f"the {len(w)} windows of {lang}")
    return session, texts, dict(corpora)
