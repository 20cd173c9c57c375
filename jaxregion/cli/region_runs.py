"""What ``jaxregion regions ...`` does, as library functions: select a region from a directory
of importance files, describe a region file, compare two.

Kept outside :mod:`jaxregion.regions` because it reads model checkpoints (``--model``, for
shapes), and ``regions`` imports no model. Everything is validated before anything is
written; results are plain data, rendered by :mod:`jaxregion.report.regions`.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import numpy as np

from jaxregion import regions as R
from jaxregion import safety
from jaxregion.analysis import stability
from jaxregion.configs import CompareConfig, SelectConfig, StatsConfig
from jaxregion.errors import UserError
from jaxregion.io import hf, safetensors_io
from jaxregion.models import abstract_params, input_axes
from jaxregion.safety import check_name


def model_template(model: str | None) -> tuple[Any, str | None]:
    """Abstract params and fingerprint of ``model`` (headers only, no weights read)."""
    if model is None:
        return None, None
    tmpl = abstract_params(hf.open_checkpoint(model).config)
    return tmpl, R.fingerprint(tmpl)


def load_scores_dir(
    directory: str, langs: tuple[str, ...] | None = None
) -> tuple[dict[str, Any], dict[str, str]]:
    """``({lang: scores}, {lang: path})`` of a directory of importance files, checked to come
    from one estimator (and to share names and shapes); the scores are read tensor by
    tensor when a selection asks (:class:`jaxregion.regions.LazyScores`)."""
    scores = R.open_importance_dir(directory, list(langs) if langs is not None else None)
    paths = {lang: R.importance_path(directory, lang) for lang in scores}
    headers = {lang: safetensors_io.read_metadata(p) or {} for lang, p in paths.items()}
    ests = {lang: h["estimator"] for lang, h in headers.items() if h.get("estimator")}
    if len(set(ests.values())) > 1:
        desc = ", ".join(f"{k}={v}" for k, v in sorted(ests.items()))
        raise UserError(
            f"importance files in {directory} mix estimators ({desc}); recompute "
            "them with one estimator"
        )
    models = {h["model_path"] for h in headers.values() if h.get("model_path")}
    if len(models) > 1:
        print(
            f"warning: importance files in {directory} name different model paths "
            f"({', '.join(sorted(models))}); shapes agree, so they are used together",
            file=sys.stderr,
        )
    return scores, paths


def check_scored(
    paths: dict[str, str], scores: dict[str, Any], include: str | None, exclude: str | None
) -> None:
    """UserError when ``include``/``exclude`` reach tensors an importance file did not
    score (its ``unscored`` metadata: outside the scope ``jaxregion importance`` was given)."""
    unscored: set[str] = set()
    for p in paths.values():
        unscored |= set(json.loads((safetensors_io.read_metadata(p) or {}).get("unscored", "[]")))
    if not unscored:
        return
    names = R.scope_names(list(next(iter(scores.values())).shapes), include, exclude)
    bad = sorted(unscored & set(names))
    if bad:
        raise UserError(
            f"the scope selects {len(bad)} tensors the importance files did not "
            f"score (e.g. {bad[0]}); narrow --include/--exclude or recompute "
            "the importance with a scope that covers them (importance --include)"
        )


def _check_out(path: str) -> None:
    if os.path.isdir(path):
        raise UserError(f"--out {path}: is a directory; give a .safetensors file path")
    parent = os.path.dirname(os.path.abspath(path))
    if os.path.exists(parent) and not os.path.isdir(parent):
        raise UserError(f"--out {path}: parent {parent} is not a directory")


def _in_axes(model: str | None) -> dict[str, int] | None:
    """HF name -> input-feature axis from the model family (None: the [out, in] default)."""
    return None if model is None else input_axes(hf.open_checkpoint(model).config)


def _routing_shares(path: str) -> dict[str, np.ndarray]:
    """``{lang: top-k share [layers, experts]}`` of an experts.json (``jaxregion experts``)."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        shares = {k: np.asarray(v, np.float64) for k, v in data["topk_share"].items()}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(
            f"--routing {path}: not an experts.json of `jaxregion experts` ({type(e).__name__})"
        ) from None
    if not shares or any(v.ndim != 2 for v in shares.values()):
        raise UserError(f"--routing {path}: topk_share holds no [layer][expert] table")
    safety.reading(path)
    return shares


def _by_routing(cfg: SelectConfig, template: Any) -> R.Region:
    """Whole experts ranked by their routing shares (``--expert-rank routing``)."""
    return R.experts_by_routing(
        cfg.kind,
        template,
        _routing_shares(cfg.routing),
        cfg.ratio,
        cfg.scope,
        cfg.lang,
        cfg.include or None,
        cfg.exclude or None,
        cfg.seed,
    )


def _checked_scores(
    cfg: SelectConfig, model_fp: str | None
) -> tuple[dict[str, Any], dict[str, str]]:
    """The importance files of ``cfg``, checked against ``--model``, the scope and ``--lang``."""
    scores, paths = load_scores_dir(cfg.importance, cfg.langs)
    first = scores[next(iter(scores))]
    if model_fp is not None and R.fingerprint(first.shapes) != model_fp:
        raise UserError(
            f"importance files in {cfg.importance} are for another model than "
            f"--model {cfg.model} (names/shapes differ)"
        )
    check_scored(paths, scores, cfg.include or None, cfg.exclude or None)
    if cfg.lang is not None and cfg.lang not in scores:
        raise UserError(
            f"--lang {cfg.lang!r} is not among the loaded languages "
            f"({', '.join(scores)}); add it to --langs"
        )
    return scores, paths


def _stability_line(cfg: SelectConfig, langs: list[str], in_axes: dict[str, int] | None) -> str:
    """The split-half stability of the region built, at its granularity ("unknown" when the
    importance directory has no halves)."""
    try:
        st = stability.directory_stability(
            cfg.kind,
            cfg.importance,
            langs,
            lang=cfg.lang,
            ratio=cfg.ratio,
            scope=cfg.scope,
            include=cfg.include or None,
            exclude=cfg.exclude or None,
            granularity=cfg.granularity,
            in_axes=in_axes,
        )
        return st.line()
    except UserError as e:
        return f"stability: unknown ({e})"


def select_region(cfg: SelectConfig) -> tuple[R.Region, str | None]:
    """The region ``cfg`` asks for, written to ``cfg.out`` (nothing is written on error), and
    the line on its split-half stability (None for random regions; "unknown" when the
    importance directory has no halves)."""
    _check_out(cfg.out)
    if cfg.lang is not None:
        check_name(cfg.lang, "--lang")
    template, model_fp = model_template(cfg.model)
    if cfg.expert_rank == "routing":
        region = _by_routing(cfg, template)
        R.save_region(cfg.out, region)
        return region, None
    scores = paths = None
    if cfg.importance is not None:
        scores, paths = _checked_scores(cfg, model_fp)
    in_axes = _in_axes(cfg.model) if cfg.granularity in ("row", "column") else None
    region = R.select(
        cfg.kind,
        scores,
        lang=cfg.lang,
        ratio=cfg.ratio,
        scope=cfg.scope,
        include=cfg.include or None,
        exclude=cfg.exclude or None,
        seed=cfg.seed,
        template=template if scores is None else None,
        sources=paths,
        granularity=cfg.granularity,
        in_axes=in_axes,
    )
    if region.size == 0:
        raise UserError(
            f"the {cfg.kind} region is empty (every element is also in another "
            "language's set); nothing written. Try a smaller --ratio or fewer "
            "--langs"
        )
    R.save_region(cfg.out, region)
    if scores is None or cfg.kind == "random":
        return region, None
    return region, _stability_line(cfg, list(scores), in_axes)


def region_stats(cfg: StatsConfig) -> tuple[R.Region, dict[str, Any]]:
    """The region file ``cfg.file`` and its :func:`jaxregion.regions.stats`."""
    region = R.load_region(cfg.file, model_template(cfg.model)[0])
    return region, R.stats(region, top_n=cfg.top)


def compare_regions(cfg: CompareConfig) -> dict[str, Any]:
    """Sizes, intersection, union and Jaccard of two region files, overall and per module."""
    template = model_template(cfg.model)[0]
    a, b = R.load_region(cfg.a, template), R.load_region(cfg.b, template)
    ua, ub = R.universe_of(a), R.universe_of(b)
    if set(ua) != set(ub):
        sa, sb = a.flat(), b.flat()
        if any(R.shape_of(sa[n]) != R.shape_of(sb[n]) for n in set(ua) & set(ub)):
            raise UserError(f"{cfg.a} and {cfg.b} are regions of different models")
        other = [n for n in ua if n not in ub] + [n for n in ub if n not in ua]
        raise UserError(
            f"{cfg.a} and {cfg.b} cover different tensors (e.g. {other[0]!r}); "
            "pass --model DIR to compare them over the whole model"
        )
    inter, uni = R.intersection(a, b), R.union(a, b)
    per = {
        name: R.counts_by(r, R.module_type)
        for name, r in (("a", a), ("b", b), ("intersection", inter), ("union", uni))
    }
    by_module = {
        m: {
            "a": per["a"][m][0],
            "b": per["b"][m][0],
            "intersection": per["intersection"][m][0],
            "jaccard": per["intersection"][m][0] / u,
        }
        for m, (u, _) in per["union"].items()
        if u > 0
    }
    return {
        "a": cfg.a,
        "b": cfg.b,
        "size_a": R.size(a),
        "size_b": R.size(b),
        "intersection": R.size(inter),
        "union": R.size(uni),
        "jaccard": R.jaccard(a, b),
        "by_module": by_module,
    }
