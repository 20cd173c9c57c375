"""NNX building blocks shared by the families: HF-layout linear maps, norms, embeddings.

Every ``nnx.Param`` is made by :class:`ParamMaker` from the family table, so its shape,
dtype and logical axes (carried as ``out_sharding`` metadata) come from one place. The
modules hold nothing else: the math is the pure functions of :mod:`jaxregion.models.layers`.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from jaxregion.models.config import ModelConfig
from jaxregion.models.layers import conv1d, layer_norm, linear, rms_norm
from jaxregion.models.table import Spec, axis_sizes

Array = jax.Array


class ParamMaker:
    """``make(template, i)`` -> the ``nnx.Param`` of that table entry.

    Values are zeros unless ``rngs`` is given (then HF-style: normal(0, 0.02) weights, zero
    biases, unit norms, or zero for ``(1 + w)`` norms). Models are usually built abstractly
    (``nnx.eval_shape``) and filled from a checkpoint, so the values rarely matter."""

    def __init__(
        self,
        cfg: ModelConfig,
        table: Mapping[str, Spec],
        rngs: nnx.Rngs | None = None,
        dtype: jnp.dtype = jnp.float32,
    ):
        self.cfg, self.table, self.rngs, self.dtype = cfg, table, rngs, dtype
        self.sizes = axis_sizes(cfg)

    def has(self, template: str) -> bool:
        return template in self.table

    def __call__(self, template: str) -> nnx.Param:
        spec = self.table[template]
        shape = tuple(self.sizes[a] for a in spec.axes)
        if self.rngs is None or spec.kind == "bias" or template.endswith(".bias"):
            value = jnp.zeros(shape, self.dtype)
        elif spec.kind == "norm":
            value = jnp.full(shape, 0.0 if self.cfg.norm_plus_one else 1.0, self.dtype)
        else:
            value = 0.02 * jax.random.normal(self.rngs.params(), shape, self.dtype)
        return nnx.Param(value, out_sharding=spec.axes, eager_sharding=False)

    def optional(self, template: str) -> nnx.Param | None:
        return self(template) if self.has(template) else None


def capturing(module: nnx.Module) -> bool:
    """Whether ``module`` runs under ``nnx.capture`` (which marks every module it covers)."""
    return hasattr(module, "__captures__")


def tap(module: nnx.Module, name: str, value: Array) -> None:
    """Sow ``value`` as the ``nnx.Intermediate`` ``name`` of ``module`` (its path plus
    ``name`` is the family table's tap name) when the call runs under ``nnx.capture``.
    Outside a capture nothing is stored: a plain forward pass keeps no activations."""
    if capturing(module):
        module.sow(nnx.Intermediate, name, value, reduce_fn=_last, init_fn=tuple)


def _last(_: object, value: Array) -> Array:
    return value


def _v(p: nnx.Param | None) -> Array | None:
    return None if p is None else p[...]


class Linear(nnx.Module):
    """``nn.Linear`` in HF layout: ``weight [out, in]``, optional ``bias [out]``."""

    def __init__(self, weight: nnx.Param, bias: nnx.Param | None = None):
        self.weight = weight
        self.bias = bias

    def __call__(self, x: Array) -> Array:
        return linear(x, self.weight[...], _v(self.bias))


class Conv1D(nnx.Module):
    """GPT-2's Conv1D: ``weight [in, out]``, ``bias [out]``."""

    def __init__(self, weight: nnx.Param, bias: nnx.Param):
        self.weight = weight
        self.bias = bias

    def __call__(self, x: Array) -> Array:
        return conv1d(x, self.weight[...], self.bias[...])


class Embedding(nnx.Module):
    """A lookup table ``weight [n, hidden]``."""

    def __init__(self, weight: nnx.Param):
        self.weight = weight

    def __call__(self, ids: Array) -> Array:
        return jnp.take(self.weight[...], ids, axis=0)


class RMSNorm(nnx.Module):
    def __init__(self, weight: nnx.Param, eps: float, plus_one: bool = False):
        self.weight = weight
        self.eps = eps
        self.plus_one = plus_one

    def __call__(self, x: Array) -> Array:
        return rms_norm(x, self.weight[...], self.eps, self.plus_one)


class LayerNorm(nnx.Module):
    """Mean-centred LayerNorm; ``bias=None`` for cohere's bias-free one."""

    def __init__(self, weight: nnx.Param, bias: nnx.Param | None, eps: float):
        self.weight = weight
        self.bias = bias
        self.eps = eps

    def __call__(self, x: Array) -> Array:
        return layer_norm(x, self.weight[...], _v(self.bias), self.eps)


__all__ = [
    "Conv1D",
    "Embedding",
    "LayerNorm",
    "Linear",
    "ParamMaker",
    "RMSNorm",
    "capturing",
    "tap",
]
