"""jaxregion: find, measure, break and protect the linguistic regions of LLMs.

The public API is small and functional; everything else is an implementation detail:

- ``jaxregion.hf``: ``load(model) -> (cfg, params)``, ``export(params, cfg, dir)``
- ``jaxregion.models``: ``apply(params, tokens, cfg) -> logits``, ``token_nll``, ``loss_fn``
- ``jaxregion.importance``: ``compute_importance(params, cfg, windows, estimator=...)``
- ``jaxregion.regions``: ``core / bottom / random / top / monolingual``, algebra, stats, files
- ``jaxregion.interventions``: ``zero / scale / add_noise / set_value``, ``apply_perturb``
- ``jaxregion.freeze``: optax transforms that keep a region bitwise fixed
- ``jaxregion.evaluate``: ``evaluate(params, cfg, windows) -> perplexity``
- ``jaxregion.tree``: HF-name views of any pytree (``flatten``, ``unflatten``, ``get``)
- ``jaxregion.data``: sources, the packing contract, tokenizers, the synthetic corpus

Submodules are imported on first use, so ``import jaxregion`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

from jaxregion.errors import UserError

__version__ = "0.1.0"

_SUBMODULES = (
    "data", "demo", "dims", "distributed", "evaluate", "experiment", "forgetting", "freeze", "hf",
    "importance", "interventions", "models", "plan", "regions", "runtime", "sharding", "train",
    "tree",
)
__all__ = [*_SUBMODULES, "UserError", "__version__"]


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"jaxregion.{name}")
    raise AttributeError(f"module 'jaxregion' has no attribute {name!r}")
