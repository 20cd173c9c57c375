"""``jaxregion plan`` against XLA's memory analysis of the compiled importance step."""

from __future__ import annotations

import pytest

from jaxregion import importance
from jaxregion.configs import DEFAULT_INCLUDE
from jaxregion.models import from_hf_dict, spec
from jaxregion.parallel import plan, sharding
from jaxregion.scorefiles import scoped

SMALL = dict(
    model_type="llama",
    vocab_size=4096,
    hidden_size=128,
    intermediate_size=344,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=128,
    tie_word_embeddings=False,
)
TABLE = 4096  # bytes XLA may count beside the buffers in its output (the tuple's table)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_plan_state_is_the_compiled_steps(dtype):
    cfg = from_hf_dict(dict(SMALL), "test")
    mesh = sharding.make_mesh()
    batch, seq = 8 * mesh.size, 64
    p = plan.make_plan(
        cfg, {a: int(mesh.shape[a]) for a in sharding.AXES}, "importance", seq, batch, dtype
    )
    params_b, acc_b, grad_b = (b for _, _, b in p.lines)
    scope = scoped(spec.abstract_params(cfg), cfg, DEFAULT_INCLUDE, None)
    m = importance.step_memory(cfg, mesh, batch, seq, dtype, scope)
    # the step's arguments: the params and one half's accumulator (and the batch), exactly
    assert m["argument"] - m["batch"] == params_b + acc_b // 2
    # its output is that half, donated: aliased, no new buffer
    assert m["alias"] == acc_b // 2
    assert 0 <= m["output"] - m["alias"] <= TABLE
    # no whole gradient tree is live: the temporaries (every gradient, as formed, plus the
    # activations) stay below the full scored gradient plus the planner's activations
    full_grad = acc_b // 8 * {"float32": 4, "bfloat16": 2}[dtype]
    assert grad_b < full_grad
    if dtype == "float32":  # CPU XLA runs bf16 matmuls on f32 weight copies (temporaries)
        assert m["temp"] < full_grad + p.activations
        live = m["argument"] + m["temp"] + m["output"]  # plus the other half, resident
        assert abs(p.total - live) <= 0.25 * live, (p.total, live)


def test_plan_remat_total_bounds_the_layerwise_steps():
    """What ``jaxregion importance`` runs by default (layer by layer): its arguments are the
    plan's params and one accumulator half exactly, and the plan's remat total (those, the
    other half, one layer's gradients and the activation estimate) bounds what is live at
    once: the arguments, the other half, the layer inputs and the largest program's
    temporaries. The head's chunks are sized for three chunk-sized arrays; XLA fuses its
    backward into one or two, so the bound is not tight at small widths, where the head
    outweighs a layer. Float32: CPU XLA runs bf16 matmuls on f32 weight copies."""
    cfg = from_hf_dict({**SMALL, "vocab_size": 65536}, "test")
    mesh = sharding.make_mesh()
    batch, seq = 2 * mesh.size, 64
    p = plan.make_plan(
        cfg, {a: int(mesh.shape[a]) for a in sharding.AXES}, "importance", seq, batch, "float32"
    )
    params_b, acc_b, _ = (b for _, _, b in p.lines)
    scope = scoped(spec.abstract_params(cfg), cfg, DEFAULT_INCLUDE, None)
    m = importance.step_memory(cfg, mesh, batch, seq, "float32", scope, remat=True)
    assert m["argument"] - m["batch"] == params_b + acc_b // 2
    live = m["argument"] - m["batch"] + m["output"] + m["inputs"] + m["temp"]
    print(f"plan remat total {p.total_remat:,.0f}, layerwise live {live:,}")
    assert live <= p.total_remat <= 1.25 * live, (p.total_remat, live)
