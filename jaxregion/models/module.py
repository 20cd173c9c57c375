"""The models as Flax NNX modules whose ``nnx.Param`` state IS the HF-named params pytree.

A family's model is a tree of ``nnx.Module``\\ s whose attribute paths are the HF names:
``model.model.layers[3].self_attn.q_proj.weight`` holds ``model.layers.3.self_attn.q_proj
.weight`` in HF's ``[out, in]`` layout. So ``nnx.state(model, nnx.Param)`` flattens to the
same names as :func:`jaxregion.tree.flatten` of the params, and the two views convert
without copies: :func:`params_of` (module -> pytree) and :func:`bind` (pytree -> module,
by merging a graphdef cached per config). The functional API of :mod:`jaxregion.models`
is :func:`bind` plus a method call: there is one forward pass.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache, partial
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jaxregion.models import head
from jaxregion.models.config import ModelConfig
from jaxregion.models.layers import KV, matmul

Array = jax.Array
LayerFn = Callable[[nnx.Module, Array], tuple[Array, dict[str, Array]]]


class CausalLM(nnx.Module):
    """A causal LM of any family: ``model(tokens) -> logits``.

    Subclasses (one per family) build their submodules from the family table and implement
    :meth:`forward` and :meth:`unembedding`; everything else is shared."""

    config: ModelConfig

    # --- what a family implements -------------------------------------------------------
    def forward(
        self,
        tokens: Array,
        positions: Array | None = None,
        remat: bool = False,
        collect: bool = False,
    ) -> tuple[Array, dict[str, Array]]:
        """``(final normed hidden states [batch, seq, hidden], intermediates)``.

        ``intermediates`` is empty unless ``collect``: then ``{name: array}`` holding each
        layer's linear-map inputs (wanda's taps) and residual stream after the layer, named
        by the family table (``model.layers.3.mlp.down_proj``, ``model.layers.3.output``).
        ``positions`` ``[seq]`` defaults to ``0..seq-1`` (a KV cache would pass offsets)."""
        raise NotImplementedError

    def unembedding(self) -> Array:
        """The output head ``[vocab, hidden]`` (the token embedding when tied)."""
        raise NotImplementedError

    def forward_cached(
        self, tokens: Array, positions: Array, cache: list[KV]
    ) -> tuple[Array, list[KV]]:
        """Final normed hidden states for ``tokens [b, s]`` at per-row ``positions [b, s]``,
        attending over (and writing into) a key/value cache, one :class:`KV` per layer.
        The same layers as :meth:`forward`; only attention reads keys from the cache."""
        raise NotImplementedError

    def decode(
        self, tokens: Array, positions: Array, cache: list[KV], last: Array | None = None
    ) -> tuple[Array, list[KV]]:
        """Float32 logits and the updated cache (see :mod:`jaxregion.models.kvcache`).

        With ``last`` (``[b]`` indices into ``s``) only those positions' logits ``[b, vocab]``:
        a prefill needs one row per prompt, not ``[b, s, vocab]``."""
        h, cache = self.forward_cached(tokens, positions, cache)
        if last is not None:
            h = h[jnp.arange(h.shape[0]), last][:, None]
        logits = self.head_logits(matmul(h, self.unembedding(), out_dtype=jnp.float32))
        return (logits[:, 0] if last is not None else logits), cache

    # --- shared --------------------------------------------------------------------------
    def features(self, tokens: Array, positions: Array | None = None, remat: bool = False) -> Array:
        return self.forward(tokens, positions, remat)[0]

    def __call__(self, tokens: Array, positions: Array | None = None, remat: bool = False) -> Array:
        """Logits ``[batch, seq, vocab]`` for int tokens ``[batch, seq]``."""
        return self.head_logits(matmul(self.features(tokens, positions, remat), self.unembedding()))

    def head_logits(self, logits: Array) -> Array:
        """The config's output transforms on raw head logits (:func:`head.transform`:
        cohere's ``logit_scale``, then gemma's ``logit_softcap``)."""
        return head.transform(logits, self.config.logit_scale, self.config.logit_softcap)

    def token_nll(self, tokens: Array, remat: bool = False) -> Array:
        """Per-position next-token NLL ``[batch, seq-1]`` in float32.

        Equal to the NLL of ``self(tokens)`` (the same :meth:`head_logits`), but the head
        runs only on the predicted positions and over vocabulary chunks (:func:`head.nll`):
        ``[batch, seq, vocab]`` logits are never formed, and the logit gradient is
        ``softmax - onehot`` elementwise before the head's matmuls, as in PyTorch."""
        h = self.features(tokens, remat=remat)[:, :-1]
        b, s, d = h.shape
        out = head.nll(
            h.reshape(b * s, d),
            self.unembedding(),
            tokens[:, 1:].reshape(-1),
            self.config.logit_scale,
            self.config.logit_softcap,
        )
        return out.reshape(b, s)

    def nll(self, tokens: Array) -> Array:
        """Per-position next-token NLL ``[batch, seq-1]`` (float32)."""
        return self.token_nll(tokens)

    def pytree(self) -> dict:
        """The plain HF-named params pytree (the arrays themselves, not copies)."""
        return params_of(self)


def run_layers(
    layers: nnx.List, x: Array, fn: LayerFn, prefix: str, remat: bool = False, collect: bool = False
) -> tuple[Array, dict[str, Array]]:
    """``x`` through every layer, ``fn(layer, x) -> (x, layer-local intermediates)``.

    With ``remat`` the layers run as one ``lax.scan`` over their stacked weights, each layer
    rematerialised: a scan bounds live memory to one step's (gathered) weights and
    activations, where an unrolled loop lets XLA hoist every layer's FSDP all-gather and keep
    them all alive. Layers whose structures (graphdefs) repeat with period ``p`` (gemma2's
    alternating sliding and global layers: 2) scan ``p`` layers a step; layers past the last
    whole period run unrolled. Intermediates come out of the scan stacked and are named
    ``{prefix}.{i}.{local name}`` either way, in layer order."""
    n = len(layers)
    out: dict[str, Array] = {}
    gdefs = [nnx.graphdef(layer) for layer in layers] if remat else []
    p = _period(gdefs) if remat and n else n
    steps = n // p if p else 0
    start = 0
    if remat and n and (p == 1 or steps >= 2):
        states = [nnx.state(layer) for layer in layers]
        stacked = tuple(
            jax.tree.map(lambda *a: jnp.stack(a), *states[r : steps * p : p]) for r in range(p)
        )

        def body(h: Array, sts: tuple) -> tuple[Array, list[dict[str, Array]]]:
            ys = []
            for r in range(p):
                h, aux = jax.checkpoint(partial(_merged_step, fn, gdefs[r]))(sts[r], h)
                ys.append(aux)
            return h, ys

        x, ys = jax.lax.scan(body, x, stacked)
        if collect:
            out = {
                f"{prefix}.{j * p + r}.{k}": v[j]
                for j in range(steps)
                for r in range(p)
                for k, v in ys[r].items()
            }
        start = steps * p
    for i in range(start, n):
        if remat:
            x, aux = jax.checkpoint(partial(_merged_step, fn, gdefs[i]))(nnx.state(layers[i]), x)
        else:
            x, aux = fn(layers[i], x)
        out.update({f"{prefix}.{i}.{k}": v for k, v in aux.items()} if collect else {})
    return x, out


def _merged_step(
    fn: LayerFn, gdef: nnx.GraphDef, st: Any, h: Array
) -> tuple[Array, dict[str, Array]]:
    return fn(nnx.merge(gdef, st), h)


def _period(gdefs: list[nnx.GraphDef]) -> int:
    """The smallest ``p`` with ``gdefs[i] == gdefs[i % p]`` for every layer ``i``."""
    n = len(gdefs)
    return next(p for p in range(1, n + 1) if all(gdefs[i] == gdefs[i % p] for i in range(n)))


# --- module <-> params pytree ------------------------------------------------------------
def _to_lists(node: Any) -> Any:
    """nnx pure dicts index lists by int keys; the params pytree uses lists."""
    if isinstance(node, dict):
        if node and all(isinstance(k, int) for k in node):
            return [_to_lists(node[i]) for i in range(len(node))]
        return {k: _to_lists(v) for k, v in node.items()}
    return node


def _to_int_keys(node: Any) -> Any:
    if isinstance(node, list):
        return {i: _to_int_keys(v) for i, v in enumerate(node)}
    if isinstance(node, dict):
        return {k: _to_int_keys(v) for k, v in node.items()}
    return node


def params_of(model: nnx.Module) -> dict:
    """The pure-dict form of ``model``'s ``nnx.Param`` state: the HF-named params pytree."""
    return _to_lists(nnx.to_pure_dict(nnx.state(model, nnx.Param)))


def build(cfg: ModelConfig, rngs: nnx.Rngs | None = None) -> CausalLM:
    """A concrete model of ``cfg`` (zeros, or random with ``rngs``); see also :func:`abstract`."""
    from jaxregion.models.registry import family

    return family(cfg.model_type).Model(cfg, rngs)


def abstract(cfg: ModelConfig) -> CausalLM:
    """The model with ``ShapeDtypeStruct`` values: no memory allocated."""
    return nnx.eval_shape(lambda: build(cfg))


@lru_cache(maxsize=32)
def graphdef(cfg: ModelConfig) -> nnx.GraphDef:
    """The static structure of ``cfg``'s model, cached: merged with params by :func:`bind`."""
    return nnx.graphdef(abstract(cfg))


def bind(params: dict, cfg: ModelConfig) -> CausalLM:
    """The module whose state is ``params`` (the arrays themselves: nothing is copied)."""
    return nnx.merge(graphdef(cfg), _to_int_keys(params))
