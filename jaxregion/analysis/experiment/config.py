"""The battery's config checks (the dataclasses are in :mod:`jaxregion.configs`), run
before any work.

Checks that need only the file run in :func:`validate`; those that need the model's shape
(dimensions in range, target roles the family has, matrices to map) run in
:func:`validate_for_model` once config.json is read, still before any weight is loaded.
Every error names the file and the key.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from jaxregion.analysis import fidelity
from jaxregion.analysis.dims import validate as validate_dims
from jaxregion.configs import ExperimentConfig
from jaxregion.errors import UserError
from jaxregion.models import ModelConfig
from jaxregion.strict_loader import load_yaml


def load_config(path: str) -> ExperimentConfig:
    cfg = load_yaml(ExperimentConfig, path)
    validate(cfg, path)
    return cfg


def validate(cfg: ExperimentConfig, where: str = "config") -> None:
    """Checks that need only the config itself: its fields' checks and cross-field rules
    (:meth:`ExperimentConfig.validate`, one definition for parsed and built configs), with
    ``where`` (the file) in the message, and that each case-study language can be identified
    (:mod:`jaxregion.analysis.fidelity`)."""
    try:
        cfg.validate()
    except UserError as e:
        raise UserError(f"{where}: {e}") from None
    for lang in cfg.case_studies.prompts:
        try:
            fidelity.check_language(lang)
        except UserError as e:
            raise UserError(f"{where}: case_studies.prompts: {e}") from None


def validate_for_model(
    cfg: ExperimentConfig,
    model: ModelConfig,
    shapes: Mapping[str, Sequence[int]],
    where: str = "config",
) -> None:
    """Checks that need the model: the ``dims`` section and the matrices to map."""
    validate_dims(cfg.dims, model, where)
    for i, name in enumerate(cfg.mask_maps.matrices):
        if name not in shapes:
            raise UserError(
                f"{where}: mask_maps.matrices[{i}]: the model has no parameter {name!r}"
            )
        if len(shapes[name]) != 2:
            raise UserError(
                f"{where}: mask_maps.matrices[{i}]: {name!r} has shape "
                f"{list(shapes[name])}; a mask map needs a matrix"
            )
