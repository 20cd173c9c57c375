"""Model families as Flax NNX modules, and the functional API over HF-named param pytrees.

``apply(params, tokens, cfg) -> logits`` is the module of ``cfg`` with ``params`` as its
state (:func:`~jaxregion.models.module.bind`: a cached graphdef merged with the params) and
called: one forward implementation serves both views. ``cfg`` is a hashable
:class:`ModelConfig`, so it can be a static argument of ``jax.jit``.

Roles (:func:`roles`) are the family tables as data: ``{hf_name: Role}`` with the layer
index, kind, residual and input-feature axes, wanda tap and tag of every parameter.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxregion.models.config import ModelConfig, from_hf_dict
from jaxregion.models.module import CausalLM, abstract, bind, build, graphdef, params_of
from jaxregion.models.registry import supported
from jaxregion.models.spec import abstract_params, logical_axes, shapes
from jaxregion.models.table import Role, infer_roles, input_axes, residual_taps, roles

SUPPORTED = supported()

__all__ = [
    "SUPPORTED",
    "CausalLM",
    "ModelConfig",
    "Role",
    "abstract",
    "abstract_params",
    "apply",
    "bind",
    "build",
    "features",
    "from_hf_dict",
    "graphdef",
    "infer_roles",
    "input_axes",
    "intermediates",
    "logical_axes",
    "loss_fn",
    "next_token_nll",
    "params_of",
    "residual_taps",
    "roles",
    "shapes",
    "token_nll",
    "unembedding",
    "weighted_nll_sum",
]


def features(
    params: dict, tokens: jax.Array, cfg: ModelConfig, *, remat: bool = False
) -> jax.Array:
    """Final normed hidden states ``[batch, seq, hidden]`` (what the output head reads)."""
    return bind(params, cfg).features(tokens, remat=remat)


def intermediates(
    params: dict, tokens: jax.Array, cfg: ModelConfig, *, remat: bool = False
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """``(features, {name: activation})``: each layer's linear-map inputs (the ``tap`` of
    :func:`roles`) and residual stream after it (:func:`residual_taps`). With ``remat`` the
    layers still run as one scan; the intermediates come out of it stacked."""
    return bind(params, cfg).forward(tokens, remat=remat, collect=True)


def unembedding(params: dict, cfg: ModelConfig) -> jax.Array:
    """The output head ``[vocab, hidden]`` (the token embedding when tied)."""
    return bind(params, cfg).unembedding()


def apply(params: dict, tokens: jax.Array, cfg: ModelConfig, *, remat: bool = False) -> jax.Array:
    """Logits ``[batch, seq, vocab]`` for int tokens ``[batch, seq]``."""
    return bind(params, cfg)(tokens, remat=remat)


def next_token_nll(logits: jax.Array, tokens: jax.Array) -> jax.Array:
    """Per-position negative log-likelihood ``[batch, seq-1]`` in float32, from logits."""
    logp = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), axis=-1)
    return -jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1)[..., 0]


def token_nll(params: dict, tokens: jax.Array, cfg: ModelConfig, remat: bool = False) -> jax.Array:
    """Per-position next-token NLL ``[batch, seq-1]`` in float32, straight from the params
    (see :meth:`CausalLM.token_nll` for why it is faster than the logits route)."""
    return bind(params, cfg).token_nll(tokens, remat=remat)


def weighted_nll_sum(
    params: dict, tokens: jax.Array, weights: jax.Array, cfg: ModelConfig, remat: bool = False
) -> jax.Array:
    """Sum of next-token NLL over the windows of a batch, window ``b`` weighted by
    ``weights[b]`` (0 for padding): divided by the predicted-token count it is the loss."""
    nll = token_nll(params, tokens, cfg, remat=remat)
    return jnp.sum(jnp.sum(nll, axis=1) * weights)


def loss_fn(
    params: dict,
    tokens: jax.Array,
    cfg: ModelConfig,
    weights: jax.Array | None = None,
    remat: bool = False,
) -> jax.Array:
    """Mean next-token cross-entropy over all predicted positions (optional window weights)."""
    if weights is None:
        return jnp.mean(token_nll(params, tokens, cfg, remat=remat))
    w = weights.astype(jnp.float32)
    total = weighted_nll_sum(params, tokens, w, cfg, remat=remat)
    return total / (jnp.sum(w) * (tokens.shape[1] - 1))
