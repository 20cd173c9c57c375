"""The one decoder-only causal LM every family parametrises.

Each family's ``Model`` is a :class:`DecoderLM` naming its body module and that body's
attributes (the HF names: ``model.embed_tokens``/``layers``/``norm`` or
``transformer.wte``/``h``/``ln_f``) and, where it differs, overriding :meth:`embed` (bloom's
embedding LayerNorm, gpt2's learned positions) or :meth:`position_inputs` (RoPE tables,
gemma's local and global tables, bloom's ALiBi bias, nothing for gpt2). The pass itself
(embed, the layers through :func:`run_layers` or over a KV cache, the final norm) and the
untied ``lm_head`` live only here, so :meth:`forward` and :meth:`forward_cached` cannot drift
apart between families.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import jax
import jax.numpy as jnp
from flax import nnx

from jaxregion.models.config import ModelConfig
from jaxregion.models.layers import KV, rope_tables
from jaxregion.models.module import CausalLM, run_layers
from jaxregion.models.nn import Linear, ParamMaker
from jaxregion.models.table import Spec

Array = jax.Array


class DecoderLM(CausalLM):
    """``{PREFIX}.*`` (the body) and an ``lm_head`` only when the embeddings are untied.

    Every layer is called ``layer(x, *position_inputs, positions, collect, kv)`` and returns
    ``(x, intermediates, kv)``."""

    TABLE: ClassVar[Callable[[ModelConfig | None], dict[str, Spec]]]
    BODY: ClassVar[type[nnx.Module]]  # built as ``BODY(cfg, make)``
    PREFIX: ClassVar[str] = "model"  # the body's attribute (and HF name prefix)
    EMBED: ClassVar[str] = "embed_tokens"
    LAYERS: ClassVar[str] = "layers"
    FINAL_NORM: ClassVar[str] = "norm"

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs | None = None):
        make = ParamMaker(cfg, self.TABLE(cfg), rngs)
        self.config = cfg
        setattr(self, self.PREFIX, self.BODY(cfg, make))
        self.lm_head = None if cfg.tie_embeddings else Linear(make("lm_head.weight"))

    # --- the hooks a family may override ------------------------------------------------
    def embed(self, tokens: Array, positions: Array) -> Array:
        """Token embeddings in the weights' dtype; gemma's scaled by ``sqrt(hidden)``."""
        cfg, emb = self.config, self._part(self.EMBED)
        x = emb(tokens).astype(self._dtype())
        if cfg.scale_embeddings:
            x = x * jnp.asarray(cfg.hidden_size**0.5, dtype=self._dtype())
        return x

    def position_inputs(self, positions: Array, cache: list[KV] | None) -> tuple:
        """What every layer gets before ``positions``: here the RoPE ``(cos, sin)`` tables.
        ``cache`` is the KV cache when decoding (its key positions span the past too)."""
        return (rope_tables(self.config, positions, self._dtype()),)

    # --- shared --------------------------------------------------------------------------
    def _part(self, name: str) -> nnx.Module:
        return getattr(getattr(self, self.PREFIX), name)

    def _dtype(self) -> jnp.dtype:
        """The activations' dtype: the token embedding's."""
        return self._part(self.EMBED).weight.dtype

    def unembedding(self) -> Array:
        w = self._part(self.EMBED) if self.lm_head is None else self.lm_head
        return w.weight[...]

    def forward(self, tokens: Array, positions: Array | None = None, remat: bool = False,
                collect: bool = False) -> tuple[Array, dict[str, Array]]:
        pos = jnp.arange(tokens.shape[1]) if positions is None else positions
        x = self.embed(tokens, pos)
        ctx = self.position_inputs(pos, None)
        x, aux = run_layers(self._part(self.LAYERS), x,
                            lambda layer, h: layer(h, *ctx, pos, collect)[:2],
                            f"{self.PREFIX}.{self.LAYERS}", remat, collect)
        return self._part(self.FINAL_NORM)(x), aux

    def forward_cached(self, tokens: Array, positions: Array, cache: list[KV]
                       ) -> tuple[Array, list[KV]]:
        x = self.embed(tokens, positions)
        ctx = self.position_inputs(positions, cache)
        out = []
        for layer, kv in zip(self._part(self.LAYERS), cache):
            x, _, kv = layer(x, *ctx, positions, False, kv)
            out.append(kv)
        return self._part(self.FINAL_NORM)(x), out
