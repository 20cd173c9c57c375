"""``python tests/layerwise_mesh_worker.py MODEL_DIR``, under
``XLA_FLAGS=--xla_force_host_platform_device_count=4``: taylor scores layer by layer against
the one-program step on an fsdp=2 x tensor=2 mesh, and whether the accumulators keep the
params' shardings. Prints one JSON line."""

from __future__ import annotations

import json
import sys

import jax
import numpy as np

from jaxregion import importance, runtime
from jaxregion import tree as T
from jaxregion.parallel import sharding as shd


def main(path: str) -> dict:
    mesh = shd.make_mesh(data=1, fsdp=2, tensor=2)
    s = runtime.load_session(path, mesh=mesh, with_tokenizer=False)  # as the command does
    cfg = s.config
    tok = np.random.default_rng(0).integers(0, cfg.vocab_size, (10, 16)).astype(np.int32)
    a = importance.compute_importance(s.params, cfg, tok, "taylor", 4, mesh)
    b = importance.compute_importance(s.params, cfg, tok, "taylor", 4, mesh, remat=True)
    fa, fb = T.flatten(a.scores), T.flatten(b.scores)
    err = max(
        float(np.abs(np.asarray(fb[n]) - np.asarray(v)).max() / np.abs(np.asarray(v)).max())
        for n, v in fa.items()
    )
    start = importance.init_state(importance.place_params(s.params, mesh), cfg, "taylor", 4, mesh)
    end = start
    for end in importance.accumulate(start, s.params, cfg, tok, mesh, remat=True):  # noqa: B007
        pass
    kept = all(
        x.sharding.is_equivalent_to(y.sharding, x.ndim)
        for x, y in zip(jax.tree.leaves(end.acc[0]), jax.tree.leaves(start.acc[1]))
    )
    split = any(any(a is not None for a in x.sharding.spec) for x in jax.tree.leaves(end.acc[0]))
    return {"devices": len(jax.devices()), "rel_err": err, "kept": kept, "split": split}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1])))
