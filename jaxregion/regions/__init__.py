"""Linguistic regions: select, combine, describe, store (see the submodules' docs).

Everything works on HF-named pytrees of any model family; nothing here imports a model.
Parameter roles (layer, module type, norm, residual axis) arrive as data: a ``{name: Role}``
mapping from ``jaxregion.models.roles(cfg)``, or, by default, read off the family tables by
name (:func:`roles_for`).
"""

from jaxregion.regions.algebra import (
    complement,
    density,
    difference,
    intersection,
    jaccard,
    numel,
    overlap_matrix,
    size,
    union,
)
from jaxregion.regions.base import (
    DEFAULT_INCLUDE,
    LAYERS,
    Region,
    fingerprint,
    full_mask,
    is_norm,
    k_for,
    layer_index,
    mask_of,
    module_type,
    roles_for,
    scope_names,
    universe_of,
)
from jaxregion.regions.files import (
    importance_path,
    load_importance_dir,
    load_region,
    load_scores,
    save_region,
    save_scores,
)
from jaxregion.regions.select import (
    KINDS,
    SCOPES,
    bottom,
    core,
    monolingual,
    random,
    select,
    top,
    validate_scores,
)
from jaxregion.regions.stats import hidden_dim_profile, row_col_counts, stats

__all__ = [
    "DEFAULT_INCLUDE", "KINDS", "LAYERS", "SCOPES", "Region", "bottom", "complement",
    "core", "density", "difference", "fingerprint", "full_mask", "hidden_dim_profile",
    "importance_path", "intersection", "is_norm", "jaccard", "k_for", "layer_index",
    "load_importance_dir", "load_region", "load_scores", "mask_of", "module_type",
    "monolingual", "numel", "overlap_matrix", "random", "roles_for", "row_col_counts",
    "save_region", "save_scores", "scope_names", "select", "size", "stats", "top", "union",
    "universe_of", "validate_scores",
]
