"""The output head: logit transforms and a vocabulary-chunked next-token NLL.

A 262,144-token head over ``b·s`` positions is ``b·s·V`` float32 logits, and its gradient as
many again: at Gemma 3's vocabulary that is 1 GiB for 4 windows of 256 tokens. :func:`nll`
never holds them. It walks the vocabulary in chunks, keeping per position only a running
max, a running sum of exponentials and the target's logit (an online log-sum-exp, as in
"cut" cross-entropy kernels); the backward pass walks the chunks again, recomputes each
chunk's logits and turns them straight into ``softmax - onehot``, the head's input gradient
and, when the head weight is differentiated, its gradient rows. Peak memory is a few chunks
of ``[b·s, chunk]`` float32, the chunk sized from a byte budget (:func:`chunk_size`).

The log-sum-exp is a two-level sum (within a chunk, then across chunks) and the logit
gradient is formed elementwise as in PyTorch, so the head is as exact as an unchunked
float32 one. :func:`transform` (cohere's ``logit_scale``, gemma's final soft-cap) is the one
definition of the logits that evaluation, importance and generation share.

The weight's gradient is only formed when the weight is being differentiated (the custom
VJP uses symbolic zeros): an embedding tied to the head and outside the scored scope costs
no ``[V, hidden]`` gradient.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from jaxregion.models.layers import soft_cap

Array = jax.Array

#: Bytes of chunk-sized float32 temporaries the head may hold at once (logits, softmax and
#: their gradient: ``3 · positions · chunk · 4``).
HEAD_BUDGET = 32 * 2**20
_LIVE = 3  # [n, chunk] float32 arrays alive at once in the backward pass
_ALIGN = 128


def transform(logits: Array, scale: float | None, cap: float | None) -> Array:
    """The config's output transforms on raw head logits: ``logit_scale`` multiplies them,
    then ``logit_softcap`` caps them (``cap · tanh(x / cap)``)."""
    if scale is not None:
        logits = logits * jnp.asarray(scale, logits.dtype)
    return soft_cap(logits, cap)


def chunk_size(n: int, vocab: int, budget: int = HEAD_BUDGET) -> int:
    """Vocabulary entries per chunk for ``n`` positions within ``budget`` bytes: the whole
    vocabulary when it fits, else a multiple of 128 (at least 128)."""
    c = budget // (_LIVE * 4 * max(n, 1))
    if c >= vocab:
        return vocab
    return max(_ALIGN, c // _ALIGN * _ALIGN)


def nll(
    h: Array,
    w: Array,
    targets: Array,
    scale: float | None = None,
    cap: float | None = None,
    budget: int = HEAD_BUDGET,
) -> Array:
    """Next-token NLL ``[n]`` (float32) of ``h [n, hidden] @ w[vocab, hidden].T`` at int
    ``targets [n]``, through :func:`transform`, never forming ``[n, vocab]``."""
    c = chunk_size(h.shape[0], w.shape[0], budget)
    return _nll(h, w, targets.astype(jnp.int32), scale, cap, c)


def _chunks(vocab: int, c: int) -> tuple[int, Array]:
    """Number of chunks and each chunk's first row. The last chunk is moved back to end at
    ``vocab`` (no padded copy of the weight); rows it shares with the previous chunk are
    masked (:func:`_fresh`)."""
    k = -(-vocab // c)
    starts = jnp.minimum(jnp.arange(k, dtype=jnp.int32) * c, vocab - c)
    return k, starts


def _fresh(i: Array, start: Array, c: int) -> Array:
    """``[c]`` bool: the rows of chunk ``i`` (at ``start``) no earlier chunk covered."""
    return start + jnp.arange(c, dtype=jnp.int32) >= i * c


def _logits(h: Array, w: Array, start: Array, c: int, scale, cap) -> Array:
    wc = jax.lax.dynamic_slice_in_dim(w, start, c, axis=0).astype(h.dtype)
    z = jax.lax.dot_general(h, wc, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)
    return transform(z, scale, cap)


@partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def _nll(h: Array, w: Array, targets: Array, scale, cap, c: int) -> Array:
    return _forward(h, w, targets, scale, cap, c)[0]


def _forward(h: Array, w: Array, targets: Array, scale, cap, c: int) -> tuple[Array, Array]:
    """``(nll, lse)`` by an online log-sum-exp over the chunks."""
    n, vocab = h.shape[0], w.shape[0]
    k, starts = _chunks(vocab, c)

    def body(carry, xs):
        m, s, tgt = carry
        i, start = xs
        fresh = _fresh(i, start, c)
        lg = jnp.where(fresh[None], _logits(h, w, start, c, scale, cap), -jnp.inf)
        m_new = jnp.maximum(m, jnp.max(lg, axis=1))
        s = s * jnp.exp(m - m_new) + jnp.sum(jnp.exp(lg - m_new[:, None]), axis=1)
        hit = (start + jnp.arange(c, dtype=jnp.int32))[None] == targets[:, None]
        tgt = tgt + jnp.sum(jnp.where(hit & fresh[None], lg, 0.0), axis=1)
        return (m_new, s, tgt), None

    f32 = jnp.float32
    init = (jnp.full((n,), -jnp.inf, f32), jnp.zeros((n,), f32), jnp.zeros((n,), f32))
    (m, s, tgt), _ = jax.lax.scan(body, init, (jnp.arange(k, dtype=jnp.int32), starts))
    lse = m + jnp.log(s)
    return lse - tgt, lse


def _fwd(h, w, targets, scale, cap, c):
    out, lse = _forward(h.value, w.value, targets.value, scale, cap, c)
    # which inputs are differentiated decides what the backward pass forms (a static flag
    # carried by the residuals' structure: an empty tuple means "no weight gradient")
    flags = (jnp.zeros((), jnp.int8),) if w.perturbed else ()
    return out, (h.value, w.value, targets.value, lse, flags)


def _bwd(scale, cap, c, res, g):
    h, w, targets, lse, flags = res
    want_w = bool(flags)
    vocab = w.shape[0]
    k, starts = _chunks(vocab, c)
    g = g.astype(jnp.float32)

    def body(carry, xs):
        dh, dw = carry
        i, start = xs
        wc = jax.lax.dynamic_slice_in_dim(w, start, c, axis=0).astype(h.dtype)
        lg, back = jax.vjp(
            lambda z: transform(z, scale, cap),
            jax.lax.dot_general(
                h, wc, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32
            ),
        )
        hit = (start + jnp.arange(c, dtype=jnp.int32))[None] == targets[:, None]
        p = jnp.exp(lg - lse[:, None])
        dlg = jnp.where(_fresh(i, start, c)[None], (p - hit.astype(p.dtype)) * g[:, None], 0.0)
        dz = back(dlg)[0].astype(h.dtype)
        dh = dh + jnp.dot(dz, wc, preferred_element_type=jnp.float32)
        if want_w:
            # each row gets one nonzero term (rows shared with the previous chunk get 0)
            rows = jnp.dot(dz.T, h, preferred_element_type=jnp.float32)
            old = jax.lax.dynamic_slice_in_dim(dw, start, c, axis=0)
            dw = jax.lax.dynamic_update_slice_in_dim(dw, old + rows.astype(dw.dtype), start, axis=0)
        return (dh, dw), None

    init = (
        jnp.zeros(h.shape, jnp.float32),
        jnp.zeros(w.shape, w.dtype) if want_w else jnp.zeros((), jnp.float32),
    )
    (dh, dw), _ = jax.lax.scan(body, init, (jnp.arange(k, dtype=jnp.int32), starts))
    return dh.astype(h.dtype), (dw if want_w else None), None


_nll.defvjp(_fwd, _bwd, symbolic_zeros=True)
