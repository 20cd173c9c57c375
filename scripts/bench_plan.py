#!/usr/bin/env python
"""``jaxregion plan`` against XLA's memory analysis of the compiled importance step.

For each model (an HF directory's config.json; no weights are read: the step is lowered on
abstract params) and dtype, at ``--batch`` x ``--seq``: the planner's per-device lines next
to ``compiled.memory_analysis()`` of the taylor step over the default ``:layers`` scope.
The step's arguments are the params, one half's accumulator (donated, so it is also the
aliased output) and the batch; the other half's accumulator stays resident beside it, and
the gradient and the activations are XLA temporaries.

    python scripts/bench_plan.py [--models DIR,DIR] [--batch 2] [--seq 128] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys

MODELS = {
    "smollm2-135m": "/work/models/smollm2-135m-hf",
    "gemma3-270m": "/work/models/gemma3-270m-hf",
}
GiB = 1024**3


def measure(cfg, dtype: str, batch: int, seq: int) -> dict[str, float]:
    """XLA's byte counts of the compiled importance step (abstract params: no memory)."""
    import jax
    import jax.numpy as jnp

    from jaxregion import importance
    from jaxregion.configs import DEFAULT_INCLUDE
    from jaxregion.parallel import sharding
    from jaxregion.scorefiles import scoped

    mesh = sharding.make_mesh()
    params = sharding.abstract_sharded(cfg, mesh, jnp.dtype(dtype))
    scope = scoped(params, cfg, DEFAULT_INCLUDE, None)
    state = importance.init_state(params, cfg, "taylor", batch, mesh, scope, abstract=True)
    bsh = sharding.batch_sharding(mesh)
    toks = jax.ShapeDtypeStruct((batch, seq), jnp.int32, sharding=bsh)
    w = jax.ShapeDtypeStruct((batch,), jnp.float32, sharding=bsh)
    step = importance.step_function("taylor", cfg, state.acc[0])
    ma = step.lower(state.acc[0], params, toks, w).compile().memory_analysis()
    return {
        "argument": float(ma.argument_size_in_bytes),
        "output": float(ma.output_size_in_bytes),
        "alias": float(ma.alias_size_in_bytes),
        "temp": float(ma.temp_size_in_bytes),
        "batch_bytes": float(batch * seq * 4 + batch * 4),
    }


def compare(cfg, dtype: str, batch: int, seq: int) -> dict:
    """The planner's figures and the compiled step's, side by side (bytes per device)."""
    from jaxregion.parallel import plan, sharding

    mesh = {a: 1 for a in sharding.AXES}
    p = plan.make_plan(cfg, mesh, "importance", seq, batch, dtype)
    lines = {n.split(" ")[0]: b for n, _, b in p.lines}
    m = measure(cfg, dtype, batch, seq)
    return {
        "dtype": dtype,
        "plan": {
            "params": lines["params"],
            "accumulators": lines["accumulators,"],
            "gradients": lines["gradients"],
            "activations": p.activations,
            "state": p.state_bytes,
            "total": p.total,
        },
        "measured": {
            **m,
            # params + both halves: the arguments (params, one half, the batch) + the other half
            "params+accumulators": m["argument"] - m["batch_bytes"] + m["output"],
            "peak": m["argument"] + m["output"] + m["temp"] - m["alias"] + m["output"],
        },
    }


def markdown(rows: list[dict]) -> str:
    head = (
        "| model | dtype | plan params+acc GiB | XLA args+other half GiB | plan grads+act GiB | "
        "XLA temp GiB | plan total GiB | XLA peak GiB |\n" + "|---" * 8 + "|"
    )
    out = [head]
    for r in rows:
        p, m = r["plan"], r["measured"]
        out.append(
            f"| {r['model']} | {r['dtype']} | {(p['params'] + p['accumulators']) / GiB:.3f} | "
            f"{m['params+accumulators'] / GiB:.3f} | "
            f"{(p['gradients'] + p['activations']) / GiB:.3f} | {m['temp'] / GiB:.3f} | "
            f"{p['total'] / GiB:.3f} | {m['peak'] / GiB:.3f} |"
        )
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    ap.add_argument("--models", default=",".join(MODELS.values()))
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    from jaxregion.io import atomic, hf

    rows = []
    names = {v: k for k, v in MODELS.items()}
    for path in args.models.split(","):
        cfg = hf.load_config(path)
        for dtype in ("float32", "bfloat16"):
            row = {"model": names.get(path, path), **compare(cfg, dtype, args.batch, args.seq)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    md = markdown(rows)
    print(md)
    if args.json:
        atomic.write_json(args.json, {"batch": args.batch, "seq": args.seq, "rows": rows})
        atomic.write_text(os.path.splitext(args.json)[0] + ".md", md + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
