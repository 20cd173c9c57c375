"""The training loop: jit-compiled AdamW step over a mesh, freezing, checkpoints, metrics.

One function, :func:`train`, serves ``jaxregion train``, ``pretrain`` and ``forgetting``.
Master weights are float32; with ``dtype="bfloat16"`` the loss casts them to bf16 for the
forward/backward pass (gradients come back in float32 through the cast).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import signal
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from jaxregion import models
from jaxregion.configs import TrainConfig
from jaxregion.errors import UserError
from jaxregion.evaluate import evaluate
from jaxregion.freeze import adamw_with_freeze, make_freeze_mask
from jaxregion.io.atomic import write_text
from jaxregion.models import ModelConfig, abstract_params, loss_fn
from jaxregion.parallel import sharding
from jaxregion.regions.region import mask_of
from jaxregion.train import identity
from jaxregion.train.checkpoint import Checkpointer, restore_latest, step_dirs
from jaxregion.train.penalties import EWC, ewc_penalty
from jaxregion.train.sampler import ReplaySampler, Sampler

logger = logging.getLogger(__name__)


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
    return adamw_with_freeze(
        lr_schedule(cfg),
        b1=cfg.b1,
        b2=cfg.b2,
        weight_decay=cfg.weight_decay,
        clip=cfg.clip or None,
        mask=mask,
    )


def _cast(params: Any, dtype: str) -> Any:
    if dtype == "float32":
        return params
    dt = jnp.dtype(dtype)
    return jax.tree.map(lambda p: p.astype(dt), params)


def state_shardings(
    model_cfg: ModelConfig, cfg: TrainConfig, mesh: jax.sharding.Mesh, frozen: bool
) -> tuple[Any, Any]:
    """Shardings of (params and freeze mask, optimizer state): the mesh's param rules, with
    every Adam moment sharded like its parameter."""
    psh = sharding.param_shardings(model_cfg, mesh)
    abstract = sharding.abstract_with(abstract_params(model_cfg), psh)
    tx = make_optimizer(cfg, abstract if frozen else None)
    osh = sharding.shardings_like(jax.eval_shape(tx.init, abstract), psh, mesh)
    return psh, osh


def make_train_step(
    model_cfg: ModelConfig,
    cfg: TrainConfig,
    mesh: jax.sharding.Mesh,
    frozen: bool,
    ewc: bool = False,
):
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
            return loss_fn(_cast(p, cfg.dtype), toks, model_cfg, remat=cfg.remat)

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
        return jax.jit(
            step,
            in_shardings=(psh, osh, bsh, msh, EWC(psh, psh)),
            out_shardings=(psh, osh, rep),
            donate_argnums=(0, 1),
        )
    return jax.jit(
        lambda p, o, b, m: step(p, o, b, m, None),
        in_shardings=(psh, osh, bsh, msh),
        out_shardings=(psh, osh, rep),
        donate_argnums=(0, 1),
    )


def step_key(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` with the fields the compiled step does not depend on reset, so runs that differ
    only in data order, evaluation or checkpointing share one compilation."""
    return replace(
        cfg,
        seed=0,
        save_every=1,
        keep=1,
        eval_every=0,
        eval_at=(),
        eval_start=True,
        replay_ratio=0.0,
        eval_batch_size=1,
        log_every=0,
    )


@functools.lru_cache(maxsize=8)
def _cached_step(
    model_cfg: ModelConfig, cfg: TrainConfig, mesh: jax.sharding.Mesh, frozen: bool, ewc: bool
):
    return make_train_step(model_cfg, cfg, mesh, frozen, ewc)


def freeze_mask_for(
    params: Any, region: Any, include_norms: bool, model_cfg: ModelConfig | None = None
) -> Any:
    """The bool tree to freeze (norms trainable unless ``include_norms``; norms per the
    family table of ``model_cfg``, or read off the tables by name), or None."""
    if region is None:
        return None
    roles = models.roles(model_cfg) if model_cfg is not None else None
    return make_freeze_mask(
        mask_of(region), include_norms=include_norms, roles=roles, params=params
    )


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
        logger.warning(
            "\njaxregion: got %s; saving a checkpoint after this step, then stopping",
            signal.Signals(signum).name,
        )

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
    return {
        lang: evaluate(p, model_cfg, w, cfg.eval_batch_size, mesh).perplexity
        for lang, w in evals.items()
    }


@dataclass
class _Setup:
    """What setup and resume hand the loop: device state, data order and the step."""

    params: Any
    opt_state: Any
    sampler: Sampler | ReplaySampler
    mask: Any  # the freeze mask on the devices, or None
    ewc: EWC | None  # anchor and Fisher on the devices, or None
    step_fn: Any
    start: int
    resumed: int | None


def _setup(
    params: Any,
    model_cfg: ModelConfig,
    train_windows: dict[str, np.ndarray],
    cfg: TrainConfig,
    ckpt_dir: str,
    mesh: jax.sharding.Mesh,
    region: Any,
    model_id: str | None,
    restart: bool,
    replay: dict[str, np.ndarray] | None,
    ewc: EWC | None,
) -> _Setup:
    """Check the settings, place params and optimizer state on the mesh, check the run's
    identity against ``ckpt_dir`` and resume from its latest checkpoint."""
    cfg.validate()
    mult = sharding.batch_multiple(mesh)
    if (cfg.batch_size // cfg.grad_accum) % mult:
        raise UserError(
            f"--batch-size {cfg.batch_size} / --grad-accum {cfg.grad_accum} must be "
            f"a multiple of the {mult} devices on the batch axes"
        )
    if cfg.ewc_lambda > 0 and ewc is None:
        raise UserError(
            f"--ewc-lambda {cfg.ewc_lambda} needs a Fisher diagonal (fisher "
            "importance files of the languages to protect)"
        )
    use_ewc = ewc is not None and cfg.ewc_lambda > 0
    if cfg.replay_ratio > 0:
        sampler: Sampler | ReplaySampler = ReplaySampler(
            train_windows, replay or {}, cfg.batch_size, cfg.replay_ratio, cfg.seed
        )
    else:
        sampler = Sampler(train_windows, cfg.batch_size, cfg.seed)
    mask = freeze_mask_for(params, region, cfg.freeze_norms, model_cfg)
    tx = make_optimizer(cfg, mask)
    psh, osh = state_shardings(model_cfg, cfg, mesh, mask is not None)
    # a copy: the step donates its inputs, and the caller's params must survive
    params = jax.jit(
        lambda p: jax.tree.map(lambda x: jnp.array(x, jnp.float32), p), out_shardings=psh
    )(params)
    opt_state = jax.jit(tx.init, out_shardings=osh)(params)
    mask_dev = jax.device_put(mask, psh) if mask is not None else None
    ewc_dev = jax.device_put(EWC(*ewc), EWC(psh, psh)) if use_ewc and ewc else None

    freeze_id = (
        None
        if mask is None
        else identity.digest_tree(
            jax.tree.map(lambda m: jnp.packbits(jnp.asarray(m, bool).reshape(-1)), mask)
        )
    )
    ident = identity.run_identity(
        cfg, train_windows, model_id or identity.digest_tree(params), freeze_id
    )
    identity.check(ckpt_dir, ident, step_dirs(ckpt_dir), restart=restart)
    step_fn = _cached_step(model_cfg, step_key(cfg), mesh, mask is not None, use_ewc)
    run = _Setup(params, opt_state, sampler, mask_dev, ewc_dev, step_fn, 0, None)
    _resume(run, ckpt_dir, cfg, psh, osh)
    return run


def _resume(run: _Setup, ckpt_dir: str, cfg: TrainConfig, psh: Any, osh: Any) -> None:
    """Restore the latest checkpoint of ``ckpt_dir`` into ``run`` (if any), after checking
    that it was made with this run's data order."""
    got = restore_latest(
        ckpt_dir,
        sharding.abstract_with(run.params, psh),
        sharding.abstract_with(run.opt_state, osh),
        keep=cfg.keep,
    )
    if got is None:
        return
    want, have = run.sampler.state(got.step), got.meta.get("data", {})
    for key in ("seed", "batch_size", "langs", "windows", "replay"):
        if have.get(key) != want.get(key) and (key in have or key == "replay"):
            raise UserError(
                f"{ckpt_dir}: its checkpoint was made with data {key}="
                f"{have[key]!r}, this run has {want[key]!r}; use the same "
                "settings to resume, or a new --ckpt-dir"
            )
    run.params, run.opt_state, run.start, run.resumed = (
        got.params,
        got.opt_state,
        got.step,
        got.step,
    )
    logger.info("jaxregion: resuming from step %d in %s", got.step, ckpt_dir)


@jax.jit
def _accumulate(
    acc: tuple[jax.Array, jax.Array, jax.Array], loss: jax.Array, step: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(loss sum, first non-finite step or -1, its loss) after one more step, on the device."""
    total, bad, bad_loss = acc
    first = (bad < 0) & ~jnp.isfinite(loss)
    return total + loss, jnp.where(first, step, bad), jnp.where(first, loss, bad_loss)


class _Log:
    """metrics.jsonl (written by process 0), the progress bar, and the loss accumulated on
    the devices since the last record: the host reads it only when it writes a record, so
    the steps in between run without a sync."""

    def __init__(self, ckpt_dir: str, run: _Setup, cfg: TrainConfig, progress: bool) -> None:
        self.path = os.path.join(ckpt_dir, "metrics.jsonl")
        self.ckpt_dir = ckpt_dir
        self.records = _read_metrics(self.path, run.start)
        if run.resumed is not None or self.records:
            _write_metrics(self.path, self.records)
        self.tokens_per_step = cfg.batch_size * (run.sampler.windows[0].shape[1] - 1)
        self.bar = tqdm(
            total=cfg.steps,
            initial=run.start,
            desc="train",
            unit="step",
            disable=not progress or None,
            dynamic_ncols=True,
        )
        self._reset()

    def _reset(self) -> None:
        self.acc = (
            jnp.zeros((), jnp.float32),
            jnp.full((), -1, jnp.int32),
            jnp.zeros((), jnp.float32),
        )
        self.n, self.t_last, self.total, self.dt = 0, time.perf_counter(), 0.0, 0.0

    def write(self, rec: dict) -> None:
        self.records.append(rec)
        if jax.process_index() == 0:  # multi-host: one writer
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(rec, allow_nan=False) + "\n")

    def step(self, step: int, loss: jax.Array) -> None:
        self.acc = _accumulate(self.acc, loss, jnp.asarray(step, jnp.int32))
        self.n += 1
        self.bar.update(1)

    def check(self) -> None:
        """Read the loss summed since the last record (one host sync) and the steps' time; a
        non-finite loss is an error, raised before anything is evaluated or saved."""
        total, bad, bad_loss = (x.item() for x in jax.device_get(self.acc))
        self.total, self.dt = total, time.perf_counter() - self.t_last
        if bad >= 0:
            raise UserError(
                f"the training loss is {bad_loss} at step {bad}: the run "
                "diverged (lower --lr, check the data and config.json); the "
                f"last checkpoint in {self.ckpt_dir} is kept"
            )

    def record(self, step: int, lr: float, eval_ppl: Any = None) -> None:
        """A metrics line: the mean loss since the last record, read by :meth:`check`."""
        rec = {
            "step": step,
            "loss": self.total / self.n,
            "lr": lr,
            "tokens_per_s": self.tokens_per_step * self.n / max(self.dt, 1e-9),
        }
        if eval_ppl is not None:
            rec["eval_ppl"] = eval_ppl
        self.write(rec)
        self.bar.set_postfix(loss=f"{rec['loss']:.3f}", tok_s=f"{rec['tokens_per_s']:.0f}")
        self._reset()


def train(
    params: Any,
    model_cfg: ModelConfig,
    train_windows: dict[str, np.ndarray],
    cfg: TrainConfig,
    ckpt_dir: str,
    *,
    region: Any = None,
    evals: dict[str, np.ndarray] | None = None,
    mesh: jax.sharding.Mesh | None = None,
    progress: bool = True,
    run_info: dict | None = None,
    model_id: str | None = None,
    restart: bool = False,
    replay: dict[str, np.ndarray] | None = None,
    ewc: EWC | None = None,
) -> TrainResult:
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
    mesh = mesh or sharding.make_mesh()
    run = _setup(
        params,
        model_cfg,
        train_windows,
        cfg,
        ckpt_dir,
        mesh,
        region,
        model_id,
        restart,
        replay,
        ewc,
    )
    loop = _Loop(run, model_cfg, cfg, evals or {}, mesh, ckpt_dir, progress, run_info or {})
    try:
        loop.eval_at_start()
        step, signum = loop.run()
    finally:
        loop.close()
    return TrainResult(run.params, step, signum is not None, run.resumed, loop.log.records, signum)


class _Loop:
    """:func:`train`'s loop: one step at a time; at the log/eval/save points one host sync
    (:meth:`_Log.check`), then the evaluation, the metrics line and the checkpoint."""

    def __init__(
        self,
        run: _Setup,
        model_cfg: ModelConfig,
        cfg: TrainConfig,
        evals: dict[str, np.ndarray],
        mesh: jax.sharding.Mesh,
        ckpt_dir: str,
        progress: bool,
        run_info: dict,
    ):
        self.run_, self.model_cfg, self.cfg, self.evals, self.mesh = (
            run,
            model_cfg,
            cfg,
            evals,
            mesh,
        )
        self.ckpt_dir, self.run_info = ckpt_dir, run_info
        self.rng = jax.random.PRNGKey(cfg.seed)
        self.ckpt = Checkpointer(ckpt_dir, keep=cfg.keep)
        self.sched = lr_schedule(cfg)
        self.log = _Log(ckpt_dir, run, cfg, progress)

    def meta(self, step: int) -> dict:
        """What a checkpoint records beside the params: data position, rng, config, run."""
        key = jax.random.fold_in(self.rng, step)
        return {
            "step": step,
            "data": self.run_.sampler.state(step),
            "rng": np.asarray(jax.random.key_data(key)).tolist(),
            "config": asdict(self.cfg),
            "run": self.run_info,
        }

    def _eval(self) -> Any:
        return _eval(self.run_.params, self.model_cfg, self.evals, self.cfg, self.mesh)

    def eval_at_start(self) -> None:
        """The step-0 evaluation of a fresh run (unless ``cfg.eval_start`` is off)."""
        if self.run_.start == 0 and self.evals and not self.log.records and self.cfg.eval_start:
            rec = {"step": 0, "loss": None, "lr": float(self.sched(0))}
            self.log.write({**rec, "eval_ppl": self._eval(), "tokens_per_s": None})

    def run(self) -> tuple[int, int | None]:
        """Steps until ``cfg.steps`` or a signal: ``(last step, the signal or None)``."""
        r, cfg, step = self.run_, self.cfg, self.run_.start
        with _Stop() as stop:
            while step < cfg.steps:
                batch = sharding.put_batch(r.sampler.batch(step), self.mesh)
                extra = (r.ewc,) if r.ewc is not None else ()
                r.params, r.opt_state, loss = r.step_fn(
                    r.params, r.opt_state, batch, r.mask, *extra
                )
                step += 1
                self.log.step(step, loss)
                stopping = stop.signum is not None
                self._after_step(step, stopping)
                if stopping and step < cfg.steps:
                    self._stopped(step, stop.signum)
                    return step, stop.signum
        return step, None

    def _after_step(self, step: int, stopping: bool) -> None:
        cfg = self.cfg
        save = step % cfg.save_every == 0 or step == cfg.steps or stopping
        logged = cfg.log_every and step % cfg.log_every == 0
        if cfg.eval_now(step) or step % cfg.save_every == 0 or stopping or logged:
            self.log.check()  # before anything is evaluated or saved
            ppl = self._eval() if self.evals and cfg.eval_now(step) else None
            self.log.record(step, float(self.sched(step - 1)), ppl)
        if save:
            self.ckpt.save(step, self.run_.params, self.run_.opt_state, self.meta(step))

    def _stopped(self, step: int, signum: int) -> None:
        self.ckpt.wait()
        logger.warning(
            "jaxregion: stopped at step %d by %s; checkpoint saved in %s; run the same "
            "command again to resume",
            step,
            signal.Signals(signum).name,
            self.ckpt_dir,
        )

    def close(self) -> None:
        self.log.bar.close()
        self.ckpt.close()
