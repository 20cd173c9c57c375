"""The models as a Flax NNX module, for code that prefers objects to pytrees.

The functional core stays the source of truth: :class:`CausalLM` holds the HF-named params
as ``nnx.Param`` leaves (same structure, same names) and calls :func:`jaxregion.models.apply`.
``nnx.split`` / ``nnx.state`` paths read ``params/model/layers/3/mlp/down_proj/weight``, and
:meth:`CausalLM.pytree` gives the plain params back for importance, regions and freezing.
"""

from __future__ import annotations

from typing import Any

import jax
from flax import nnx

from jaxregion import hf
from jaxregion.models import ModelConfig, apply, token_nll


def _is_var(x: Any) -> bool:
    return isinstance(x, nnx.Variable)


class CausalLM(nnx.Module):
    """A causal LM of any supported family; ``model(tokens) -> logits``."""

    def __init__(self, config: ModelConfig, params: dict):
        self.config = config
        self.params = nnx.data(jax.tree.map(nnx.Param, params))

    @classmethod
    def from_pretrained(cls, model: str, dtype: str = "float32") -> CausalLM:
        """Load a local HF directory or hub id (lazily, tensor by tensor)."""
        cfg, params = hf.load(model, dtype)
        return cls(cfg, params)

    def pytree(self) -> dict:
        """The plain HF-named params pytree (the arrays themselves, not copies)."""
        return jax.tree.map(lambda v: v[...], self.params, is_leaf=_is_var)

    def __call__(self, tokens: jax.Array) -> jax.Array:
        return apply(self.pytree(), tokens, self.config)

    def nll(self, tokens: jax.Array) -> jax.Array:
        """Per-position next-token NLL ``[batch, seq-1]`` (float32)."""
        return token_nll(self.pytree(), tokens, self.config)
