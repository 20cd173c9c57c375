"""The training loop: jit-compiled AdamW step over a mesh, freezing, checkpoints, metrics.

One function, :func:`train`, serves ``jaxregion train``, ``pretrain`` and ``forgetting``.
Master weights are float32; with ``dtype="bfloat16"`` the loss casts them to bf16 for the
forward/backward pass (gradients come back in float32 through the cast).
"""

from __future__ import annotations

import functools
import json
import math
import os
import signal
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from jaxregion import models, sharding
from jaxregion.configs import TrainConfig
from jaxregion.errors import UserError
from jaxregion.evaluate import evaluate
from jaxregion.freeze import adamw_with_freeze, make_freeze_mask
from jaxregion.io import write_text
from jaxregion.models import ModelConfig, abstract_params, loss_fn
from jaxregion.regions.region import mask_of
from jaxregion.train import identity
from jaxregion.train.checkpoint import Checkpointer, restore_latest, step_dirs
from jaxregion.train.penalties import EWC, ewc_penalty
from jaxregion.train.sampler import ReplaySampler, Sampler


def lr_schedule(cfg: TrainConfig) -> optax.Schedule:
    """Linear warmup from 0, then cosine (to ``lr * min_lr_ratio``), constant or linear (to 0)."""
    w = min(cfg.warmup, cfg.steps)
    rest = max(cfg.steps - w, 1)
    if cfg.schedule == "cosine":
        after = optax.cosine_decay_schedule(cfg.lr, rest, alpha=cfg.min_lr_ratio)
    elif cfg.schedule == "linear":
        after = optax.linear_schedule(cfg.lr, 0.0, rest)
    else:
        after = optax.constant_schedule(cfg.lr)
    if w == 0:
        return after
    return optax.join_schedules([optax.linear_schedule(0.0, cfg.lr, w), after], [w])


def make_optimizer(cfg: TrainConfig, mask: Any = None) -> optax.GradientTransformation:
    """AdamW (betas from cfg) + global-norm clip, with ``mask``'s elements frozen."""
    return adamw_with_freeze(lr_schedule(cfg), b1=cfg.b1, b2=cfg.b2,
                             weight_decay=cfg.weight_decay, clip=cfg.clip or None, mask=mask)


def _cast(params: Any, dtype: str) -> Any:
    if dtype == "float32":
        return params
    dt = jnp.dtype(dtype)
    return jax.tree.map(lambda p: p.astype(dt), params)


def state_shardings(model_cfg: ModelConfig, cfg: TrainConfig, mesh: jax.sharding.Mesh,
                    frozen: bool) -> tuple[Any, Any]:
    """Shardings of (params and freeze mask, optimizer state): the mesh's param rules, with
    every Adam moment sharded like its parameter."""
    psh = sharding.param_shardings(model_cfg, mesh)
    abstract = sharding.abstract_with(abstract_params(model_cfg), psh)
    tx = make_optimizer(cfg, abstract if frozen else None)
    osh = sharding.shardings_like(jax.eval_shape(tx.init, abstract), psh, mesh)
    return psh, osh


def make_train_step(model_cfg: ModelConfig, cfg: TrainConfig, mesh: jax.sharding.Mesh,
                    frozen: bool, ewc: bool = False):
    """``step(params, opt_state, batch, mask[, ewc]) -> (params, opt_state, loss)``, jitted.

    Params, mask and optimizer state are sharded by the mesh's rules (FSDP / tensor
    parallel), the batch over the batch axes. The freeze mask is an argument (not a baked-in
    constant), so one compiled step serves every region of a model. With ``frozen=False`` the
    mask argument is ignored (None). With ``ewc``, the :class:`EWC` argument (sharded like
    the params) adds ``cfg.ewc_lambda``'s penalty to the loss; the returned loss is the LM
    loss alone."""
    rep = sharding.replicated(mesh)
    psh, osh = state_shardings(model_cfg, cfg, mesh, frozen)
    bsh = sharding.batch_sharding(mesh)
    k = cfg.grad_accum

    def grads_of(params, batch):
        def lf(p, toks):
            return loss_fn(_cast(p, cfg.dtype), toks, model_cfg)

        if k == 1:
            return jax.value_and_grad(lf)(params, batch)
        micro = batch.reshape(k, batch.shape[0] // k, batch.shape[1])

        def body(acc, toks):
            loss, g = jax.value_and_grad(lf)(params, toks)
            return (acc[0] + loss, jax.tree.map(jnp.add, acc[1], g)), None

        zeros = jax.tree.map(jnp.zeros_like, params)
        (loss, g), _ = jax.lax.scan(body, (jnp.zeros((), jnp.float32), zeros), micro)
        return loss / k, jax.tree.map(lambda x: x / k, g)

    def step(params, opt_state, batch, mask, ewc_state):
        loss, grads = grads_of(params, batch)
        if ewc:
            pen = jax.grad(ewc_penalty)(params, ewc_state, cfg.ewc_lambda)
            grads = jax.tree.map(jnp.add, grads, pen)
        tx = make_optimizer(cfg, mask if frozen else None)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    msh = psh if frozen else None
    if ewc:
        return jax.jit(step, in_shardings=(psh, osh, bsh, msh, EWC(psh, psh)),
                       out_shardings=(psh, osh, rep), donate_argnums=(0, 1))
    return jax.jit(lambda p, o, b, m: step(p, o, b, m, None), in_shardings=(psh, osh, bsh, msh),
                   out_shardings=(psh, osh, rep), donate_argnums=(0, 1))


def step_key(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` with the fields the compiled step does not depend on reset, so runs that differ
    only in data order, evaluation or checkpointing share one compilation."""
    return replace(cfg, seed=0, save_every=1, keep=1, eval_every=0, eval_at=(),
                   eval_start=True, replay_ratio=0.0, eval_batch_size=1)


@functools.lru_cache(maxsize=8)
def _cached_step(model_cfg: ModelConfig, cfg: TrainConfig, mesh: jax.sharding.Mesh,
                 frozen: bool, ewc: bool):
    return make_train_step(model_cfg, cfg, mesh, frozen, ewc)


def freeze_mask_for(params: Any, region: Any, include_norms: bool,
                    model_cfg: ModelConfig | None = None) -> Any:
    """The bool tree to freeze (norms trainable unless ``include_norms``; norms per the
    family table of ``model_cfg``, or read off the tables by name), or None."""
    if region is None:
        return None
    roles = models.roles(model_cfg) if model_cfg is not None else None
    return make_freeze_mask(mask_of(region), include_norms=include_norms, roles=roles,
                            params=params)


@dataclass
class TrainResult:
    params: Any
    step: int
    interrupted: bool
    resumed_from: int | None
    metrics: list[dict] = field(default_factory=list)
    signum: int | None = None  # the signal that stopped the run


class _Stop:
    """SIGTERM/SIGINT set a flag; the loop saves after the current step and returns."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _Stop:
        for s in (signal.SIGTERM, signal.SIGINT):
            try:
                self._old[s] = signal.signal(s, self._handle)
            except ValueError:  # not the main thread: no handlers, no graceful stop
                pass
        return self

    def _handle(self, signum, frame) -> None:  # noqa: ARG002
        self.signum = signum
        self._restore()  # a second signal acts as it would without us: it stops the run now
        print(f"\njaxregion: got {signal.Signals(signum).name}; saving a checkpoint after this "
              "step, then stopping", file=sys.stderr)

    def _restore(self) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)
        self._old = {}

    def __exit__(self, *exc) -> None:
        self._restore()


def _read_metrics(path: str, upto: int) -> list[dict]:
    """Existing metric lines with step <= upto (lines of an interrupted run's future dropped)."""
    if not os.path.isfile(path):
        return []
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a crash
            if rec.get("step", 0) <= upto:
                out.append(rec)
    return out


def _write_metrics(path: str, records: list[dict]) -> None:
    if jax.process_index() == 0:  # multi-host: one writer
        write_text(path, "".join(json.dumps(r, allow_nan=False) + "\n" for r in records))


def _eval(params, model_cfg, evals, cfg: TrainConfig, mesh) -> dict[str, float]:
    p = _cast(params, cfg.dtype)
    return {lang: evaluate(p, model_cfg, w, cfg.eval_batch_size, mesh).perplexity
            for lang, w in evals.items()}


def train(params: Any, model_cfg: ModelConfig, train_windows: dict[str, np.ndarray],
          cfg: TrainConfig, ckpt_dir: str, *, region: Any = None,
          evals: dict[str, np.ndarray] | None = None, mesh: jax.sharding.Mesh | None = None,
          progress: bool = True, run_info: dict | None = None, model_id: str | None = None,
          restart: bool = False, replay: dict[str, np.ndarray] | None = None,
          ewc: EWC | None = None) -> TrainResult:
    """Train ``params`` (float32, HF-named) for ``cfg.steps`` steps, resuming from ``ckpt_dir``.

    ``region``: a Region or bool tree of elements to freeze. ``evals``: ``{lang: windows}``
    evaluated every ``cfg.eval_every`` steps, at ``cfg.eval_at`` steps, at the end (and at
    step 0 unless ``cfg.eval_start`` is off) into metrics.jsonl. ``replay``: source-language
    windows, ``cfg.replay_ratio`` of every batch (:class:`ReplaySampler`). ``ewc``: anchor
    and Fisher for the ``cfg.ewc_lambda`` penalty. Returns the final params (or those at the
    interrupting signal, with ``interrupted`` set).

    The run's identity (``model_id``, default a digest of ``params``; data; region; optimizer
    settings; steps) must match the one recorded in ``ckpt_dir`` to resume (see
    :mod:`jaxregion.train.identity`); ``restart`` sets a different old run aside first."""
    cfg.validate()
    mesh = mesh or sharding.make_mesh()
    mult = sharding.batch_multiple(mesh)
    if (cfg.batch_size // cfg.grad_accum) % mult:
        raise UserError(f"--batch-size {cfg.batch_size} / --grad-accum {cfg.grad_accum} must be "
                        f"a multiple of the {mult} devices on the batch axes")
    evals = evals or {}
    if cfg.ewc_lambda > 0 and ewc is None:
        raise UserError(f"--ewc-lambda {cfg.ewc_lambda} needs a Fisher diagonal (fisher "
                        "importance files of the languages to protect)")
    use_ewc = ewc is not None and cfg.ewc_lambda > 0
    if cfg.replay_ratio > 0:
        sampler: Sampler | ReplaySampler = ReplaySampler(
            train_windows, replay or {}, cfg.batch_size, cfg.replay_ratio, cfg.seed)
    else:
        sampler = Sampler(train_windows, cfg.batch_size, cfg.seed)
    mask = freeze_mask_for(params, region, cfg.freeze_norms, model_cfg)
    tx = make_optimizer(cfg, mask)
    psh, osh = state_shardings(model_cfg, cfg, mesh, mask is not None)
    # a copy: the step donates its inputs, and the caller's params must survive
    params = jax.jit(lambda p: jax.tree.map(lambda x: jnp.array(x, jnp.float32), p),
                     out_shardings=psh)(params)
    opt_state = jax.jit(tx.init, out_shardings=osh)(params)
    mask_dev = jax.device_put(mask, psh) if mask is not None else None
    ewc_dev = jax.device_put(EWC(*ewc), EWC(psh, psh)) if use_ewc else None

    # --- identity, then resume -------------------------------------------------------
    freeze_id = None if mask is None else identity.digest_tree(
        jax.tree.map(lambda m: jnp.packbits(jnp.asarray(m, bool).reshape(-1)), mask))
    ident = identity.run_identity(cfg, train_windows, model_id or identity.digest_tree(params),
                                  freeze_id)
    identity.check(ckpt_dir, ident, step_dirs(ckpt_dir), restart=restart)
    start, resumed = 0, None
    got = restore_latest(ckpt_dir, sharding.abstract_with(params, psh),
                         sharding.abstract_with(opt_state, osh), keep=cfg.keep)
    if got is not None:
        params, opt_state, start, resumed = got.params, got.opt_state, got.step, got.step
        want = sampler.state(start)
        have = got.meta.get("data", {})
        for key in ("seed", "batch_size", "langs", "windows", "replay"):
            if have.get(key) != want.get(key) and (key in have or key == "replay"):
                raise UserError(f"{ckpt_dir}: its checkpoint was made with data {key}="
                                f"{have[key]!r}, this run has {want[key]!r}; use the same "
                                "settings to resume, or a new --ckpt-dir")
        print(f"jaxregion: resuming from step {start} in {ckpt_dir}", file=sys.stderr)
    metrics_path = os.path.join(ckpt_dir, "metrics.jsonl")
    records = _read_metrics(metrics_path, start)
    if resumed is not None or records:
        _write_metrics(metrics_path, records)
    rng = jax.random.PRNGKey(cfg.seed)

    step_fn = _cached_step(model_cfg, step_key(cfg), mesh, mask is not None, use_ewc)
    ckpt = Checkpointer(ckpt_dir, keep=cfg.keep)
    sched = lr_schedule(cfg)
    tokens_per_step = cfg.batch_size * (sampler.windows[0].shape[1] - 1)

    def meta_for(step: int) -> dict:
        return {"step": step, "data": sampler.state(step),
                "rng": np.asarray(jax.random.key_data(jax.random.fold_in(rng, step))).tolist(),
                "config": asdict(cfg), "run": run_info or {}}

    def log(rec: dict) -> None:
        records.append(rec)
        if jax.process_index() == 0:  # multi-host: one writer
            with open(metrics_path, "a", encoding="utf-8") as f:
                f.write(json.dumps(rec, allow_nan=False) + "\n")

    if start == 0 and evals and not records and cfg.eval_start:
        log({"step": 0, "loss": None, "lr": float(sched(0)),
             "eval_ppl": _eval(params, model_cfg, evals, cfg, mesh), "tokens_per_s": None})

    interrupted, signum = False, None
    step = start
    t_last, loss_acc, n_acc = time.perf_counter(), 0.0, 0
    bar = tqdm(total=cfg.steps, initial=start, desc="train", unit="step",
               disable=not progress or None, dynamic_ncols=True)
    try:
        with _Stop() as stop:
            while step < cfg.steps:
                batch = sharding.put_batch(sampler.batch(step), mesh)
                extra = (ewc_dev,) if use_ewc else ()
                params, opt_state, loss = step_fn(params, opt_state, batch, mask_dev, *extra)
                step += 1
                if not math.isfinite(float(loss)):
                    raise UserError(f"the training loss is {float(loss)} at step {step}: the run "
                                    "diverged (lower --lr, check the data and config.json); the "
                                    f"last checkpoint in {ckpt_dir} is kept")
                loss_acc += float(loss)
                n_acc += 1
                bar.update(1)
                last = step == cfg.steps
                log_now = cfg.eval_now(step) or step % cfg.save_every == 0 or \
                    stop.signum is not None
                if log_now:
                    dt = time.perf_counter() - t_last
                    rec = {"step": step, "loss": loss_acc / n_acc, "lr": float(sched(step - 1)),
                           "tokens_per_s": tokens_per_step * n_acc / max(dt, 1e-9)}
                    if evals and cfg.eval_now(step):
                        rec["eval_ppl"] = _eval(params, model_cfg, evals, cfg, mesh)
                    log(rec)
                    bar.set_postfix(loss=f"{rec['loss']:.3f}",
                                    tok_s=f"{rec['tokens_per_s']:.0f}")
                    t_last, loss_acc, n_acc = time.perf_counter(), 0.0, 0
                if step % cfg.save_every == 0 or last or stop.signum is not None:
                    ckpt.save(step, params, opt_state, meta_for(step))
                if stop.signum is not None and not last:
                    interrupted, signum = True, stop.signum
                    ckpt.wait()
                    print(f"jaxregion: stopped at step {step} by "
                          f"{signal.Signals(stop.signum).name}; checkpoint saved in {ckpt_dir}; "
                          "run the same command again to resume", file=sys.stderr)
                    break
    finally:
        bar.close()
        ckpt.close()
    return TrainResult(params, step, interrupted, resumed, records, signum)
