"""Model families as pure functions over HF-named param pytrees.

``apply(params, tokens, cfg) -> logits`` is the whole interface; ``cfg`` is a hashable
:class:`ModelConfig`, so it can be a static argument of ``jax.jit``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxregion.models import decoder, gpt2
from jaxregion.models.config import SUPPORTED, ModelConfig, from_hf_dict
from jaxregion.models.spec import abstract_params, logical_axes, shapes

__all__ = [
    "SUPPORTED", "ModelConfig", "from_hf_dict", "apply", "abstract_params", "logical_axes",
    "shapes", "next_token_nll", "loss_fn",
]

_FORWARD = {"gpt2": gpt2.forward, "llama": decoder.forward}


def apply(params: dict, tokens: jax.Array, cfg: ModelConfig, *, taps: dict | None = None,
          remat: bool = False) -> jax.Array:
    """Logits ``[batch, seq, vocab]`` for int tokens ``[batch, seq]``."""
    return _FORWARD[cfg.family](params, tokens, cfg, taps=taps, remat=remat)


def next_token_nll(logits: jax.Array, tokens: jax.Array) -> jax.Array:
    """Per-position negative log-likelihood ``[batch, seq-1]`` in float32."""
    logp = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), axis=-1)
    return -jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1)[..., 0]


def loss_fn(params: dict, tokens: jax.Array, cfg: ModelConfig, weights: jax.Array | None = None,
            remat: bool = False) -> jax.Array:
    """Mean next-token cross-entropy over all predicted positions (optionally per-window weights)."""
    nll = next_token_nll(apply(params, tokens, cfg, remat=remat), tokens)
    if weights is None:
        return jnp.mean(nll)
    w = weights.astype(jnp.float32)[:, None]
    return jnp.sum(nll * w) / (jnp.sum(w) * nll.shape[1])
