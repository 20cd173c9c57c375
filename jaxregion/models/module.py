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
from jaxregion.models.nn import capturing, tap

Array = jax.Array
LayerFn = Callable[[nnx.Module, Array], Array]


class CausalLM(nnx.Module):
    """A causal LM of any family: ``model(tokens) -> logits``.

    Subclasses (one per family) write out their submodules from the family table and
    implement :meth:`features`, :meth:`forward_cached` and :meth:`unembedding`; everything
    else is shared."""

    config: ModelConfig

    # --- what a family implements -------------------------------------------------------
    def features(self, tokens: Array, positions: Array | None = None, remat: bool = False) -> Array:
        """Final normed hidden states ``[batch, seq, hidden]`` (what the output head reads).

        ``positions`` ``[seq]`` defaults to ``0..seq-1``. Under ``nnx.capture(...,
        nnx.Intermediate)`` the layers also sow each linear map's input (wanda's taps) and
        their output (the residual stream), named by the family table
        (``model.layers.3.mlp.down_proj``, ``model.layers.3.output``): see
        :func:`jaxregion.models.intermediates`."""
        raise NotImplementedError

    def layer_inputs(self, tokens: Array) -> tuple[Array, tuple]:
        """``(x, ctx)``: the first layer's input and what every layer gets besides it,
        ``layer(x, *ctx)[0]`` being a layer's output. :meth:`features` is these, the layers
        in turn, then :meth:`final_norm`; a caller that backpropagates layer by layer
        (:mod:`jaxregion.layerwise`) runs the same three pieces itself."""
        raise NotImplementedError

    def final_norm(self, h: Array) -> Array:
        """The body's final norm, applied to the last layer's output."""
        return self.parts()[2](h)

    def unembedding(self) -> Array:
        """The output head ``[vocab, hidden]`` (the token embedding when tied)."""
        raise NotImplementedError

    def parts(self) -> tuple[nnx.Module, nnx.Module, nnx.Module]:
        """``(token embedding, layer list, final norm)`` of the body."""
        raise NotImplementedError

    def forward_cached(
        self, tokens: Array, positions: Array, cache: list[KV]
    ) -> tuple[Array, list[KV]]:
        """Final normed hidden states for ``tokens [b, s]`` at per-row ``positions [b, s]``,
        attending over (and writing into) a key/value cache, one :class:`KV` per layer.
        The same layers as :meth:`features`; only attention reads keys from the cache."""
        raise NotImplementedError

    # --- shared --------------------------------------------------------------------------
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
        return self.head_nll(self.features(tokens, remat=remat), tokens)

    def head_nll(self, h: Array, tokens: Array) -> Array:
        """:meth:`token_nll` from the final normed hidden states ``h`` of ``tokens``."""
        h = h[:, :-1]
        b, s, d = h.shape
        out = head.nll(
            h.reshape(b * s, d),
            self.unembedding(),
            tokens[:, 1:].reshape(-1),
            self.config.logit_scale,
            self.config.logit_softcap,
        )
        return out.reshape(b, s)


class LayerStack(nnx.Module):
    """A body's layers in the form a ``lax.scan`` reads, built once (:func:`stack_layers`).

    Layers whose structures (graphdefs) repeat with period ``p`` (gemma2's alternating
    sliding and global layers: 2) are stacked by residue: ``period[r]`` is layer ``r``'s
    module whose params hold layers ``r, r + p, ...`` on a new leading axis; ``tail`` holds
    the layers past the last whole period (or every layer when fewer than two periods fit),
    unstacked. The HF-named view is :func:`unstack_layers`; the KV-cache path (generation)
    reads that layout only."""

    def __init__(self, period: list[nnx.Module], tail: list[nnx.Module]):
        self.period = nnx.List(period)
        self.tail = nnx.List(tail)


def run_layers(layers: nnx.List | LayerStack, x: Array, fn: LayerFn, remat: bool = False) -> Array:
    """``x`` through every layer of ``layers`` (an ``nnx.List`` or a :class:`LayerStack`),
    ``fn(layer, x) -> x``.

    A :class:`LayerStack` runs as one ``lax.scan`` over its stacked weights (each step
    rematerialised with ``remat``): a scan bounds live memory to one step's (gathered)
    weights and activations, where an unrolled loop lets XLA hoist every layer's FSDP
    all-gather and keep them all alive. A list with ``remat`` is stacked here first (a copy
    of the weights inside each call: pass stacked params, see :func:`stack_layers`, to build
    it once). Under ``nnx.capture`` the layers' intermediates come out of the scan stacked
    and are sown into ``layers`` as ``{i}.{local name}``, in layer order: the same names as
    the unrolled loop's."""
    if isinstance(layers, LayerStack):
        return _run_stack(layers, x, fn, remat, capturing(layers))
    if not remat:
        for layer in layers:
            x = fn(layer, x)
        return x
    return _run_stack(_stack_modules(list(layers)), x, fn, remat, capturing(layers), layers)


def _run_stack(
    stack: LayerStack,
    x: Array,
    fn: LayerFn,
    remat: bool,
    capture: bool,
    sow_into: nnx.Module | None = None,
) -> Array:
    """The scan (and the unrolled tail) of :func:`run_layers`."""
    p = len(stack.period)
    gdefs = [nnx.graphdef(m) for m in stack.period]
    states = tuple(nnx.state(m) for m in stack.period)
    steps = jax.tree.leaves(states)[0].shape[0] if p else 0
    sink = stack if sow_into is None else sow_into

    def step(gdef: nnx.GraphDef, st: Any, h: Array) -> tuple[Array, dict[str, Array]]:
        run = partial(_merged_step, fn, gdef, capture)
        return (jax.checkpoint(run) if remat else run)(st, h)

    if p:

        def body(h: Array, sts: tuple) -> tuple[Array, list[dict[str, Array]]]:
            ys = []
            for r in range(p):
                h, inter = step(gdefs[r], sts[r], h)
                ys.append(inter)
            return h, ys

        x, ys = jax.lax.scan(body, x, states)
        for j in range(steps):
            for r in range(p):
                _sow_layer(sink, j * p + r, {k: v[j] for k, v in ys[r].items()})
    for i, layer in enumerate(stack.tail, start=steps * p):
        x, inter = step(nnx.graphdef(layer), nnx.state(layer), x)
        _sow_layer(sink, i, inter)
    return x


def _merged_step(
    fn: LayerFn, gdef: nnx.GraphDef, capture: bool, st: Any, h: Array
) -> tuple[Array, dict[str, Array]]:
    layer = nnx.merge(gdef, st)
    if not capture:
        return fn(layer, h), {}
    h, inter = nnx.capture(fn, nnx.Intermediate)(layer, h)
    return h, flat_intermediates(inter)


def _sow_layer(sink: nnx.Module, i: int, inter: dict[str, Array]) -> None:
    for k, v in inter.items():
        tap(sink, f"{i}.{k}", v)


def flat_intermediates(state: nnx.State) -> dict[str, Array]:
    """``{dotted path: value}`` of a captured ``nnx.Intermediate`` state."""
    return {".".join(map(str, path)): v.get_value() for path, v in nnx.to_flat_state(state)}


def _period(gdefs: list[nnx.GraphDef]) -> int:
    """The smallest ``p`` with ``gdefs[i] == gdefs[i % p]`` for every layer ``i``."""
    n = len(gdefs)
    return next(p for p in range(1, n + 1) if all(gdefs[i] == gdefs[i % p] for i in range(n)))


def _layout(layers: list[nnx.Module]) -> tuple[int, int]:
    """``(period p, whole periods stacked)`` of :class:`LayerStack` (``(0, 0)``: none)."""
    n = len(layers)
    if not n:
        return 0, 0
    p = _period([nnx.graphdef(m) for m in layers])
    steps = n // p
    return (p, steps) if p == 1 or steps >= 2 else (0, 0)


def _stack_modules(layers: list[nnx.Module]) -> LayerStack:
    """The :class:`LayerStack` of ``layers`` (their weights stacked: a copy)."""
    p, steps = _layout(layers)
    period = [
        nnx.merge(
            nnx.graphdef(layers[r]),
            jax.tree.map(
                lambda *a: jnp.stack(a), *(nnx.state(m) for m in layers[r : steps * p : p])
            ),
        )
        for r in range(p)
    ]
    return LayerStack(period, layers[steps * p :])


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
    """The module whose state is ``params`` (the arrays themselves: nothing is copied), in
    either layout: the HF-named one, or :func:`stack_layers`'s."""
    gdef = _stacked_graphdef(cfg) if is_stacked(params, cfg) else graphdef(cfg)
    return nnx.merge(gdef, _to_int_keys(params))


# --- the layers stacked once ---------------------------------------------------------------
@lru_cache(maxsize=32)
def layers_path(cfg: ModelConfig) -> tuple[str, ...]:
    """The attribute path of the body's layer list (``("model", "layers")``)."""
    model = abstract(cfg)
    layers = model.parts()[1]
    return next(tuple(map(str, p)) for p, node in nnx.iter_graph(model) if node is layers)


@lru_cache(maxsize=32)
def _layers_layout(cfg: ModelConfig) -> tuple[int, int]:
    return _layout(list(abstract(cfg).parts()[1]))  # type: ignore[call-overload]


@lru_cache(maxsize=32)
def _stacked_graphdef(cfg: ModelConfig) -> nnx.GraphDef:
    """The structure of ``cfg``'s model with its layer list replaced by a :class:`LayerStack`
    (model surgery on an abstract model)."""

    def make() -> CausalLM:
        model = build(cfg)
        *up, name = layers_path(cfg)
        parent = model
        for part in up:
            parent = getattr(parent, part)
        setattr(parent, name, _stack_modules(list(getattr(parent, name))))
        return model

    return nnx.graphdef(nnx.eval_shape(make))


def _at(tree: dict, path: tuple[str, ...]) -> Any:
    for part in path:
        tree = tree[part]
    return tree


def _with(tree: dict, path: tuple[str, ...], value: Any) -> dict:
    """``tree`` with the node at ``path`` replaced (the other nodes shared, not copied)."""
    head, *rest = path
    return {**tree, head: _with(tree[head], tuple(rest), value) if rest else value}


def is_stacked(params: dict, cfg: ModelConfig) -> bool:
    """Whether ``params`` is in :func:`stack_layers`'s layout."""
    return isinstance(_at(params, layers_path(cfg)), dict)


def stack_layers(params: dict, cfg: ModelConfig) -> dict:
    """``params`` with the layer list replaced by its :class:`LayerStack` form
    ``{"period": [...], "tail": [...]}``: what :func:`run_layers` scans, built once.

    Every function of :mod:`jaxregion.models` takes either layout; pass this one to a
    jitted step with ``remat`` so that the step does not stack the weights on each call (a
    second copy of them). Gradients come back in the same layout; :func:`unstack_layers`
    gives the HF-named view back. Call it under ``jax.jit`` to keep the weights' sharding."""
    path = layers_path(cfg)
    p, steps = _layers_layout(cfg)
    layers = _at(params, path)
    period = [jax.tree.map(lambda *a: jnp.stack(a), *layers[r : steps * p : p]) for r in range(p)]
    return _with(params, path, {"period": period, "tail": list(layers[steps * p :])})


def unstack_layers(params: dict, cfg: ModelConfig) -> dict:
    """The HF-named layout of ``params`` (unchanged when it is already)."""
    if not is_stacked(params, cfg):
        return params
    path = layers_path(cfg)
    node = _at(params, path)
    period = node["period"]
    steps = jax.tree.leaves(period)[0].shape[0] if period else 0
    layers = [
        jax.tree.map(partial(_row, j=j), period[r])
        for j in range(steps)
        for r in range(len(period))
    ]
    return _with(params, path, layers + list(node["tail"]))


def _row(a: Array, j: int) -> Array:
    return a[j]


def stacked_index(name: str, cfg: ModelConfig) -> tuple[str, int | None]:
    """``(name in the stacked layout, index on its leading axis or None)`` of the HF name
    ``name`` (``model.layers.5.mlp.down_proj.weight`` -> ``model.layers.period.1.mlp.
    down_proj.weight``, ``2`` for a period of 2)."""
    prefix = ".".join(layers_path(cfg)) + "."
    if not name.startswith(prefix):
        return name, None
    i_str, rest = name[len(prefix) :].split(".", 1)
    i = int(i_str)
    p, steps = _layers_layout(cfg)
    if i < steps * p:
        return f"{prefix}period.{i % p}.{rest}", i // p
    return f"{prefix}tail.{i - steps * p}.{rest}", None
