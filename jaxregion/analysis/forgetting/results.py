"""From finished runs to the frontier: per-point metrics, seed aggregates, the Pareto set,
the Outcome lines; then rendered as results.json, report.md and PNGs (through report/).

Definitions (the report states them too):

* **forgetting** = mean over the other (protected) languages of the relative perplexity
  increase ``(ppl_final − ppl_base) / ppl_base`` (reported in %);
* **target gain** = ``log ppl_base − log ppl_final`` of the target language (nats per token;
  the drop in its mean next-token loss); ``target_logppl`` is the final loss itself.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from jaxregion.io.atomic import write_json, write_text
from jaxregion.report import plots
from jaxregion.report.tables import markdown_table

REGIME = (5.0, 100.0)  # % forgetting of the unfrozen reference a researcher would accept


def point_metrics(
    final: Mapping[str, float], base: Mapping[str, float], target: str, others: Sequence[str]
) -> dict[str, Any]:
    rel = {o: (final[o] - base[o]) / base[o] * 100 for o in others}
    return {
        "target_ppl": final[target],
        "target_logppl": math.log(final[target]),
        "target_gain": math.log(base[target]) - math.log(final[target]),
        "forgetting_pct": float(np.mean(list(rel.values()))),
        "others_pct": rel,
        "ppl": dict(final),
    }


def _ms(xs: Sequence[float]) -> tuple[float, float]:
    a = np.asarray(xs, float)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0


def aggregate(records: Sequence[dict], x_axis: str) -> list[dict]:
    """One row per setting (seeds pooled): means and seed standard deviations."""
    by: dict[str, list[dict]] = {}
    for r in records:
        by.setdefault(r["setting"], []).append(r)
    rows = []
    for label, rs in by.items():
        p = rs[0]["point"]
        x, xs = _ms([r["metrics"][x_axis] for r in rs])
        y, ys = _ms([r["metrics"]["forgetting_pct"] for r in rs])
        g, _ = _ms([r["metrics"]["target_gain"] for r in rs])
        rows.append(
            {
                "label": label,
                "scorer": p["scorer"].removeprefix("setting:"),
                "granularity": p["granularity"],
                "ratio": p["ratio"],
                "baseline": p["baseline"],
                "seeds": [r["point"]["seed"] for r in rs],
                "frozen_pct": 100 * rs[0]["frozen"] / rs[0]["total"],
                "x": x,
                "xerr": xs,
                "y": y,
                "yerr": ys,
                "target_gain": g,
                "target_ppl": _ms([r["metrics"]["target_ppl"] for r in rs])[0],
                "others_pct": {
                    o: _ms([r["metrics"]["others_pct"][o] for r in rs])[0]
                    for o in rs[0]["metrics"]["others_pct"]
                },
            }
        )
    return rows


def pareto_front(rows: Sequence[dict], x_axis: str) -> list[str]:
    """Labels of settings no other setting beats on both axes (seed means): more target
    gain (or lower final target loss) and less forgetting, one of them strictly."""
    sign = 1.0 if x_axis == "target_gain" else -1.0
    front = []
    for a in rows:
        dominated = any(
            sign * b["x"] >= sign * a["x"]
            and b["y"] <= a["y"]
            and (sign * b["x"] > sign * a["x"] or b["y"] < a["y"])
            for b in rows
        )
        if not dominated:
            front.append(a["label"])
    return front


def _regime_line(ref: dict) -> str:
    """How much the reference (nothing frozen) forgets, against the regime it is meant for."""
    lo, hi = REGIME
    inside = lo <= ref["y"] <= hi
    return (
        f"With nothing frozen, the other languages' perplexity rises by {ref['y']:.1f}% "
        f"(target gain {ref['target_gain']:.3f} nats/token); this is "
        + ("inside" if inside else "OUTSIDE")
        + f" the {lo:g}-{hi:g}% regime the comparison is meant for."
    )


def _best_trade(rows: Sequence[dict], ref: dict) -> str | None:
    """The setting that avoids the most forgetting per unit of target gain given up."""
    eff = []
    for r in rows:
        if r["label"] == "none/none" or r["y"] >= ref["y"]:
            continue
        given_up = ref["target_gain"] - r["target_gain"]
        avoided = ref["y"] - r["y"]
        eff.append((avoided / given_up if given_up > 1e-9 else math.inf, r, avoided))
    if not eff:
        return None
    best = max(eff, key=lambda e: (e[0], e[2]))
    rate = (
        "at no cost to the target"
        if math.isinf(best[0])
        else f"{best[0]:.1f} points per nat/token of target gain given up"
    )
    return (
        f"Best trade against the reference: `{best[1]['label']}` avoids "
        f"{best[2]:.1f} points of forgetting, {rate}."
    )


def _against_reference(rows: Sequence[dict], by: Mapping[str, dict], ref: dict) -> list[str]:
    """What dominates training everything, the best trade, and each baseline alone."""
    dom = [
        r["label"]
        for r in rows
        if r["label"] != "none/none"
        and r["y"] < ref["y"]
        and r["target_gain"] >= ref["target_gain"]
    ]
    lines = [
        "Settings that dominate training everything (less forgetting and no "
        "less target gain): " + (", ".join(f"`{d}`" for d in dom) if dom else "none") + "."
    ]
    best = _best_trade(rows, ref)
    if best is not None:
        lines.append(best)
    for b in sorted({r["baseline"] for r in rows} - {"none"}):
        rb = by.get(f"none/{b}")
        if rb is not None:
            lines.append(
                f"{b} alone (nothing frozen): forgetting {rb['y']:.1f}% vs "
                f"{ref['y']:.1f}%, target gain {rb['target_gain']:.3f} vs "
                f"{ref['target_gain']:.3f}."
            )
    return lines


def _against_random(rows: Sequence[dict]) -> list[str]:
    """Each scorer against a random region of the same size, granularity and baseline."""
    rnd = {
        (r["granularity"], r["ratio"], r["baseline"]): r for r in rows if r["scorer"] == "random"
    }
    lines = []
    for sc in sorted({r["scorer"] for r in rows} - {"random", "none"}):
        pairs = [
            (r, rnd[(r["granularity"], r["ratio"], r["baseline"])])
            for r in rows
            if r["scorer"] == sc and (r["granularity"], r["ratio"], r["baseline"]) in rnd
        ]
        if not pairs:
            continue
        wins = sum(a["y"] < b["y"] for a, b in pairs)
        dom = sum(a["y"] < b["y"] and a["target_gain"] >= b["target_gain"] for a, b in pairs)
        diff = float(np.mean([a["y"] - b["y"] for a, b in pairs]))
        gdiff = float(np.mean([a["target_gain"] - b["target_gain"] for a, b in pairs]))
        verdict = (
            "beats"
            if wins == len(pairs)
            else "does NOT consistently beat"
            if wins
            else "does NOT beat"
        )
        lines.append(
            f"`{sc}` {verdict} a random region of the same size, granularity and "
            f"baseline on forgetting: less in {wins} of {len(pairs)} matched settings "
            f"(mean difference {diff:+.2f} points, target gain {gdiff:+.3f} "
            f"nats/token); it dominates random (less forgetting AND no less target "
            f"gain) in {dom} of {len(pairs)}."
        )
    return lines


def outcome_lines(rows: Sequence[dict], front: Sequence[str], x_axis: str) -> list[str]:
    """Plain statements of what the sweep shows, including what does NOT hold."""
    by = {r["label"]: r for r in rows}
    ref = by.get("none/none")
    lines = [] if ref is None else [_regime_line(ref)]
    lines.append(
        "Pareto frontier (seed means; more target gain, less forgetting): "
        + ", ".join(f"`{f}`" for f in front)
        + "."
    )
    if ref is not None:
        lines += _against_reference(rows, by, ref)
    return lines + _against_random(rows)


def build(
    cfg_name: str,
    model: str,
    target: str,
    others: Sequence[str],
    base: Mapping[str, float],
    records: Sequence[dict],
    x_axis: str,
    caption: str,
    config: Mapping[str, Any],
) -> dict:
    rows = aggregate(records, x_axis)
    front = pareto_front(rows, x_axis)
    for r in rows:
        r["pareto"] = r["label"] in front
    return {
        "name": cfg_name,
        "model": model,
        "target": target,
        "others": list(others),
        "base_ppl": dict(base),
        "x_axis": x_axis,
        "caption": caption,
        "points": list(records),
        "settings": rows,
        "pareto": front,
        "outcome": outcome_lines(rows, front, x_axis),
        "config": dict(config),
    }


def _curves(path: str, results: dict) -> bool:
    series = {}
    for r in results["points"]:
        if r["point"]["seed"] != min(
            s for rr in results["settings"] if rr["label"] == r["setting"] for s in rr["seeds"]
        ):
            continue
        c = [e for e in r["curve"] if e.get("eval_ppl")]
        if len(c) < 2:
            continue
        base = results["base_ppl"]
        ys = [
            float(
                np.mean([(e["eval_ppl"][o] - base[o]) / base[o] * 100 for o in results["others"]])
            )
            for e in c
        ]
        series[r["setting"]] = ([e["samples"] for e in c], ys)
    if not series:
        return False
    plots.curves(
        path,
        series,
        f"forgetting during training ({results['name']})",
        "training samples (windows)",
        "others' perplexity increase (%)",
    )
    return True


def _plot_frontier(out: str, results: dict) -> None:
    """frontier.png: forgetting against the target axis, one point per setting."""
    xlabel = (
        "target gain: log ppl_base - log ppl_final (nats/token)"
        if results["x_axis"] == "target_gain"
        else "final target log-perplexity (nats/token)"
    )
    plots.pareto(
        os.path.join(out, "frontier.png"),
        results["settings"],
        results["pareto"],
        f"forgetting frontier: {results['name']}",
        xlabel,
        "forgetting: others' mean perplexity increase (%)",
        results["caption"],
    )


def _settings_table(results: dict) -> str:
    """The Markdown table: the base model, then one row per setting."""
    others = results["others"]
    headers = [
        "setting",
        "frozen %",
        "seeds",
        "target ppl",
        "target gain",
        "forgetting %",
        "± (seeds)",
        *[f"{o} %" for o in others],
        "Pareto",
    ]
    base_row = ("base", 0.0, "-", results["base_ppl"][results["target"]], 0.0, 0.0, 0.0)
    table_rows = [(*base_row, *[0.0 for _ in others], "")]
    rows = sorted(
        results["settings"],
        key=lambda r: (r["baseline"], r["scorer"], r["granularity"], r["ratio"]),
    )
    for r in rows:
        table_rows.append(
            (
                r["label"],
                r["frozen_pct"],
                len(r["seeds"]),
                r["target_ppl"],
                r["target_gain"],
                r["y"],
                r["yerr"] if len(r["seeds"]) > 1 else "-",
                *[r["others_pct"][o] for o in others],
                "yes" if r["pareto"] else "",
            )
        )
    return markdown_table(headers, table_rows, digits=4)


def _report_markdown(results: dict, table: str, has_curves: bool) -> str:
    """report.md: definitions, the table, the Outcome lines and the figures."""
    md = [
        f"# Forgetting frontier: {results['name']}",
        "",
        results["caption"] + ".",
        "",
        "Each setting is a scorer / granularity / ratio / baseline (nothing frozen = "
        "`none`); seeds vary the data order and random regions. **Forgetting** = mean over "
        f"the other languages ({', '.join(results['others'])}) of the relative perplexity "
        "increase over the base model. **Target gain** = log ppl_base - log ppl_final of "
        f"`{results['target']}` (nats/token). Frozen % = share of all parameters kept "
        "fixed. ± = standard deviation over seeds.",
        "",
        table,
        "",
        *[f"**Outcome.** {line}" for line in results["outcome"]],
        "",
        "![frontier](frontier.png)",
        "",
        f"*Figure 1: forgetting vs target gain, one point per setting (error bars: seed "
        f"std; colour: scorer; marker: granularity; open: with replay/EWC). "
        f"{results['caption']}.*",
        "",
    ]
    if has_curves:
        first_seed = min(r["seeds"][0] for r in results["settings"])
        md += [
            "![curves](curves.png)",
            "",
            f"*Figure 2: forgetting during training (seed {first_seed}). {results['caption']}.*",
            "",
        ]
    return "\n".join(md)


def render(out: str, results: dict) -> str:
    """Write results.json, report.md, frontier.png (and curves.png); return the table."""
    _plot_frontier(out, results)
    has_curves = _curves(os.path.join(out, "curves.png"), results)
    table = _settings_table(results)
    results = {**results, "table": table}
    write_text(os.path.join(out, "report.md"), _report_markdown(results, table, has_curves))
    json.dumps(results, allow_nan=False)  # strict JSON: fails loudly on NaN/inf
    write_json(os.path.join(out, "results.json"), results)
    return table
