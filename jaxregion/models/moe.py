"""The mixture-of-experts block every MoE family shares: a top-k router, fused experts and a
dispatch whose work grows with top-k, not with the number of experts.

Parameters follow transformers' in-memory layout (5.x): the router ``mlp.gate.weight``
``[experts, hidden]``, and the routed experts fused as ``mlp.experts.gate_up_proj``
``[experts, 2 * inter, hidden]`` (gate rows first, then up) and ``mlp.experts.down_proj``
``[experts, hidden, inter]``; qwen2_moe adds a dense ``mlp.shared_expert.*`` scaled by
``sigmoid(mlp.shared_expert_gate(x))``. Checkpoints that store one tensor per expert (what
``save_pretrained`` writes, and the hub's files) are stacked on load: :func:`fused_parts`
names the per-expert keys of each fused tensor.

Routing is transformers': softmax of the router logits in float32, top-k, optionally
renormalised (``norm_topk_prob``). ``cfg.dropped_experts`` removes experts from a layer's
router (the softmax runs over the remaining experts: a router without those rows).

Dispatch: the ``tokens * k`` assignments are sorted by expert and cut into blocks of
``B = ceil(tokens * k / experts)`` rows, each block holding one expert's rows (its last block
padded); every block multiplies by its own expert's weights, gathered per block. At most
``tokens * k + experts * (B - 1) < 2 * tokens * k`` rows are computed whatever the number of
experts, and no capacity drops a token. (``jax.lax.ragged_dot`` would be the grouped matmul,
but XLA:CPU lowers it to a dense product over every expert.)
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jaxregion.errors import UserError
from jaxregion.models.config import ModelConfig, activation_name, get_key, rope_from_hf
from jaxregion.models.decoder import LAYER, GatedMLP, PreNormLayer, gated_mlp_specs
from jaxregion.models.layers import activation
from jaxregion.models.nn import Linear, ParamMaker, tap
from jaxregion.models.table import Spec, linear

Array = jax.Array
_M = LAYER + "mlp."
ROUTER = _M + "gate.weight"
GATE_UP = _M + "experts.gate_up_proj"
DOWN = _M + "experts.down_proj"


def moe_specs(shared: bool = False) -> dict[str, Spec]:
    """The table entries of :class:`SparseMoE` (with ``shared``: qwen2_moe's shared expert).

    Fused expert tensors have no wanda tap (their inputs differ per expert); the experts'
    ``down_proj`` writes the MoE output into the residual stream (``mlp_out``)."""
    t = {
        ROUTER: linear("expert", "embed", tap=_M + "gate", tag="router"),
        GATE_UP: Spec(("expert", "expert_gate_up", "embed"), "linear", input_axis=2),
        DOWN: Spec(("expert", "embed", "expert_mlp"), "linear", input_axis=2, tag="mlp_out"),
    }
    if shared:
        t.update(gated_mlp_specs(prefix="mlp.shared_expert.", hidden="shared_mlp"))
        t[_M + "shared_expert_gate.weight"] = linear(
            "one", "embed", tap=_M + "gate", tag="shared_gate"
        )
    return t


def fused_parts(
    cfg: ModelConfig, layer: int, gate: str, up: str, down: str, prefix: str = "mlp.experts"
) -> dict[str, list[list[str]]]:
    """``{fused name: [[checkpoint keys of expert e, concatenated on axis 0], ...]}`` for one
    layer of a per-expert checkpoint (``gate``/``up``/``down``: the experts' linear names)."""
    p = f"model.layers.{layer}.{prefix}."
    e = range(cfg.num_experts)
    return {
        GATE_UP.format(i=layer): [[f"{p}{j}.{gate}.weight", f"{p}{j}.{up}.weight"] for j in e],
        DOWN.format(i=layer): [[f"{p}{j}.{down}.weight"] for j in e],
    }


ROUTER_PROBS = _M + "router_probs"  # the intermediate holding a layer's routing probabilities


def top_k(probs: Array, k: int, norm_topk: bool) -> tuple[Array, Array]:
    """``(weights [..., k], experts [..., k])``: the ``k`` most probable experts, their
    probabilities renormalised to sum to one with ``norm_topk``."""
    w, idx = jax.lax.top_k(probs, k)
    if norm_topk:
        w = w / jnp.sum(w, axis=-1, keepdims=True)
    return w, idx


def route(
    logits: Array, k: int, norm_topk: bool, dropped: tuple[int, ...] = ()
) -> tuple[Array, Array, Array]:
    """``(probs [T, E] float32, top-k weights [T, k] float32, top-k experts [T, k])``."""
    logits = logits.astype(jnp.float32)
    if dropped:
        keep = jnp.ones(logits.shape[-1], bool).at[jnp.asarray(dropped)].set(False)
        logits = jnp.where(keep, logits, -jnp.inf)
    probs = jax.nn.softmax(logits, axis=-1)
    return (probs, *top_k(probs, k, norm_topk))


def block_size(assignments: int, experts: int) -> int:
    """Rows per dispatch block: ``ceil(assignments / experts)`` (at least one)."""
    return max(1, -(-assignments // experts))


def dispatch(x: Array, idx: Array, w: Array, gate_up: Array, down: Array, act: str) -> Array:
    """``sum_j w[t, j] * expert_{idx[t, j]}(x[t])`` for ``x [T, H]``: the routed experts'
    output ``[T, H]``, computing only the chosen experts (see the module docstring)."""
    n_tok, k = idx.shape
    n_exp, hidden = gate_up.shape[0], x.shape[-1]
    a = n_tok * k
    b = block_size(a, n_exp)
    n_blocks = min(a, (a + n_exp * (b - 1)) // b)
    flat = idx.reshape(-1)
    order = jnp.argsort(flat, stable=True)
    expert = flat[order]
    tok = order // k
    counts = jnp.bincount(flat, length=n_exp)
    blocks = (counts + b - 1) // b
    block_end = jnp.cumsum(blocks)
    rank = jnp.arange(a) - (jnp.cumsum(counts) - counts)[expert]
    pos = (block_end - blocks)[expert] * b + rank
    xs = jnp.zeros((n_blocks * b, hidden), x.dtype).at[pos].set(x[tok])
    owner = jnp.minimum(jnp.searchsorted(block_end, jnp.arange(n_blocks), side="right"), n_exp - 1)
    gu = jnp.einsum("nbh,nih->nbi", xs.reshape(n_blocks, b, hidden), gate_up[owner].astype(x.dtype))
    g, u = jnp.split(gu, 2, axis=-1)
    h = activation(act, g) * u
    y = jnp.einsum("nbi,nhi->nbh", h, down[owner].astype(x.dtype)).reshape(-1, hidden)[pos]
    y = y * w.reshape(-1)[order][:, None].astype(y.dtype)
    return jnp.zeros((n_tok, hidden), y.dtype).at[tok].add(y)


class Experts(nnx.Module):
    """The routed experts, fused: ``gate_up_proj [E, 2I, H]`` and ``down_proj [E, H, I]``."""

    def __init__(self, gate_up: nnx.Param, down: nnx.Param):
        self.gate_up_proj = gate_up
        self.down_proj = down


class SparseMoE(nnx.Module):
    """``mlp.gate`` (the router), ``mlp.experts`` and, for qwen2_moe, the sigmoid-gated
    ``mlp.shared_expert``. ``layer`` picks this layer's entries of ``cfg.dropped_experts``."""

    def __init__(self, cfg: ModelConfig, make: ParamMaker, layer: int):
        self.gate = Linear(make(ROUTER))
        self.experts = Experts(make(GATE_UP), make(DOWN))
        shared = make.has(_M + "shared_expert_gate.weight")
        self.shared_expert = GatedMLP(cfg, make, "mlp.shared_expert.") if shared else None
        self.shared_expert_gate = Linear(make(_M + "shared_expert_gate.weight")) if shared else None
        self.top_k, self.norm_topk, self.act = (
            cfg.experts_per_token,
            cfg.norm_topk_prob,
            cfg.activation,
        )
        self.dropped = tuple(sorted(e for li, e in cfg.dropped_experts if li == layer))

    def __call__(self, x: Array) -> Array:
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        tap(self, "gate", x)
        probs, w, idx = route(self.gate(x2), self.top_k, self.norm_topk, self.dropped)
        tap(self, ROUTER_PROBS.removeprefix(_M), probs.reshape(*shape[:-1], -1))
        y = dispatch(
            x2, idx, w, self.experts.gate_up_proj[...], self.experts.down_proj[...], self.act
        ).reshape(shape)
        if self.shared_expert is not None:
            y = y + jax.nn.sigmoid(self.shared_expert_gate(x)) * self.shared_expert(x)
        return y


# --- what the MoE families share: the config keys, the layer, the body --------------------
def check_all_sparse(d: dict, source: str) -> None:
    """Every layer must be a mixture of experts (qwen's ``mlp_only_layers`` and
    ``decoder_sparse_step`` can make some dense, which this tool does not support)."""
    if d.get("mlp_only_layers") or int(d.get("decoder_sparse_step") or 1) != 1:
        raise UserError(
            f"{source}: dense layers among the MoE layers (mlp_only_layers "
            f"{d.get('mlp_only_layers')}, decoder_sparse_step "
            f"{d.get('decoder_sparse_step')}) are not supported"
        )


def num_experts(d: dict) -> int:
    """The routed experts' count: ``num_experts`` (qwen, olmoe) or ``num_local_experts``
    (mixtral, and what transformers 5 writes for every one of them)."""
    n = get_key(d, "num_experts", "num_local_experts")
    if n is None:
        raise KeyError("num_experts")
    return int(n)


def config_from_hf(
    d: dict,
    source: str,
    *,
    num_experts: int,
    expert_intermediate: int,
    norm_topk: bool,
    windows: tuple[int | None, ...],
    **kw: Any,
) -> ModelConfig:
    """The :class:`ModelConfig` of an MoE checkpoint: the keys every family shares, the
    experts and ``kw`` (family switches such as ``qkv_bias`` or ``qk_norm``)."""
    hidden = int(d["hidden_size"])
    heads = int(d["num_attention_heads"])
    theta, scaling = rope_from_hf(d)
    k = int(d["num_experts_per_tok"])
    if not 0 < k <= num_experts:
        raise UserError(
            f"{source}: num_experts_per_tok {k} must be between 1 and the {num_experts} experts"
        )
    return ModelConfig(
        model_type=d["model_type"],
        vocab_size=int(d["vocab_size"]),
        hidden_size=hidden,
        intermediate_size=int(d["intermediate_size"]),
        num_layers=int(d["num_hidden_layers"]),
        num_heads=heads,
        num_kv_heads=int(d.get("num_key_value_heads") or heads),
        head_dim=int(d.get("head_dim") or hidden // heads),
        max_position_embeddings=int(d.get("max_position_embeddings", 2048)),
        norm_eps=float(get_key(d, "rms_norm_eps", default=1e-6)),
        activation=activation_name(get_key(d, "hidden_act", default="silu"), source),
        tie_embeddings=bool(d.get("tie_word_embeddings", False)),
        rope_theta=theta,
        rope_scaling=scaling,
        sliding_windows=windows,
        num_experts=num_experts,
        experts_per_token=k,
        expert_intermediate_size=expert_intermediate,
        norm_topk_prob=norm_topk,
        bos_token_id=d.get("bos_token_id"),
        eos_token_id=d.get("eos_token_id"),
        hf_config=dict(d),
        **kw,
    )


def layer(
    cfg: ModelConfig, make: ParamMaker, i: int, window: int | None, self_attn: nnx.Module
) -> PreNormLayer:
    """Layer ``i`` of a pre-norm MoE decoder: RMSNorms, ``self_attn`` and :class:`SparseMoE`."""
    return PreNormLayer(cfg, make, window, self_attn, SparseMoE(cfg, make, i))


def drop_experts(cfg: ModelConfig, pairs: Iterable[tuple[int, int]]) -> ModelConfig:
    """``cfg`` with the experts ``(layer, expert)`` removed from their routers: each router
    renormalises over the experts it keeps, as expert-pruning papers do (the parameters are
    unchanged). One-line errors for a dense model, an index out of range, or a layer left
    with fewer experts than its top-k."""
    if not cfg.is_moe:
        raise UserError(f"drop-expert needs a mixture-of-experts model; {cfg.model_type} is dense")
    out = set(cfg.dropped_experts)
    for layer, e in pairs:
        if not (0 <= layer < cfg.num_layers and 0 <= e < cfg.num_experts):
            raise UserError(
                f"drop-expert: expert {e} of layer {layer} is out of range "
                f"({cfg.num_layers} layers of {cfg.num_experts} experts)"
            )
        out.add((int(layer), int(e)))
    for layer in {li for li, _ in out}:
        left = cfg.num_experts - sum(li == layer for li, _ in out)
        if left < cfg.experts_per_token:
            raise UserError(
                f"drop-expert: layer {layer} would keep {left} experts, fewer "
                f"than its top-{cfg.experts_per_token}"
            )
    return cfg.replace(dropped_experts=tuple(sorted(out)))
