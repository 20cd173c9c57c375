"""A memory model: bytes per device for eval, importance and training on a given mesh.

Parameter-shaped state is counted exactly, tensor by tensor, with the same sharding rules
as the real run (:func:`jaxregion.parallel.sharding.spec_for`, divisibility fallback included), so a
replicated tensor counts in full on every device. Activations are an estimate (Korthikanti
et al. 2022, "Reducing Activation Recomputation in Large Transformer Models", for a
tensor-parallel layer without sequence parallelism) plus the output head's float32
temporaries, which the vocabulary-chunked head (:mod:`jaxregion.models.head`) bounds by
its byte budget.

Bytes per parameter:

* eval:        params (2 for bf16, 4 for f32)
* importance:  params + two float32 accumulators, the split halves (8, the scored
               tensors only: the default ``:layers`` scope has no embedding or head) +
               one layer's gradients (param dtype). ``jaxregion importance`` backpropagates
               layer by layer (:mod:`jaxregion.models.layerwise`, the "remat" total): one
               layer's gradients and activations are alive at once by construction, beside
               the layer inputs. Without remat, the one-program step donates the accumulator
               and XLA adds each gradient into it as the backward pass forms it. Both are
               measured against XLA's memory analysis (``scripts/bench_plan.py``,
               ``tests/test_plan_measured.py``). On CPU, XLA computes bfloat16 matmuls in
               float32 (float32 copies of the weights as temporaries), which this
               accelerator plan does not count.
* train:       float32 master (4) + Adam m, v (8) + float32 gradients (4) + bf16 compute
               copy (2) [+ bool freeze mask (1) with a region frozen] = 18 (19)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from types import SimpleNamespace

from jaxregion.configs import PlanConfig
from jaxregion.errors import UserError
from jaxregion.io import hf
from jaxregion.models import spec as mspec
from jaxregion.models.config import ModelConfig, from_hf_dict
from jaxregion.models.head import HEAD_BUDGET, chunk_size
from jaxregion.models.table import roles
from jaxregion.names import PLAN_TASKS as TASKS
from jaxregion.parallel import sharding

GiB = 1024**3

PRESETS: dict[str, dict] = {
    "llama2-7b": dict(
        model_type="llama",
        vocab_size=32000,
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=32,
        max_position_embeddings=4096,
    ),
    "llama2-13b": dict(
        model_type="llama",
        vocab_size=32000,
        hidden_size=5120,
        intermediate_size=13824,
        num_hidden_layers=40,
        num_attention_heads=40,
        num_key_value_heads=40,
        max_position_embeddings=4096,
    ),
    "llama2-70b": dict(
        model_type="llama",
        vocab_size=32000,
        hidden_size=8192,
        intermediate_size=28672,
        num_hidden_layers=80,
        num_attention_heads=64,
        num_key_value_heads=8,
        max_position_embeddings=4096,
    ),
    "llama3-8b": dict(
        model_type="llama",
        vocab_size=128256,
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        max_position_embeddings=8192,
    ),
    "mistral-7b": dict(
        model_type="mistral",
        vocab_size=32000,
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        max_position_embeddings=32768,
    ),
    # mixtures of experts (top-k of the routed experts run per token)
    "olmoe-1b-7b": dict(
        model_type="olmoe",
        vocab_size=50304,
        hidden_size=2048,
        intermediate_size=1024,
        num_hidden_layers=16,
        num_attention_heads=16,
        num_key_value_heads=16,
        max_position_embeddings=4096,
        num_experts=64,
        num_experts_per_tok=8,
    ),
    "mixtral-8x7b": dict(
        model_type="mixtral",
        vocab_size=32000,
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        max_position_embeddings=32768,
        num_local_experts=8,
        num_experts_per_tok=2,
    ),
}
_DT = {"float32": 4, "bfloat16": 2}


def forward_flops_per_token(cfg: ModelConfig, seq_len: int) -> dict[str, float]:
    """Matmul FLOPs (2 per multiply-add) of one token's forward pass at ``seq_len``
    (attention over the whole window, as the masked kernel computes it): ``dense`` counts
    every parameter's matmul, ``active`` only the top-k routed experts (what an MoE runs per
    token), ``dispatch`` the bound of :func:`jaxregion.models.moe.dispatch` (its padded
    blocks: at most twice the top-k rows)."""
    h, q, kv, L = cfg.hidden_size, cfg.q_dim, cfg.kv_dim, cfg.num_layers
    attn = 2 * (2 * h * q + 2 * h * kv) + 2 * 2 * seq_len * q
    head = 2 * h * cfg.vocab_size
    if not cfg.is_moe:
        mlp = 2 * 3 * h * cfg.intermediate_size
        total = L * (attn + mlp) + head
        return {"dense": total, "active": total, "dispatch": total}
    expert = 2 * 3 * h * cfg.expert_intermediate_size
    si = cfg.shared_expert_intermediate_size
    shared = 2 * 3 * h * si + 2 * h if si else 0  # the shared expert and its gate
    base = L * (attn + 2 * h * cfg.num_experts + shared) + head
    k = cfg.experts_per_token
    return {
        "dense": base + L * cfg.num_experts * expert,
        "active": base + L * k * expert,
        "dispatch": base + L * 2 * k * expert,
    }


def preset_config(name: str) -> ModelConfig:
    if name not in PRESETS:
        raise UserError(f"--preset {name!r}: unknown; have {', '.join(PRESETS)}")
    return from_hf_dict(dict(PRESETS[name]), f"preset {name}")


@dataclass
class Plan:
    model: str
    task: str
    mesh: dict[str, int]
    n_params: int
    seq_len: int
    batch_size: int
    dtype: str
    lines: list[tuple[str, float, float]] = field(default_factory=list)  # name, B/param, bytes
    activations: float = 0.0
    activations_remat: float = 0.0
    replicated: list[str] = field(default_factory=list)

    @property
    def devices(self) -> int:
        return math.prod(self.mesh.values())

    @property
    def state_bytes(self) -> float:
        return sum(b for _, _, b in self.lines)

    @property
    def total(self) -> float:
        return self.state_bytes + self.activations

    @property
    def total_remat(self) -> float:
        return self.state_bytes + self.activations_remat

    def as_dict(self) -> dict:
        return {
            "model": self.model,
            "task": self.task,
            "mesh": self.mesh,
            "devices": self.devices,
            "n_params": self.n_params,
            "seq_len": self.seq_len,
            "batch_size": self.batch_size,
            "dtype": self.dtype,
            "per_device_bytes": {n: b for n, _, b in self.lines},
            "bytes_per_param": {n: p for n, p, _ in self.lines},
            "activations_bytes": self.activations,
            "activations_remat_bytes": self.activations_remat,
            "total_bytes": self.total,
            "total_remat_bytes": self.total_remat,
            "replicated_tensors": len(self.replicated),
        }


def _split_elements(cfg: ModelConfig, mesh: dict[str, int]) -> dict[str, tuple[int, int]]:
    """``{name: (elements, elements per device)}`` under the real sharding rules."""
    fake = SimpleNamespace(shape=mesh)
    rules = sharding.rules_for(cfg)
    shapes = mspec.shapes(cfg)
    out = {}
    for name, axes in mspec.logical_axes(cfg).items():
        shape = shapes[name]
        spec = sharding.spec_for(axes, shape, fake, rules)
        n = math.prod(shape)
        out[name] = (n, n // math.prod(mesh[a] for a in spec if a is not None))
    return out


def sharded_elements(
    cfg: ModelConfig, mesh: dict[str, int], layers_only: bool = False
) -> tuple[int, int, list[str]]:
    """(total params, elements per device under the sharding rules, names not split); with
    ``layers_only`` only the transformer layers' tensors (importance's default scope)."""
    r = roles(cfg) if layers_only else {}
    total = per_dev = 0
    replicated = []
    for name, (n, dev) in _split_elements(cfg, mesh).items():
        if layers_only and (r.get(name) is None or r[name].layer is None):
            continue
        total += n
        per_dev += dev
        if dev == n and n > 0:
            replicated.append(name)
    return total, per_dev, replicated


def largest_layer(cfg: ModelConfig, mesh: dict[str, int]) -> int:
    """Elements per device of the largest transformer layer: the gradient that is live at
    once in the importance step (see the module docstring)."""
    r = roles(cfg)
    per_layer: dict[int, int] = {}
    for name, (_, dev) in _split_elements(cfg, mesh).items():
        layer = r[name].layer if name in r else None
        if layer is not None:
            per_layer[layer] = per_layer.get(layer, 0) + dev
    return max(per_layer.values(), default=0)


def activation_bytes(
    cfg: ModelConfig, mesh: dict[str, int], seq_len: int, batch_size: int, task: str, act_bytes: int
) -> tuple[float, float]:
    """(without remat, with per-layer remat) activation bytes per device."""
    b = batch_size / max(mesh["data"] * mesh["fsdp"], 1)
    s, h, a, t = seq_len, cfg.hidden_size, cfg.num_heads, mesh["tensor"]
    L, V = cfg.num_layers, cfg.vocab_size
    mlp_ratio = cfg.intermediate_size / (4 * h)  # the formula assumes a 4h MLP
    scale = act_bytes / 2  # the formula counts 16-bit activations
    per_layer = s * b * h * (10 + 24 * mlp_ratio / t + 5 * a * s / (h * t)) * scale
    v_split = t if V % t == 0 else 1
    n = max(int(b * (s - 1)), 1)  # predicted positions per device
    logits = 3 * n * chunk_size(n, V // v_split, HEAD_BUDGET) * 4  # chunked head, float32
    if task == "eval":  # forward only: about one layer live, plus the logits
        one = per_layer + logits
        return one, one
    full = L * per_layer + logits
    remat = L * (2 * s * b * h * scale) + per_layer + logits  # layer inputs + one layer
    return full, remat


def make_plan(
    cfg: ModelConfig,
    mesh: dict[str, int],
    task: str = "importance",
    seq_len: int = 2048,
    batch_size: int | None = None,
    dtype: str = "bfloat16",
    freeze: bool = False,
    model: str = "",
) -> Plan:
    if task not in TASKS:
        raise UserError(f"--task {task!r}: use one of {', '.join(TASKS)}")
    if dtype not in _DT:
        raise UserError(f"--dtype {dtype!r}: use float32 or bfloat16")
    if seq_len < 2:
        raise UserError(f"--seq-len {seq_len}: must be >= 2")
    mesh = {a: int(mesh[a]) for a in sharding.AXES}
    batch_size = batch_size or mesh["data"] * mesh["fsdp"]
    if batch_size <= 0:
        raise UserError(f"--batch-size {batch_size}: must be positive")
    total, per_dev, replicated = sharded_elements(cfg, mesh)
    p = _DT[dtype]
    lines: list[tuple[str, float, float]]  # name, B/param (of what it covers), bytes
    if task == "eval":
        lines = [(f"params ({dtype})", p, p * per_dev)]
    elif task == "importance":
        scored = sharded_elements(cfg, mesh, layers_only=True)[1]
        layer = largest_layer(cfg, mesh)
        lines = [
            (f"params ({dtype})", p, p * per_dev),
            ("accumulators, 2 halves (f32, :layers)", 8, 8 * scored),
            (f"gradients ({dtype}, one layer)", p * layer / max(scored, 1), p * layer),
        ]
    else:
        bpp = [("master params (float32)", 4), ("Adam m, v (float32)", 8)]
        bpp.append(("gradients (float32)", 4))
        if dtype == "bfloat16":
            bpp.append(("compute copy (bfloat16)", 2))
        if freeze:
            bpp.append(("freeze mask (bool)", 1))
        lines = [(n, b, b * per_dev) for n, b in bpp]
    plan = Plan(model, task, mesh, total, seq_len, batch_size, dtype, lines, replicated=replicated)
    plan.activations, plan.activations_remat = activation_bytes(
        cfg, mesh, seq_len, batch_size, task, p
    )
    return plan


def format_plan(plan: Plan) -> str:
    m = ",".join(f"{a}={plan.mesh[a]}" for a in sharding.AXES)
    out = [
        f"model {plan.model}: {plan.n_params / 1e9:.2f}B parameters; task {plan.task}; "
        f"mesh {m} ({plan.devices} devices); dtype {plan.dtype}",
        f"batch {plan.batch_size} x seq {plan.seq_len} "
        f"({plan.batch_size / (plan.mesh['data'] * plan.mesh['fsdp']):g} windows per "
        f"batch shard)",
        "",
        f"| {'per device':<30} | {'B/param':>7} | {'GiB':>9} |",
        f"|{'-' * 32}|{'-' * 9}|{'-' * 11}|",
    ]
    for name, bpp, b in plan.lines:
        out.append(f"| {name:<30} | {bpp:>7g} | {b / GiB:>9.2f} |")
    bpp_total = sum(x for _, x, _ in plan.lines)
    out.append(f"| {'state total':<30} | {bpp_total:>7g} | {plan.state_bytes / GiB:>9.2f} |")
    if plan.task == "eval":
        out.append(f"| {'activations (est.)':<30} | {'':>7} | {plan.activations / GiB:>9.2f} |")
        out.append(f"| {'TOTAL':<30} | {'':>7} | {plan.total / GiB:>9.2f} |")
    else:
        out.append(
            f"| {'activations, no remat (est.)':<30} | {'':>7} | {plan.activations / GiB:>9.2f} |"
        )
        out.append(
            f"| {'activations, remat (est.)':<30} | {'':>7} | "
            f"{plan.activations_remat / GiB:>9.2f} |"
        )
        out.append(f"| {'TOTAL (no remat)':<30} | {'':>7} | {plan.total / GiB:>9.2f} |")
        out.append(f"| {'TOTAL (remat)':<30} | {'':>7} | {plan.total_remat / GiB:>9.2f} |")
    if plan.replicated:
        out.append("")
        out.append(
            f"{len(plan.replicated)} tensors are not split on this mesh (dimensions "
            "do not divide, or the axis is 1); they count in full on every device"
        )
    return "\n".join(out)


def plan_for(cfg: PlanConfig) -> Plan:
    """``jaxregion plan``: the plan of ``cfg``'s model (config.json or preset) on its mesh."""
    model = preset_config(cfg.preset) if cfg.preset else hf.load_config(cfg.model)
    mc = sharding.MeshConfig.parse(cfg.mesh)
    if -1 in [getattr(mc, a) for a in sharding.AXES]:
        if cfg.devices is None:
            raise UserError(f"--mesh {cfg.mesh}: has a -1; give all sizes or --devices N")
        mesh = mc.resolve(cfg.devices)
    else:
        mesh = mc.as_dict()
    return make_plan(
        model,
        mesh,
        cfg.task,
        cfg.seq_len,
        cfg.batch_size,
        cfg.dtype,
        cfg.freeze,
        cfg.preset or cfg.model,
    )
