"""PNG plots for reports (matplotlib, Agg backend; written atomically)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from jaxregion.io.atomic import atomic_path


def _plt():
    # deferred: matplotlib.pyplot costs ~1.0 s to import (measured, python -X importtime);
    # only report writing needs it, not the modules that import this one
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    _plt().close(fig)


def ablation_bars(
    path: str,
    table: Mapping[str, Mapping[str, float]],
    errors: Mapping[str, Mapping[str, float]] | None = None,
    title: str = "",
) -> None:
    """Grouped bars of log perplexity: one group per language, one bar per condition."""
    plt = _plt()
    conds = list(table)
    langs = list(next(iter(table.values())))
    x = np.arange(len(langs))
    w = 0.8 / max(len(conds), 1)
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(langs) + 2), 4))
    for i, c in enumerate(conds):
        vals = [table[c][lang] for lang in langs]
        err = [errors[c][lang] for lang in langs] if errors and c in errors else None
        ax.bar(x + i * w, vals, w, yerr=err, label=c)
    ax.set_yscale("log")
    ax.set_xticks(x + w * (len(conds) - 1) / 2, langs)
    ax.set_ylabel("perplexity (log scale)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    _save(fig, path)


def heatmap(
    path: str,
    matrix: np.ndarray,
    rows: Sequence[str],
    cols: Sequence[str],
    title: str,
    cbar: str,
    log: bool = False,
    fmt: str = "{:.2f}",
) -> None:
    plt = _plt()
    m = np.asarray(matrix, float)
    fig, ax = plt.subplots(figsize=(max(4, 0.7 * len(cols) + 2), max(3, 0.5 * len(rows) + 1.5)))
    shown = np.log10(np.maximum(m, 1e-12)) if log else m
    im = ax.imshow(shown, aspect="auto", cmap="viridis")
    ax.set_xticks(range(len(cols)), cols, rotation=45, ha="right")
    ax.set_yticks(range(len(rows)), rows)
    if m.size <= 400:
        for (i, j), v in np.ndenumerate(m):
            ax.text(j, i, fmt.format(v), ha="center", va="center", fontsize=7, color="white")
    fig.colorbar(im, ax=ax, label=("log10 " if log else "") + cbar)
    ax.set_title(title)
    _save(fig, path)


def profiles(
    path: str,
    series: Mapping[str, np.ndarray],
    title: str,
    xlabel: str,
    ylabel: str,
    mark: Sequence[int] = (),
) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 3.5))
    for name, ys in series.items():
        ax.plot(np.arange(len(ys)), ys, lw=0.8, label=name)
    for d in mark:
        ax.axvline(d, color="red", lw=0.6, ls=":")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if len(series) > 1:
        ax.legend(fontsize=8)
    _save(fig, path)


def histograms(
    path: str, edges: Sequence[float], counts: Mapping[str, Sequence[int]], title: str, xlabel: str
) -> None:
    """Step histograms (normalised to density) from precomputed counts on shared edges."""
    plt = _plt()
    e = np.asarray(edges, float)
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for name, c in counts.items():
        c = np.asarray(c, float)
        ax.stairs(c / max(c.sum(), 1.0) / np.diff(e), e, label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("density")
    ax.set_title(title)
    ax.legend(fontsize=8)
    _save(fig, path)


def mask_maps(
    path: str, maps: Mapping[str, np.ndarray], title: str, xlabel: str, ylabel: str
) -> None:
    """One panel per region: block density of one matrix (rows x columns), shared scale."""
    plt = _plt()
    n = len(maps)
    cols = min(n, 4)
    rows = -(-n // cols)
    fig, axes = plt.subplots(
        rows,
        cols,
        figsize=(3.2 * cols + 1, 3.0 * rows + 0.4),
        squeeze=False,
        constrained_layout=True,
    )
    vmax = max(float(np.max(m)) for m in maps.values()) or 1.0
    im = None
    for i, (ax, (name, m)) in enumerate(zip(axes.ravel(), maps.items())):
        im = ax.imshow(
            np.asarray(m), aspect="auto", cmap="magma", vmin=0, vmax=vmax, interpolation="nearest"
        )
        ax.set_title(name, fontsize=9)
        ax.set_xlabel(xlabel, fontsize=8)
        if i % cols == 0:
            ax.set_ylabel(ylabel, fontsize=8)
    for ax in axes.ravel()[n:]:
        ax.axis("off")
    fig.colorbar(im, ax=axes.ravel().tolist(), label="fraction selected per block")
    fig.suptitle(title, fontsize=10)
    _save(fig, path)


def sweep_plot(path: str, points: Sequence[dict], title: str) -> None:
    """Perplexity ratio to base (geometric mean over languages) per swept point, candidates
    red and controls grey; each bar is labelled dim, target and factor."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(6, 0.35 * len(points) + 2), 4))
    labels = [f"d{p['dim']} {p['target']} x{p['factor']:g}" for p in points]
    vals = [p["mean_ratio"] for p in points]
    colors = ["tab:red" if p["group"] == "candidate" else "tab:gray" for p in points]
    ax.bar(range(len(vals)), vals, color=colors)
    ax.axhline(1.0, color="black", lw=0.6)
    ax.set_yscale("log")
    ax.set_xticks(range(len(vals)), labels, rotation=70, ha="right", fontsize=7)
    ax.set_ylabel("perplexity / base (geometric mean)")
    ax.set_title(title + "  (red: candidate dims, grey: controls)")
    _save(fig, path)


def curves(
    path: str,
    series: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    title: str,
    xlabel: str,
    ylabel: str,
    logx: bool = False,
    logy: bool = False,
) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, (xs, ys) in series.items():
        ax.plot(xs, ys, marker="o", ms=3, label=name)
    if logx:
        ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    _save(fig, path)


_GRANULARITY_MARKS = {"element": "o", "row": "s", "column": "D", "tensor": "^", "layer": "v"}


def _pareto_points(ax: Any, points: Sequence[dict], frontier: Sequence[str], cmap: Any) -> None:
    """Each setting's marker with seed error bars (one legend entry per scorer); labels on
    the frontier and the unfrozen references."""
    scorers = sorted({p["scorer"] for p in points})
    colors = {s: cmap(i % 10) for i, s in enumerate(scorers)}
    seen: set[str] = set()
    for p in points:
        c = colors[p["scorer"]]
        label = p["scorer"] if p["scorer"] not in seen else None
        seen.add(p["scorer"])
        open_ = p["baseline"] != "none"
        ax.errorbar(
            p["x"],
            p["y"],
            xerr=p.get("xerr") or None,
            yerr=p.get("yerr") or None,
            fmt=_GRANULARITY_MARKS.get(p["granularity"], "o"),
            color=c,
            ms=6,
            capsize=2,
            lw=0.8,
            mfc="none" if open_ else c,
            label=label,
        )
        if p["label"] in frontier or p["scorer"] == "none":
            ax.annotate(
                p["label"], (p["x"], p["y"]), fontsize=6, xytext=(3, 3), textcoords="offset points"
            )


def _pareto_frontier_and_keys(ax: Any, points: Sequence[dict], frontier: Sequence[str]) -> None:
    """The frontier joined by a dashed line, and legend keys for granularity and baselines."""
    front = sorted((p for p in points if p["label"] in frontier), key=lambda p: p["x"])
    if len(front) > 1:
        ax.plot(
            [p["x"] for p in front],
            [p["y"] for p in front],
            color="black",
            lw=0.8,
            ls="--",
            label="Pareto frontier",
        )
    for g, m in _GRANULARITY_MARKS.items():
        if any(p["granularity"] == g for p in points):
            ax.plot([], [], m, color="gray", label=f"granularity {g}")
    if any(p["baseline"] != "none" for p in points):
        ax.plot([], [], "o", color="gray", mfc="none", label="with replay / EWC")


def pareto(
    path: str,
    points: Sequence[dict],
    frontier: Sequence[str],
    title: str,
    xlabel: str,
    ylabel: str,
    caption: str = "",
) -> None:
    """One marker per setting at (x, y) with seed error bars; colour = scorer, marker =
    granularity, open markers for baselines other than none; the Pareto frontier joined.

    ``points``: dicts with label, x, y, xerr, yerr, scorer, granularity, baseline."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.5, 5))
    _pareto_points(ax, points, frontier, plt.get_cmap("tab10"))
    _pareto_frontier_and_keys(ax, points, frontier)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    if caption:
        fig.text(0.01, -0.02, caption, fontsize=6, wrap=True, va="top")
    _save(fig, path)
