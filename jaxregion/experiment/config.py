"""The battery's config checks (the dataclasses are in :mod:`jaxregion.configs`), run
before any work.

Checks that need only the file run in :func:`validate`; those that need the model's shape
(dimensions in range, target roles the family has, matrices to map) run in
:func:`validate_for_model` once config.json is read, still before any weight is loaded.
Every error names the file and the key.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from jaxregion import fidelity, importance
from jaxregion import regions as R
from jaxregion.config import load_yaml
from jaxregion.configs import ExperimentConfig
from jaxregion.dims import validate as validate_dims
from jaxregion.errors import UserError
from jaxregion.models import ModelConfig
from jaxregion.safety import check_name


def load_config(path: str) -> ExperimentConfig:
    cfg = load_yaml(ExperimentConfig, path)
    validate(cfg, path)
    return cfg


def _fraction(value: float, where: str, key: str) -> None:
    if not (0.0 < value < 1.0) or math.isnan(value):
        raise UserError(f"{where}: {key}: {value!r} is outside (0, 1); give a fraction such "
                        "as 0.01 for 1%")


def validate(cfg: ExperimentConfig, where: str = "config") -> None:
    """Checks that need only the config itself."""
    for key in ("languages", "eval_languages"):
        for lang in getattr(cfg, key):
            check_name(lang, f"{where}: {key}")
    for lang in cfg.monolingual or ():
        check_name(lang, f"{where}: monolingual")
    _fraction(cfg.ratio, where, "ratio")
    for i, r in enumerate(cfg.ratios):
        _fraction(r, where, f"ratios[{i}]")
    importance.check_estimator(cfg.estimator)
    for e in cfg.jaccard.estimators:
        importance.check_estimator(e)
    if len(cfg.languages) < 2:
        raise UserError(f"{where}: languages: need at least 2 (regions compare languages)")
    if len(set(cfg.random_seeds)) != len(cfg.random_seeds) or len(cfg.random_seeds) < 1:
        raise UserError(f"{where}: random_seeds must be distinct, e.g. [0, 1, 2]")
    for i, lang in enumerate(cfg.monolingual or ()):
        if lang not in cfg.languages:
            raise UserError(f"{where}: monolingual[{i}]: language {lang!r} is not in languages")
    if cfg.scope not in R.SCOPES:
        raise UserError(f"{where}: scope: {cfg.scope!r}: use one of {', '.join(R.SCOPES)}")
    for lang in cfg.case_studies.prompts:
        try:
            fidelity.check_language(lang)
        except UserError as e:
            raise UserError(f"{where}: case_studies.prompts: {e}") from None
    if cfg.mask_maps.blocks < 1:
        raise UserError(f"{where}: mask_maps.blocks: {cfg.mask_maps.blocks}; give a positive "
                        "number such as 64")


def validate_for_model(cfg: ExperimentConfig, model: ModelConfig,
                       shapes: Mapping[str, Sequence[int]], where: str = "config") -> None:
    """Checks that need the model: the ``dims`` section and the matrices to map."""
    validate_dims(cfg.dims, model, where)
    for i, name in enumerate(cfg.mask_maps.matrices):
        if name not in shapes:
            raise UserError(f"{where}: mask_maps.matrices[{i}]: the model has no parameter "
                            f"{name!r}")
        if len(shapes[name]) != 2:
            raise UserError(f"{where}: mask_maps.matrices[{i}]: {name!r} has shape "
                            f"{list(shapes[name])}; a mask map needs a matrix")
