"""How stable a region is: split-half Jaccard from one pass, and its projection to the sample.

Every importance run accumulates its even and odd micro-batches separately (see
:mod:`jaxregion.importance`), so each score file comes with two independent half-sample
estimates. The same region built from each half gives the **split-half Jaccard**: how much
the region would move if the data were redrawn at half the size.

**Projection to the full sample** (what two independent runs of the *full* size would
agree on) is Spearman-Brown through a bivariate-normal link:

1. Model the two half estimates of an element's score as a bivariate normal pair (on the
   rank scale: a Gaussian copula) with correlation ρ. Two top-``p`` sets then overlap in a
   fraction ``o(ρ) = P(X > z, Y > z) / p`` of their size, ``z = Φ⁻¹(1 - p)``; ``o(0) = p``
   (chance) and ``o(1) = 1``. The observed overlap ``o = 2J / (1 + J)`` (equal sizes)
   gives ρ by inverting ``o``.
2. An estimate from ``n`` windows is a mean of ``n`` independent per-window terms, so its
   noise variance is ``σ²/n`` and the correlation of two independent estimates is the
   classical reliability ``var_true / (var_true + σ²/n)``; doubling ``n`` turns ρ into
   ``2ρ / (1 + ρ)`` (the Spearman-Brown formula, exact under that model).
3. Map back: ``J_full = o(ρ_full) / (2 - o(ρ_full))``.

The same model predicts what ``--until-stable`` will see: the estimates from the first ``n``
and the first ``2n`` windows correlate ``sqrt((1 + s/2) / (1 + s))`` with ``s`` the noise
variance at ``n`` windows relative to the signal's (:func:`doubling_jaccard`,
:func:`windows_until_stable`), so one run's split halves say how many windows a target needs.

A half-sample Jaccard at chance (ρ ≤ 0) projects to chance. The normal copula is an
assumption (importance is heavy-tailed, but only its rank dependence matters here); the
projection is an estimate, the split-half Jaccard itself is a measurement.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from jaxregion import tree as T
from jaxregion.errors import UserError
from jaxregion.importance import POWER
from jaxregion.regions import DEFAULT_INCLUDE, Region, importance_path, jaccard
from jaxregion.regions import select as select_region
from jaxregion.regions.files import open_scores
from jaxregion.regions.lazy import LazyScores

PyTree = Any
METHOD = "Spearman-Brown through a bivariate-normal (Gaussian-copula) link"
HALVES = ".halves"


# --- the projection ------------------------------------------------------------------------
def _phi_bar(x: np.ndarray) -> np.ndarray:
    return 0.5 * np.vectorize(math.erfc)(x / math.sqrt(2.0))


def _z(p: float) -> float:
    """Φ⁻¹(1 - p) by bisection (no scipy at run time)."""
    lo, hi = -10.0, 10.0
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        if 0.5 * math.erfc(mid / math.sqrt(2.0)) > p:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def overlap_at(rho: float, p: float) -> float:
    """Expected ``|A ∩ B| / |A|`` of the top-``p`` sets of a bivariate normal pair with
    correlation ``rho`` (``P(X > z, Y > z) / p`` by quadrature over ``x``)."""
    if rho >= 1.0:
        return 1.0
    z = _z(p)
    x = np.linspace(z, z + 12.0, 4001)
    dens = np.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)
    inner = _phi_bar((z - rho * x) / math.sqrt(1.0 - rho * rho))
    y = dens * inner
    joint = float(np.sum((y[1:] + y[:-1]) * 0.5 * np.diff(x)))
    return min(1.0, joint / p)


def rho_from_jaccard(j: float, p: float) -> float:
    """The copula correlation whose top-``p`` sets have Jaccard ``j`` (0 at or below chance)."""
    o = 2.0 * j / (1.0 + j)
    if o <= p:
        return 0.0
    if o >= 1.0:
        return 1.0
    lo, hi = 0.0, 1.0
    for _ in range(60):  # overlap_at is increasing in rho
        mid = 0.5 * (lo + hi)
        if overlap_at(mid, p) < o:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def jaccard_from_rho(rho: float, p: float) -> float:
    o = overlap_at(rho, p)
    return o / (2.0 - o)


def project_jaccard(j: float, p: float, factor: float = 2.0) -> float:
    """The Jaccard of two independent estimates from ``factor`` times the windows, given the
    Jaccard ``j`` of two estimates' top-``p`` sets (module docstring)."""
    if not 0.0 < p < 1.0:
        return 1.0
    rho = rho_from_jaccard(j, p)
    if rho <= 0.0:
        return chance_jaccard(p)
    if rho >= 1.0:
        return 1.0
    return jaccard_from_rho(factor * rho / (1.0 + (factor - 1.0) * rho), p)


def doubling_jaccard(split_half_j: float, windows: int, n: int, p: float) -> float:
    """Predicted Jaccard of the top-``p`` sets from the first ``n`` and the first ``2n``
    windows (what ``--until-stable`` compares), from the split-half Jaccard of a
    ``windows``-window run: with noise variance ``s = σ²/n`` relative to the signal's, the
    nested estimates correlate ``sqrt((1 + s/2) / (1 + s))``."""
    rho = rho_from_jaccard(split_half_j, p)
    if rho >= 1.0:
        return 1.0
    if rho <= 0.0:
        return chance_jaccard(p)
    s = (1.0 / rho - 1.0) * (windows / 2) / n
    return jaccard_from_rho(math.sqrt((1 + s / 2) / (1 + s)), p)


def windows_until_stable(
    split_half_j: float, windows: int, p: float, target: float, start: int, limit: int = 2**40
) -> int | None:
    """The window count (2n on the doubling schedule from ``start``) at which the predicted
    doubling Jaccard first reaches ``target``; None beyond ``limit``."""
    n = max(1, start)
    while 2 * n <= limit:
        if doubling_jaccard(split_half_j, windows, n, p) >= target:
            return 2 * n
        n *= 2
    return None


def chance_jaccard(p: float) -> float:
    """Jaccard of two independent uniformly random top-``p`` sets (expected overlap p)."""
    return p / (2.0 - p)


# --- split halves of one language ---------------------------------------------------------
def topk_jaccard(
    a: PyTree,
    b: PyTree,
    ratio: float = 0.01,
    scope: str = "per-tensor",
    include: str | None = DEFAULT_INCLUDE,
) -> float:
    """Jaccard of the top-``ratio`` |score| sets of two score trees (per ``scope`` unit)."""
    ra = select_region("top", {"x": a}, lang="x", ratio=ratio, scope=scope, include=include)
    rb = select_region("top", {"x": b}, lang="x", ratio=ratio, scope=scope, include=include)
    return jaccard(ra, rb)


def split_half(
    halves: tuple[PyTree, PyTree],
    ratios: Sequence[float] = (0.01,),
    scope: str = "per-tensor",
    include: str | None = DEFAULT_INCLUDE,
) -> dict[str, Any]:
    """Split-half Jaccard of the top-``ratio`` sets and its full-sample projection, per ratio
    (JSON-ready; keys are the ratios as strings)."""
    jac, proj = {}, {}
    for r in ratios:
        j = topk_jaccard(halves[0], halves[1], r, scope, include)
        jac[str(r)] = j
        proj[str(r)] = project_jaccard(j, r)
    return {
        "jaccard": jac,
        "projected": proj,
        "scope": scope,
        "include": include or "",
        "method": METHOD,
    }


# --- halves on disk -----------------------------------------------------------------------
def halves_path(directory: str, lang: str) -> str:
    """Where the even half of ``DIR/LANG.safetensors`` lives (hidden from the language glob)."""
    return os.path.join(directory, HALVES, f"{lang}.safetensors")


def odd_tensor(full: Any, even: Any, counts: tuple[int, int], power: int) -> np.ndarray:
    """One tensor of the odd half from the full scores and the even half: ``score**power``
    is linear in the accumulator, so ``odd**q = (n·full**q - n_e·even**q) / n_o`` (a sign is
    kept for q=1)."""
    ne, no = counts
    n = ne + no
    f, e = np.asarray(full, np.float64), np.asarray(even, np.float64)
    if power == 1:
        return ((n * f - ne * e) / no).astype(np.float32)
    return np.sqrt(np.maximum(n * f**power - ne * e**power, 0.0) / no).astype(np.float32)


def reconstruct_odd(full: PyTree, even: PyTree, counts: tuple[int, int], power: int) -> PyTree:
    """The odd half of a score tree (:func:`odd_tensor`, tensor by tensor)."""
    ff, fe = T.flatten(full), T.flatten(even)
    return T.unflatten({k: odd_tensor(ff[k], fe[k], counts, power) for k in ff})


def load_halves(directory: str, lang: str) -> tuple[LazyScores, LazyScores]:
    """``(even, odd)`` scores of ``lang`` in an importance directory, read tensor by tensor
    (the odd tensor made from the full and the even one when asked); UserError when the
    file has no halves (computed before they existed, or from a single micro-batch)."""
    full, meta = open_scores(importance_path(directory, lang))
    hp = halves_path(directory, lang)
    if not os.path.isfile(hp):
        raise UserError(
            f"{importance_path(directory, lang)} has no split halves ({hp} is "
            "missing); recompute it with this version and more than one batch"
        )
    even, hmeta = open_scores(hp)
    if hmeta.get("windows_digest") != meta.get("windows_digest") or hmeta.get(
        "windows"
    ) != meta.get("windows"):
        raise UserError(
            f"{hp} does not belong to {importance_path(directory, lang)} (other "
            "windows); recompute the language"
        )
    if dict(even.shapes) != dict(full.shapes):
        raise UserError(
            f"{hp} does not belong to {importance_path(directory, lang)} (other "
            "tensors or shapes); recompute the language"
        )
    counts = (int(hmeta["windows_even"]), int(hmeta["windows_odd"]))
    power = POWER.get(meta.get("estimator", "taylor"), 1)
    return even, full.map(lambda f, e: odd_tensor(f, e, counts, power), even)


@dataclass(frozen=True)
class Stability:
    jaccard: float  # split-half: the region from the even halves vs from the odd halves
    projected: float  # to two independent full-size samples (module docstring)
    density: float  # of the region built from the even halves
    langs: tuple[str, ...]

    def line(self) -> str:
        return (
            f"stability: split-half Jaccard {self.jaccard:.4f}, projected to the full "
            f"sample {self.projected:.4f} (chance {chance_jaccard(self.density):.4f}; "
            f"halves of {', '.join(self.langs)})"
        )


def region_stability(
    kind: str, halves_by_lang: Mapping[str, tuple[PyTree, PyTree]], **select_kwargs: Any
) -> Stability:
    """Build the ``kind`` region (same arguments as :func:`jaxregion.regions.select`) from
    every language's even half and from every odd half, and compare: the stability the
    battery and ``jaxregion regions`` print beside a region."""
    even = {k: v[0] for k, v in halves_by_lang.items()}
    odd = {k: v[1] for k, v in halves_by_lang.items()}
    a: Region = select_region(kind, even, **select_kwargs)
    b: Region = select_region(kind, odd, **select_kwargs)
    j = jaccard(a, b)
    density = a.size / a.numel if a.numel else 0.0
    return Stability(
        j, project_jaccard(j, density) if density else 1.0, density, tuple(sorted(halves_by_lang))
    )


def directory_stability(
    kind: str, directory: str, langs: Sequence[str], **select_kwargs: Any
) -> Stability:
    """:func:`region_stability` from the halves stored in an importance directory."""
    return region_stability(
        kind, {lang: load_halves(directory, lang) for lang in langs}, **select_kwargs
    )
