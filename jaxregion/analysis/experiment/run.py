"""The paper's battery, computed: importance -> regions -> ablations -> overlap -> ratio sweep
-> region maps -> dimension sweep -> agreement, into one :class:`Results` (``results.json``);
:mod:`jaxregion.report.battery` then renders ``report.md`` and the PNGs from it.

Importance files are cached in the output folder through :mod:`jaxregion.scorefiles`, so a
re-run with the same config reuses finished scoring.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Callable, Sequence

import jax
import numpy as np
from tqdm.auto import tqdm

from jaxregion import __version__, interventions, models, runtime, scorefiles
from jaxregion import regions as R
from jaxregion import tree as T
from jaxregion.analysis import casestudies, dims, stability
from jaxregion.analysis.experiment import languages, maps, moe, texts
from jaxregion.analysis.experiment.config import ExperimentConfig, validate, validate_for_model
from jaxregion.analysis.experiment.results import (
    THRESHOLDS,
    Overlap,
    RatioRow,
    RegionInfo,
    Results,
    Setting,
    versions,
)
from jaxregion.errors import UserError
from jaxregion.evaluate import EvalResult
from jaxregion.io import hf
from jaxregion.models import ModelConfig

logger = logging.getLogger(__name__)


def _specs(d: dict[str, str]) -> list[str]:
    return [f"{k}={v}" for k, v in d.items()]


def scoped(scores: dict | R.LazyScores, include: str | None, exclude: str | None) -> dict:
    """The in-scope tensors of ``scores`` (a tree or a score file read lazily) in memory,
    every other leaf a zero-memory broadcast zero of its shape: the battery never reads them
    (regions are selected inside the scope), and a real model's embedding alone is most of
    its parameters."""
    lazy = R.as_lazy(scores)
    keep = set(R.scope_names(list(lazy.shapes), include, exclude))
    return T.unflatten(
        {
            n: np.asarray(lazy.read(n))
            if n in keep
            else np.broadcast_to(np.zeros((), np.float32), shape)
            for n, shape in lazy.shapes.items()
        }
    )


def region_stabilities(r: _Run, regions: dict[str, R.Region]) -> dict[str, float | None]:
    """Split-half stability of each region, shown beside it in every table: the same region
    rebuilt from every language's even-batch half and from its odd half (Jaccard), projected
    to the full sample (:mod:`jaxregion.analysis.stability`). The halves' in-scope tensors are read
    once for all regions. None for regions not made from scores (random) and when the
    importance files have no halves (a single micro-batch)."""
    kinds = ("core", "bottom", "top", "monolingual", "bottom-monolingual")
    out: dict[str, float | None] = {k: None for k in regions}
    directory = os.path.join(r.out, "importance", r.cfg.estimator)
    try:
        halves = {
            lang: tuple(
                scoped(h, r.cfg.include, r.cfg.exclude)
                for h in stability.load_halves(directory, lang)
            )
            for lang in r.langs
        }
    except UserError:
        return out
    for name, region in regions.items():
        meta = region.meta
        if meta.get("kind") in kinds:
            out[name] = stability.region_stability(
                meta["kind"], halves, lang=meta.get("lang"), ratio=float(meta["ratio"]), **r.sel
            ).projected
    return out


class _Run:
    """One battery's state: the session, windows and caches."""

    def __init__(
        self,
        cfg: ExperimentConfig,
        log: Callable[[str], None],
        mesh: jax.sharding.Mesh | None = None,
    ):
        self.cfg, self.log, self.out = cfg, log, cfg.out
        self.s = runtime.load_session(cfg.model, cfg.dtype, mesh)
        eval_langs = cfg.eval_languages or cfg.languages
        self.imp_windows = runtime.load_corpora(
            _specs(cfg.languages), self.s, cfg.seq_len, cfg.max_seqs
        )
        self.eval_windows = runtime.load_corpora(
            _specs(eval_langs), self.s, cfg.seq_len, cfg.eval_max_seqs
        )
        self.langs = list(cfg.languages)
        self.eval_langs = list(eval_langs)
        self.mono_langs = list(cfg.monolingual or self.langs)
        self.sel = dict(scope=cfg.scope, include=cfg.include, exclude=cfg.exclude)

    def scores(self, lang: str, estimator: str, n: int | None = None) -> dict:
        """One language's scores, through the shared resumable cache (scorefiles)."""
        windows = self.imp_windows[lang] if n is None else self.imp_windows[lang][:n]
        tag = estimator if n is None else f"{estimator}-n{len(windows)}"
        with tqdm(
            total=len(windows),
            desc=f"importance {lang} ({tag})",
            unit="win",
            disable=None,
            leave=False,
        ) as bar:
            got = scorefiles.score_language(
                self.s,
                lang,
                windows,
                os.path.join(self.out, "importance", tag),
                scorefiles.ScoreSpec(
                    estimator=estimator,
                    batch_size=self.cfg.batch_size,
                    dtype=self.cfg.dtype,
                    source=self.cfg.languages[lang],
                    on_mismatch="recompute",
                    load=False,
                    include=self.cfg.include,  # only the scope is differentiated: on a real
                    exclude=self.cfg.exclude,  # model the embedding is most of the parameters
                ),
                progress=bar.update,
            )
        return scoped(R.open_scores(got.path)[0], self.cfg.include, self.cfg.exclude)

    def setting(self) -> Setting:
        """Which model and data, as the config gives them."""
        c, m = self.cfg, self.s.config
        return Setting(
            c.model,
            m.model_type,
            m.num_layers,
            m.hidden_size,
            c.estimator,
            c.seq_len,
            dict(c.languages),
            {k: len(v) for k, v in self.imp_windows.items()},
            dict(c.eval_languages or c.languages),
            {k: len(v) for k, v in self.eval_windows.items()},
            c.ratio,
            c.scope,
            c.include,
        )

    def evaluate(self, params: dict) -> dict[str, EvalResult]:
        """Every evaluation language's perplexity, bits per byte, ... under ``params``."""
        return runtime.evaluate_corpora(
            self.s, self.eval_windows, self.cfg.batch_size, params=params
        )

    def ppl(self, params: dict) -> dict[str, float]:
        return {k: r.perplexity for k, r in self.evaluate(params).items()}

    def ppl_routed(self, config: ModelConfig) -> dict[str, float]:
        """Perplexity under another routing of the same params (drop-expert)."""
        return {
            k: r.perplexity
            for k, r in runtime.evaluate_corpora(
                self.s, self.eval_windows, self.cfg.batch_size, config=config
            ).items()
        }

    def save(self, name: str, reg: R.Region) -> R.Region:
        R.save_region(os.path.join(self.out, "regions", f"{name}.safetensors"), reg)
        return reg

    def controls_at(self, scores: dict, ratio: float) -> dict[str, R.Region]:
        """core, bottom and every random seed at ``ratio``."""
        c = self.cfg
        out = {
            "core": R.core(scores, ratio, **self.sel),
            "bottom": R.bottom(scores, ratio, **self.sel),
        }
        for seed in c.random_seeds:
            out[f"random-{seed}"] = R.random(self.s.params, ratio, seed=seed, **self.sel)
        return out


def _mean_std(values: list[dict[str, float]]) -> tuple[dict[str, float], dict[str, float]]:
    """Mean and sample std (ddof=1) of perplexity across seeds, per language."""
    langs = list(values[0])
    mean = {k: float(np.mean([v[k] for v in values])) for k in langs}
    std = {
        k: float(np.std([v[k] for v in values], ddof=1)) if len(values) > 1 else 0.0 for k in langs
    }
    return mean, std


def overlap(tops: dict[str, R.Region], core: R.Region) -> Overlap:
    """Jaccard of the per-language top-k regions, languages ordered by family and script."""
    order = languages.order(tops)
    matrix = [[R.jaccard(tops[a], tops[b]) for b in order] for a in order]
    return Overlap(
        order,
        [languages.label(x) for x in order],
        matrix,
        {x: R.jaccard(tops[x], core) for x in order},
    )


def ratio_sweep(
    r: _Run, scores: dict, base: dict[str, float], known: dict[float, dict[str, dict[str, float]]]
) -> list[RatioRow]:
    """Perplexity ratios of core, bottom and random (mean over seeds) at each swept ratio;
    ``known`` holds perplexities already measured at a ratio (the battery's own)."""
    seen = [x for x in r.eval_langs if x in r.cfg.languages] or r.eval_langs
    rows = []
    for ratio in r.cfg.ratios:
        regs = r.controls_at(scores, ratio)
        ppl = known.get(ratio) or {
            k: r.ppl(interventions.zero(r.s.params, v)) for k, v in regs.items()
        }
        rnd = [ppl[k] for k in regs if k.startswith("random-")]
        conds = {"core": ppl["core"], "bottom": ppl["bottom"], "random": _mean_std(rnd)[0]}
        sizes = {
            "core": R.size(regs["core"]),
            "bottom": R.size(regs["bottom"]),
            "random": R.size(regs[f"random-{r.cfg.random_seeds[0]}"]),
        }
        for cond, p in conds.items():
            rows.append(
                RatioRow(
                    ratio,
                    cond,
                    sizes[cond],
                    p,
                    {k: p[k] / base[k] for k in r.eval_langs},
                    dims.gmean_ratio(p, base, seen),
                )
            )
    return rows


def select_regions(r: _Run, scores: dict) -> tuple[dict[str, R.Region], dict[str, R.Region]]:
    """The ablated regions (core, bottom, random seeds, mono-L, bmono-L) and each language's
    top-k (for the overlap matrix), all saved under ``regions/``."""
    c = r.cfg
    regs = {k: r.save(k, v) for k, v in r.controls_at(scores, c.ratio).items()}
    for lang in r.mono_langs:
        regs[f"mono-{lang}"] = r.save(f"mono-{lang}", R.monolingual(scores, lang, c.ratio, **r.sel))
        regs[f"bmono-{lang}"] = r.save(
            f"bmono-{lang}", R.bottom_monolingual(scores, lang, c.ratio, **r.sel)
        )
    tops = {lang: r.save(f"top-{lang}", R.top(scores, lang, c.ratio, **r.sel)) for lang in r.langs}
    return regs, tops


def _random_bpb(bpb: dict[str, dict[str, float | None]], seeds: Sequence[int]) -> dict:
    """Mean and std of bits per byte over the random seeds (None where a tokenizer gives no
    byte lengths)."""
    per_seed = [bpb[f"random-{s}"] for s in seeds]
    if any(v is None for p in per_seed for v in p.values()):
        return {"bpb_mean": None, "bpb_std": None}
    mean, std = _mean_std(per_seed)
    return {"bpb_mean": mean, "bpb_std": std}


def _ratio_matrix(r: _Run, ppl: dict, prefix: str) -> dict[str, dict[str, float]]:
    """Row: the ``prefix-L`` region removed; column: evaluated language; cell: ppl / base."""
    base = ppl["base"]
    return {
        lang: {m: ppl[f"{prefix}-{lang}"][m] / base[m] for m in r.eval_langs}
        for lang in r.mono_langs
    }


def region_maps(r: _Run, scores: dict, regs: dict[str, R.Region]) -> dict:
    """Layer x module density, residual-dim profiles, mask maps and score histograms."""
    c, cfg = r.cfg, r.s.config
    roles = models.roles(cfg)
    # Per-tensor scope puts exactly `ratio` in every matrix, so the layer x module map uses
    # the same ratio over all scoped parameters at once (global scope): where the mass lives.
    scope = "global" if c.scope == "per-tensor" else c.scope
    region = (
        regs["core"]
        if c.scope != "per-tensor"
        else R.core(scores, c.ratio, scope="global", include=c.include, exclude=c.exclude)
    )
    density, modules, layers = maps.layer_module_density(region, roles)
    first_seed = f"random-{c.random_seeds[0]}"
    profiles = {
        k: R.hidden_dim_profile(regs[k], cfg.hidden_size, roles)
        for k in ("core", "bottom", first_seed)
    }
    mapped = {"core": regs["core"]} | {f"mono-{x}": regs[f"mono-{x}"] for x in r.mono_langs}
    return {
        "layer_module_density": {
            "layers": layers,
            "modules": modules,
            "density": density.tolist(),
            "scope": scope,
        },
        "profiles": profiles,
        "mask_maps": maps.mask_maps(mapped, c.mask_maps.matrices, c.mask_maps.blocks),
        "importance_hist": maps.score_histograms(scores, roles),
    }


def agreement(r: _Run, core: R.Region) -> dict:
    """Jaccard of the core region from fewer windows, and from other estimators."""
    c = r.cfg
    samples = {}
    for n in c.jaccard.sample_counts:
        if n < min(len(w) for w in r.imp_windows.values()):
            sub = {lang: r.scores(lang, c.estimator, n) for lang in r.langs}
            samples[str(n)] = R.jaccard(R.core(sub, c.ratio, **r.sel), core)
    est = {c.estimator: core}
    for e in c.jaccard.estimators:
        if e not in est:
            est[e] = R.core({lang: r.scores(lang, e) for lang in r.langs}, c.ratio, **r.sel)
    return {"sample_counts": samples, "estimators": R.overlap_matrix(est) if len(est) > 1 else {}}


class _Stages:
    """Logs each stage as it starts and keeps the wall seconds of each (``seconds``)."""

    def __init__(self, log: Callable[[str], None]):
        self.log, self.seconds = log, {}
        self._name, self._t = None, time.time()

    def start(self, name: str, line: str | None = None) -> None:
        self.stop()
        if line is not None:
            self.log(line)
        self._name, self._t = name, time.time()

    def stop(self) -> None:
        if self._name is not None:
            self.seconds[self._name] = round(time.time() - self._t, 1)
        self._name = None


def _regions_and_ablations(
    r: _Run, st: _Stages
) -> tuple[dict, dict[str, R.Region], dict[str, R.Region], dict]:
    """Stages 1-3: importance per language, the regions, each ablated region's perplexity and
    bits per byte; returns the scores, the ablated regions, each language's top-k and the
    :class:`Results` fields these fill."""
    c, s = r.cfg, r.s
    st.start("importance", "[1/9] importance per language")
    scores = {lang: r.scores(lang, c.estimator) for lang in r.langs}
    st.start("regions", "[2/9] regions")
    regs, tops = select_regions(r, scores)
    every = {**regs, **{f"top-{x}": t for x, t in tops.items()}}
    stab = region_stabilities(r, every)
    infos = {
        k: RegionInfo(v.meta["kind"], R.size(v), R.density(v), stab[k]) for k, v in every.items()
    }
    st.start(
        "ablations", "[3/9] ablations (zero each region, perplexity and bits per byte per language)"
    )
    evals = {"base": r.evaluate(s.params)} | {
        k: r.evaluate(interventions.zero(s.params, v)) for k, v in regs.items()
    }
    ppl = {k: {x: e.perplexity for x, e in v.items()} for k, v in evals.items()}
    bpb = {k: {x: e.bits_per_byte for x, e in v.items()} for k, v in evals.items()}
    rnd_mean, rnd_std = _mean_std([ppl[f"random-{seed}"] for seed in c.random_seeds])
    fields = {
        "regions": infos,
        "perplexity": ppl,
        "random": {
            "seeds": list(c.random_seeds),
            "mean": rnd_mean,
            "std": rnd_std,
            **_random_bpb(bpb, c.random_seeds),
        },
        "bits_per_byte": bpb,
        "monolingual_matrix": _ratio_matrix(r, ppl, "mono"),
        "bottom_monolingual_matrix": _ratio_matrix(r, ppl, "bmono"),
    }
    return scores, regs, tops, fields


def _analyses(
    r: _Run,
    st: _Stages,
    scores: dict,
    regs: dict[str, R.Region],
    tops: dict[str, R.Region],
    ppl: dict[str, dict[str, float]],
) -> dict:
    """Stages 4-9: overlap, ratio sweep, region maps, dimensions, agreement and case studies;
    returns the :class:`Results` fields they fill."""
    c, s = r.cfg, r.s
    st.start("overlap", "[4/9] overlap of the per-language regions")
    ov = overlap(tops, regs["core"])
    st.start("ratio_sweep", f"[5/9] ratio sweep {list(c.ratios)}")
    own = ["core", "bottom", *[f"random-{seed}" for seed in c.random_seeds]]
    sweep_rows = ratio_sweep(
        r, scores, ppl["base"], {c.ratio: {k: ppl[k] for k in own}} if c.ratio in c.ratios else {}
    )
    st.start("region_maps", "[6/9] region maps")
    mp = region_maps(r, scores, regs)
    st.start("dims", "[7/9] dimension analysis and sweep")
    dres = dims.analyse(
        s.params,
        s.config,
        r.ppl,
        ppl["base"],
        r.eval_windows[r.eval_langs[0]],
        c.dims,
        profile=mp["profiles"]["core"],
    )
    st.start("agreement", "[8/9] agreement across sample counts and estimators")
    jac = agreement(r, regs["core"])
    st.start(
        "case_studies", "[9/9] case studies (continuations under each edit, language fidelity)"
    )
    cs = texts.run(
        s.params,
        s.config,
        s.tokenizer,
        c.case_studies,
        regs,
        c.random_seeds[0],
        r.mono_langs,
        dres.sweep,
    )
    st.stop()
    return {
        "overlap": ov,
        "ratio_sweep": sweep_rows,
        "layer_module_density": mp["layer_module_density"],
        "profiles": {k: v.tolist() for k, v in mp["profiles"].items()},
        "importance_hist": mp["importance_hist"],
        "mask_maps": mp["mask_maps"],
        "dims": dres,
        "jaccard": jac,
        "case_studies": cs,
    }


def _moe(r: _Run, core: R.Region) -> moe.MoEResult | None:
    """The MoE stage (routing per language, top-expert ablations, where the core region lies);
    None for a dense model."""
    s, c = r.s, r.cfg
    if not s.config.is_moe:
        return None
    r.log("[moe] routing per language, top-expert ablations, where the core region lies")
    return moe.run(
        s.params, s.config, r.imp_windows, c.batch_size, r.ppl_routed, core, c.random_seeds[0]
    )


def run(
    cfg: ExperimentConfig,
    log: Callable[[str], None] = logger.info,
    source: str = "config",
    mesh: jax.sharding.Mesh | None = None,
    command: Sequence[str] | None = None,
) -> Results:
    """Run the battery on ``mesh`` (None: every device on ``data``; ``source``: the config
    file, named in errors; ``command``: the command line, recorded in the results); writes
    results.json into ``cfg.out`` and returns the results
    (:func:`jaxregion.report.battery.render` then writes report.md and the PNGs)."""
    validate(cfg, source)
    ck = hf.open_checkpoint(cfg.model)  # headers only: model checks before any weight loads
    validate_for_model(cfg, ck.config, models.shapes(ck.config), source)
    t0 = time.time()
    st = _Stages(log)
    st.start("load")
    r = _Run(cfg, log, mesh)
    casestudies.check_fits(r.s.config, r.s.tokenizer, cfg.case_studies, source)
    for sub in ("importance", "regions"):
        os.makedirs(os.path.join(cfg.out, sub), exist_ok=True)
    scores, regs, tops, ablated = _regions_and_ablations(r, st)
    analysed = _analyses(r, st, scores, regs, tops, ablated["perplexity"])
    moe_res = _moe(r, regs["core"])
    res = Results(
        name=cfg.name,
        jaxregion_version=__version__,
        config=dataclasses.asdict(cfg),
        setting=r.setting(),
        thresholds=dict(THRESHOLDS),
        **ablated,
        **analysed,
        moe=moe_res,
        seconds=round(time.time() - t0, 1),
        stage_seconds=st.seconds,
        command=list(command) if command is not None else None,
        versions=versions(),
    )
    res.save(os.path.join(cfg.out, "results.json"))
    log(f"wrote {os.path.join(cfg.out, 'results.json')} in {res.seconds} s")
    return res
