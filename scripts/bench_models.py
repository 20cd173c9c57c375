#!/usr/bin/env python
"""Interleaved A/B throughput of two jaxregion checkouts: taylor importance, wanda, eval.

Each measurement runs in its own subprocess with ``PYTHONPATH`` set to one checkout, the two
checkouts alternating (A B A B ...) so both see the same machine load; the best of
``--repeats`` is reported. The model is bench_importance.py's ~7M-param CPU Llama (hidden
256, 4 layers, vocab 8192), random init, float32. Only APIs both checkouts share are used
(``from_hf_dict``, ``spec.shapes``, ``importance.init_state/step_function``,
``evaluate.evaluate``), so a checkout from before the NNX models compares against one after.

    git worktree add /tmp/base 38e6d69
    python scripts/bench_models.py --a /tmp/base --b . [--repeats 3 --steps 6]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

SMALL = dict(
    model_type="llama",
    vocab_size=8192,
    hidden_size=256,
    intermediate_size=688,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=4,
    max_position_embeddings=512,
    rms_norm_eps=1e-5,
    hidden_act="silu",
    tie_word_embeddings=False,
    rope_theta=10000.0,
)


def measure(args) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from jaxregion import importance
    from jaxregion import tree as T
    from jaxregion.evaluate import evaluate
    from jaxregion.models import from_hf_dict, spec
    from jaxregion.parallel import sharding

    cfg = from_hf_dict(dict(SMALL))
    mesh = sharding.make_mesh()
    key = jax.random.PRNGKey(0)
    params = T.unflatten(
        {
            n: 0.05 * jax.random.normal(jax.random.fold_in(key, i), s)
            for i, (n, s) in enumerate(spec.shapes(cfg).items())
        }
    )
    rng = np.random.default_rng(0)
    b, seq = args.batch, args.seq
    windows = rng.integers(0, cfg.vocab_size, (b * (args.steps + 1), seq)).astype(np.int32)
    w = sharding.put_batch(np.ones(b, np.float32), mesh)
    out = {}
    for est in ("taylor", "wanda"):
        state = importance.init_state(params, cfg, est, b, mesh)
        step = importance.step_function(est, cfg, state.acc, False)
        acc = step(state.acc, params, sharding.put_batch(windows[:b], mesh), w)  # compile
        jax.block_until_ready(acc)
        batches = [
            sharding.put_batch(windows[(i + 1) * b : (i + 2) * b], mesh) for i in range(args.steps)
        ]
        t0 = time.perf_counter()
        for tok in batches:
            acc = step(acc, params, tok, w)
        jax.block_until_ready(acc)
        out[est] = args.steps * b * seq / (time.perf_counter() - t0)
    evaluate(params, cfg, windows[:b], batch_size=b, mesh=mesh)  # compile
    t0 = time.perf_counter()
    r = evaluate(params, cfg, windows[b:], batch_size=b, mesh=mesh)
    out["eval"] = r.windows * seq / (time.perf_counter() - t0)
    out["eval_loss"] = r.loss
    out["checksum"] = float(jnp.sum(jnp.abs(jax.tree.leaves(acc)[0])))
    return out


def _child(path: str, args) -> dict:
    env = {**os.environ, "PYTHONPATH": os.path.abspath(path)}
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        "--only",
        "--batch",
        str(args.batch),
        "--seq",
        str(args.seq),
        "--steps",
        str(args.steps),
    ]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=os.path.abspath(path))
    if p.returncode:
        raise SystemExit(f"{path}: benchmark child failed:\n{p.stderr[-2000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--a", default=None, help="checkout A (e.g. a worktree of the base commit)")
    ap.add_argument("--b", default=".", help="checkout B (default: this one)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--steps", type=int, default=6, help="timed micro-batches per estimator")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--only", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.only:
        print(json.dumps(measure(args)))
        return 0
    sides = {"A": args.a, "B": args.b} if args.a else {"B": args.b}
    runs: dict[str, list[dict]] = {k: [] for k in sides}
    for _ in range(args.repeats):
        for k, path in sides.items():
            runs[k].append(_child(path, args))
    print(
        f"Llama ~7M params, f32, batch {args.batch} x seq {args.seq}, {args.steps} timed "
        f"steps, {os.cpu_count()} CPU cores; tokens/s, best of {args.repeats} (all runs)"
    )
    for k, path in sides.items():
        for m in ("taylor", "wanda", "eval"):
            vals = [r[m] for r in runs[k]]
            print(f"{k} {path}: {m:6s} {max(vals):9,.0f}  ({', '.join(f'{v:,.0f}' for v in vals)})")
    if args.a:
        for m in ("taylor", "wanda", "eval"):
            ratio = max(r[m] for r in runs["B"]) / max(r[m] for r in runs["A"])
            print(f"B/A {m}: {ratio:.3f}x")
        same = all(
            abs(a["eval_loss"] - b["eval_loss"]) <= 1e-5 * abs(a["eval_loss"])
            for a, b in zip(runs["A"], runs["B"])
        )
        print(f"same eval loss in A and B: {same}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
