"""What each sweep point protects: its region (from a scorer), its replay data, its EWC term.

Shared work is computed once and cached: token windows per language; importance scores per
(estimator, language) as ``out/importance/ESTIMATOR/LANG.safetensors``, reused across runs and
resumable; regions per (scorer, granularity, ratio[, seed]) in memory and written to
``out/regions/`` for reuse elsewhere; the Fisher diagonal for EWC.

Region scores differentiate only the regions' ``include``, as ``jaxregion importance`` and
the battery do, so a battery's files in the same folder are reused. EWC's Fisher anchors
every tensor, so its scores cover all of them, in ``out/importance/fisher-all/``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np

from jaxregion import importance, models, runtime, scorefiles
from jaxregion import regions as R
from jaxregion.analysis.forgetting.config import ForgettingConfig, Point, scorer_parts
from jaxregion.errors import UserError
from jaxregion.train import EWC, fisher_from_scores, make_ewc
from jaxregion.train.identity import digest_tree, digest_windows

ALL = "all"  # the language name of data-free (magnitude) scores


class Protector:
    """Regions, replay windows and EWC terms for the points of one sweep (cached)."""

    def __init__(
        self, cfg: ForgettingConfig, session: runtime.Session, out: str, log: Callable[[str], None]
    ):
        self.cfg, self.session, self.out, self.log = cfg, session, out, log
        self._windows: dict[str, np.ndarray] = {}
        self._scores: dict[tuple[str, str], Any] = {}
        self._regions: dict[str, R.Region] = {}
        self._ewc: EWC | None = None
        self._replay: dict[str, np.ndarray] | None = None
        spec = cfg.importance
        self.cache_dir = (spec.dir if spec and spec.dir else None) or os.path.join(
            out, "importance"
        )
        self.in_axes = models.input_axes(session.config)

    # --- importance --------------------------------------------------------------------
    def _texts(self, lang: str) -> np.ndarray:
        if lang not in self._windows:
            spec = self.cfg.importance
            if spec is None or lang not in spec.texts:
                raise UserError(f"no importance text for {lang!r}; add it to importance.texts")
            self._windows[lang] = runtime.load_corpora(
                [f"{lang}={spec.texts[lang]}"], self.session, self.cfg.train.seq_len, spec.max_seqs
            )[lang]
        return self._windows[lang]

    def scores(self, estimator: str, langs: list[str], everything: bool = False) -> dict[str, Any]:
        """``{lang: score tree}``; one tree named ``all`` for data-free estimators. Only the
        regions' scope (``include``) is scored unless ``everything`` (EWC's Fisher)."""
        if estimator in importance.DATA_FREE:
            langs = [ALL]
        out = {}
        spec = self.cfg.importance
        folder = f"{estimator}-all" if everything else estimator
        for lang in langs:
            key = (folder, lang)
            if key not in self._scores:
                windows = None if lang == ALL else self._texts(lang)
                got = scorefiles.score_language(
                    self.session,
                    lang,
                    windows,
                    os.path.join(self.cache_dir, folder),
                    scorefiles.ScoreSpec(
                        estimator=estimator,
                        batch_size=spec.batch_size if spec else 8,
                        seq_len=self.cfg.train.seq_len,
                        source="" if lang == ALL else spec.texts[lang],
                        on_mismatch="recompute",
                        include=None if everything else self.cfg.include,
                    ),
                    log=self.log,
                )
                if got.status != "reused":
                    self.log(f"importance ({estimator}) of {lang}: {got.path}")
                self._scores[key] = got.scores
            out[lang] = self._scores[key]
        return out

    # --- regions -----------------------------------------------------------------------
    def region(self, p: Point) -> R.Region | None:
        """The region ``p`` freezes (None for the unfrozen reference)."""
        if not p.frozen:
            return None
        est, kind, lang = (
            (None, "setting", None) if p.scorer.startswith("setting:") else scorer_parts(p.scorer)
        )
        key = p.setting.rsplit("/", 1)[0] + (f"-s{p.seed}" if kind == "random" else "")
        if key in self._regions:
            return self._regions[key]
        params, cfg = self.session.params, self.cfg
        g = {"granularity": p.granularity, "in_axes": self.in_axes}
        if kind == "setting":
            st = next(s for s in cfg.settings if s.name == p.scorer[8:])
            reg = (
                R.load_region(st.region, template=params)
                if st.region
                else R.layers(params, st.layers or (), include=cfg.include)
            )
        elif kind == "random":
            reg = R.random(params, p.ratio, seed=p.seed, scope=cfg.scope, include=cfg.include, **g)
        else:
            srcs = cfg.score_langs()
            langs = (
                srcs
                if kind in ("core", "bottom")
                else ([lang] if kind == "top" else sorted({*srcs, lang}))
            )
            scores = self.scores(est, langs)
            reg = R.select(
                kind,
                scores,
                lang=lang,
                ratio=p.ratio,
                scope=cfg.scope,
                include=cfg.include,
                seed=p.seed,
                template=params,
                **g,
            )
            reg = reg.with_meta(estimator=est, scorer=p.scorer)
        self._regions[key] = reg
        R.save_region(
            os.path.join(
                self.out, "regions", key.replace("/", "__").replace(":", "-") + ".safetensors"
            ),
            reg,
        )
        return reg

    def digest(self, p: Point, region: R.Region | None) -> dict[str, str]:
        """Digests of the content ``p`` is protected by: its region's mask, its replay
        windows, the windows its EWC Fisher comes from (a cache key, see sweep.run_point)."""
        out = {"region": "none" if region is None else digest_tree(R.mask_of(region))}
        if p.baseline == "replay":
            out["replay"] = digest_windows(self.replay())
        if p.baseline == "ewc":
            out["ewc"] = digest_windows(
                {lang: self._texts(lang) for lang in self.cfg.score_langs()}
            )
        return out

    # --- baselines ---------------------------------------------------------------------
    def replay(self) -> dict[str, np.ndarray]:
        """Source-language windows to replay (the baseline's texts, else importance texts)."""
        if self._replay is None:
            b = self.cfg.baselines
            texts = dict(b.replay_texts) or {
                lang: self.cfg.importance.texts[lang]
                for lang in self.cfg.score_langs()
                if self.cfg.importance and lang in self.cfg.importance.texts
            }
            if not texts:
                raise UserError("replay has no source texts; give baselines.replay_texts")
            self._replay = runtime.load_corpora(
                [f"{k}={v}" for k, v in texts.items()],
                self.session,
                self.cfg.train.seq_len,
                b.replay_max_seqs,
            )
        return self._replay

    def ewc(self) -> EWC:
        """Anchor = base params; Fisher = the sources' fisher importance / θ² (mean 1)."""
        if self._ewc is None:
            trees = self.scores("fisher", self.cfg.score_langs(), everything=True).values()
            self._ewc = make_ewc(
                self.session.params, fisher_from_scores(list(trees), self.session.params)
            )
        return self._ewc
