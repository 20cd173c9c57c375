"""Bench: the MoE dispatch (models/moe.py) against every expert on every token and against
``jax.lax.ragged_dot``, on whatever device JAX finds. For each (experts, top-k): XLA's FLOP
count of the compiled block and its median wall time, and the largest difference from the
dense reference (float32). Prints one JSON line per case; ``--json FILE`` also writes them.

    python scripts/bench_moe_dispatch.py --tokens 8192 --hidden 2048 --inter 1024
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxregion.models.moe import dispatch, route


def dense(x, idx, w, gate_up, down):
    """Every expert on every token, weighted by the (mostly zero) routing weights."""
    full = jnp.zeros((x.shape[0], gate_up.shape[0]), x.dtype)
    full = full.at[jnp.arange(x.shape[0])[:, None], idx].add(w.astype(x.dtype))
    gu = jnp.einsum("th,eih->tei", x, gate_up)
    g, u = jnp.split(gu, 2, axis=-1)
    y = jnp.einsum("tei,ehi->teh", jax.nn.silu(g) * u, down)
    return jnp.einsum("teh,te->th", y, full)


def ragged(x, idx, w, gate_up, down):
    """Sorted assignments through ``jax.lax.ragged_dot`` (a grouped matmul)."""
    k, n_exp = idx.shape[1], gate_up.shape[0]
    flat = idx.reshape(-1)
    order = jnp.argsort(flat, stable=True)
    tok = order // k
    sizes = jnp.bincount(flat, length=n_exp).astype(jnp.int32)
    gu = jax.lax.ragged_dot(x[tok], jnp.swapaxes(gate_up, 1, 2), sizes)
    g, u = jnp.split(gu, 2, axis=-1)
    y = jax.lax.ragged_dot(jax.nn.silu(g) * u, jnp.swapaxes(down, 1, 2), sizes)
    y = y * w.reshape(-1)[order][:, None].astype(y.dtype)
    return jnp.zeros_like(x).at[tok].add(y)


def ours(x, idx, w, gate_up, down):
    return dispatch(x, idx, w, gate_up, down, "silu")


def case(n_exp: int, k: int, args, dtype) -> dict:
    keys = jax.random.split(jax.random.PRNGKey(0), 4)
    h, i, t = args.hidden, args.inter, args.tokens
    x = jax.random.normal(keys[0], (t, h), dtype)
    gate_up = (0.02 * jax.random.normal(keys[1], (n_exp, 2 * i, h))).astype(dtype)
    down = (0.02 * jax.random.normal(keys[2], (n_exp, h, i))).astype(dtype)
    router = jax.random.normal(keys[3], (t, n_exp))
    _, w, idx = route(router, k, True)
    out = {"experts": n_exp, "top_k": k, "tokens": t, "dtype": str(np.dtype(dtype))}
    ref = None
    for name, fn in (("dense", dense), ("ragged_dot", ragged), ("dispatch", ours)):
        f = jax.jit(fn)
        comp = f.lower(x, idx, w, gate_up, down).compile()
        cost = comp.cost_analysis()
        cost = cost[0] if isinstance(cost, list) else cost
        y = f(x, idx, w, gate_up, down).block_until_ready()
        times = []
        for _ in range(args.reps):
            t0 = time.perf_counter()
            f(x, idx, w, gate_up, down).block_until_ready()
            times.append(time.perf_counter() - t0)
        ref = y if ref is None else ref
        out[name] = {
            "flops": float(cost.get("flops", -1)),
            "ms": 1e3 * float(np.median(times)),
            "max_abs_diff_vs_dense": float(
                jnp.max(jnp.abs(y.astype(jnp.float32) - ref.astype(jnp.float32)))
            ),
        }
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tokens", type=int, default=8192)
    p.add_argument("--hidden", type=int, default=2048)
    p.add_argument("--inter", type=int, default=1024)
    p.add_argument("--cases", default="8:2,64:2,64:8")
    p.add_argument("--dtypes", default="float32,bfloat16")
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    rows = []
    print(json.dumps({"device": str(jax.devices()[0]), "jax": jax.__version__}), flush=True)
    for dt in args.dtypes.split(","):
        for c in args.cases.split(","):
            e, k = map(int, c.split(":"))
            rows.append(case(e, k, args, jnp.dtype(dt)))
            print(json.dumps(rows[-1]), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
