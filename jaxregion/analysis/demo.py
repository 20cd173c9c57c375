"""``jaxregion demo``: the whole pipeline, offline, on a laptop, in minutes.

Stages (each cached under the output folder, so a re-run reuses finished work):
 1. corpus: the built-in synthetic languages (or a directory of LANG.train.txt / LANG.valid.txt)
 2. tokenizer: a byte-level BPE trained on it
 3. pretrain: a tiny Llama from scratch on the importance languages
 4-8. the experiment battery: importance on 6 languages, core/bottom/random/monolingual
      regions, the ablation table, the monolingual matrix, the dimension sweep
 9. case studies (inside the battery): what the model writes after one prompt per language
    under each edit, and the language fidelity of it
10. multiple choice: the synthetic languages' ground-truth task (:mod:`jaxregion.analysis.mc`) run
    through lm-eval under the base model, core removed and random removed
11. forgetting: continued pre-training on a held-out language, the frontier over freeze ratio
    x granularity (core vs random regions) plus replay, EWC and SSU-style wanda columns
12. ``report.md`` with every table and plot, stating the outcome honestly
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import logging
import os
import re
import time
from collections.abc import Callable

from jaxregion import interventions, runtime
from jaxregion import regions as R
from jaxregion.analysis import experiment, fidelity, forgetting, mc
from jaxregion.configs import DEMO_QUICK, CaseStudyConfig, DemoConfig
from jaxregion.data import synthetic
from jaxregion.data.sources import open_source, sources_from_dir
from jaxregion.errors import UserError
from jaxregion.io import atomic
from jaxregion.report import battery
from jaxregion.report.tables import markdown_table

logger = logging.getLogger(__name__)


def resolve(cfg: DemoConfig) -> DemoConfig:
    """``cfg`` with ``quick``'s sizes (:data:`DEMO_QUICK`) for every size left at its
    default."""
    if not cfg.quick:
        return cfg
    defaults = DemoConfig()
    return dataclasses.replace(
        cfg, **{k: v for k, v in DEMO_QUICK.items() if getattr(cfg, k) == getattr(defaults, k)}
    )


def _stage(log: Callable[[str], None], i: int, name: str) -> float:
    log(f"\n== stage {i}/12: {name} ==")
    return time.time()


def _corpus(cfg: DemoConfig, log) -> tuple[dict[str, str], dict[str, str], str, list[str]]:
    """``(train sources, valid sources, target, importance langs)`` as source specs."""
    if cfg.corpus == "synthetic" and not cfg.text:
        d = os.path.join(cfg.out, "corpus")
        langs = [*cfg.langs, cfg.target]
        marker = os.path.join(d, "done.json")
        if not os.path.exists(marker):
            synthetic.write_corpus(d, langs, cfg.train_docs, cfg.seed, "train")
            synthetic.write_corpus(d, langs, cfg.valid_docs, cfg.seed, "valid")
            atomic.write_json(marker, {"langs": langs, "train_docs": cfg.train_docs})
        train = {lang: os.path.join(d, f"{lang}.train.txt") for lang in langs}
        valid = {lang: os.path.join(d, f"{lang}.valid.txt") for lang in langs}
        log(f"synthetic corpus in {d}: {', '.join(langs)} (ground truth: ground_truth.json)")
        return train, valid, cfg.target, list(cfg.langs)
    if cfg.text:
        train = dict(cfg.text)
        valid = {k: cfg.valid_text.get(k, v) for k, v in train.items()}
        where = "--text"
    else:
        if not os.path.isdir(cfg.corpus):
            raise UserError(f"--corpus {cfg.corpus}: not 'synthetic' nor a directory of LANG.txt")
        train_src = sources_from_dir(cfg.corpus, "train")
        valid_src = sources_from_dir(cfg.corpus, "valid")
        both = set(train_src) & set(valid_src)
        train = {k: train_src[k].name for k in sorted(both)}
        valid = {k: valid_src[k].name for k in sorted(both)}
        where = f"--corpus {cfg.corpus}"
    langs = sorted(train)
    if len(langs) < 3:
        raise UserError(
            f"{where}: needs text (LANG.train.txt and LANG.valid.txt) for at least "
            f"3 languages, found {langs}"
        )
    target = cfg.target if cfg.target in langs else langs[-1]
    imp = [
        lang for lang in (cfg.langs if set(cfg.langs) <= set(langs) else langs) if lang != target
    ][:6]
    used = [*imp, target]
    log(f"corpus {where}: importance on {imp}, new language {target}")
    return {k: train[k] for k in used}, {k: valid[k] for k in used}, target, imp


def _experiment_config(
    cfg: DemoConfig,
    model: str,
    train: dict[str, str],
    valid: dict[str, str],
    target: str,
    langs: list[str],
) -> experiment.ExperimentConfig:
    """The battery's config: importance on ``langs``, evaluation on them and ``target``."""
    return experiment.ExperimentConfig(
        model=model,
        name="demo",
        out=os.path.join(cfg.out, "experiment"),
        languages={k: train[k] for k in langs},
        eval_languages={k: valid[k] for k in [*langs, target]},
        seq_len=cfg.seq_len,
        max_seqs=cfg.importance_windows,
        eval_max_seqs=cfg.eval_windows,
        batch_size=16,
        random_seeds=(0, 1, 2),
        dims=experiment.DimsConfig(layer=1, auto_candidates=2, auto_controls=2, factors=(4.0, 0.0)),
        jaccard=experiment.JaccardConfig(
            sample_counts=(cfg.importance_windows // 4,), estimators=("fisher", "wanda")
        ),
        case_studies=CaseStudyConfig(
            prompts=_case_prompts(valid, langs),
            max_new_tokens=max(1, cfg.case_study_tokens),
            width=48,
        )
        if cfg.case_study_tokens
        else CaseStudyConfig(),
    )


def _experiment(exp_cfg: experiment.ExperimentConfig, log: Callable[[str], None], mesh) -> dict:
    """Stages 4-9: the battery and its report (reused when its config is unchanged)."""
    exp_json = os.path.join(exp_cfg.out, "results.json")
    if _fresh(exp_json, dataclasses.asdict(exp_cfg)):
        exp = json.load(open(exp_json, encoding="utf-8"))
        log("cached")
        return exp
    res = experiment.run(exp_cfg, log=log, mesh=mesh)
    battery.render(res, exp_cfg.out)
    return res.to_dict()


def _forgetting(f_cfg: forgetting.ForgettingConfig, log: Callable[[str], None], mesh) -> dict:
    """Stage 11: the forgetting sweep (finished points are reused); its results."""
    res = forgetting.run(f_cfg, progress=True, log=log, mesh=mesh)
    if res.interrupted:
        raise UserError(
            "the demo was interrupted during the forgetting stage; run it again to resume"
        )
    return res.results


def run(cfg: DemoConfig, log: Callable[[str], None] | None = None, mesh=None) -> dict:
    """Every stage on ``mesh`` (None: every device on ``data``); returns the results."""
    log = log or logger.info
    cfg = resolve(cfg)
    t_start = time.time()
    os.makedirs(cfg.out, exist_ok=True)
    timings: dict[str, float] = {}

    t = _stage(log, 1, "corpus")
    train, valid, target, langs = _corpus(cfg, log)
    timings["corpus"] = time.time() - t

    if cfg.model:
        t = _stage(log, 2, "tokenizer + 3: pretraining: skipped, the model is given")
        model = cfg.model
        log(f"model {model} (its own tokenizer)")
    else:
        t = _stage(log, 2, "tokenizer + 3: pretrain a tiny Llama")
        model = _pretrain(cfg, train, langs, mesh)
    timings["pretrain"] = time.time() - t

    t = _stage(
        log,
        4,
        "importance, regions, ablations, monolingual matrix, dimension sweep, "
        "case studies (stages 4-9)",
    )
    exp_cfg = _experiment_config(cfg, model, train, valid, target, langs)
    exp = _experiment(exp_cfg, log, mesh)
    timings["experiment"] = time.time() - t

    t = _stage(log, 10, "multiple choice (lm-eval): base, core removed, random removed")
    mcq = multiple_choice(cfg, exp_cfg, langs, log, mesh)
    timings["multiple_choice"] = time.time() - t

    t = _stage(log, 11, f"forgetting: continued pre-training on {target}")
    f_cfg = forgetting_config(
        cfg, model, train, valid, target, langs, os.path.join(exp_cfg.out, "importance")
    )
    started = time.process_time()
    forg = _forgetting(f_cfg, log, mesh)
    timings["forgetting"] = time.time() - t
    timings["forgetting_cpu"] = time.process_time() - started

    t = _stage(log, 12, "report")
    total = time.time() - t_start
    _report(cfg, exp, forg, mcq, timings, total, target, langs, model)
    log(f"\nwrote {os.path.join(cfg.out, 'report.md')} ({total:.0f} s this run)")
    return {"experiment": exp, "multiple_choice": mcq, "forgetting": forg, "timings": timings}


def _pretrain(cfg: DemoConfig, train: dict[str, str], langs: list[str], mesh) -> str:
    """Stages 2-3: the BPE tokenizer and the tiny Llama, pretrained on the importance
    languages (cached under ``OUT/pretrain/KEY``; ``OUT/model`` links to it)."""
    pre_train = forgetting.TrainSpec(
        steps=cfg.pretrain_steps,
        batch_size=cfg.pretrain_batch,
        seq_len=cfg.seq_len,
        lr=cfg.pretrain_lr,
        warmup=max(1, cfg.pretrain_steps // 20),
        eval_every=0,
        save_every=max(50, cfg.pretrain_steps // 4),
        seed=cfg.seed,
    )
    pre = forgetting.PretrainSpec(
        texts={k: train[k] for k in langs},
        vocab_size=cfg.vocab_size,
        tokenizer_docs=min(cfg.train_docs, 3000),
        hidden_size=cfg.hidden_size,
        num_layers=cfg.num_layers,
        num_heads=cfg.num_heads,
        intermediate_size=cfg.intermediate_size,
        max_positions=max(256, cfg.seq_len),
        init_seed=cfg.seed,
        train=pre_train,
    )
    # keyed by the pretraining settings, so a changed setting never reuses a stale model
    model = forgetting.bootstrap_model(pre, os.path.join(cfg.out, "pretrain", _key(pre)), mesh=mesh)
    link = os.path.join(cfg.out, "model")
    if os.path.islink(link) and os.readlink(link) != os.path.abspath(model):
        os.unlink(link)
    if not os.path.exists(link):
        os.symlink(os.path.abspath(model), link)
    return model


def _case_prompts(valid: dict[str, str], langs: list[str]) -> dict[str, tuple[str, ...]]:
    """One prompt per language fidelity can identify: the first sentence of its held-out
    (validation) text, cut to a few words."""
    out = {}
    for lang in langs:
        try:
            fidelity.check_language(lang)
        except UserError:
            continue  # a corpus language langid does not know: no fidelity to measure
        line = next((x.strip() for x in open_source(valid[lang]).documents() if x.strip()), "")
        line = line.split("\n", 1)[0]
        text = re.split(r"(?<=[.?!])\s*", line, maxsplit=1)[0][:40].strip()
        if text:
            out[lang] = (text,)
    return out


def _mc_skipped(cfg: DemoConfig) -> str | None:
    """Why the multiple-choice stage cannot run here (None: it can)."""
    if not cfg.mc_questions:
        return "--mc-questions 0"
    if cfg.corpus != "synthetic" or cfg.text:
        return "the corpus is not the synthetic one (the task needs its ground truth)"
    if importlib.util.find_spec("lm_eval") is None:
        return "lm-eval is not installed (it is a dependency: pip install -e .)"
    return None


def _removed(session: runtime.Session, exp_cfg: experiment.ExperimentConfig) -> dict:
    """The params with the battery's core region, and with its first random region, zeroed."""
    regions_dir = os.path.join(exp_cfg.out, "regions")
    seed = exp_cfg.random_seeds[0]
    return {
        name: interventions.zero(
            session.params,
            R.load_region(
                os.path.join(regions_dir, f"{file}.safetensors"), template=session.params
            ),
        )
        for name, file in (("core", "core"), ("random", f"random-{seed}"))
    }


def multiple_choice(
    cfg: DemoConfig,
    exp_cfg: experiment.ExperimentConfig,
    langs: list[str],
    log: Callable[[str], None],
    mesh=None,
) -> dict:
    """The ground-truth multiple-choice task (``mc``) through lm-eval under the
    base model, the battery's core region removed and its first random region removed:
    ``{config, accuracy: {setting: {lang: acc_norm}}, drops, verdict}``, or ``{config,
    skipped: why}``. Cached in ``OUT/mc/results.json``."""
    out = os.path.join(cfg.out, "mc")
    key = {"experiment": dataclasses.asdict(exp_cfg), "n": cfg.mc_questions, "seed": cfg.seed}
    path = os.path.join(out, "results.json")
    if _fresh(path, key):
        log("cached")
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    skipped = _mc_skipped(cfg)
    if skipped:
        log(f"skipped: {skipped}")
        return {"config": key, "skipped": skipped}
    session = runtime.load_session(exp_cfg.model, mesh=mesh)
    acc = mc.evaluate_settings(
        session,
        {"base": session.params, **_removed(session, exp_cfg)},
        langs,
        os.path.join(out, "tasks"),
        n=cfg.mc_questions,
        seed=cfg.seed,
        batch_size=64,
    )
    comp = mc.Comparison(acc["base"], acc["core"], acc["random"])
    res = {
        "config": key,
        "accuracy": acc,
        "random_seed": exp_cfg.random_seeds[0],
        "drops": list(comp.drops()),
        "verdict": comp.verdict(),
    }
    atomic.write_json(path, res)
    return res


def _mc_markdown(mcq: dict, langs: list[str]) -> list[str]:
    """The demo report's multiple-choice section: accuracy per setting and the verdict."""
    md = ["# Part 2. Multiple choice: does the model still know each language?", ""]
    if "skipped" in mcq:
        return [*md, f"Not run: {mcq['skipped']}.", ""]
    acc, n = mcq["accuracy"], mcq["config"]["n"]
    names = {
        "base": "base",
        "core": "core removed",
        "random": f"random removed (seed {mcq['random_seed']})",
    }
    rows = [
        [names[k], *[acc[k][x] for x in langs], sum(acc[k].values()) / len(acc[k])]
        for k in ("base", "core", "random")
    ]
    return [
        *md,
        f"Each question gives one sentence of a synthetic language and asks which "
        "of 4 candidates is its well-formed next sentence; the distractors are the true "
        "sentence with its words shuffled, with the letters of each word shuffled, and a "
        f"sentence of another language ({n} questions per language, chance 0.25, scored "
        "by lm-eval's byte-length-normalised acc_norm through the `jaxregion` model).",
        "",
        markdown_table(["setting", *langs, "mean"], rows),
        "",
        f"**Outcome.** {mcq['verdict']}",
        "",
    ]


def forgetting_config(
    cfg: DemoConfig,
    model: str,
    train: dict[str, str],
    valid: dict[str, str],
    target: str,
    langs: list[str],
    importance_dir: str,
) -> forgetting.ForgettingConfig:
    """The demo's frontier: core vs random at each ratio x granularity, the unfrozen
    reference alone and with replay / EWC, and SSU's 50% of columns by wanda."""
    return forgetting.ForgettingConfig(
        name="demo-forgetting",
        model=model,
        target=target,
        target_train=train[target],
        evals={k: valid[k] for k in [*langs, target]},
        sources=tuple(langs),
        importance=forgetting.ImportanceSpec(
            texts={k: train[k] for k in langs},
            max_seqs=cfg.importance_windows,
            batch_size=16,
            dir=importance_dir,
        ),
        sweep=(
            forgetting.Grid(
                scorers=("core", "random"),
                ratios=cfg.forgetting_ratios,
                granularities=cfg.forgetting_granularities,
                seeds=cfg.forgetting_seeds,
            ),
            forgetting.Grid(
                scorers=("none",), baselines=("replay", "ewc"), seeds=cfg.forgetting_seeds
            ),
            forgetting.Grid(
                scorers=("wanda",),
                ratios=(0.5,),
                granularities=("column",),
                seeds=cfg.forgetting_seeds,
            ),
        ),
        baselines=forgetting.BaselineSpec(
            replay_ratio=cfg.forgetting_replay,
            ewc_lambda=cfg.forgetting_ewc_lambda,
            replay_max_seqs=cfg.importance_windows,
        ),
        train=forgetting.TrainSpec(
            steps=cfg.forgetting_steps,
            batch_size=16,
            seq_len=cfg.seq_len,
            lr=cfg.forgetting_lr,
            warmup=max(1, cfg.forgetting_steps // 10),
            eval_max_seqs=cfg.eval_windows,
            seed=cfg.seed,
        ),
        out_dir=os.path.join(cfg.out, "forgetting"),
    )


def _key(obj) -> str:
    """A short stable hash of a config dataclass."""
    blob = json.dumps(dataclasses.asdict(obj), sort_keys=True, default=str).encode()
    return hashlib.sha1(blob).hexdigest()[:10]


def _fresh(results_json: str, cfg: dict, config_json: str | None = None) -> bool:
    """Whether ``results_json`` exists and was made with ``cfg`` (stored in ``config_json``,
    default the results file itself, under the key ``config``)."""
    if not os.path.exists(results_json):
        return False
    try:
        with open(config_json or results_json, encoding="utf-8") as f:
            old = json.load(f).get("config")
    except (OSError, json.JSONDecodeError):
        return False
    return json.loads(json.dumps(cfg)) == old


def _forgetting_verdict(forg: dict) -> list[str]:
    """What the demo's forgetting part reproduces of the paper's claim, plainly."""
    rows = {r["label"]: r for r in forg["settings"]}
    ref = rows.get("none/none")
    pairs = [
        (r, rows.get(f"random/{r['granularity']}/{r['ratio']:g}/{r['baseline']}"))
        for r in forg["settings"]
        if r["scorer"] == "core"
    ]
    pairs = [(a, b) for a, b in pairs if b is not None]
    wins = sum(a["y"] < b["y"] for a, b in pairs)
    dom = sum(a["y"] < b["y"] and a["target_gain"] >= b["target_gain"] for a, b in pairs)
    out = ["", "What this part shows, in one breath:", ""]
    if ref is not None:
        out.append(
            f"- Regime: training everything on `{forg['target']}` raises the other "
            f"languages' perplexity by {ref['y']:.1f}% (the comparison is meant for "
            "5-100%)."
        )
    if pairs:
        verdict = (
            "reproduces"
            if wins == len(pairs)
            else "partly reproduces"
            if wins
            else "does NOT reproduce"
        )
        out.append(
            f"- The paper's claim that freezing the core region protects the other "
            f"languages better than a random region of the same size {verdict} here: "
            f"core forgets less in {wins} of {len(pairs)} ratio x granularity pairs; "
            f"it forgets less AND learns the target at least as well in {dom} of them "
            "(the frontier below shows the trade-off)."
        )
    for b in ("replay", "ewc"):
        rb = rows.get(f"none/{b}")
        if rb is not None and ref is not None:
            out.append(
                f"- {b} with nothing frozen: forgetting {rb['y']:.1f}% (vs "
                f"{ref['y']:.1f}%), target gain {rb['target_gain']:.3f} (vs "
                f"{ref['target_gain']:.3f}) nats/token."
            )
    return [*out, ""]


def _intro(cfg: DemoConfig, exp: dict, langs: list[str], target: str) -> str:
    """Which model on which text: the demo's own tiny Llama, or the given model."""
    corpus = (
        "the built-in synthetic languages"
        if cfg.corpus == "synthetic" and not cfg.text
        else cfg.corpus
        if not cfg.text
        else "the --text sources"
    )
    if not cfg.model:
        return (
            f"A tiny Llama ({cfg.hidden_size} hidden, {cfg.num_layers} layers, vocab "
            f"{cfg.vocab_size}) pretrained from scratch for {cfg.pretrain_steps} steps on "
            f"{', '.join(langs)} ({corpus}); `{target}` is held out for the forgetting "
            "run."
        )
    st = exp["setting"]
    same = [k for k in cfg.text if k not in cfg.valid_text]
    return (
        f"The pretrained model `{cfg.model}` ({st['model_type']}, {st['num_layers']} "
        f"layers, hidden {st['hidden_size']}; its own tokenizer, no pretraining here) on "
        f"{', '.join(langs)} ({corpus}); `{target}` is the new language of the forgetting "
        "run."
        + (
            f" No held-out text was given for {', '.join(same)}: those languages "
            "are evaluated on their importance text."
            if same
            else ""
        )
    )


def _report(
    cfg: DemoConfig,
    exp: dict,
    forg: dict,
    mcq: dict,
    timings: dict,
    total: float,
    target: str,
    langs: list[str],
    model: str,
) -> None:
    exp_md = open(os.path.join(cfg.out, "experiment", "report.md"), encoding="utf-8").read()
    forg_md = open(os.path.join(cfg.out, "forgetting", "report.md"), encoding="utf-8").read()
    # images of the sub-reports live in their folders
    exp_md = exp_md.replace("](", "](experiment/").split("\n", 1)[1]
    forg_md = forg_md.replace("](", "](forgetting/").split("\n", 1)[1]
    base = exp["perplexity"]["base"]
    md = [
        "# jaxregion demo report",
        "",
        _intro(cfg, exp, langs, target) + " Stage timings (s, this run; cached stages are "
        "near 0): "
        + ", ".join(f"{k} {v:.0f}" for k, v in timings.items())
        + f"; total {total:.0f}.",
        "",
        "Base perplexity per language: " + ", ".join(f"{k} {v:.2f}" for k, v in base.items()) + ".",
        "",
        "# Part 1. Regions and ablations",
        exp_md,
        "",
        *_mc_markdown(mcq, langs),
        "# Part 3. Forgetting",
        *_forgetting_verdict(forg),
        forg_md,
    ]
    atomic.write_text(os.path.join(cfg.out, "report.md"), "\n".join(md))
