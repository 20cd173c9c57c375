"""Linguistic regions: select, combine, describe, store (see the submodules' docs).

Everything works on HF-named pytrees of any model family; nothing here imports a model.
Parameter roles (layer, module type, norm, residual axis) arrive as data: a ``{name: Role}``
mapping from ``jaxregion.models.roles(cfg)``, or, by default, read off the family tables by
name (:func:`roles_for`).
"""

from jaxregion.regions.base import (
    DEFAULT_INCLUDE,
    LAYERS,
    is_norm,
    k_for,
    layer_index,
    module_type,
    roles_for,
    scope_names,
)
from jaxregion.regions.files import (
    importance_path,
    load_importance_dir,
    load_region,
    load_scores,
    open_importance_dir,
    open_scores,
    save_region,
    save_scores,
)
from jaxregion.regions.granularity import GRANULARITIES, line_counts, select_coarse
from jaxregion.regions.lazy import LazyScores, as_lazy
from jaxregion.regions.region import (
    Region,
    complement,
    density,
    difference,
    fingerprint,
    full_mask,
    intersection,
    jaccard,
    mask_of,
    numel,
    overlap_matrix,
    shape_of,
    size,
    union,
    universe_of,
)
from jaxregion.regions.select import (
    KINDS,
    SCOPES,
    bottom,
    bottom_monolingual,
    core,
    layers,
    monolingual,
    random,
    select,
    top,
    validate_scores,
)
from jaxregion.regions.stats import counts_by, hidden_dim_profile, row_col_counts, stats

__all__ = [
    "DEFAULT_INCLUDE", "GRANULARITIES", "KINDS", "LAYERS", "LazyScores", "SCOPES", "Region",
    "as_lazy", "bottom", "open_importance_dir", "open_scores",
    "bottom_monolingual", "complement", "core", "counts_by", "density", "difference",
    "fingerprint", "full_mask", "hidden_dim_profile", "importance_path", "intersection",
    "is_norm", "jaccard", "k_for", "layer_index", "layers", "line_counts", "load_importance_dir",
    "load_region", "load_scores", "mask_of", "module_type", "monolingual", "numel",
    "overlap_matrix", "random", "roles_for", "row_col_counts", "save_region", "save_scores",
    "scope_names", "select", "select_coarse", "shape_of", "size", "stats", "top", "union",
    "universe_of", "validate_scores",
]
