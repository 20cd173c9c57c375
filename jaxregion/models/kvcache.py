"""Key/value caches for generation: prefill once, then one token a step.

Why a cache: recomputing every position at every step costs ``O(steps x length)`` forward
passes; with keys and values kept, a step runs one position per row.

Layout: one :class:`~jaxregion.models.layers.KV` per layer, ``[batch, slots, kv_heads,
head_dim]``, slot ``j`` holding position ``j``. Rows have their own positions (``[batch,
seq]``): prompts are right-padded, so row ``i`` writes its ``t``-th new token at slot
``len(prompt_i) + t``. A query at position ``p`` attends to slots ``<= p`` (and ``> p - window``
on a family's sliding-window layers); slots past ``p`` may hold padding from the prefill, but
every slot up to ``p`` has been written with the row's own tokens by then, so nothing else is
ever seen. The forward is each family's own module (:meth:`CausalLM.forward_cached`), so the
math is the one forward's; the tests hold every step's logits to a full recomputation within
1e-4.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxregion.models.config import ModelConfig
from jaxregion.models.layers import KV
from jaxregion.models.module import bind


def init_cache(cfg: ModelConfig, batch: int, slots: int, dtype: jnp.dtype) -> list[KV]:
    """An empty cache for ``batch`` rows of up to ``slots`` positions."""
    return [
        KV.empty(batch, slots, cfg.num_kv_heads, cfg.head_dim, dtype) for _ in range(cfg.num_layers)
    ]


def forward(
    params: dict,
    cfg: ModelConfig,
    tokens: jax.Array,
    positions: jax.Array,
    cache: list[KV],
    last: jax.Array | None = None,
) -> tuple[jax.Array, list[KV]]:
    """Float32 logits for ``tokens [b, s]`` at ``positions [b, s]``, and the updated cache;
    with ``last`` (``[b]``) only those positions' logits ``[b, vocab]``."""
    return bind(params, cfg).decode(tokens, positions, cache, last)
