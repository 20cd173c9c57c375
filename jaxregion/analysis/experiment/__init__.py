"""The paper's battery: :mod:`config` (what to run), :mod:`run` (compute), :mod:`results`
(the results dataclass, ``results.json``); :mod:`jaxregion.report.battery` renders it."""

from jaxregion.analysis.experiment.config import load_config, validate, validate_for_model
from jaxregion.analysis.experiment.results import THRESHOLDS, Results
from jaxregion.analysis.experiment.run import run
from jaxregion.configs import (
    CaseStudyConfig,
    DimsConfig,
    ExperimentConfig,
    JaccardConfig,
    MaskMapConfig,
)

__all__ = [
    "THRESHOLDS",
    "CaseStudyConfig",
    "DimsConfig",
    "ExperimentConfig",
    "JaccardConfig",
    "MaskMapConfig",
    "Results",
    "load_config",
    "run",
    "validate",
    "validate_for_model",
]
