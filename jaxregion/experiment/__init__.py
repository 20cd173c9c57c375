"""The paper's battery: :mod:`config` (what to run), :mod:`run` (compute), :mod:`results`
(the results dataclass, ``results.json``); :mod:`jaxregion.report.battery` renders it."""

from jaxregion.configs import (
    CaseStudyConfig,
    DimsConfig,
    ExperimentConfig,
    JaccardConfig,
    MaskMapConfig,
)
from jaxregion.experiment.config import load_config, validate, validate_for_model
from jaxregion.experiment.results import THRESHOLDS, Results
from jaxregion.experiment.run import run

__all__ = ["THRESHOLDS", "CaseStudyConfig", "DimsConfig", "ExperimentConfig", "JaccardConfig",
           "MaskMapConfig", "Results", "load_config", "run", "validate", "validate_for_model"]
