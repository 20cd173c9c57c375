"""The forgetting sweep's configuration checks and its points (the dataclasses are in
:mod:`jaxregion.configs`).

A config names one base model (or a ``pretrain`` section that makes one), a target language
to continue pre-training on, the languages to protect (``sources``), and a sweep: one or
more grids of scorer × ratio × granularity × baseline × seed. Every grid point is one
training run; the unfrozen reference (scorer ``none``) is added for every baseline and seed
so each point has a comparison on the same data order.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from jaxregion.configs import ForgettingConfig
from jaxregion.errors import UserError
from jaxregion.names import FORGETTING_BASELINES, FORGETTING_X_AXES
from jaxregion.strict_loader import check, from_dict, read_yaml

#: scorer -> (importance estimator, region kind). ``top:LANG`` / ``monolingual:LANG`` take a
#: language; core-kind scorers sum |score| over the source languages.
SCORERS: dict[str, tuple[str | None, str]] = {
    "none": (None, "none"),  # nothing frozen (the reference)
    "core": ("taylor", "core"),  # the paper's: top of Σ_sources |θ ⊙ ∇L|
    "wanda": ("wanda", "core"),  # SSU's: |W| ⊙ ‖X_j‖ on source data
    "fisher": ("fisher", "core"),
    "magnitude": ("magnitude", "core"),
    "random": (None, "random"),
    "bottom": ("taylor", "bottom"),
    "top": ("taylor", "top"),  # top:LANG, one language's own region
    "monolingual": ("taylor", "monolingual"),  # monolingual:LANG
}
BASELINES = FORGETTING_BASELINES
X_AXES = FORGETTING_X_AXES


@dataclass(frozen=True)
class Point:
    """One training run of the sweep."""

    scorer: str  # a SCORERS key, "top:LANG", or "setting:NAME"
    ratio: float
    granularity: str
    baseline: str
    seed: int

    @property
    def frozen(self) -> bool:
        return self.scorer != "none"

    @property
    def setting(self) -> str:
        """The label shared by this point's seeds."""
        if not self.frozen:
            return f"none/{self.baseline}"
        if self.scorer.startswith("setting:"):
            return f"{self.scorer[8:]}/{self.baseline}"
        return f"{self.scorer}/{self.granularity}/{self.ratio:g}/{self.baseline}"

    @property
    def key(self) -> str:
        """A file-safe, unique name."""
        return (self.setting + f"/s{self.seed}").replace("/", "__").replace(":", "-")


def scorer_parts(scorer: str) -> tuple[str | None, str, str | None]:
    """``(estimator, region kind, language)`` of a scorer name."""
    base, _, lang = scorer.partition(":")
    est, kind = SCORERS[base]
    return est, kind, lang or None


def points(cfg: ForgettingConfig) -> list[Point]:
    """Every run of the sweep, in a stable order, duplicates removed; references first."""
    out: dict[str, Point] = {}
    pts = []
    for g in cfg.sweep:
        for b in g.baselines:
            for seed in g.seeds:
                pts.append(Point("none", 0.0, "element", b, seed))
    for st in cfg.settings:
        for b in st.baselines:
            for seed in st.seeds:
                pts.append(Point("none", 0.0, "element", b, seed))
    for g in cfg.sweep:
        for sc in g.scorers:
            for gran in g.granularities:
                for r in g.ratios:
                    for b in g.baselines:
                        for seed in g.seeds:
                            pts.append(
                                Point(sc, 0.0, "element", b, seed)
                                if sc == "none"
                                else Point(sc, float(r), gran, b, seed)
                            )
    for st in cfg.settings:
        for b in st.baselines:
            for seed in st.seeds:
                pts.append(Point(f"setting:{st.name}", 0.0, "element", b, seed))
    for p in pts:
        out.setdefault(p.key, p)
    return list(out.values())


def digest(obj: Any) -> str:
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha1(blob).hexdigest()[:16]


Bad = Callable[[str], UserError]  # a message -> the error that names the config file


def _check_inputs(cfg: ForgettingConfig, bad: Bad) -> None:
    """The target, the evaluation and source languages, and a base model to start from."""
    if cfg.target not in cfg.evals:
        raise bad(f"evals must include the target language {cfg.target!r}")
    if len(cfg.evals) < 2:
        raise bad("evals need at least one language besides the target")
    if cfg.model is None and cfg.pretrain is None:
        raise bad("give a base 'model' directory or a 'pretrain' section")
    for s in cfg.source_langs():
        if s not in cfg.evals or s == cfg.target:
            raise bad(f"sources: {s!r} must be an evals language other than the target")


def _check_settings(cfg: ForgettingConfig, bad: Bad) -> None:
    """A non-empty sweep; explicit settings with unique names and one region each."""
    if not cfg.sweep and not cfg.settings:
        raise bad("the sweep is empty; give 'sweep' grids or explicit 'settings'")
    names = [s.name for s in cfg.settings]
    if len(set(names)) != len(names):
        raise bad(f"setting names repeat: {names}")
    for st in cfg.settings:
        if (st.region is None) == (st.layers is None):
            raise bad(f"setting {st.name!r}: give exactly one of region, layers")


def _check_grids(cfg: ForgettingConfig, bad: Bad) -> set[str]:
    """Each sweep grid's scorers, granularities and seeds; returns the scorers that need
    importance scores."""
    needs: set[str] = set()
    for i, g in enumerate(cfg.sweep):
        where = f"sweep[{i}]"
        for sc in g.scorers:
            base, _, lang = sc.partition(":")
            if base not in SCORERS:
                raise bad(
                    f"{where}: scorer {sc!r} is unknown; use one of "
                    f"{', '.join(SCORERS)} (top and monolingual as top:LANG)"
                )
            if (base in ("top", "monolingual")) != bool(lang):
                raise bad(
                    f"{where}: scorer {sc!r}: top and monolingual take a language "
                    "(top:LANG), the others none"
                )
            est = SCORERS[base][0]
            if est and est != "magnitude":
                needs.add(sc)
        for gran in g.granularities:
            if gran in ("row", "column") and cfg.scope != "per-tensor":
                raise bad(f"{where}: granularity {gran} needs scope per-tensor")
        if not g.seeds:
            raise bad(f"{where}: seeds is empty")
    return needs


def _check_baselines(cfg: ForgettingConfig, bad: Bad) -> set[str]:
    """Replay's ratio and texts; returns ``{"ewc"}`` when EWC (which needs scores) is used."""
    baselines = {b for g in cfg.sweep for b in g.baselines} | {
        b for st in cfg.settings for b in st.baselines
    }
    if "replay" in baselines:
        r = cfg.baselines.replay_ratio
        n = r * cfg.train.batch_size
        if not (0 < r < 1) or abs(n - round(n)) > 1e-9:
            raise bad(
                f"baselines.replay_ratio {r} x train.batch_size {cfg.train.batch_size} "
                "must be a whole number of windows in (0, batch size)"
            )
        if not cfg.baselines.replay_texts and cfg.importance is None:
            raise bad(
                "replay needs source texts: give baselines.replay_texts or an 'importance' section"
            )
    return {"ewc"} if "ewc" in baselines else set()


def _check_importance(cfg: ForgettingConfig, needs: set[str], bad: Bad) -> None:
    """Scorers and EWC that ``needs`` scores have an importance section with every language."""
    if not needs:
        return
    if cfg.importance is None:
        raise bad(
            f"{sorted(needs)} need importance scores; add an 'importance' section "
            "(texts per source language)"
        )
    want = set(cfg.score_langs()) | {sc.partition(":")[2] for sc in needs if ":" in sc}
    missing = sorted(want - set(cfg.importance.texts))
    if missing:
        raise bad(f"importance.texts lacks {missing}; add their training text")


def check_config(cfg: ForgettingConfig, source: str = "config") -> None:
    """Every check of a sweep config (its fields' checks, names included, then the
    cross-field rules); errors start with ``source``."""

    def bad(msg: str) -> UserError:
        return UserError(f"{source}: {msg}")

    check(cfg, source)
    _check_inputs(cfg, bad)
    _check_settings(cfg, bad)
    needs = _check_grids(cfg, bad)
    needs |= _check_baselines(cfg, bad)
    _check_importance(cfg, needs, bad)


def config_from_dict(d: Mapping[str, Any], source: str = "config") -> ForgettingConfig:
    if not isinstance(d, Mapping):
        raise UserError(f"{source}: expected a mapping, got {type(d).__name__}")
    d = dict(d)
    if isinstance(d.get("settings"), Mapping):  # {name: {...}} is accepted too
        d["settings"] = [{"name": k, **(v or {})} for k, v in d["settings"].items()]
    if isinstance(d.get("sweep"), Mapping):  # a single grid
        d["sweep"] = [d["sweep"]]
    cfg = from_dict(ForgettingConfig, d, source)
    check_config(cfg, source)
    return cfg


def load_config(path: str) -> ForgettingConfig:
    return config_from_dict(read_yaml(path) or {}, path)
