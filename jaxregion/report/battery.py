"""The battery's ``report.md`` and PNGs, rendered from a :class:`Results` and nothing else.

Each section says once which model and data it used (the strings from the config, never a
resolved path); captions say only what differs. Outcome sentences compare against the named
thresholds in :mod:`jaxregion.analysis.experiment.results`, and the report states their values.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from jaxregion.analysis import casestudies
from jaxregion.analysis.dims import gmean_ratio
from jaxregion.analysis.experiment.results import (
    CORE_MIN_RATIO,
    CORE_OVER_CONTROL,
    DIM_BREAK_RATIO,
    DIM_CONTROL_MAX_RATIO,
    Results,
)
from jaxregion.io import atomic
from jaxregion.report import plots
from jaxregion.report.tables import fmt, markdown_table


def _d(x: Any) -> Any:
    """A dataclass (or anything) as plain dicts/lists, for uniform access."""
    return dataclasses.asdict(x) if dataclasses.is_dataclass(x) else x


def _windows(specs: Mapping[str, str], counts: Mapping[str, int]) -> str:
    return ", ".join(f"{k} (`{specs[k]}`, {counts[k]} windows)" for k in specs)


class _Doc:
    def __init__(self, res: Results, out: str):
        self.res, self.out, self.md = res, out, []
        st = res.setting
        self.model = f"model `{st.model}`"
        self.imp = (
            f"{st.estimator} importance on {', '.join(st.importance)} "
            f"({min(st.importance_windows.values())}+ windows of {st.seq_len} tokens)"
        )
        self.ev = (
            f"perplexity on {len(st.evaluation)} evaluation sets "
            f"({min(st.eval_windows.values())}+ windows each)"
        )
        self.langs = list(st.evaluation)
        self.seen = [x for x in self.langs if x in st.importance] or self.langs

    def add(self, *lines: str) -> None:
        self.md.extend(lines)

    def section(self, title: str, uses: str) -> None:
        self.add(f"## {title}", "", f"*Model and data:* {uses}.", "")

    def png(self, name: str) -> str:
        return os.path.join(self.out, name)


def _setting(doc: _Doc) -> None:
    res, st = doc.res, doc.res.setting
    th = res.thresholds
    doc.add(
        f"# {res.name}: linguistic regions report",
        "",
        "## Setting",
        "",
        f"- Model: `{st.model}` ({st.model_type}, {st.num_layers} layers, residual width "
        f"{st.hidden_size}).",
        f"- Importance: {st.estimator} on "
        f"{_windows(st.importance, st.importance_windows)}; windows of {st.seq_len} tokens.",
        f"- Evaluation: {_windows(st.evaluation, st.eval_windows)}.",
        f"- Regions: ratio {st.ratio:g}, scope {st.scope}, include `{st.include}`.",
        "- Outcome thresholds: the core separates from the controls when (core ratio - 1) > "
        f"CORE_OVER_CONTROL = {th['CORE_OVER_CONTROL']:g} x (worst control ratio - 1) and "
        f"the core ratio > CORE_MIN_RATIO = {th['CORE_MIN_RATIO']:g}; a dimension breaks "
        f"the model when a scaling there gives ratio > DIM_BREAK_RATIO = "
        f"{th['DIM_BREAK_RATIO']:g} while every control stays below DIM_CONTROL_MAX_RATIO "
        f"= {th['DIM_CONTROL_MAX_RATIO']:g} (ratios: perplexity / base, geometric mean "
        "over the importance languages).",
        "",
    )


def _regions(doc: _Doc) -> None:
    infos = {k: _d(v) for k, v in doc.res.regions.items()}
    doc.section("Regions", f"{doc.model}; {doc.imp}")
    rows = [
        [k, v["kind"], v["size"], v["density"], "—" if v["stability"] is None else v["stability"]]
        for k, v in infos.items()
    ]
    doc.add(
        markdown_table(["region", "kind", "params", "density", "stability"], rows, digits=5),
        "",
        "*Caption.* Every region the battery selected (files in `regions/`). "
        "`mono-L`: top-k(L) minus the other languages' top-k; `bmono-L`: bottom-k(L) minus "
        "the other languages' bottom-k; `top-L`: top-k(L). Stability: Jaccard of the region "
        "rebuilt from the even and from the odd half of every language's windows, "
        "projected to the full sample (docs/reference/stability.md); — for random regions and "
        "importance files without split halves.",
        "",
    )


def _cell(x: float | None) -> Any:
    return "—" if x is None else x


def _ablation_rows(doc: _Doc) -> list[list[Any]]:
    """Table 1's rows: base, core, bottom, random (mean ± std), then the (bottom-)monolingual
    regions; each language's perplexity, then its bits per byte."""
    res, langs = doc.res, doc.langs
    ppl, rnd, bpb = res.perplexity, res.random, res.bits_per_byte
    size = {k: _d(v)["size"] for k, v in res.regions.items()}

    def both(cond: str) -> list[Any]:  # each language's perplexity, then its bits per byte
        return [v for x in langs for v in (ppl[cond][x], _cell(bpb[cond][x]))]

    def spread(mean: dict | None, std: dict | None, x: str) -> str:
        return "—" if mean is None else f"{mean[x]:.3f} ± {std[x]:.3f}"

    rows = [["base", "—", *both("base")]]
    rows += [[f"{k} removed", size[k], *both(k)] for k in ("core", "bottom")]
    rows.append(
        [
            f"random removed (n={len(rnd['seeds'])}, mean ± std)",
            size[f"random-{rnd['seeds'][0]}"],
            *[
                v
                for x in langs
                for v in (
                    spread(rnd["mean"], rnd["std"], x),
                    spread(rnd["bpb_mean"], rnd["bpb_std"], x),
                )
            ],
        ]
    )
    for k in ppl:
        for prefix, what in (("mono-", "monolingual"), ("bmono-", "bottom-monolingual")):
            if k.startswith(prefix):
                rows.append([f"{k[len(prefix) :]} {what} removed", size[k], *both(k)])
    return rows


def _ablation_outcome(doc: _Doc) -> str:
    """Whether removing the core hurts clearly more than the worst control (the thresholds)."""
    ppl = doc.res.perplexity
    base = ppl["base"]
    core = gmean_ratio(ppl["core"], base, doc.seen)
    controls = {
        k: gmean_ratio(ppl[k], base, doc.seen)
        for k in ppl
        if k == "bottom" or k.startswith("random-")
    }
    worst = max(controls, key=controls.get)
    ctrl = controls[worst]
    separates = core - 1 > CORE_OVER_CONTROL * max(ctrl - 1, 0.0) and core > CORE_MIN_RATIO
    verdict = (
        "separates clearly from the controls"
        if separates
        else "does NOT clearly separate from the controls"
    )
    return (
        f"**Outcome.** Over the importance languages ({', '.join(doc.seen)}), removing the "
        f"core region multiplies perplexity by {core:.3g}; the worst control ({worst}) by "
        f"{ctrl:.3g}. Against CORE_OVER_CONTROL and CORE_MIN_RATIO the core region "
        f"{verdict}."
    )


def _ablations(doc: _Doc) -> None:
    res, langs = doc.res, doc.langs
    ppl, rnd = res.perplexity, res.random
    doc.section(
        "Table 1. Perplexity and bits per byte after removing (zeroing) each region",
        f"{doc.model}; regions from {doc.imp}; {doc.ev}",
    )
    headers = ["condition", "params", *[h for x in langs for h in (x, f"{x} bpb")]]
    doc.add(
        markdown_table(headers, _ablation_rows(doc)),
        "",
        "*Caption.* Each language's perplexity, then its bits per byte (bpb: total NLL in "
        "bits over the UTF-8 bytes of the predicted tokens, comparable across tokenizers; "
        "— where the tokenizer gives no byte lengths). Random controls use seeds "
        f"{list(rnd['seeds'])}; per-seed values are in results.json.",
        "",
        "![ablations](ablations.png)",
        "",
        "*Figure 1.* Table 1's perplexities on a log scale; error bars: std over random seeds.",
        "",
        _ablation_outcome(doc),
        "",
    )
    plots.ablation_bars(
        doc.png("ablations.png"),
        {k: ppl[k] for k in ("base", "core", "bottom")} | {"random": rnd["mean"]},
        {"random": rnd["std"]},
        f"Region removal — {res.name}",
    )


def _matrices(doc: _Doc) -> None:
    langs = doc.langs
    for n, (key, what, png, desc) in enumerate(
        (
            (
                "monolingual_matrix",
                "Monolingual",
                "monolingual.png",
                "its top-k minus every other language's top-k",
            ),
            (
                "bottom_monolingual_matrix",
                "Bottom-monolingual",
                "bottom_monolingual.png",
                "its bottom-k minus every other language's bottom-k (the authors' control)",
            ),
        )
    ):
        mat = getattr(doc.res, key)
        if not mat:
            continue
        doc.section(
            f"Table {2 + n}. {what} regions: perplexity ratio to base",
            f"{doc.model}; regions from {doc.imp}; {doc.ev}",
        )
        doc.add(
            markdown_table(
                ["region removed", *langs],
                [[f"{a} region", *[mat[a][b] for b in langs]] for a in mat],
            ),
            "",
            f"*Caption.* Row: the {what.lower()} region of a language ({desc}) zeroed; "
            "column: evaluated language; cell: perplexity / base.",
            "",
            f"![{key}]({png})",
            "",
        )
        plots.heatmap(
            doc.png(png),
            np.array([[mat[a][b] for b in langs] for a in mat]),
            list(mat),
            langs,
            f"{what} region removed (row) vs evaluated language",
            "perplexity / base",
        )


def _overlap(doc: _Doc) -> None:
    ov = _d(doc.res.overlap)
    doc.section("Table 4. Overlap of the per-language regions", f"{doc.model}; {doc.imp}")
    langs, m = ov["languages"], np.asarray(ov["matrix"], float)
    rows = [[ov["labels"][i], *m[i].tolist(), ov["vs_core"][a]] for i, a in enumerate(langs)]
    doc.add(
        markdown_table(["language (family, script)", *langs, "core"], rows),
        "",
        f"*Caption.* Jaccard similarity of the per-language top-{doc.res.setting.ratio:g} "
        "regions, languages ordered by family and script; last column: against the core "
        "region.",
        "",
        "![overlap](overlap.png)",
        "",
    )
    plots.heatmap(
        doc.png("overlap.png"),
        m,
        ov["labels"],
        langs,
        "Jaccard of per-language top-k regions",
        "Jaccard",
    )


def _ratio_sweep(doc: _Doc) -> None:
    rows = [_d(r) for r in doc.res.ratio_sweep]
    if not rows:
        return
    langs = doc.langs
    doc.section(
        "Table 5. Ratio sweep: perplexity ratio to base",
        f"{doc.model}; regions from {doc.imp}; {doc.ev}",
    )
    doc.add(
        markdown_table(
            ["ratio", "removed", "params", *langs, "gmean"],
            [
                [
                    r["ratio"],
                    r["condition"],
                    r["size"],
                    *[r["ppl_ratio"][x] for x in langs],
                    r["mean_ratio"],
                ]
                for r in rows
            ],
        ),
        "",
        "*Caption.* Each region zeroed at each ratio; random: mean perplexity over the "
        "seeds; gmean over the importance languages.",
        "",
        "![ratios](ratio_sweep.png)",
        "",
    )
    series = {}
    for cond in dict.fromkeys(r["condition"] for r in rows):
        pts = [r for r in rows if r["condition"] == cond]
        series[cond] = ([p["ratio"] for p in pts], [p["mean_ratio"] for p in pts])
    plots.curves(
        doc.png("ratio_sweep.png"),
        series,
        "Perplexity ratio vs region ratio",
        "region ratio",
        "perplexity / base (gmean)",
        logx=True,
        logy=True,
    )


def _map_figures(doc: _Doc) -> None:
    """Figures 2-4: core density per layer x module, entries per residual dimension and the
    importance histograms."""
    res = doc.res
    lm = res.layer_module_density
    plots.heatmap(
        doc.png("core_density.png"),
        np.asarray(lm["density"], float),
        [str(x) for x in lm["layers"]],
        lm["modules"],
        f"Core region density per layer x module ({lm['scope']} scope)",
        "fraction selected",
        fmt="{:.3f}",
    )
    profiles = {k: np.asarray(v) for k, v in res.profiles.items()}
    plots.profiles(
        doc.png("core_dims.png"),
        profiles,
        "Region entries per residual dimension",
        "residual dimension",
        "selected entries",
        mark=_d(res.dims)["candidates"],
    )
    h = res.importance_hist
    plots.histograms(
        doc.png("importance_hist.png"),
        h["edges"],
        h["counts"],
        "Importance |score| distribution (transformer layers)",
        "log10 |score|",
    )
    doc.add(
        "![density](core_density.png)",
        "",
        f"*Figure 2.* Fraction of each weight matrix in the core region per layer and module "
        f"type, selected with {lm['scope']} scope (the top {res.setting.ratio:g} of Σ|score| "
        "over all scoped parameters; per-tensor scope would put exactly the ratio everywhere).",
        "",
        "![dims](core_dims.png)",
        "",
        "*Figure 3.* Selected entries per residual dimension (writers' rows, readers' "
        "columns, norm entries) for the core, bottom and one random region; dotted lines: "
        "the swept candidate dims.",
        "",
        "![hist](importance_hist.png)",
        "",
        "*Figure 4.* Distribution of log10 |importance| per language (up to 200k sampled "
        "entries each).",
        "",
    )


def _mask_map_figures(doc: _Doc) -> None:
    """Figures 5.x: one mask map per matrix, the core and each monolingual region."""
    by_matrix: dict[str, dict[str, Any]] = {}
    for m in (_d(x) for x in doc.res.mask_maps):
        by_matrix.setdefault(m["matrix"], {})[m["region"]] = m
    for i, (name, regs) in enumerate(by_matrix.items()):
        png = f"mask_map_{i}.png"
        any_m = next(iter(regs.values()))
        plots.mask_maps(
            doc.png(png),
            {k: np.asarray(v["density"]) for k, v in regs.items()},
            name,
            f"columns (blocks of {any_m['block'][1]})",
            f"rows (blocks of {any_m['block'][0]})",
        )
        doc.add(
            f"![{name}]({png})",
            "",
            f"*Figure 5.{i + 1}.* `{name}` (shape {any_m['shape']}): fraction of each "
            f"{any_m['block'][0]} x {any_m['block'][1]} block in the core region and in "
            "each language's monolingual region.",
            "",
        )


def _maps(doc: _Doc) -> None:
    doc.section("Region maps", f"{doc.model}; {doc.imp}")
    _map_figures(doc)
    _mask_map_figures(doc)


def _dims_candidates(d: dict) -> list[str]:
    """The candidate and control dimensions, and the evidence each was chosen from."""
    massive = [f"{m['layer']}:{m['dims'][0]}" for m in d["massive_activations"]]
    supers = [f"{s['layer']}:{s['hidden_dim']}" for s in d["super_weights"]]
    region = ", ".join(f"{k}:{v}" for k, v in d["region_top"].items()) if d["region_top"] else "—"
    peaks = ", ".join(f"{k}: {fmt(v)}" for k, v in d.get("peak_ratio", {}).items()) or "—"
    rows = [
        ["candidates", ", ".join(map(str, d["candidates"]))],
        ["candidates from", d["candidates_from"]],
        ["controls", ", ".join(map(str, d["controls"]))],
        ["controls from", d["controls_from"]],
        ["region entries on each candidate (dim:count)", region],
        ["largest activation per layer (layer:dim)", ", ".join(massive)],
        ["largest MLP-output weight per layer (layer:dim)", ", ".join(supers)],
        ["peak activation / layer median, per swept dim", peaks],
    ]
    return [markdown_table(["", "dims"], rows), ""]


def _dims_sweep_table(d: dict, langs: Sequence[str]) -> list[str]:
    """Table 6: perplexity per language after scaling each swept entry."""
    base = d["base"]
    rows = [["base", "—", "—", "—", *[base[x] for x in langs], 1.0]]
    rows += [
        [
            p["group"],
            p["dim"],
            f"`{p['entry']}`",
            f"x{p['factor']:g}",
            *[p["perplexity"][x] for x in langs],
            p["mean_ratio"],
        ]
        for p in d["sweep"]
    ]
    return [
        f"### Table 6. Scaling one entry (layer {d['layer']}; targets {', '.join(d['targets'])})",
        "",
        markdown_table(["group", "dim", "entry", "factor", *langs, "ppl/base (gmean)"], rows),
        "",
        "*Caption.* Each row scales the one HF entry it names (a norm entry, a writer's row "
        "or a reader's column on that residual dimension) by the factor.",
        "",
    ]


def _dims_outcome(d: dict) -> list[str]:
    """The worst scaling per candidate dimension against the worst control and thresholds."""
    worst: dict[int, dict] = {}
    for p in d["sweep"]:
        if p["group"] == "candidate" and (
            p["dim"] not in worst or p["mean_ratio"] > worst[p["dim"]]["mean_ratio"]
        ):
            worst[p["dim"]] = p
    worst_r = max((p["mean_ratio"] for p in d["sweep"] if p["group"] == "control"), default=1.0)
    if not worst:
        return ["**Outcome.** No candidate dimension was swept.", ""]
    breaking = [x for x, p in worst.items() if p["mean_ratio"] > DIM_BREAK_RATIO]
    if breaking and worst_r < DIM_CONTROL_MAX_RATIO:
        verdict = (
            f"dimension{'s' if len(breaking) > 1 else ''} "
            f"{', '.join(map(str, breaking))} break{'' if len(breaking) > 1 else 's'} "
            "the model while no control does"
        )
    else:
        verdict = "no single-dimension dependence of the paper's kind shows up"
    each = "; ".join(
        f"dim {x}: `{p['entry']}` x{p['factor']:g} -> {fmt(p['mean_ratio'])}"
        for x, p in worst.items()
    )
    return [
        f"**Outcome.** Worst scaling per candidate dimension (perplexity / base): "
        f"{each}. Worst control: {fmt(worst_r)}. Against DIM_BREAK_RATIO = "
        f"{DIM_BREAK_RATIO:g} and DIM_CONTROL_MAX_RATIO = {DIM_CONTROL_MAX_RATIO:g}, "
        f"{verdict}.",
        "",
    ]


def dims_markdown(dres: Any, langs: Sequence[str]) -> list[str]:
    """Candidates, the sweep table and the Outcome of a :class:`~jaxregion.analysis.dims.DimsResult`
    (shared by the battery and ``jaxregion dims``)."""
    d = _d(dres)
    return _dims_candidates(d) + _dims_sweep_table(d, langs) + _dims_outcome(d)


def _dims(doc: _Doc) -> None:
    doc.section("Dimension dependence", f"{doc.model}; {doc.ev}")
    doc.add(*dims_markdown(doc.res.dims, doc.langs))
    doc.add("![sweep](dims_sweep.png)", "", "*Figure 6.* Table 6 as perplexity ratios.", "")
    plots.sweep_plot(
        doc.png("dims_sweep.png"),
        _d(doc.res.dims)["sweep"],
        f"Single-entry scaling — {doc.res.name}",
    )


def _agreement(doc: _Doc) -> None:
    j, cfg = doc.res.jaccard, doc.res.config
    doc.section("Agreement", f"{doc.model}; {doc.imp}")
    if j["sample_counts"]:
        doc.add(
            markdown_table(
                ["importance windows", f"Jaccard with {cfg['max_seqs']}"],
                [[k, v] for k, v in j["sample_counts"].items()],
            ),
            "",
            "*Caption.* Jaccard of the core region from fewer windows per language with "
            "the core from all of them.",
            "",
        )
    if j["estimators"]:
        names = list(j["estimators"])
        doc.add(
            markdown_table(
                ["estimator", *names], [[a, *[j["estimators"][a][b] for b in names]] for a in names]
            ),
            "",
            "*Caption.* Jaccard of core regions from different importance estimators "
            "on the same windows.",
            "",
        )
    if not j["sample_counts"] and not j["estimators"]:
        doc.add("Not configured (set `jaccard.sample_counts` / `jaccard.estimators`).", "")


def _case_studies(doc: _Doc) -> None:
    cs = doc.res.case_studies
    if cs is None:
        return
    width = doc.res.config["case_studies"]["width"]
    n = sum(len(v) for v in cs.prompts.values())
    doc.section(
        "Table 7. Case studies: language fidelity and continuations",
        f"{doc.model}; greedy continuations ({cs.max_new_tokens} new tokens) of {n} "
        f"prompt{'s' if n > 1 else ''} in {', '.join(cs.prompts)} under each edit of "
        "the battery",
    )
    doc.add(
        casestudies.render_fidelity(cs),
        "",
        "*Caption.* Share of each language's continuations identified as the prompt's "
        "language, per setting: the base model, each region of Table 1 removed (random: "
        "the first seed; `mono-L` / `bmono-L`: L's monolingual / bottom-monolingual "
        "region), then each dims-sweep point of Table 6 (group, the one HF entry scaled, "
        "the factor).",
        "",
        casestudies.render_continuations(cs, width),
        f"*Caption.* Continuations truncated to {width} characters, Markdown escaped; "
        "full text in results.json.",
        "",
    )


def _moe_routing(doc: _Doc, rt: dict) -> None:
    """A routing heatmap per language, and the most language-specific experts."""
    langs = rt["languages"]
    doc.add("### Routing per language", "")
    for lang in langs:
        name = f"routing_{lang}.png"
        share = np.asarray(rt["topk_share"][lang])
        plots.heatmap(
            doc.png(name),
            share,
            [f"L{i}" for i in range(share.shape[0])],
            [str(e) for e in range(share.shape[1])],
            f"{lang}: share of tokens routed to each expert (top-{rt['top_k']})",
            "top-k share",
        )
        doc.add(f"![routing {lang}]({name})", "")
    rows = [
        [r["layer"], r["expert"], r["entropy"], r["language"], *(r["shares"][x] for x in langs)]
        for r in rt["most_specific"][:10]
    ]
    doc.add(
        "### The most language-specific experts",
        "",
        markdown_table(
            ["layer", "expert", "entropy (nats)", "language", *(f"top-k share {x}" for x in langs)],
            rows,
        ),
        "",
        "*Caption.* Entropy of an expert's top-k share normalised over the languages "
        "(0: one language alone reaches it); lowest first.",
        "",
    )


def _moe_ablations(doc: _Doc, m: Any) -> None:
    """Perplexity after dropping each language's top experts, and the core region's parts."""
    base = m.perplexity["base"]
    rows = [
        [cond, *(m.perplexity[cond][x] / base[x] for x in doc.langs)]
        for cond in m.perplexity
        if cond != "base"
    ]
    doc.add(
        f"### Removing each language's top {m.per_layer} expert(s) per layer",
        "",
        markdown_table(["removed from the routers", *(f"ppl ratio {x}" for x in doc.langs)], rows),
        "",
        f"*Caption.* Perplexity over the base model's when `top-L` (L's {m.per_layer} most "
        "routed-to experts in every layer) or `random-L` (as many random experts per "
        "layer) leave the routers, which renormalise over the rest (drop-expert).",
        "",
    )
    doc.add(
        "### Where the core region lies",
        "",
        markdown_table(["part", "share of the core region"], list(m.core_share.items())),
        "",
    )


def _moe(doc: _Doc) -> None:
    m = doc.res.moe
    if m is None:
        return
    rt = m.routing
    doc.section(
        "Mixture of experts: routing, top experts, where the core region lies",
        f"{doc.model}; top-{rt['top_k']} routing of every token of the importance "
        f"windows ({', '.join(rt['languages'])}); {doc.ev}",
    )
    _moe_routing(doc, rt)
    _moe_ablations(doc, m)


SECTIONS: Sequence = (
    _setting,
    _regions,
    _ablations,
    _matrices,
    _overlap,
    _ratio_sweep,
    _maps,
    _dims,
    _case_studies,
    _agreement,
    _moe,
)


def render(res: Results, out: str) -> str:
    """Write ``report.md`` and its PNGs into ``out``; returns the Markdown."""
    doc = _Doc(res, out)
    for section in SECTIONS:
        section(doc)
    doc.add(
        f"_jaxregion {res.jaxregion_version}; {res.seconds} s. Full figures: results.json._", ""
    )
    if res.stage_seconds:
        doc.add(
            "_Wall seconds per stage: "
            + ", ".join(f"{k} {v:g}" for k, v in res.stage_seconds.items())
            + "._",
            "",
        )
    if res.command:
        doc.add(f"_Command: `{' '.join(res.command)}`._", "")
    text = "\n".join(doc.md)
    atomic.write_text(os.path.join(out, "report.md"), text)
    return text
