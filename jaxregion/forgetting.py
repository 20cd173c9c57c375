"""The paper's forgetting experiment as one function (``jaxregion forgetting CONFIG.yaml``).

Continued pre-training of one base model on a *target* language under several freeze
settings -- nothing, the core region, a random region of the same size, the bottom region,
the target's monolingual region, whole layers -- with the same data order, seeds and
hyper-parameters. Every setting's perplexity curves land in ``runs/NAME/metrics.jsonl``; the
report compares the final perplexities with the base model's:

* **forgetting** = mean over the *other* languages of (final ppl - base ppl)
  (also as a mean relative increase, %),
* **target gain** = base target ppl - final target ppl.

Regions come from region files named in the config, or are computed here from importance
scores (:mod:`jaxregion.importance`) with :func:`jaxregion.regions.select`. With no
``model``, a ``pretrain`` section trains a small base model from scratch first, so a config
can be self-contained (see ``configs/forgetting_small.yaml``).
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from jaxregion.config import from_dict, read_yaml
from jaxregion.errors import UserError
from jaxregion.safety import check_name
from jaxregion.train.loop import TrainConfig

REGION_KINDS = ("core", "bottom", "random", "monolingual", "top")


# --- configuration -------------------------------------------------------------------------
@dataclass(frozen=True)
class TrainSpec(TrainConfig):
    """A :class:`TrainConfig` with this experiment's defaults, plus its data limits."""

    steps: int = 100
    seq_len: int = 64
    lr: float = 1e-3
    warmup: int = 10
    eval_every: int = 25
    save_every: int = 1000
    keep: int = 1
    eval_max_seqs: int | None = 32
    train_max_seqs: int | None = None

    def train_config(self, freeze_norms: bool = False) -> TrainConfig:
        kw = {f.name: getattr(self, f.name) for f in dataclasses.fields(TrainConfig)}
        kw.update(save_every=min(self.save_every, self.steps), freeze_norms=freeze_norms)
        return TrainConfig(**kw)


@dataclass(frozen=True)
class Setting:
    """One freeze setting: ``region`` (file), or ``kind`` (computed), or ``layers``, or none."""

    name: str
    region: str | None = None
    kind: str | None = None
    ratio: float = 0.01
    seed: int = 0
    lang: str | None = None
    like: str | None = None  # random: same per-tensor counts as this setting's region
    langs: tuple[str, ...] | None = None  # core/bottom: languages whose scores are summed
    layers: tuple[int, ...] | None = None
    freeze_norms: bool = False

    @property
    def frozen(self) -> bool:
        return bool(self.region or self.kind or self.layers)


@dataclass(frozen=True)
class ImportanceSpec:
    texts: Mapping[str, str] = field(default_factory=dict)  # languages to score
    estimator: str = "taylor"
    max_seqs: int | None = 64
    batch_size: int = 8


@dataclass(frozen=True)
class PretrainSpec:
    texts: Mapping[str, str] = field(default_factory=dict)
    tokenizer: str | None = None  # a directory; None = train a BPE on ``texts``
    vocab_size: int = 512
    tokenizer_docs: int = 2000
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int | None = None
    intermediate_size: int | None = None
    max_positions: int = 256
    init_seed: int = 0
    train: TrainSpec = field(default_factory=TrainSpec)


@dataclass(frozen=True)
class ForgettingConfig:
    target: str
    target_train: str  # source spec of the target language's training text
    evals: Mapping[str, str]  # {lang: source}, the target included
    settings: tuple[Setting, ...]
    train: TrainSpec = field(default_factory=TrainSpec)
    model: str | None = None
    pretrain: PretrainSpec | None = None
    importance: ImportanceSpec | None = None
    out_dir: str = "runs/forgetting"
    name: str = "forgetting"


def config_from_dict(d: Mapping[str, Any], source: str = "config") -> ForgettingConfig:
    if not isinstance(d, Mapping):
        raise UserError(f"{source}: expected a mapping, got {type(d).__name__}")
    d = dict(d)
    if isinstance(d.get("settings"), Mapping):  # {name: {...}} is accepted too
        d["settings"] = [{"name": k, **(v or {})} for k, v in d["settings"].items()]
    cfg = from_dict(ForgettingConfig, d, source)
    settings = list(cfg.settings)
    for st in settings:
        if st.kind is not None and st.kind not in REGION_KINDS:
            raise UserError(f"{source}: setting {st.name!r}: kind {st.kind!r} is unknown; use "
                            f"one of {', '.join(REGION_KINDS)}")
        if sum(x is not None for x in (st.region, st.kind, st.layers)) > 1:
            raise UserError(f"{source}: setting {st.name!r}: give one of region, kind, layers")
    check_name(cfg.target, f"{source}: target")
    for sec in (cfg.importance, cfg.pretrain):
        for lang in (sec.texts if sec is not None else ()):
            check_name(lang, f"{source}: {'importance' if sec is cfg.importance else 'pretrain'}"
                       ".texts")
    for lang in cfg.evals:
        check_name(lang, f"{source}: evals")
    for st in settings:
        check_name(st.name, f"{source}: settings", what="setting")
        if st.lang is not None:
            check_name(st.lang, f"{source}: setting {st.name}: lang")
        for lang in st.langs or ():
            check_name(lang, f"{source}: setting {st.name}: langs")
    names = [s.name for s in settings]
    if len(set(names)) != len(names):
        raise UserError(f"{source}: setting names repeat: {names}")
    if cfg.target not in cfg.evals:
        raise UserError(f"{source}: evals must include the target language {cfg.target!r}")
    if len(cfg.evals) < 2:
        raise UserError(f"{source}: evals need at least one language besides the target")
    if cfg.model is None and cfg.pretrain is None:
        raise UserError(f"{source}: give a base 'model' directory or a 'pretrain' section")
    needs_scores = [s.name for s in settings if s.kind and s.kind != "random"]
    if needs_scores and cfg.importance is None:
        raise UserError(f"{source}: settings {needs_scores} compute regions from importance "
                        "scores; add an 'importance' section (texts per language) or give "
                        "region files")
    return cfg


def load_config(path: str) -> ForgettingConfig:
    return config_from_dict(read_yaml(path) or {}, path)


# --- pieces --------------------------------------------------------------------------------
def _log(msg: str) -> None:
    print(f"[forgetting] {msg}", file=sys.stderr, flush=True)


def bootstrap_model(spec: PretrainSpec, out: str, progress: bool = True) -> str:
    """Pretrain a small Llama from scratch on ``spec.texts``; returns its HF directory."""
    from jaxregion import hf, runtime
    from jaxregion.data.sources import open_source
    from jaxregion.train import train
    from jaxregion.train.run import make_scratch_model, prepare_ckpt_dir

    final = os.path.join(out, "base")
    if os.path.isfile(os.path.join(final, "model.safetensors")):
        return final
    tok_dir = spec.tokenizer
    if tok_dir is None:
        from itertools import islice

        from jaxregion.data.tokenizer import train_bpe

        tok_dir = os.path.join(out, "tokenizer")
        if not os.path.isfile(os.path.join(tok_dir, "tokenizer.json")):
            _log(f"training a BPE tokenizer (vocab {spec.vocab_size}) on {sorted(spec.texts)}")
            docs = {lang: list(islice(open_source(src).documents(), spec.tokenizer_docs))
                    for lang, src in spec.texts.items()}
            train_bpe(docs, spec.vocab_size, tok_dir)
    init = os.path.join(out, "base_init")
    if not os.path.isfile(os.path.join(init, "model.safetensors")):
        make_scratch_model(init, tok_dir, seed=spec.init_seed, hidden_size=spec.hidden_size,
                           num_layers=spec.num_layers, num_heads=spec.num_heads,
                           num_kv_heads=spec.num_kv_heads,
                           intermediate_size=spec.intermediate_size,
                           max_positions=spec.max_positions)
    session = runtime.load_session(init)
    t = spec.train
    windows = runtime.load_corpora([f"{k}={v}" for k, v in spec.texts.items()], session,
                                   t.seq_len, t.train_max_seqs)
    ckpt = os.path.join(out, "base_ckpt")
    info = {"command": "pretrain", "texts": dict(spec.texts)}
    prepare_ckpt_dir(ckpt, session.path, session.config, info)
    _log(f"pretraining the base model: {t.steps} steps on {sorted(windows)}")
    res = train(session.params, session.config, windows, t.train_config(), ckpt,
                mesh=session.mesh, progress=progress, run_info=info)
    if res.interrupted:
        raise KeyboardInterrupt
    hf.export(res.params, session.config, final, tokenizer_from=init)
    return final


def random_like(region: Any, seed: int) -> Any:
    """A random region with exactly the per-tensor element counts of ``region``."""
    import jax.numpy as jnp

    from jaxregion import tree as T
    from jaxregion.regions import Region

    rng = np.random.default_rng(seed)
    flat = T.flatten(region.mask)
    out = {}
    for n, m in flat.items():
        m = np.asarray(m)
        k = int(m.sum())
        r = np.zeros(m.size, bool)
        if k:
            r[rng.choice(m.size, size=k, replace=False)] = True
        out[n] = jnp.asarray(r.reshape(m.shape))
    meta = {**dict(region.meta), "kind": "random", "seed": int(seed),
            "like": region.meta.get("kind")}
    return Region(T.unflatten(out), meta, region.universe)


def layer_region(params: Any, layers: tuple[int, ...], model_cfg: Any = None) -> Any:
    """Every parameter of the given transformer layers (norms included); layers from the
    family table of ``model_cfg`` (or read off the tables by name)."""
    import jax.numpy as jnp

    from jaxregion import models
    from jaxregion import tree as T
    from jaxregion.regions import Region, roles_for

    rl = roles_for(list(T.flatten(params)),
                   models.roles(model_cfg) if model_cfg is not None else None)

    def member(n: str) -> bool:
        return rl.get(n) is not None and rl[n].layer in layers

    mask = T.map_named(lambda n, x: jnp.full(x.shape, member(n), bool), params)
    return Region(mask, {"kind": "layers", "layers": list(layers)})


def compute_scores(session, spec: ImportanceSpec, seq_len: int, out: str) -> dict[str, Any]:
    """``{lang: score tree}``, cached as ``out/importance/LANG.safetensors``."""
    from jaxregion import runtime, scorefiles

    d = os.path.join(out, "importance")
    scores = {}
    for lang, src in spec.texts.items():
        w = runtime.load_corpora([f"{lang}={src}"], session, seq_len, spec.max_seqs)[lang]
        got = scorefiles.score_language(session, lang, w, d, estimator=spec.estimator,
                                        batch_size=spec.batch_size, source=src,
                                        on_mismatch="recompute", log=_log)
        if got.status != "reused":
            _log(f"importance ({spec.estimator}) of {lang}: {got.path}")
        scores[lang] = got.scores
    return scores


def build_regions(cfg: ForgettingConfig, session, out: str) -> dict[str, Any]:
    """``{setting name: Region or None}``; region files validated against the model."""
    from jaxregion.regions import load_region, save_region, select

    regions: dict[str, Any] = {}
    scores = None
    pending = []
    for s in cfg.settings:
        if s.region:
            regions[s.name] = load_region(s.region, template=session.params)
        elif s.layers:
            regions[s.name] = layer_region(session.params, s.layers, session.config)
        elif s.kind == "random":
            pending.append(s)
            continue
        elif s.kind:
            if scores is None:
                scores = compute_scores(session, cfg.importance, cfg.train.seq_len, out)
            lang = s.lang or (cfg.target if s.kind in ("monolingual", "top") else None)
            for ll in [lang, *(s.langs or ())]:
                if ll is not None and ll not in scores:
                    raise UserError(f"setting {s.name!r}: language {ll!r} has no importance "
                                    f"scores; add it to importance.texts")
            use = {ll: scores[ll] for ll in s.langs} if s.langs else scores
            regions[s.name] = select(s.kind, use, lang=lang, ratio=s.ratio, seed=s.seed,
                                     template=session.params)
        else:
            regions[s.name] = None
    for s in pending:
        like = s.like or next((x.name for x in cfg.settings if x.kind == "core" or (
            x.region and "core" in x.name)), None)
        if like is not None and regions.get(like) is not None:
            regions[s.name] = random_like(regions[like], s.seed)
        else:
            regions[s.name] = select("random", None, ratio=s.ratio, seed=s.seed,
                                     template=session.params)
    for name, r in regions.items():
        if r is not None:
            save_region(os.path.join(out, "regions", f"{name}.safetensors"), r)
    return {s.name: regions[s.name] for s in cfg.settings}


# --- the experiment ------------------------------------------------------------------------
def summarize(target: str, curves: Mapping[str, list[dict]], base: Mapping[str, float]
              ) -> dict[str, dict]:
    """Final numbers per setting from its metric records (those with ``eval_ppl``)."""
    out = {}
    for name, recs in curves.items():
        final = [r for r in recs if r.get("eval_ppl")][-1]["eval_ppl"]
        others = [lang for lang in final if lang != target]
        inc = [final[o] - base[o] for o in others]
        rel = [(final[o] - base[o]) / base[o] * 100 for o in others]
        out[name] = {
            "target_ppl": final[target], "target_gain": base[target] - final[target],
            "others_ppl": float(np.mean([final[o] for o in others])),
            "forgetting": float(np.mean(inc)), "forgetting_pct": float(np.mean(rel)),
            "ppl": dict(final),
        }
    return out


def _plot(path: str, curves: Mapping[str, list[dict]], fn, title: str, caption: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for name, recs in curves.items():
        pts = [(r["step"], fn(r["eval_ppl"])) for r in recs if r.get("eval_ppl")]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=3, label=name)
    ax.set_xlabel("step")
    ax.set_ylabel("perplexity")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.text(0.01, 0.01, caption, fontsize=6, wrap=True)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _outcome(summary: Mapping[str, dict]) -> str:
    """One honest sentence: does freezing reduce forgetting relative to nothing and to a
    random region of the same size, and at what cost to the target?"""
    if "none" not in summary or len(summary) < 2:
        return ""
    ref = summary["none"]["forgetting"]
    ref_target = summary["none"]["target_ppl"]
    parts = []
    for name, s in summary.items():
        if name == "none":
            continue
        change = (s["forgetting"] - ref) / abs(ref) * 100 if ref else 0.0
        parts.append(f"{name}: forgetting {s['forgetting']:.4g} ({change:+.1f}% vs none), "
                     f"target ppl {s['target_ppl']:.4g} (none: {ref_target:.4g})")
    best = min(summary, key=lambda k: summary[k]["forgetting"])
    verdict = (f"`{best}` forgets least" if best != "none" else
               "no frozen setting forgets less than training everything")
    if "core" in summary and "random" in summary:
        core, rnd = summary["core"]["forgetting"], summary["random"]["forgetting"]
        verdict += ("; freezing the core region beats a random region of the same size"
                    if core < rnd else
                    "; freezing the core region does NOT beat a random region of the same size")
    return "**Outcome.** " + "; ".join(parts) + f". Here {verdict}."


def write_report(out: str, cfg: ForgettingConfig, model: str, sizes: Mapping[str, int],
                 total: int, curves: Mapping[str, list[dict]], base: Mapping[str, float]
                 ) -> dict:
    from jaxregion.io import write_json, write_text
    from jaxregion.report.tables import markdown_table

    summary = summarize(cfg.target, curves, base)
    others = [lang for lang in base if lang != cfg.target]
    t = cfg.train
    caption = (f"model {model}; continued pre-training on {cfg.target} ({cfg.target_train}), "
               f"{t.steps} steps x {t.batch_size} windows of {t.seq_len} tokens, lr {t.lr} "
               f"({t.schedule}), seed {t.seed}; eval on {', '.join(base)} "
               f"({t.eval_max_seqs or 'all'} windows each)")
    plots = {
        "target": ("plot_target.png", lambda e: e[cfg.target],
                   f"{cfg.target} (target) perplexity"),
        "others": ("plot_others.png", lambda e: float(np.mean([e[o] for o in others])),
                   f"mean perplexity of {', '.join(others)} (others)"),
    }
    for fname, fn, title in plots.values():
        _plot(os.path.join(out, fname), curves, fn, title, caption)
    headers = ["setting", "frozen", f"{cfg.target} ppl", "target gain", "others ppl",
               "forgetting", "forgetting %"] + [f"{o} ppl" for o in others]
    rows = [("base", "-", base[cfg.target], 0.0, float(np.mean([base[o] for o in others])),
             0.0, 0.0, *[base[o] for o in others])]
    for name, s in summary.items():
        frac = f"{sizes[name] / total * 100:.2f}%" if sizes[name] else "0"
        rows.append((name, frac, s["target_ppl"], s["target_gain"], s["others_ppl"],
                     s["forgetting"], s["forgetting_pct"], *[s["ppl"][o] for o in others]))
    table = markdown_table(headers, rows)
    outcome = _outcome(summary)
    md = [
        f"# Forgetting under frozen regions: {cfg.name}", "",
        caption + ".", "",
        "Forgetting = mean over the other languages of (final - base) perplexity "
        "(% = mean relative increase). Target gain = base - final target perplexity. "
        "Frozen = share of all parameters kept fixed.", "",
        table, "", outcome, "",
        f"![target perplexity]({plots['target'][0]})", "",
        f"*Figure 1: {plots['target'][2]} during training, per setting. {caption}.*", "",
        f"![others perplexity]({plots['others'][0]})", "",
        f"*Figure 2: {plots['others'][2]} during training, per setting. {caption}.*", "",
    ]
    write_text(os.path.join(out, "report.md"), "\n".join(md))
    results = {"name": cfg.name, "model": model, "target": cfg.target, "base": dict(base),
               "settings": summary, "frozen_elements": dict(sizes), "total_elements": total,
               "train": dataclasses.asdict(cfg.train), "curves": {k: v for k, v in curves.items()},
               "table": table, "outcome": outcome}
    write_json(os.path.join(out, "results.json"), results)
    return results


def run_experiment(cfg: ForgettingConfig, out_dir: str | None = None, progress: bool = True
                   ) -> str:
    """Run every setting (resuming finished/interrupted ones) and write the report."""
    from jaxregion import runtime
    from jaxregion import tree as T
    from jaxregion.regions import size
    from jaxregion.train import train
    from jaxregion.train.run import check_writable, prepare_ckpt_dir, weights_digest

    out = out_dir or cfg.out_dir
    check_writable(out)
    model = cfg.model or bootstrap_model(cfg.pretrain, out, progress)
    session = runtime.load_session(model)
    t = cfg.train
    tcfg = t.train_config()
    tcfg.validate()
    windows = runtime.load_corpora([f"{cfg.target}={cfg.target_train}"], session, t.seq_len,
                                   t.train_max_seqs)
    evals = runtime.load_corpora([f"{k}={v}" for k, v in cfg.evals.items()], session,
                                 t.seq_len, t.eval_max_seqs)
    regions = build_regions(cfg, session, out)
    total = sum(int(np.prod(x.shape)) for x in T.flatten(session.params).values())
    curves, sizes = {}, {}
    for s in cfg.settings:
        region = regions[s.name]
        sizes[s.name] = int(size(region)) if region is not None else 0
        ckpt = os.path.join(out, "runs", s.name)
        info = {"command": "forgetting", "setting": dataclasses.asdict(s), "target": cfg.target}
        prepare_ckpt_dir(ckpt, session.path, session.config, info)
        _log(f"setting {s.name}: {sizes[s.name]} of {total} elements frozen")
        res = train(session.params, session.config, windows, t.train_config(s.freeze_norms),
                    ckpt, region=region, evals=evals, mesh=session.mesh, progress=progress,
                    run_info=info, model_id=weights_digest(session.path))
        if res.interrupted:
            raise KeyboardInterrupt
        curves[s.name] = [r for r in res.metrics if r.get("eval_ppl")]
    base = next(iter(curves.values()))[0]["eval_ppl"]
    results = write_report(out, cfg, model, sizes, total, curves, base)
    print(results["table"])
    return out
