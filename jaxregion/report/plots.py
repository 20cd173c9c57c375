"""PNG plots for reports (matplotlib, Agg backend; written atomically)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from jaxregion.io import atomic_path


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


def ablation_bars(path: str, table: Mapping[str, Mapping[str, float]],
                  errors: Mapping[str, Mapping[str, float]] | None = None,
                  title: str = "") -> None:
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


def heatmap(path: str, matrix: np.ndarray, rows: Sequence[str], cols: Sequence[str],
            title: str, cbar: str, log: bool = False, fmt: str = "{:.2f}") -> None:
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


def profiles(path: str, series: Mapping[str, np.ndarray], title: str, xlabel: str,
             ylabel: str, mark: Sequence[int] = ()) -> None:
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


def histograms(path: str, values: Mapping[str, np.ndarray], title: str, xlabel: str) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for name, v in values.items():
        ax.hist(v, bins=80, histtype="step", label=name, density=True)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("density")
    ax.set_title(title)
    ax.legend(fontsize=8)
    _save(fig, path)


def sweep_plot(path: str, points: Sequence[dict], langs: Sequence[str], title: str) -> None:
    """Mean log-perplexity ratio to base per swept (dim, factor), candidates vs controls."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(6, 0.5 * len(points) + 2), 4))
    labels, vals, colors = [], [], []
    for p in points:
        labels.append(f"d{p['dim']} x{p['factor']:g}")
        vals.append(p["mean_ratio"])
        colors.append("tab:red" if p["group"] == "candidate" else "tab:gray")
    ax.bar(range(len(vals)), vals, color=colors)
    ax.axhline(1.0, color="black", lw=0.6)
    ax.set_yscale("log")
    ax.set_xticks(range(len(vals)), labels, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("perplexity / base (mean over languages)")
    ax.set_title(title + "  (red: candidate dims, grey: random controls)")
    _save(fig, path)


def curves(path: str, series: Mapping[str, tuple[Sequence[float], Sequence[float]]],
           title: str, xlabel: str, ylabel: str) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, (xs, ys) in series.items():
        ax.plot(xs, ys, marker="o", ms=3, label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    _save(fig, path)
