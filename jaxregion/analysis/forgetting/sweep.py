"""``jaxregion forgetting CONFIG``: run the sweep, resumably, then render the frontier.

Layout of the output folder:

* ``base/`` (+ ``tokenizer/``, ``base_ckpt/``): the pretrained base model when the config
  has a ``pretrain`` section (the same path as ``jaxregion pretrain``);
* ``base_eval.json``: the base model's perplexities (computed once per model + eval set);
* ``importance/EST/LANG.safetensors``, ``regions/*.safetensors``: shared, cached inputs;
* ``runs/KEY/``: the checkpoints of the run in progress (resumed after an interruption,
  deleted once its point is done); ``points/KEY.json``: each finished point;
* ``results.json``, ``report.md``, ``frontier.png`` (+ ``curves.png``).

A finished point is reused only when it was made from the same inputs (a digest of the
point, the training settings, the model, the content of its training and eval windows and
of what it protects: its region, replay windows, EWC sources); otherwise it is run again.
The base evaluation is keyed by its windows' content too, as importance files are.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass

import jax
import numpy as np

from jaxregion import runtime, safety
from jaxregion import tree as T
from jaxregion.analysis.forgetting import results as RS
from jaxregion.analysis.forgetting.config import Point, check_config, digest, points
from jaxregion.analysis.forgetting.protect import Protector
from jaxregion.configs import ForgettingConfig, PretrainSpec
from jaxregion.errors import UserError
from jaxregion.io.atomic import write_json, write_text
from jaxregion.regions import Region, fingerprint
from jaxregion.train import TrainConfig, TrainResult, freeze_mask_for, train
from jaxregion.train.identity import digest_windows
from jaxregion.train.loop import _cast
from jaxregion.train.pretrain import Arch, ensure_tokenizer, pretrain
from jaxregion.train.run import check_writable, prepare_ckpt_dir, weights_digest

logger = logging.getLogger(__name__)

RUN_OWNER = {"made_by": "jaxregion forgetting", "stage": "run"}


@dataclass
class SweepResult:
    out: str
    results: dict | None  # None when interrupted
    interrupted: bool = False
    signum: int | None = None


def _log(msg: str) -> None:
    logger.info("[forgetting] %s", msg)


def bootstrap_model(
    spec: PretrainSpec, out: str, progress: bool = True, mesh: jax.sharding.Mesh | None = None
) -> str | None:
    """The base model of a self-contained config, made with :func:`train.pretrain.pretrain`
    in ``out/base``; None when pretraining was interrupted (run again to resume)."""
    final = os.path.join(out, "base")
    if os.path.isfile(os.path.join(final, "model.safetensors")):
        return final
    tok = spec.tokenizer or ensure_tokenizer(
        spec.texts, os.path.join(out, "tokenizer"), spec.vocab_size, spec.tokenizer_docs
    )
    arch = Arch(
        hidden_size=spec.hidden_size,
        num_layers=spec.num_layers,
        num_heads=spec.num_heads,
        num_kv_heads=spec.num_kv_heads,
        intermediate_size=spec.intermediate_size,
        max_positions=spec.max_positions,
        init_seed=spec.init_seed,
    )
    t = spec.train
    _log(f"pretraining the base model: {t.steps} steps on {sorted(spec.texts)}")
    res = pretrain(
        spec.texts,
        tok,
        arch,
        t.train_config(),
        os.path.join(out, "base_ckpt"),
        final,
        max_seqs=t.train_max_seqs,
        progress=progress,
        mesh=mesh,
    )
    return None if res.interrupted else final


def base_eval(
    session: runtime.Session, evals: dict[str, np.ndarray], cfg: ForgettingConfig, out: str
) -> dict[str, float]:
    """The base model's perplexity per eval language, cached in ``out/base_eval.json``."""
    key = digest(
        {
            "model": fingerprint(session.params),
            "path": os.path.abspath(session.path),
            "evals": dict(cfg.evals),
            "windows": digest_windows(evals),
            "seq_len": cfg.train.seq_len,
            "max_seqs": cfg.train.eval_max_seqs,
            "dtype": cfg.train.dtype,
        }
    )
    path = os.path.join(out, "base_eval.json")
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            old = json.load(f)
        if old.get("digest") == key:
            return old["ppl"]
    params = _cast(session.params, cfg.train.dtype)
    res = runtime.evaluate_corpora(
        session, evals, cfg.train.eval_batch_size, params=params, desc="base eval"
    )
    ppl = {lang: r.perplexity for lang, r in res.items()}
    write_json(path, {"digest": key, "ppl": ppl})
    return ppl


def _identity(cfg: ForgettingConfig, p: Point, model_fp: str) -> dict:
    st = [dataclasses.asdict(s) for s in cfg.settings if p.scorer == f"setting:{s.name}"]
    return {
        "point": dataclasses.asdict(p),
        "train": dataclasses.asdict(cfg.train),
        "baselines": dataclasses.asdict(cfg.baselines) if p.baseline != "none" else None,
        "model": model_fp,
        "target_train": cfg.target_train,
        "evals": dict(cfg.evals),
        "sources": cfg.source_langs(),
        "score_langs": cfg.score_langs(),
        "scope": cfg.scope,
        "include": cfg.include,
        "freeze_norms": cfg.freeze_norms,
        "setting": st,
        "importance": dataclasses.asdict(cfg.importance) if cfg.importance else None,
    }


def _region_and_digest(
    cfg: ForgettingConfig,
    p: Point,
    session: runtime.Session,
    windows: dict[str, np.ndarray],
    evals: dict[str, np.ndarray],
    protector: Protector,
) -> tuple[Region | None, str]:
    """The region ``p`` freezes, and the digest of everything its result depends on."""
    model_fp = fingerprint(session.params)
    region = protector.region(p)  # what the point freezes is part of what it used
    d = digest(
        {
            **_identity(cfg, p, model_fp),
            "windows": digest_windows(windows),
            "eval_windows": digest_windows(evals),
            "protected": protector.digest(p, region),
        }
    )
    return region, d


def _finished(pj: str, d: str) -> dict | None:
    """The point's saved record, when it was made from the same inputs (digest ``d``)."""
    if os.path.isfile(pj):
        with open(pj, encoding="utf-8") as f:
            rec = json.load(f)
        if rec.get("digest") == d:
            return rec
    return None


def _clear_stale_run(run_dir: str, stamp: str, d: str) -> None:
    """A run of other inputs is never resumed: remove it, only if this tool made it."""
    if os.path.isdir(run_dir) and (not os.path.isfile(stamp) or open(stamp).read() != d):
        if not safety.remove_owned(run_dir, RUN_OWNER):
            raise UserError(
                f"{run_dir} holds a run of other inputs that jaxregion did not "
                "mark as its own; move it away or use another output directory"
            )


def _point_train_config(cfg: ForgettingConfig, p: Point) -> TrainConfig:
    """The training run of ``p``: its seed, and its baseline's replay or EWC strength."""
    b = cfg.baselines
    return cfg.train.train_config(
        seed=p.seed,
        freeze_norms=cfg.freeze_norms,
        eval_start=False,
        replay_ratio=b.replay_ratio if p.baseline == "replay" else 0.0,
        ewc_lambda=b.ewc_lambda if p.baseline == "ewc" else 0.0,
    )


def _record(
    d: str, p: Point, frozen: int, total: int, batch_size: int, res: TrainResult, t0: float
) -> dict:
    """A finished point's record: the eval curve, final perplexities and training loss."""
    curve = [
        {"step": r["step"], "samples": r["step"] * batch_size, "eval_ppl": r["eval_ppl"]}
        for r in res.metrics
        if r.get("eval_ppl")
    ]
    return {
        "digest": d,
        "point": dataclasses.asdict(p),
        "setting": p.setting,
        "key": p.key,
        "frozen": frozen,
        "total": total,
        "final": curve[-1]["eval_ppl"],
        "curve": curve,
        "train_loss": next((r["loss"] for r in reversed(res.metrics) if r.get("loss")), None),
        "seconds": time.time() - t0,
    }


def run_point(
    cfg: ForgettingConfig,
    p: Point,
    session: runtime.Session,
    windows: dict[str, np.ndarray],
    evals: dict[str, np.ndarray],
    protector: Protector,
    out: str,
    progress: bool,
    log: Callable[[str], None],
) -> tuple[dict | None, int | None]:
    """Train one point (or reuse its finished record): ``(record, None)``, or
    ``(None, signal number)`` when a signal interrupted it (its checkpoint is saved)."""
    region, d = _region_and_digest(cfg, p, session, windows, evals, protector)
    pj = os.path.join(out, "points", p.key + ".json")
    rec = _finished(pj, d)
    if rec is not None:
        return rec, None
    run_dir = os.path.join(out, "runs", p.key)
    stamp = os.path.join(run_dir, "digest.txt")
    _clear_stale_run(run_dir, stamp, d)
    mask = freeze_mask_for(session.params, region, cfg.freeze_norms, session.config)
    frozen = 0 if mask is None else sum(int(np.asarray(m).sum()) for m in T.flatten(mask).values())
    total = sum(int(np.prod(x.shape)) for x in T.flatten(session.params).values())
    tc = _point_train_config(cfg, p)
    info = {"command": "forgetting", "point": dataclasses.asdict(p), "target": cfg.target}
    safety.claim(run_dir, RUN_OWNER)
    prepare_ckpt_dir(run_dir, session.path, session.config, info)
    write_text(stamp, d)
    log(f"{p.setting} seed {p.seed}: {frozen} of {total} elements frozen")
    t0 = time.time()
    res = train(
        session.params,
        session.config,
        windows,
        tc,
        run_dir,
        region=region,
        evals=evals,
        mesh=session.mesh,
        progress=progress,
        run_info=info,
        model_id=weights_digest(session.path),
        replay=protector.replay() if p.baseline == "replay" else None,
        ewc=protector.ewc() if p.baseline == "ewc" else None,
    )
    if res.interrupted:
        return None, res.signum
    rec = _record(d, p, frozen, total, tc.batch_size, res, t0)
    write_json(pj, rec)
    shutil.rmtree(run_dir)  # its checkpoints are no longer needed
    return rec, None


def run(
    cfg: ForgettingConfig,
    out_dir: str | None = None,
    progress: bool = True,
    log: Callable[[str], None] = _log,
    mesh: jax.sharding.Mesh | None = None,
    source: str = "config",
) -> SweepResult:
    """Run every point of the sweep (reusing finished ones) on ``mesh`` (None: every device
    on ``data``) and render the frontier. ``source`` (the config file) is named in errors."""
    check_config(cfg, source)
    out = out_dir or cfg.out_dir
    check_writable(out)
    model = cfg.model or bootstrap_model(cfg.pretrain, out, progress, mesh)
    if model is None:
        return SweepResult(out, None, interrupted=True)
    session = runtime.load_session(model, mesh=mesh)
    t = cfg.train
    t.train_config().validate()
    windows = runtime.load_corpora(
        [f"{cfg.target}={cfg.target_train}"], session, t.seq_len, t.train_max_seqs
    )
    evals = runtime.load_corpora(
        [f"{k}={v}" for k, v in cfg.evals.items()], session, t.seq_len, t.eval_max_seqs
    )
    base = base_eval(session, evals, cfg, out)
    protector = Protector(cfg, session, out, log)
    others = [lang for lang in cfg.evals if lang != cfg.target]
    records = []
    pts = points(cfg)
    for i, p in enumerate(pts):
        log(f"point {i + 1}/{len(pts)}: {p.setting} seed {p.seed}")
        rec, signum = run_point(cfg, p, session, windows, evals, protector, out, progress, log)
        if rec is None:
            log(
                f"interrupted during {p.setting} seed {p.seed}; run the same command again "
                "to resume"
            )
            return SweepResult(out, None, interrupted=True, signum=signum)
        rec["metrics"] = RS.point_metrics(rec["final"], base, cfg.target, others)
        records.append(rec)
    caption = (
        f"model {model}; continued pre-training on {cfg.target} ({cfg.target_train}), "
        f"{t.steps} steps x {t.batch_size} windows of {t.seq_len} tokens, lr {t.lr:g} "
        f"({t.schedule}, warmup {t.warmup}), weight decay {t.weight_decay:g}; "
        f"protected: {', '.join(cfg.source_langs())}; eval on {', '.join(cfg.evals)} "
        f"({t.eval_max_seqs or 'all'} windows each)"
    )
    cfg_json = json.loads(json.dumps(dataclasses.asdict(cfg), default=str))
    results = RS.build(
        cfg.name, model, cfg.target, others, base, records, cfg.x_axis, caption, cfg_json
    )
    results["table"] = RS.render(out, results)
    return SweepResult(out, results)
