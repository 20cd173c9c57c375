"""The vocabularies the library and its command-line schema share (ground layer).

Each tuple belongs to the code that acts on it (region kinds to ``regions.select``,
estimators to ``importance``, ...), which imports it from here, as does ``configs`` for its
choices: the schema imports the library's names, never the reverse, and this module imports
nothing, so ``jaxregion CMD --help`` stays light.
"""

from __future__ import annotations

# --- registries (one definition each) ------------------------------------------------------
REGION_KINDS = ("core", "bottom", "random", "monolingual", "bottom-monolingual", "top")
LANG_KINDS = ("monolingual", "bottom-monolingual", "top")  # the kinds made for one language
GRANULARITIES = ("element", "row", "column", "tensor", "layer", "expert")
SCOPES = ("per-tensor", "per-layer", "global")
ESTIMATORS = ("taylor", "taylor-abs", "fisher", "wanda", "magnitude")
DATA_FREE = ("magnitude",)  # estimators that read no text
SCHEDULES = ("cosine", "constant", "linear")
COMPUTE_DTYPES = ("float32", "bfloat16")
EXPORT_DTYPES = ("float32", "bfloat16", "float16")
PLAN_TASKS = ("eval", "importance", "train")
# dims: the roles whose entries on a hidden dim are scaled (names from the family tables)
DEFAULT_DIMS_TARGETS = ("input_norm",)
# forgetting: the non-freezing baselines and the x axis of the frontier plot
FORGETTING_BASELINES = ("none", "replay", "ewc")
FORGETTING_X_AXES = ("target_gain", "target_logppl")
# The default region scope: every parameter the family table puts in a transformer layer
# (norms included). Not a regex; any other ``include`` string is one.
DEFAULT_INCLUDE = ":layers"
