#!/usr/bin/env python
"""``jaxregion plan`` against XLA's memory analysis of the compiled importance step.

For each model (an HF directory's config.json; no weights are read: the step is lowered on
abstract params) and dtype, at ``--batch`` x ``--seq``: the planner's per-device lines next
to ``compiled.memory_analysis()`` of the taylor step over the default ``:layers`` scope.
The step's arguments are the params, one half's accumulator (donated, so it is also the
aliased output) and the batch; the other half's accumulator stays resident beside it, and
the gradient and the activations are XLA temporaries. The last two columns are the layer-by-
layer step ``jaxregion importance`` runs: the plan's remat total against the programs' live
bytes (arguments, the other half, the layer inputs, the largest program's temporaries).

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


def compare(cfg, dtype: str, batch: int, seq: int) -> dict:
    """The planner's figures and the compiled step's, side by side (bytes per device)."""
    from jaxregion import importance
    from jaxregion.configs import DEFAULT_INCLUDE
    from jaxregion.models import spec
    from jaxregion.parallel import plan, sharding
    from jaxregion.scorefiles import scoped

    mesh = sharding.make_mesh()
    p = plan.make_plan(
        cfg, {a: int(mesh.shape[a]) for a in sharding.AXES}, "importance", seq, batch, dtype
    )
    lines = {n.split(" ")[0]: b for n, _, b in p.lines}
    scope = scoped(spec.abstract_params(cfg), cfg, DEFAULT_INCLUDE, None)
    m = importance.step_memory(cfg, mesh, batch, seq, dtype, scope)
    lw = importance.step_memory(cfg, mesh, batch, seq, dtype, scope, remat=True)
    return {
        # layer by layer (what `jaxregion importance` runs): arguments, the other half, the
        # layer inputs and the largest program's temporaries, against the plan's remat total
        "layerwise": {
            **lw,
            "live": lw["argument"] - lw["batch"] + lw["output"] + lw["inputs"] + lw["temp"],
            "plan_total_remat": p.total_remat,
        },
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
            # params + both halves: the arguments less the batch, plus the other half
            "params+accumulators": m["argument"] - m["batch"] + m["output"],
            # live during the step: arguments, temporaries, the other half
            "peak": m["argument"] + (m["output"] - m["alias"]) + m["temp"] + m["output"],
        },
    }


def markdown(rows: list[dict]) -> str:
    head = (
        "| model | dtype | plan params+acc GiB | XLA args-batch+other half GiB | "
        "plan grads+act GiB | "
        "XLA temp GiB | plan total GiB | XLA peak GiB | plan remat total GiB | "
        "layerwise live GiB |\n" + "|---" * 10 + "|"
    )
    out = [head]
    for r in rows:
        p, m = r["plan"], r["measured"]
        out.append(
            f"| {r['model']} | {r['dtype']} | {(p['params'] + p['accumulators']) / GiB:.3f} | "
            f"{m['params+accumulators'] / GiB:.3f} | "
            f"{(p['gradients'] + p['activations']) / GiB:.3f} | {m['temp'] / GiB:.3f} | "
            f"{p['total'] / GiB:.3f} | {m['peak'] / GiB:.3f} | "
            f"{r['layerwise']['plan_total_remat'] / GiB:.3f} | {r['layerwise']['live'] / GiB:.3f} |"
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
