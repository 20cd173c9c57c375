"""Per-parameter importance scores, one float32 tree per language, shaped like the params.

Estimators (``ESTIMATORS``), all float32, HF names and HF layout like the params:

``taylor`` (default, the paper's)
    ``θ ⊙ ∇θ L`` with ``L`` the mean next-token loss over *all* windows of the language,
    stored signed. The accumulator is the gradient of the *summed* NLL (each micro-batch
    weighted per window; the zero-padded final batch has weight 0), divided once by the
    number of predicted tokens and multiplied by ``θ`` once at the end. It therefore does
    not depend on the batch size or the device count (up to float32 summation order).
``taylor-abs``
    Mean over micro-batches of ``|θ ⊙ ∇θ L_b|``, ``L_b`` the mean loss of micro-batch ``b``.
    The mean is weighted by the windows in each micro-batch, so a short final batch counts
    for what it holds (with equal batches it is the plain mean). Depends on the batch size
    by definition (it is a mean of per-batch quantities).
``fisher``
    Mean over micro-batches of ``(θ ⊙ ∇θ L_b)²`` (empirical-Fisher diagonal times θ²),
    weighted like ``taylor-abs``.
``wanda``
    ``|W| ⊙ ‖X_j‖₂`` (Sun et al. 2023): ``‖X_j‖₂`` is the L2 norm of input feature ``j``
    over every token position of every window, collected from the model's intermediates
    in a forward-only pass. The family table gives each linear map inside the transformer
    layers its tap (the intermediate feeding it) and input-feature axis (1 for ``[out, in]``
    Linear weights, 0 for GPT-2's ``[in, out]`` Conv1D); **every other leaf (embeddings,
    lm_head, norms, biases) gets score 0**, so the tree still matches the params and the
    other estimators' files.
``magnitude``
    ``|θ|``; reads no data (``windows``/``tokens`` are 0).

The micro-batch step is one jitted function with the accumulator donated; the batch is
sharded over the mesh's batch axes and the accumulator takes the params' shardings. The
accumulation state (:class:`ImportanceState`) can be saved and restored with orbax
(:func:`save_partial`/:func:`load_partial`) so an interrupted run resumes and ends bitwise
equal to an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxregion import sharding as shd
from jaxregion import tree as T
from jaxregion.errors import UserError
from jaxregion.evaluate import padded_batches
from jaxregion.models import ModelConfig, intermediates, roles, weighted_nll_sum

PyTree = Any
ESTIMATORS = ("taylor", "taylor-abs", "fisher", "wanda", "magnitude")
DATA_FREE = ("magnitude",)
STATE_FORMAT = "jaxregion.importance-state.v1"


@dataclass
class ImportanceState:
    """Where an accumulation stands: resumable from here.

    ``acc``: float32 accumulator (params-shaped tree; for ``wanda`` a ``{tap: [in]}`` dict of
    summed squared activations). ``position``: windows consumed (always a multiple of
    ``batch_size`` except at the very end). ``batch_size``: the effective micro-batch (a
    multiple of the mesh's batch size) the accumulation was made with; resuming needs the
    same one for the same result.
    """

    estimator: str
    batch_size: int
    position: int
    acc: PyTree


@dataclass(frozen=True)
class ImportanceResult:
    scores: PyTree  # float32, params-shaped
    windows: int
    tokens: int  # predicted positions: windows * (seq_len - 1)
    estimator: str = "taylor"
    meta: Mapping[str, Any] = field(default_factory=dict)


def check_estimator(name: str) -> str:
    if name not in ESTIMATORS:
        raise UserError(f"estimator {name!r} is unknown; use one of {', '.join(ESTIMATORS)}")
    return name


# --- placement ---------------------------------------------------------------------------
def place_params(params: PyTree, mesh: jax.sharding.Mesh) -> PyTree:
    """Params on the mesh's devices: arrays already spread over exactly those devices keep
    their sharding (FSDP/tensor layouts survive); anything else is replicated."""
    devs = set(mesh.devices.flat)
    rep = shd.replicated(mesh)

    def put(x: Any) -> jax.Array:
        if isinstance(x, jax.Array) and set(x.sharding.device_set) == devs and (
                len(devs) == 1 or isinstance(x.sharding, jax.sharding.NamedSharding)):
            return x
        return jax.device_put(x, rep)

    return jax.tree.map(put, params)


def _zeros_like_sharded(params: PyTree) -> PyTree:
    return jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32, device=p.sharding), params)


# --- wanda taps ----------------------------------------------------------------------------
def wanda_tap(name: str, cfg: ModelConfig) -> tuple[str, int] | None:
    """(intermediate feeding the weight, axis of the weight indexing its input features) for
    a weight with a wanda score, from the family table; None for leaves that get 0."""
    r = roles(cfg).get(name)
    if r is None or r.tap is None or r.input_axis is None:
        return None
    return r.tap, r.input_axis


# --- the jitted micro-batch steps --------------------------------------------------------
def _step_fn(estimator: str, cfg: ModelConfig, remat: bool) -> Callable:
    f32 = jnp.float32

    if estimator == "taylor":
        def step(acc, params, tokens, weights):
            g = jax.grad(weighted_nll_sum)(params, tokens, weights, cfg, remat)
            return jax.tree.map(lambda a, x: a + x.astype(f32), acc, g)
    elif estimator in ("taylor-abs", "fisher"):
        def step(acc, params, tokens, weights):
            n = jnp.sum(weights)
            denom = n * (tokens.shape[1] - 1)
            g = jax.grad(lambda p: weighted_nll_sum(p, tokens, weights, cfg, remat) / denom)(params)

            def add(a, p, x):
                s = p.astype(f32) * x.astype(f32)
                s = jnp.abs(s) if estimator == "taylor-abs" else s * s
                return a + n * s

            return jax.tree.map(add, acc, params, g)
    elif estimator == "wanda":
        def step(acc, params, tokens, weights):
            taps = intermediates(params, tokens, cfg, remat=remat)[1]
            out = {}
            for k, a in acc.items():
                x = taps[k].astype(f32)
                out[k] = a + jnp.einsum("bsi,b->i", x * x, weights.astype(f32))
            return out
    else:  # pragma: no cover - guarded by check_estimator
        raise UserError(f"estimator {estimator!r} has no step")
    return step


@lru_cache(maxsize=32)
def _compiled_step(estimator: str, cfg: ModelConfig, remat: bool, out_shardings: Any) -> Callable:
    shardings = jax.tree.unflatten(out_shardings[0], list(out_shardings[1]))
    return jax.jit(_step_fn(estimator, cfg, remat), donate_argnums=0, out_shardings=shardings)


def _shardings_key(acc: PyTree) -> tuple:
    leaves, treedef = jax.tree.flatten(acc)
    return treedef, tuple(x.sharding for x in leaves)


def step_function(estimator: str, cfg: ModelConfig, acc: PyTree, remat: bool = False
                  ) -> Callable:
    """The jitted ``(acc, params, tokens, weights) -> acc`` step (acc donated, output
    sharded like ``acc``). Exposed for benchmarks."""
    return _compiled_step(estimator, cfg, remat, _shardings_key(acc))


# --- state -------------------------------------------------------------------------------
def init_state(params: PyTree, cfg: ModelConfig, estimator: str, batch_size: int,
               mesh: jax.sharding.Mesh) -> ImportanceState:
    """A zero accumulator placed like ``params`` (which must already be on ``mesh``)."""
    check_estimator(estimator)
    b = effective_batch_size(batch_size, mesh)
    if estimator == "wanda":
        acc = {}
        flat = T.flatten(params)
        rep = shd.replicated(mesh)
        for n, p in flat.items():
            tap = wanda_tap(n, cfg)
            if tap is not None and tap[0] not in acc:
                acc[tap[0]] = jnp.zeros((p.shape[tap[1]],), jnp.float32, device=rep)
        if not acc:
            raise UserError("wanda: the model has no linear layers with input taps")
    elif estimator in DATA_FREE:
        acc = {}
    else:
        acc = _zeros_like_sharded(params)
    return ImportanceState(estimator, b, 0, acc)


def effective_batch_size(batch_size: int, mesh: jax.sharding.Mesh) -> int:
    if batch_size <= 0:
        raise UserError(f"--batch-size {batch_size}: must be positive")
    m = shd.batch_multiple(mesh)
    return -(-batch_size // m) * m


def finalize(state: ImportanceState, params: PyTree, cfg: ModelConfig, seq_len: int
             ) -> PyTree:
    """Scores from an accumulation over ``state.position`` windows of ``seq_len`` tokens."""
    est = state.estimator
    f32 = jnp.float32
    if est == "magnitude":
        return jax.tree.map(lambda p: jnp.abs(p.astype(f32)), params)
    if state.position <= 0:
        raise UserError("importance over zero windows is undefined; give at least one window")
    if est == "taylor":
        tokens = f32(state.position * (seq_len - 1))
        return jax.tree.map(lambda a, p: (a / tokens) * p.astype(f32), state.acc, params)
    if est in ("taylor-abs", "fisher"):
        n = f32(state.position)
        return jax.tree.map(lambda a: a / n, state.acc)
    # wanda
    norms = {k: jnp.sqrt(v) for k, v in state.acc.items()}

    def score(name: str, p: jax.Array) -> jax.Array:
        tap = wanda_tap(name, cfg)
        if tap is None or p.ndim != 2:
            return jnp.zeros(p.shape, f32, device=p.sharding)
        key, axis = tap
        nrm = norms[key]
        if nrm.shape[0] != p.shape[axis]:
            raise UserError(f"wanda: tap {key!r} has {nrm.shape[0]} features but {name!r} has "
                            f"{p.shape[axis]} on axis {axis}")
        w = jnp.abs(p.astype(f32))
        return w * (nrm[None, :] if axis == 1 else nrm[:, None])

    return T.map_named(score, params)


# --- the loop ----------------------------------------------------------------------------
def compute_importance(
    params: PyTree,
    cfg: ModelConfig,
    windows: np.ndarray,
    estimator: str = "taylor",
    batch_size: int = 8,
    mesh: jax.sharding.Mesh | None = None,
    progress: Callable[[int], None] | None = None,
    state: ImportanceState | None = None,
    *,
    remat: bool = False,
    checkpoint: Callable[[ImportanceState], None] | None = None,
    checkpoint_every: int | None = None,
) -> ImportanceResult:
    """Importance scores of one language's windows (``[n, seq_len]`` int).

    ``state`` resumes an earlier accumulation (same windows, estimator and batch size).
    ``progress(n)`` is called after each micro-batch with the real windows it held.
    ``checkpoint(state)`` is called each time the position crosses a multiple of
    ``checkpoint_every`` windows (not at the end); it may save the state (see
    :func:`save_partial`) and may raise to stop the run.
    """
    check_estimator(estimator)
    windows = np.asarray(windows)
    if windows.ndim != 2 or windows.shape[1] < 2:
        raise UserError(f"windows must be [n, seq_len>=2], got shape {list(windows.shape)}")
    n, seq_len = windows.shape
    mesh = mesh or shd.make_mesh()
    params = place_params(params, mesh)
    if estimator in DATA_FREE:
        scores = finalize(ImportanceState(estimator, 1, 0, {}), params, cfg, seq_len)
        return ImportanceResult(scores, 0, 0, estimator)
    if n == 0:
        raise UserError("no windows given; importance needs at least one")
    if state is None:
        state = init_state(params, cfg, estimator, batch_size, mesh)
    else:
        check_resumable(state, estimator, effective_batch_size(batch_size, mesh), n)
    step = step_function(estimator, cfg, state.acc, remat)
    acc, pos, b = state.acc, state.position, state.batch_size
    for batch, weights in padded_batches(windows[pos:], b):
        acc = step(acc, params, shd.put_batch(batch, mesh), shd.put_batch(weights, mesh))
        real = int(weights.sum())
        prev, pos = pos, pos + real
        state = ImportanceState(estimator, b, pos, acc)
        if progress:
            progress(real)
        if checkpoint and checkpoint_every and pos < n and \
                pos // checkpoint_every > prev // checkpoint_every:
            checkpoint(state)
    scores = finalize(state, params, cfg, seq_len)
    return ImportanceResult(scores, n, n * (seq_len - 1), estimator)


def check_resumable(state: ImportanceState, estimator: str, batch_size: int, n: int) -> None:
    if state.estimator != estimator:
        raise UserError(f"saved state is for estimator {state.estimator!r}, not {estimator!r}")
    if state.batch_size != batch_size:
        raise UserError(f"saved state was accumulated with batch size {state.batch_size}, not "
                        f"{batch_size}; resume with --batch-size {state.batch_size} (on the same "
                        "number of devices) or delete the partial state")
    if not 0 <= state.position <= n:
        raise UserError(f"saved state is at window {state.position}, beyond the {n} windows")


# --- resumable state on disk (orbax) ------------------------------------------------------
def windows_digest(windows: np.ndarray) -> str:
    w = np.ascontiguousarray(np.asarray(windows, dtype=np.int32))
    return "sha1:" + hashlib.sha1(w.tobytes() + str(w.shape).encode()).hexdigest()


def _manager(directory: str):
    import orbax.checkpoint as ocp

    opts = ocp.CheckpointManagerOptions(max_to_keep=1, enable_async_checkpointing=False,
                                        create=True)
    return ocp.CheckpointManager(os.path.abspath(directory), options=opts,
                                 item_names=("acc", "meta"))


def save_partial(directory: str, state: ImportanceState, meta: Mapping[str, Any]) -> None:
    """Save ``state`` (orbax, step = window position) with JSON ``meta`` identifying the run
    (windows digest, model, estimator, ...); earlier steps are removed."""
    import orbax.checkpoint as ocp

    full = {"format": STATE_FORMAT, **meta, "estimator": state.estimator,
            "batch_size": state.batch_size, "position": state.position}
    with _manager(directory) as mngr:
        mngr.save(state.position, args=ocp.args.Composite(
            acc=ocp.args.StandardSave(state.acc), meta=ocp.args.JsonSave(full)), force=True)
        mngr.wait_until_finished()


def load_partial(directory: str, like: ImportanceState, meta: Mapping[str, Any]
                 ) -> ImportanceState | None:
    """The latest saved state if its meta matches ``meta`` (and ``like``'s estimator and
    batch size), restored with ``like.acc``'s shapes and shardings; else None."""
    import orbax.checkpoint as ocp

    if not os.path.isdir(directory):
        return None
    with _manager(directory) as mngr:
        step = mngr.latest_step()
        if step is None:
            return None
        saved = mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        want = {"format": STATE_FORMAT, **json.loads(json.dumps(dict(meta))),
                "estimator": like.estimator, "batch_size": like.batch_size}
        if any(saved.get(k) != v for k, v in want.items()) or saved.get("position") != step:
            return None
        abstract = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), like.acc)
        acc = mngr.restore(step, args=ocp.args.Composite(
            acc=ocp.args.StandardRestore(abstract)))["acc"]
    return ImportanceState(like.estimator, like.batch_size, int(step), acc)


def clear_partial(directory: str) -> None:
    shutil.rmtree(directory, ignore_errors=True)
