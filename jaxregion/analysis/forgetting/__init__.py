"""The forgetting frontier: continued pre-training on a target language while protecting the
others, swept over freeze ratio × granularity × scorer × baseline × seed.

- ``config``: the YAML schema (frozen dataclasses) and the points;
- ``protect``: scorers -> regions, replay data, EWC terms (cached);
- ``sweep``: the resumable driver (``jaxregion forgetting CONFIG``);
- ``results``: metrics, seed aggregates, Pareto set, Outcome lines,
  rendering through :mod:`jaxregion.report`.
"""

from jaxregion.analysis.forgetting.config import (
    BASELINES,
    SCORERS,
    Point,
    check_config,
    config_from_dict,
    load_config,
    points,
)
from jaxregion.analysis.forgetting.sweep import SweepResult, bootstrap_model, run
from jaxregion.configs import (
    BaselineSpec,
    ForgettingConfig,
    Grid,
    ImportanceSpec,
    PretrainSpec,
    Setting,
    TrainSpec,
)

__all__ = [
    "BASELINES",
    "SCORERS",
    "BaselineSpec",
    "ForgettingConfig",
    "Grid",
    "ImportanceSpec",
    "Point",
    "PretrainSpec",
    "Setting",
    "SweepResult",
    "TrainSpec",
    "bootstrap_model",
    "check_config",
    "config_from_dict",
    "load_config",
    "points",
    "run",
]
