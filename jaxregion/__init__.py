"""jaxregion: find, measure, break and protect the linguistic regions of LLMs.

The public API is small and functional; everything else is an implementation detail:

- ``jaxregion.io.hf``: ``load(model) -> (cfg, params)``, ``export(params, cfg, dir)``
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

# public name -> module (under jaxregion)
_SUBMODULES = {
    "data": "data",
    "demo": "analysis.demo",
    "dims": "analysis.dims",
    "distributed": "parallel.distributed",
    "evaluate": "evaluate",
    "experiment": "analysis.experiment",
    "forgetting": "analysis.forgetting",
    "freeze": "freeze",
    "hf": "io.hf",
    "importance": "importance",
    "interventions": "interventions",
    "models": "models",
    "plan": "parallel.plan",
    "regions": "regions",
    "runtime": "runtime",
    "sharding": "parallel.sharding",
    "train": "train",
    "tree": "tree",
}
__all__ = [*_SUBMODULES, "UserError", "__version__"]


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"jaxregion.{_SUBMODULES[name]}")
    raise AttributeError(f"module 'jaxregion' has no attribute {name!r}")
