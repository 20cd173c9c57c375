#!/usr/bin/env python
"""XLA's memory for one importance step with remat, the layers stacked inside every call
(params in the HF-named layout) against stacked once (:func:`jaxregion.models.stack_layers`,
what :func:`jaxregion.importance.compute_importance` passes), from ``memory_analysis()`` of
the compiled step. Taylor over the layers' parameters (the CLI's default scope).

    flock /work/heavy.lock python scripts/bench_stack_memory.py MODEL [--batch 2] [--seq 128]
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np

from jaxregion import importance, models
from jaxregion.io import hf
from jaxregion.parallel import sharding as shd
from jaxregion.tree import flatten

MiB = 2**20


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--seq", type=int, default=128)
    args = ap.parse_args()
    cfg, params = hf.load(args.model)
    mesh = shd.make_mesh()
    params = importance.place_params(params, mesh)
    scope = [n for n, r in models.roles(cfg).items() if r.layer is not None]
    state = importance.init_state(params, cfg, "taylor", args.batch, mesh, scope)
    step = importance.step_function("taylor", cfg, state.acc[0], remat=True)
    rng = np.random.default_rng(0)
    tokens = jnp.asarray(rng.integers(0, cfg.vocab_size, (args.batch, args.seq)), jnp.int32)
    weights = jnp.ones((args.batch,), jnp.float32)
    layer_bytes = sum(x.nbytes for n, x in flatten(params).items() if n in set(scope))
    print(f"{cfg.model_type}: batch {args.batch} x seq {args.seq}, taylor, remat")
    print(f"layer weights: {layer_bytes / MiB:.1f} MiB")
    for label, p in (
        ("stacked in every call", params),
        ("stacked once", jax.jit(models.stack_layers, static_argnums=1)(params, cfg)),
    ):
        m = step.lower(state.acc[0], p, tokens, weights).compile().memory_analysis()
        print(
            f"{label:>22}: arguments {m.argument_size_in_bytes / MiB:.1f} MiB, "
            f"temp {m.temp_size_in_bytes / MiB:.1f} MiB, output "
            f"{m.output_size_in_bytes / MiB:.1f} MiB, aliased {m.alias_size_in_bytes / MiB:.1f} MiB"
        )


if __name__ == "__main__":
    main()
