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
sharded over the mesh's batch axes and the accumulator takes the params' shardings. With
``remat`` (the command's default) the gradient estimators' step backpropagates layer by
layer instead (:mod:`jaxregion.models.layerwise`): one layer's activations and gradients are
alive at a time, folded into the donated accumulator as they come. The
accumulation state (:class:`ImportanceState`) can be saved and restored with orbax
(:func:`save_partial`/:func:`load_partial`) so an interrupted run resumes and ends bitwise
equal to an uninterrupted one.

**Split halves.** Even-numbered micro-batches accumulate into one accumulator and odd ones
into another, in the same pass (the step is the same; only the accumulator it is handed
alternates), and the full score is finalized from their sum. :func:`finalize_halves` gives
each half's scores on the full sample's scale, so two independent estimates of the same
quantity cost nothing but the second accumulator's memory (see :mod:`jaxregion.analysis.stability`).
Each half also sums half as many terms, which halves the accumulation's rounding walk.

**The loop.** :func:`accumulate` yields the state after each micro-batch; the caller's
policies (progress, checkpoints, snapshots, stop-when-stable, see :mod:`jaxregion.scorefiles`)
read it and stop iterating when they like. :func:`compute_importance` runs it to the end.
``accumulate(..., stops=[n1, n2, ...])`` ends a micro-batch exactly at each ``n_i`` (the
batch before it is padded, as a run over ``n_i`` windows would be): the scores of the state
there equal a separate run over the first ``n_i`` windows up to float32 summation order
(bitwise, halves included, when every stop before it is a multiple of the batch size).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from jaxregion import tree as T
from jaxregion.errors import UserError
from jaxregion.evaluate import padded_batches
from jaxregion.models import (
    ModelConfig,
    intermediates,
    roles,
    stacked_index,
    weighted_nll_sum,
)
from jaxregion.models.layerwise import LayerwiseStep
from jaxregion.models.module import is_stacked
from jaxregion.names import DATA_FREE, ESTIMATORS
from jaxregion.parallel import sharding as shd

PyTree = Any
STATE_FORMAT = "jaxregion.importance-state.v3"  # v3: acc is {name: array}, scoped


@dataclass
class ImportanceState:
    """Where an accumulation stands: resumable from here.

    ``acc``: ``(even, odd)`` float32 accumulators, one per half (each a params-shaped tree;
    for ``wanda`` a ``{tap: [in]}`` dict of summed squared activations). ``counts``: windows
    accumulated into each half. ``batches``: micro-batches done (its parity picks the half
    of the next one). ``batch_size``: the effective micro-batch (a multiple of the mesh's
    batch size) the accumulation was made with; resuming needs the same one for the same
    result.
    """

    estimator: str
    batch_size: int
    acc: tuple[PyTree, PyTree]
    counts: tuple[int, int] = (0, 0)
    batches: int = 0
    scope: tuple[str, ...] | None = None  # the scored names (None: all); others score 0

    @property
    def position(self) -> int:
        """Windows consumed so far."""
        return self.counts[0] + self.counts[1]


@dataclass(frozen=True)
class ImportanceResult:
    scores: PyTree  # float32, params-shaped
    windows: int
    tokens: int  # predicted positions: windows * (seq_len - 1)
    estimator: str = "taylor"
    meta: Mapping[str, Any] = field(default_factory=dict)
    halves: tuple[PyTree, PyTree] | None = None  # see finalize_halves; None with < 2 batches
    counts: tuple[int, int] = (0, 0)  # windows in the even / odd half


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
        if (
            isinstance(x, jax.Array)
            and set(x.sharding.device_set) == devs
            and (len(devs) == 1 or isinstance(x.sharding, jax.sharding.NamedSharding))
        ):
            return x
        return jax.device_put(x, rep)

    return jax.tree.map(put, params)


# --- scope: what is scored (and differentiated) ----------------------------------------------
def scored_names(params: PyTree, scope: Collection[str] | None) -> list[str]:
    """The params' names in ``scope`` (None: every name), in tree order; UserError for a
    scope name the params lack."""
    names = list(T.flatten(params))
    if scope is None:
        return names
    missing = sorted(set(scope) - set(names))
    if missing:
        raise UserError(f"scope names {missing[:3]} are not parameters of the model")
    keep = set(scope)
    return [n for n in names if n in keep]


def _grad_live(
    loss: Callable[[PyTree], jax.Array], params: PyTree, live: Collection[str]
) -> dict[str, jax.Array]:
    """``∇ loss`` with respect to the ``live`` leaves only (``{name: grad}``): the others
    are constants, so no gradient (an untied embedding's, a tied head's) is ever formed."""
    lv, frozen = T.partition(T.flatten(params), live)
    return jax.grad(lambda x: loss(T.unflatten({**frozen, **x})))(lv)


def _grads(
    loss: Callable[[PyTree], jax.Array], params: PyTree, where: Mapping[str, tuple[str, int | None]]
) -> dict[str, jax.Array]:
    """:func:`_grad_live` by HF names, ``params`` in either layout (``where``: from
    :func:`_locations`): a stacked leaf is live when one of its layers is, and each HF name's
    gradient is its row of that leaf's gradient."""
    g = _grad_live(loss, params, {s for s, _ in where.values()})
    return {n: _row(g, s, j) for n, (s, j) in where.items()}


def _locations(
    names: Collection[str], params: PyTree, cfg: ModelConfig
) -> dict[str, tuple[str, int | None]]:
    """Where each HF name lives in ``params``: ``(leaf name, row)``, the row None unless
    ``params`` is stacked (:func:`~jaxregion.models.stack_layers`)."""
    stacked = is_stacked(params, cfg)
    return {n: stacked_index(n, cfg) if stacked else (n, None) for n in names}


def _row(flat: Mapping[str, jax.Array], name: str, j: int | None) -> jax.Array:
    return flat[name] if j is None else flat[name][j]


# --- wanda taps ----------------------------------------------------------------------------
def wanda_tap(name: str, cfg: ModelConfig) -> tuple[str, int] | None:
    """(intermediate feeding the weight, axis of the weight indexing its input features) for
    a weight with a wanda score, from the family table; None for leaves that get 0."""
    r = roles(cfg).get(name)
    if r is None or r.tap is None or r.input_axis is None:
        return None
    return r.tap, r.input_axis


# --- the jitted micro-batch steps --------------------------------------------------------
def _fold_sum(a: jax.Array, p: Any, g: jax.Array, n: Any) -> jax.Array:
    """taylor: the gradient itself (θ multiplies the sum once, at the end)."""
    return a + g.astype(jnp.float32)


def _fold_abs(a: jax.Array, p: jax.Array, g: jax.Array, n: jax.Array) -> jax.Array:
    """taylor-abs: ``n · |θ ⊙ ∇L_b|`` (``L_b`` the batch mean, ``n`` its window weight)."""
    return a + n * jnp.abs(p.astype(jnp.float32) * g.astype(jnp.float32))


def _fold_square(a: jax.Array, p: jax.Array, g: jax.Array, n: jax.Array) -> jax.Array:
    """fisher: ``n · (θ ⊙ ∇L_b)²``."""
    s = p.astype(jnp.float32) * g.astype(jnp.float32)
    return a + n * s * s


#: How each gradient estimator folds one micro-batch's gradient into its accumulator.
FOLDS = {"taylor": _fold_sum, "taylor-abs": _fold_abs, "fisher": _fold_square}


def _step_fn(estimator: str, cfg: ModelConfig, remat: bool) -> Callable:
    f32 = jnp.float32

    # gradient estimators: ``acc`` is ``{name: float32}`` over the scored names only
    if estimator == "taylor":

        def step(acc, params, tokens, weights):
            where = _locations(acc, params, cfg)
            g = _grads(lambda p: weighted_nll_sum(p, tokens, weights, cfg, remat), params, where)
            return {k: _fold_sum(a, None, g[k], None) for k, a in acc.items()}
    elif estimator in ("taylor-abs", "fisher"):
        fold = FOLDS[estimator]

        def step(acc, params, tokens, weights):
            n = jnp.sum(weights)
            denom = n * (tokens.shape[1] - 1)
            where = _locations(acc, params, cfg)
            g = _grads(
                lambda p: weighted_nll_sum(p, tokens, weights, cfg, remat) / denom, params, where
            )
            flat = T.flatten(params)
            return {k: fold(a, _row(flat, *where[k]), g[k], n) for k, a in acc.items()}
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


def step_function(estimator: str, cfg: ModelConfig, acc: PyTree, remat: bool = False) -> Callable:
    """The jitted ``(acc, params, tokens, weights) -> acc`` step as one program (acc
    donated, output sharded like ``acc``), what benchmarks and sharding checks lower.
    ``params`` in either layout: with ``remat`` the layers run as one rematerialised scan,
    so pass :func:`~jaxregion.models.stack_layers`'s or the step stacks the layers' weights
    on every call. :func:`accumulate` with ``remat`` runs the gradient estimators layer by
    layer instead (:mod:`jaxregion.models.layerwise`), which also bounds the gradients."""
    return _compiled_step(estimator, cfg, remat, _shardings_key(acc))


def step_memory(
    cfg: ModelConfig,
    mesh: jax.sharding.Mesh,
    batch_size: int,
    seq_len: int,
    dtype: Any = jnp.float32,
    scope: Collection[str] | None = None,
    estimator: str = "taylor",
    remat: bool = False,
) -> dict[str, int]:
    """XLA's memory analysis of the compiled step, lowered on abstract params (nothing is
    allocated): ``argument`` (params, one half's accumulator, the batch), ``output`` (the
    accumulator, aliased to its donated argument), ``alias``, ``temp`` (gradients,
    activations) and ``batch`` (the tokens' and weights' bytes), per device. With ``remat``
    the layer-by-layer step's (what :func:`accumulate` runs): ``temp`` is its largest
    program's and ``inputs`` the layer inputs its forward keeps (one mesh, one device)."""
    params = shd.abstract_sharded(cfg, mesh, jnp.dtype(dtype))
    state = init_state(params, cfg, estimator, batch_size, mesh, scope, abstract=True)
    b = state.batch_size
    bsh = shd.batch_sharding(mesh)
    toks = jax.ShapeDtypeStruct((b, seq_len), jnp.int32, sharding=bsh)
    w = jax.ShapeDtypeStruct((b,), jnp.float32, sharding=bsh)
    if remat:
        return _layerwise_memory(cfg, state, params, toks, w)
    step: Any = step_function(estimator, cfg, state.acc[0])  # a jitted function
    ma = step.lower(state.acc[0], params, toks, w).compile().memory_analysis()
    return {
        "argument": int(ma.argument_size_in_bytes),
        "output": int(ma.output_size_in_bytes),
        "alias": int(ma.alias_size_in_bytes),
        "temp": int(ma.temp_size_in_bytes),
        "batch": (b * seq_len * 4 + b * 4) // mesh.size,
    }


def _layerwise_memory(
    cfg: ModelConfig, state: ImportanceState, params: PyTree, toks: Any, w: Any
) -> dict[str, int]:
    acc = state.acc[0]
    step = LayerwiseStep(cfg, tuple(acc), FOLDS[state.estimator], state.estimator != "taylor")
    temps = step.temp_bytes(acc, params, toks, w)
    nbytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves((params, acc)))
    batch = toks.size * 4 + w.size * 4
    return {
        "argument": nbytes + batch,
        "output": sum(x.size * 4 for x in jax.tree.leaves(acc)),
        "alias": sum(x.size * 4 for x in jax.tree.leaves(acc)),
        "temp": max(temps.values()),
        "inputs": step.inputs_bytes(params, toks),
        "batch": batch,
    }


# --- state -------------------------------------------------------------------------------
def init_state(
    params: PyTree,
    cfg: ModelConfig,
    estimator: str,
    batch_size: int,
    mesh: jax.sharding.Mesh,
    scope: Collection[str] | None = None,
    *,
    abstract: bool = False,
) -> ImportanceState:
    """A zero accumulator placed like ``params`` (which must already be on ``mesh``); for
    the gradient estimators ``{name: float32}`` over the ``scope`` names only (None: all).
    ``abstract``: ``jax.ShapeDtypeStruct`` leaves (shapes and shardings, no memory), all a
    :func:`load_partial` template needs."""
    check_estimator(estimator)
    b = effective_batch_size(batch_size, mesh)
    names = None if scope is None else tuple(scored_names(params, scope))
    halves = tuple(_zero_acc(params, cfg, estimator, mesh, names, abstract) for _ in range(2))
    return ImportanceState(estimator, b, (halves[0], halves[1]), scope=names)


def _zero_acc(
    params: PyTree,
    cfg: ModelConfig,
    estimator: str,
    mesh: jax.sharding.Mesh,
    scope: Collection[str] | None = None,
    abstract: bool = False,
) -> PyTree:
    def zeros(shape: tuple[int, ...], sharding: Any) -> Any:
        if abstract:
            return jax.ShapeDtypeStruct(shape, jnp.float32, sharding=sharding)
        return jnp.zeros(shape, jnp.float32, device=sharding)

    flat = T.flatten(params)
    if estimator == "wanda":
        acc = {}
        rep = shd.replicated(mesh)
        for n, p in flat.items():
            tap = wanda_tap(n, cfg)
            if tap is not None and tap[0] not in acc:
                acc[tap[0]] = zeros((p.shape[tap[1]],), rep)
        if not acc:
            raise UserError("wanda: the model has no linear layers with input taps")
        return acc
    if estimator in DATA_FREE:
        return {}
    return {n: zeros(flat[n].shape, flat[n].sharding) for n in scored_names(params, scope)}


def effective_batch_size(batch_size: int, mesh: jax.sharding.Mesh) -> int:
    if batch_size <= 0:
        raise UserError(f"--batch-size {batch_size}: must be positive")
    m = shd.batch_multiple(mesh)
    return -(-batch_size // m) * m


# Each estimator's score**POWER is linear in its accumulator (wanda's score is a square root).
POWER = {"taylor": 1, "taylor-abs": 1, "fisher": 1, "wanda": 2, "magnitude": 1}


def finalize(state: ImportanceState, params: PyTree, cfg: ModelConfig, seq_len: int) -> PyTree:
    """Scores from an accumulation over ``state.position`` windows of ``seq_len`` tokens.
    The halves are summed inside each tensor's score map, so no summed tree is formed."""
    if state.estimator == "magnitude":
        flat = T.flatten(params)
        got = {n: jnp.abs(flat[n].astype(jnp.float32)) for n in scored_names(params, state.scope)}
        return _full(got, params)
    if state.position <= 0:
        raise UserError("importance over zero windows is undefined; give at least one window")
    n = state.position
    if state.estimator in _SCORE:
        return _scores(state.estimator, state.acc, n, params, seq_len, donate=False)
    acc = jax.tree.map(jnp.add, *state.acc)  # wanda: one [in] vector per tap
    return _wanda(acc, n, n, params, cfg, seq_len, state.scope)


def finalize_halves(
    state: ImportanceState,
    params: PyTree,
    cfg: ModelConfig,
    seq_len: int,
    *,
    consume: bool = False,
) -> tuple[PyTree, PyTree] | None:
    """``(even, odd)`` scores, each from its own half of the micro-batches and on the full
    sample's scale (an estimate of the same quantity as :func:`finalize` from fewer windows);
    None while a half is empty. ``(c_e·even**q + c_o·odd**q) / (c_e + c_o) = full**q`` with
    ``q = POWER[estimator]`` and ``c`` the halves' window counts, up to float32 rounding.
    ``consume``: each accumulator's buffer becomes its half's scores (donated), so the halves
    cost no memory beyond the accumulators; ``state`` is unusable afterwards."""
    if state.estimator in DATA_FREE or min(state.counts) <= 0:
        return None
    if state.estimator in _SCORE:
        even, odd = (
            _scores(state.estimator, (a,), c, params, seq_len, donate=consume)
            for a, c in zip(state.acc, state.counts, strict=True)
        )
        return even, odd
    return tuple(
        _wanda(a, c, state.position, params, cfg, seq_len, state.scope)
        for a, c in zip(state.acc, state.counts, strict=True)
    )


def _full(got: Mapping[str, Any], params: PyTree) -> PyTree:
    """A params-shaped float32 tree: ``got``'s scores, and for every other name read-only
    numpy zeros: their pages are never written, so an unscored 262k-row embedding costs no
    resident memory however many score trees hold it (reading them maps the zero page)."""

    def zeros(p: Any) -> np.ndarray:
        z = np.zeros(p.shape, np.float32)
        z.flags.writeable = False
        return z

    return T.map_named(lambda n, p: got[n] if n in got else zeros(p), params)


def _taylor_score(a: jax.Array, p: jax.Array, t: jax.Array) -> jax.Array:
    return (a / t) * p.astype(jnp.float32)


def _mean_score(a: jax.Array, p: jax.Array, t: jax.Array) -> jax.Array:
    del p
    return a / t


def _summed(fn: Callable) -> Callable:
    """``fn`` on the sum of two halves' accumulators, in one fused map per tensor."""
    return lambda e, o, p, t: fn(e + o, p, t)


# Per-tensor score maps (jitted once per shape, one output and no temporaries); the donating
# ones write the score into the accumulator's buffer.
_SCORE = {"taylor": _taylor_score, "taylor-abs": _mean_score, "fisher": _mean_score}
_JIT = {
    (est, halves, donate): jax.jit(
        fn if halves == 1 else _summed(fn), donate_argnums=(0,) if donate else ()
    )
    for est, fn in _SCORE.items()
    for halves in (1, 2)
    for donate in (False, True)
}


def _scores(
    est: str, accs: tuple[PyTree, ...], count: int, params: PyTree, seq_len: int, donate: bool
) -> PyTree:
    """The gradient estimators' scores from one accumulator, or the sum of two, over
    ``count`` windows: taylor ``(acc / tokens) ⊙ θ``, taylor-abs and fisher ``acc / count``."""
    flat = T.flatten(params)
    t = np.float32(count * (seq_len - 1) if est == "taylor" else count)
    fn = _JIT[(est, len(accs), donate)]
    return _full({k: fn(*(a[k] for a in accs), flat[k], t) for k in accs[0]}, params)


def _wanda(
    acc: PyTree,
    count: int,
    total: int,
    params: PyTree,
    cfg: ModelConfig,
    seq_len: int,
    scope: Collection[str] | None = None,
) -> PyTree:
    """wanda's scores from an accumulator over ``count`` windows, scaled to a ``total``-window
    sample (its sum of squares depends on the sample size); zero outside ``scope``."""
    f32 = jnp.float32
    flat = T.flatten(params)
    scale = f32(total / count)
    norms = {k: jnp.sqrt(v * scale) for k, v in acc.items()}

    def score(name: str, p: jax.Array) -> jax.Array:
        tap = wanda_tap(name, cfg)
        if tap is None or p.ndim != 2:
            return jnp.zeros(p.shape, f32, device=p.sharding)
        key, axis = tap
        nrm = norms[key]
        if nrm.shape[0] != p.shape[axis]:
            raise UserError(
                f"wanda: tap {key!r} has {nrm.shape[0]} features but {name!r} has "
                f"{p.shape[axis]} on axis {axis}"
            )
        w = jnp.abs(p.astype(f32))
        return w * (nrm[None, :] if axis == 1 else nrm[:, None])

    keep = set(scored_names(params, scope))
    return _full({n: score(n, p) for n, p in flat.items() if n in keep}, params)


# --- the loop ----------------------------------------------------------------------------
def compute_importance(
    params: PyTree,
    cfg: ModelConfig,
    windows: np.ndarray,
    estimator: str = "taylor",
    batch_size: int = 8,
    mesh: jax.sharding.Mesh | None = None,
    state: ImportanceState | None = None,
    *,
    remat: bool = False,
    scope: Collection[str] | None = None,
) -> ImportanceResult:
    """Importance scores of one language's windows (``[n, seq_len]`` int).

    ``state`` resumes an earlier accumulation (same windows, estimator and batch size).
    ``scope``: the names to score (None: all); only they are differentiated, every other
    tensor scores 0. To watch, checkpoint or stop a run, iterate :func:`accumulate`."""
    check_estimator(estimator)
    windows = check_windows(windows, empty_ok=estimator in DATA_FREE)
    n, seq_len = windows.shape
    mesh = mesh or shd.make_mesh()
    params = place_params(params, mesh)
    if estimator in DATA_FREE:
        scopes = None if scope is None else tuple(scope)
        empty = ImportanceState(estimator, 1, ({}, {}), scope=scopes)
        return ImportanceResult(finalize(empty, params, cfg, seq_len), 0, 0, estimator)
    if state is None:
        state = init_state(params, cfg, estimator, batch_size, mesh, scope)
    else:
        check_resumable(state, estimator, effective_batch_size(batch_size, mesh), n)
        if scope is not None and state.scope != tuple(scored_names(params, scope)):
            raise UserError("saved state was accumulated over another scope of parameters")
    end = state
    for end in accumulate(state, params, cfg, windows, mesh, remat=remat):  # noqa: B007
        pass
    return result_of(end, params, cfg, seq_len, consume=True)


def check_windows(windows: np.ndarray, empty_ok: bool = False) -> np.ndarray:
    """``windows`` as an ``[n, seq_len>=2]`` array (``n > 0`` unless ``empty_ok``)."""
    windows = np.asarray(windows)
    if windows.ndim != 2 or windows.shape[1] < 2:
        raise UserError(f"windows must be [n, seq_len>=2], got shape {list(windows.shape)}")
    if len(windows) == 0 and not empty_ok:
        raise UserError("no windows given; importance needs at least one")
    return windows


def accumulate(
    state: ImportanceState,
    params: PyTree,
    cfg: ModelConfig,
    windows: np.ndarray,
    mesh: jax.sharding.Mesh,
    *,
    remat: bool = False,
    stops: Sequence[int] = (),
) -> Iterator[ImportanceState]:
    """The states after each micro-batch of ``windows[state.position:]``, for the caller to
    watch, save (:func:`save_partial`), finalize (:func:`result_of`) or stop at.

    A micro-batch never straddles one of ``stops`` (window counts in ``(0, n]``): the batch
    before it is padded, as a run over that many windows would be, so the state there gives
    the scores of the first ``stop`` windows (snapshots and stop-when-stable in
    :mod:`jaxregion.scorefiles` read it). The arguments are checked before the first batch."""
    windows = check_windows(windows)
    n = len(windows)
    if not 0 <= state.position <= n:
        raise UserError(f"saved state is at window {state.position}, beyond the {n} windows")
    bounds = sorted({int(s) for s in stops})
    if bounds and not 0 < bounds[0] <= bounds[-1] <= n:
        raise UserError(f"stops {bounds} must lie in (0, {n}] (the windows given)")
    params = place_params(params, mesh)
    est = state.estimator
    if remat and est in FOLDS and not is_stacked(params, cfg):
        # layer by layer: one layer's activations and gradients alive at a time, folded in place
        names = tuple(state.acc[0])
        step: Callable = LayerwiseStep(cfg, names, FOLDS[est], mean=est != "taylor")
    else:
        step = step_function(est, cfg, state.acc[0], remat and est in FOLDS)
    return _batches(state, step, params, windows, mesh, bounds)


def _batches(
    state: ImportanceState,
    step: Callable,
    params: PyTree,
    windows: np.ndarray,
    mesh: jax.sharding.Mesh,
    bounds: Sequence[int],
) -> Iterator[ImportanceState]:
    """:func:`accumulate`'s loop: each micro-batch goes to the accumulator of its parity."""
    for lo, hi in _segments(state.position, len(windows), bounds):
        for batch, weights in padded_batches(windows[lo:hi], state.batch_size):
            half = state.batches % 2
            acc, counts = list(state.acc), list(state.counts)
            acc[half] = step(
                acc[half], params, shd.put_batch(batch, mesh), shd.put_batch(weights, mesh)
            )
            counts[half] += int(weights.sum())
            state = ImportanceState(
                state.estimator,
                state.batch_size,
                (acc[0], acc[1]),
                (counts[0], counts[1]),
                state.batches + 1,
                state.scope,
            )
            yield state


def result_of(
    state: ImportanceState,
    params: PyTree,
    cfg: ModelConfig,
    seq_len: int,
    *,
    consume: bool = False,
) -> ImportanceResult:
    """The finished result (full scores and both halves) of an accumulation; ``consume``:
    the halves take over the accumulators' buffers (``state`` is unusable afterwards)."""
    n = state.position
    full = finalize(state, params, cfg, seq_len)
    return ImportanceResult(
        full,
        n,
        n * (seq_len - 1),
        state.estimator,
        halves=finalize_halves(state, params, cfg, seq_len, consume=consume),
        counts=state.counts,
    )


def _segments(start: int, n: int, bounds: Sequence[int]) -> list[tuple[int, int]]:
    """``[start, n)`` cut at ``bounds``: the window ranges whose batches end exactly there."""
    edges = [start, *[x for x in bounds if start < x < n], n]
    return [(lo, hi) for lo, hi in zip(edges[:-1], edges[1:], strict=True) if hi > lo]


def check_resumable(state: ImportanceState, estimator: str, batch_size: int, n: int) -> None:
    if state.estimator != estimator:
        raise UserError(f"saved state is for estimator {state.estimator!r}, not {estimator!r}")
    if state.batch_size != batch_size:
        raise UserError(
            f"saved state was accumulated with batch size {state.batch_size}, not "
            f"{batch_size}; resume with --batch-size {state.batch_size} (on the same "
            "number of devices) or delete the partial state"
        )
    if not 0 <= state.position <= n:
        raise UserError(f"saved state is at window {state.position}, beyond the {n} windows")


# --- resumable state on disk (orbax) ------------------------------------------------------
def windows_digest(windows: np.ndarray) -> str:
    w = np.ascontiguousarray(np.asarray(windows, dtype=np.int32))
    return "sha1:" + hashlib.sha1(w.tobytes() + str(w.shape).encode()).hexdigest()


def _manager(directory: str):
    opts = ocp.CheckpointManagerOptions(
        max_to_keep=1, enable_async_checkpointing=False, create=True
    )
    return ocp.CheckpointManager(
        os.path.abspath(directory), options=opts, item_names=("acc", "meta")
    )


def save_partial(directory: str, state: ImportanceState, meta: Mapping[str, Any]) -> None:
    """Save ``state`` (orbax, step = window position) with JSON ``meta`` identifying the run
    (windows digest, model, estimator, ...); earlier steps are removed."""
    full = {
        "format": STATE_FORMAT,
        **meta,
        "estimator": state.estimator,
        "batch_size": state.batch_size,
        "position": state.position,
        "counts": list(state.counts),
        "batches": state.batches,
    }
    with _manager(directory) as mngr:
        mngr.save(
            state.position,
            args=ocp.args.Composite(
                acc=ocp.args.StandardSave(state.acc), meta=ocp.args.JsonSave(full)
            ),
            force=True,
        )
        mngr.wait_until_finished()


def load_partial(
    directory: str, like: ImportanceState, meta: Mapping[str, Any]
) -> ImportanceState | None:
    """The latest saved state if its meta matches ``meta`` (and ``like``'s estimator and
    batch size), restored with ``like.acc``'s shapes and shardings; else None."""
    if not os.path.isdir(directory):
        return None
    with _manager(directory) as mngr:
        step = mngr.latest_step()
        if step is None:
            return None
        saved = mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        want = {
            "format": STATE_FORMAT,
            **json.loads(json.dumps(dict(meta))),
            "estimator": like.estimator,
            "batch_size": like.batch_size,
        }
        if any(saved.get(k) != v for k, v in want.items()) or saved.get("position") != step:
            return None
        abstract = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), like.acc
        )
        acc = mngr.restore(step, args=ocp.args.Composite(acc=ocp.args.StandardRestore(abstract)))[
            "acc"
        ]
    counts = tuple(int(c) for c in saved["counts"])
    if sum(counts) != step:
        return None
    return ImportanceState(
        like.estimator,
        like.batch_size,
        (acc[0], acc[1]),
        (counts[0], counts[1]),
        int(saved["batches"]),
        like.scope,
    )


def clear_partial(directory: str) -> None:
    shutil.rmtree(directory, ignore_errors=True)
