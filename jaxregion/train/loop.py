"""The training loop: jit-compiled AdamW step over a mesh, freezing, checkpoints, metrics.

One function, :func:`train`, serves ``jaxregion train``, ``pretrain`` and ``forgetting``.
Master weights are float32; with ``dtype="bfloat16"`` the loss casts them to bf16 for the
forward/backward pass (gradients come back in float32 through the cast).
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxregion import models, sharding
from jaxregion.errors import UserError
from jaxregion.freeze import adamw_with_freeze, make_freeze_mask
from jaxregion.models import ModelConfig, abstract_params, loss_fn
from jaxregion.regions.base import mask_of
from jaxregion.train import identity
from jaxregion.train.checkpoint import Checkpointer, restore_latest, step_dirs
from jaxregion.train.sampler import Sampler

SCHEDULES = ("cosine", "constant", "linear")


@dataclass(frozen=True)
class TrainConfig:
    steps: int
    batch_size: int = 8
    seq_len: int = 128
    lr: float = 3e-4
    warmup: int = 0
    schedule: str = "cosine"
    weight_decay: float = 0.1
    clip: float = 1.0
    grad_accum: int = 1
    dtype: str = "float32"
    b1: float = 0.9
    b2: float = 0.95
    save_every: int = 100
    keep: int = 3
    eval_every: int = 0
    eval_batch_size: int = 8
    seed: int = 0
    freeze_norms: bool = False
    min_lr_ratio: float = 0.1  # cosine decays to lr * this

    def validate(self) -> None:
        if self.steps <= 0:
            raise UserError(f"--steps {self.steps}: must be a positive number of steps")
        if not (self.lr > 0) or math.isinf(self.lr):
            raise UserError(f"--lr {self.lr}: must be a positive, finite learning rate")
        if self.batch_size <= 0:
            raise UserError(f"--batch-size {self.batch_size}: must be positive")
        if self.grad_accum <= 0 or self.batch_size % self.grad_accum:
            raise UserError(f"--grad-accum {self.grad_accum}: must be positive and divide "
                            f"--batch-size {self.batch_size}")
        if self.warmup < 0:
            raise UserError(f"--warmup {self.warmup}: must be >= 0")
        if self.schedule not in SCHEDULES:
            raise UserError(f"--schedule {self.schedule!r}: use one of {', '.join(SCHEDULES)}")
        if self.weight_decay < 0:
            raise UserError(f"--weight-decay {self.weight_decay}: must be >= 0")
        if self.save_every <= 0:
            raise UserError(f"--save-every {self.save_every}: must be positive")
        if self.keep <= 0:
            raise UserError(f"--keep {self.keep}: must be positive")
        if self.eval_every < 0:
            raise UserError(f"--eval-every {self.eval_every}: must be >= 0")
        if self.dtype not in ("float32", "bfloat16"):
            raise UserError(f"--dtype {self.dtype!r}: use float32 or bfloat16")


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
                    frozen: bool):
    """``step(params, opt_state, batch, mask) -> (params, opt_state, loss)``, jit-compiled.

    Params, mask and optimizer state are sharded by the mesh's rules (FSDP / tensor
    parallel), the batch over the batch axes. The freeze mask is an argument (not a baked-in
    constant), so one compiled step serves every region of a model. With ``frozen=False`` the
    mask argument is ignored (None)."""
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

    def step(params, opt_state, batch, mask):
        loss, grads = grads_of(params, batch)
        tx = make_optimizer(cfg, mask if frozen else None)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return jax.jit(step, in_shardings=(psh, osh, bsh, psh if frozen else None),
                   out_shardings=(psh, osh, rep), donate_argnums=(0, 1))


def freeze_mask_for(params: Any, region: Any, include_norms: bool,
                    model_cfg: ModelConfig | None = None) -> Any:
    """The bool tree to freeze (norms trainable unless ``include_norms``; norms per the
    family table of ``model_cfg``, or read off the tables by name), or None."""
    if region is None:
        return None
    roles = models.roles(model_cfg) if model_cfg is not None else None
    return make_freeze_mask(mask_of(region), include_norms=include_norms, roles=roles)


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
        if self.signum is not None:  # second signal: stop now
            raise KeyboardInterrupt
        self.signum = signum
        print(f"\njaxregion: got {signal.Signals(signum).name}; saving a checkpoint after this "
              "step, then stopping", file=sys.stderr)

    def __exit__(self, *exc) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)


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
    from jaxregion.io import write_text

    if jax.process_index() == 0:  # multi-host: one writer
        write_text(path, "".join(json.dumps(r, allow_nan=False) + "\n" for r in records))


def _eval(params, model_cfg, evals, cfg: TrainConfig, mesh) -> dict[str, float]:
    from jaxregion.evaluate import evaluate

    p = _cast(params, cfg.dtype)
    return {lang: evaluate(p, model_cfg, w, cfg.eval_batch_size, mesh).perplexity
            for lang, w in evals.items()}


def train(params: Any, model_cfg: ModelConfig, train_windows: dict[str, np.ndarray],
          cfg: TrainConfig, ckpt_dir: str, *, region: Any = None,
          evals: dict[str, np.ndarray] | None = None, mesh: jax.sharding.Mesh | None = None,
          progress: bool = True, run_info: dict | None = None, model_id: str | None = None,
          restart: bool = False) -> TrainResult:
    """Train ``params`` (float32, HF-named) for ``cfg.steps`` steps, resuming from ``ckpt_dir``.

    ``region``: a Region or bool tree of elements to freeze. ``evals``: ``{lang: windows}``
    evaluated every ``cfg.eval_every`` steps (and at step 0 and the end) into metrics.jsonl.
    Returns the final params (or those at the interrupting signal).

    The run's identity (``model_id``, default a digest of ``params``; data; region; optimizer
    settings; steps) must match the one recorded in ``ckpt_dir`` to resume (see
    :mod:`jaxregion.train.identity`); ``restart`` sets a different old run aside first."""
    from tqdm.auto import tqdm

    cfg.validate()
    mesh = mesh or sharding.make_mesh()
    mult = sharding.batch_multiple(mesh)
    if (cfg.batch_size // cfg.grad_accum) % mult:
        raise UserError(f"--batch-size {cfg.batch_size} / --grad-accum {cfg.grad_accum} must be "
                        f"a multiple of the {mult} devices on the batch axes")
    evals = evals or {}
    sampler = Sampler(train_windows, cfg.batch_size, cfg.seed)
    mask = freeze_mask_for(params, region, cfg.freeze_norms, model_cfg)
    tx = make_optimizer(cfg, mask)
    psh, osh = state_shardings(model_cfg, cfg, mesh, mask is not None)
    # a copy: the step donates its inputs, and the caller's params must survive
    params = jax.jit(lambda p: jax.tree.map(lambda x: jnp.array(x, jnp.float32), p),
                     out_shardings=psh)(params)
    opt_state = jax.jit(tx.init, out_shardings=osh)(params)
    mask_dev = jax.device_put(mask, psh) if mask is not None else None

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
        for key in ("seed", "batch_size", "langs", "windows"):
            if key in have and have[key] != want[key]:
                raise UserError(f"{ckpt_dir}: its checkpoint was made with data {key}="
                                f"{have[key]!r}, this run has {want[key]!r}; use the same "
                                "settings to resume, or a new --ckpt-dir")
        print(f"jaxregion: resuming from step {start} in {ckpt_dir}", file=sys.stderr)
    metrics_path = os.path.join(ckpt_dir, "metrics.jsonl")
    records = _read_metrics(metrics_path, start)
    if resumed is not None or records:
        _write_metrics(metrics_path, records)
    rng = jax.random.PRNGKey(cfg.seed)

    step_fn = make_train_step(model_cfg, cfg, mesh, frozen=mask is not None)
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

    if start == 0 and evals and not records:
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
                params, opt_state, loss = step_fn(params, opt_state, batch, mask_dev)
                step += 1
                if not math.isfinite(float(loss)):
                    raise UserError(f"the training loss is {float(loss)} at step {step}: the run "
                                    "diverged (lower --lr, check the data and config.json); the "
                                    f"last checkpoint in {ckpt_dir} is kept")
                loss_acc += float(loss)
                n_acc += 1
                bar.update(1)
                last = step == cfg.steps
                log_now = (cfg.eval_every and step % cfg.eval_every == 0) or last or \
                    step % cfg.save_every == 0 or stop.signum is not None
                if log_now:
                    dt = time.perf_counter() - t_last
                    rec = {"step": step, "loss": loss_acc / n_acc, "lr": float(sched(step - 1)),
                           "tokens_per_s": tokens_per_step * n_acc / max(dt, 1e-9)}
                    if evals and ((cfg.eval_every and step % cfg.eval_every == 0) or last):
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
