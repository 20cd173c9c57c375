"""Where regions and scores sit, reduced to small arrays a report can draw: density per layer
and module, per-matrix block density (row x column mask maps), and score histograms."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from jaxregion import regions as R
from jaxregion import tree as T
from jaxregion.analysis.experiment.results import MaskMap


def layer_module_density(
    region: R.Region, roles: Mapping[str, Any]
) -> tuple[np.ndarray, list[str], list[int]]:
    """Fraction selected per (layer, module type), over the region's layer tensors."""
    flat = T.flatten(R.mask_of(region))
    cells: dict[tuple[int, str], list[int]] = {}
    for n in R.universe_of(region):
        layer = roles[n].layer
        if layer is None:
            continue
        m = np.asarray(flat[n])
        c = cells.setdefault((layer, roles[n].module), [0, 0])
        c[0] += int(m.sum())
        c[1] += m.size
    layers = sorted({k[0] for k in cells})
    modules = sorted({k[1] for k in cells})
    mat = np.zeros((len(layers), len(modules)))
    for (layer, mod), (sel, tot) in cells.items():
        mat[layers.index(layer), modules.index(mod)] = sel / tot
    return mat, modules, layers


def block_density(mask: np.ndarray, blocks: int) -> tuple[np.ndarray, tuple[int, int]]:
    """A 2-D bool mask reduced to at most ``blocks`` x ``blocks`` cells, each the fraction of
    its (rows x columns) block that is selected; edge blocks may be smaller. Returns the map
    and the block size."""
    m = np.asarray(mask, bool)
    br, bc = (max(1, math.ceil(s / blocks)) for s in m.shape)
    rows, cols = np.arange(0, m.shape[0], br), np.arange(0, m.shape[1], bc)
    sel = np.add.reduceat(np.add.reduceat(m.astype(np.int64), rows, axis=0), cols, axis=1)
    nr = np.diff(np.append(rows, m.shape[0]))
    nc = np.diff(np.append(cols, m.shape[1]))
    return sel / np.outer(nr, nc), (br, bc)


def mask_maps(
    regions: Mapping[str, R.Region], matrices: tuple[str, ...], blocks: int
) -> list[MaskMap]:
    """One :class:`MaskMap` per (matrix, region)."""
    out = []
    for name in matrices:
        for rname, reg in regions.items():
            m = np.asarray(T.flatten(R.mask_of(reg))[name])
            dens, (br, bc) = block_density(m, blocks)
            out.append(MaskMap(name, rname, list(m.shape), [br, bc], dens.tolist()))
    return out


def score_histograms(
    scores: Mapping[str, dict],
    roles: Mapping[str, Any],
    bins: int = 80,
    sample: int = 200_000,
    seed: int = 0,
) -> dict:
    """Counts of log10 |score| over the layer tensors of each language, on shared edges
    (up to ``sample`` entries per language, drawn with a fixed seed)."""
    rng = np.random.default_rng(seed)
    vals = {}
    for lang, tree in scores.items():
        v = np.concatenate(
            [
                np.abs(np.asarray(x, np.float32)).ravel()
                for n, x in T.flatten(tree).items()
                if roles[n].layer is not None
            ]
        )
        v = v[rng.choice(len(v), min(len(v), sample), replace=False)]
        vals[lang] = np.log10(v.astype(np.float64) + 1e-30)
    lo = min(float(v.min()) for v in vals.values())
    hi = max(float(v.max()) for v in vals.values())
    edges = np.linspace(lo, hi if hi > lo else lo + 1.0, bins + 1)
    return {
        "edges": edges.tolist(),
        "counts": {k: np.histogram(v, edges)[0].tolist() for k, v in vals.items()},
    }
