"""Model families as pure functions over HF-named param pytrees.

``apply(params, tokens, cfg) -> logits`` is the whole interface; ``cfg`` is a hashable
:class:`ModelConfig`, so it can be a static argument of ``jax.jit``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxregion.models import decoder, gpt2
from jaxregion.models.config import SUPPORTED, ModelConfig, from_hf_dict
from jaxregion.models.layers import matmul
from jaxregion.models.spec import abstract_params, logical_axes, shapes

__all__ = [
    "SUPPORTED", "ModelConfig", "from_hf_dict", "apply", "abstract_params", "logical_axes",
    "shapes", "next_token_nll", "token_nll", "weighted_nll_sum", "loss_fn", "features",
    "unembedding",
]

_FAMILY = {"gpt2": gpt2, "llama": decoder}


def features(params: dict, tokens: jax.Array, cfg: ModelConfig, *, taps: dict | None = None,
             remat: bool = False) -> jax.Array:
    """Final normed hidden states ``[batch, seq, hidden]`` (what the output head reads)."""
    return _FAMILY[cfg.family].features(params, tokens, cfg, taps=taps, remat=remat)


def unembedding(params: dict, cfg: ModelConfig) -> jax.Array:
    """The output head ``[vocab, hidden]`` (the token embedding when tied)."""
    return _FAMILY[cfg.family].unembedding(params, cfg)


def apply(params: dict, tokens: jax.Array, cfg: ModelConfig, *, taps: dict | None = None,
          remat: bool = False) -> jax.Array:
    """Logits ``[batch, seq, vocab]`` for int tokens ``[batch, seq]``."""
    h = features(params, tokens, cfg, taps=taps, remat=remat)
    return matmul(h, unembedding(params, cfg))


def next_token_nll(logits: jax.Array, tokens: jax.Array) -> jax.Array:
    """Per-position negative log-likelihood ``[batch, seq-1]`` in float32, from logits."""
    logp = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), axis=-1)
    return -jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1)[..., 0]


def token_nll(params: dict, tokens: jax.Array, cfg: ModelConfig, remat: bool = False
              ) -> jax.Array:
    """Per-position next-token NLL ``[batch, seq-1]`` in float32, straight from the params.

    Equal to ``next_token_nll(apply(...))`` but about twice as fast to differentiate: the head
    runs only on the predicted positions, the target logit is picked by a fused compare-select
    (no gather/scatter over ``[batch, seq, vocab]``), and the log-sum-exp is written out so
    its gradient is one softmax. Picking the target from the logits (rather than computing
    ``h · W[target]`` separately) makes the logit gradient ``softmax - onehot`` elementwise
    before the head's matmuls, as in PyTorch: as two separate matmul terms it cancels when the
    model is confident and cost 8x PyTorch's float32 error in importance scores.
    """
    h = features(params, tokens, cfg, remat=remat)[:, :-1]
    w = unembedding(params, cfg).astype(h.dtype)
    logits = matmul(h, w, out_dtype=jnp.float32)
    m = jax.lax.stop_gradient(jnp.max(logits, axis=-1, keepdims=True))
    lse = jnp.log(jnp.sum(jnp.exp(logits - m), axis=-1)) + m[..., 0]
    hit = jax.lax.broadcasted_iota(jnp.int32, logits.shape, 2) == tokens[:, 1:, None]
    target = jnp.sum(jnp.where(hit, logits, 0.0), axis=-1)
    return lse - target


def weighted_nll_sum(params: dict, tokens: jax.Array, weights: jax.Array, cfg: ModelConfig,
                     remat: bool = False) -> jax.Array:
    """Sum of next-token NLL over the windows of a batch, window ``b`` weighted by
    ``weights[b]`` (0 for padding): divided by the predicted-token count it is the loss."""
    nll = token_nll(params, tokens, cfg, remat=remat)
    return jnp.sum(jnp.sum(nll, axis=1) * weights)


def loss_fn(params: dict, tokens: jax.Array, cfg: ModelConfig, weights: jax.Array | None = None,
            remat: bool = False) -> jax.Array:
    """Mean next-token cross-entropy over all predicted positions (optional window weights)."""
    if weights is None:
        return jnp.mean(token_nll(params, tokens, cfg, remat=remat))
    w = weights.astype(jnp.float32)
    total = weighted_nll_sum(params, tokens, w, cfg, remat=remat)
    return total / (jnp.sum(w) * (tokens.shape[1] - 1))
