"""Model families as Flax NNX modules, and the functional API over HF-named param pytrees.

``apply(params, tokens, cfg) -> logits`` is the module of ``cfg`` with ``params`` as its
state (:func:`~jaxregion.models.module.bind`: a cached graphdef merged with the params) and
called: one forward implementation serves both views, and one spelling each operation
(anything else is ``bind(params, cfg)`` and a method: ``.features``, ``.unembedding``).
``params`` may also be in :func:`stack_layers`'s layout (the layers stacked once for the
remat scan). ``cfg`` is a hashable
:class:`ModelConfig`, so it can be a static argument of ``jax.jit``.

Roles (:func:`roles`) are the family tables as data: ``{hf_name: Role}`` with the layer
index, kind, residual and input-feature axes, wanda tap and tag of every parameter.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxregion.models.config import ModelConfig, from_hf_dict
from jaxregion.models.module import (
    CausalLM,
    LayerStack,
    abstract,
    bind,
    build,
    flat_intermediates,
    graphdef,
    params_of,
    stack_layers,
    stacked_index,
    unstack_layers,
)
from jaxregion.models.registry import supported
from jaxregion.models.spec import abstract_params, logical_axes, shapes
from jaxregion.models.table import Role, infer_roles, input_axes, residual_taps, roles

SUPPORTED = supported()

__all__ = [
    "SUPPORTED",
    "CausalLM",
    "LayerStack",
    "ModelConfig",
    "Role",
    "abstract",
    "abstract_params",
    "apply",
    "bind",
    "build",
    "from_hf_dict",
    "graphdef",
    "infer_roles",
    "input_axes",
    "intermediates",
    "logical_axes",
    "loss_fn",
    "params_of",
    "residual_taps",
    "roles",
    "shapes",
    "stack_layers",
    "stacked_index",
    "token_nll",
    "unstack_layers",
    "weighted_nll_sum",
]


def intermediates(
    params: dict, tokens: jax.Array, cfg: ModelConfig, *, remat: bool = False
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """``(features, {name: activation})``: each layer's linear-map inputs (the ``tap`` of
    :func:`roles`) and residual stream after it (:func:`residual_taps`), sown by the layers
    and collected with ``nnx.capture``. With ``remat`` the layers still run as one scan; the
    intermediates come out of it stacked and keep their per-layer names."""
    model = bind(params, cfg)
    h, inter = nnx.capture(model.features, nnx.Intermediate)(tokens, remat=remat)
    return h, flat_intermediates(inter)


def apply(params: dict, tokens: jax.Array, cfg: ModelConfig, *, remat: bool = False) -> jax.Array:
    """Logits ``[batch, seq, vocab]`` for int tokens ``[batch, seq]``."""
    return bind(params, cfg)(tokens, remat=remat)


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
