#!/usr/bin/env python
"""What one transformer layer's forward + backward costs, jaxregion against PyTorch.

SmolLM2 135M's shapes with random weights, ``L`` layers, batch ``B`` x 128 tokens: the mean
seconds of a taylor micro-batch (jaxregion: ``accumulate``, one autodiff program or layer by
layer; PyTorch: forward, cross-entropy and backward). The difference between two layer counts,
divided by the layers added, is one layer's cost with the head and embedding taken out
(``docs/bench_real.md``: why SmolLM2's importance cannot reach 1.2x PyTorch on 2 CPU cores).

    python scripts/bench_layer_cost.py torch|jax|jax-layerwise LAYERS BATCH [CONFIG.json]

Without CONFIG.json the shapes are SmolLM2 135M's (its config.json's values, below).
"""

from __future__ import annotations

import json
import sys
import tempfile
import time

import numpy as np

#: SmolLM2 135M Instruct's architecture (its HF config.json, weights not needed)
SMOLLM2 = {
    "model_type": "llama",
    "hidden_size": 576,
    "intermediate_size": 1536,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "head_dim": 64,
    "hidden_act": "silu",
    "max_position_embeddings": 8192,
    "rms_norm_eps": 1e-5,
    "rope_theta": 100000.0,
    "tie_word_embeddings": True,
    "vocab_size": 49152,
    "bos_token_id": 1,
    "eos_token_id": 2,
}
STEPS = 3


def _write_config(d: str, layers: int, config: str | None) -> int:
    """``config`` (or SmolLM2's) with ``layers`` layers as ``d/config.json``; its vocab."""
    cfg = dict(SMOLLM2)
    if config is not None:
        with open(config) as f:
            cfg = json.load(f)
    cfg["num_hidden_layers"] = layers
    with open(f"{d}/config.json", "w") as f:
        json.dump(cfg, f)
    return int(cfg["vocab_size"])


def torch_seconds(d: str, tok: np.ndarray) -> float:
    import torch
    import transformers

    torch.set_num_threads(2)
    cfg = transformers.AutoConfig.from_pretrained(d)
    m = transformers.AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    ids = torch.tensor(tok)

    def step() -> None:
        lg = m(input_ids=ids).logits[:, :-1]
        loss = torch.nn.functional.cross_entropy(
            lg.reshape(-1, lg.shape[-1]), ids[:, 1:].reshape(-1), reduction="sum"
        )
        loss.backward()

    step()
    t0 = time.perf_counter()
    for _ in range(STEPS):
        step()
    return (time.perf_counter() - t0) / STEPS


def jax_seconds(d: str, tok: np.ndarray, remat: bool) -> float:
    import jax
    import jax.numpy as jnp

    from jaxregion import importance
    from jaxregion.configs import DEFAULT_INCLUDE
    from jaxregion.io import hf
    from jaxregion.models import spec
    from jaxregion.parallel import sharding
    from jaxregion.scorefiles import scoped

    cfg, mesh = hf.load_config(d), sharding.make_mesh()
    shapes = spec.abstract_params(cfg)
    key = jax.random.key(0)
    params = jax.tree.map(lambda a: 0.02 * jax.random.normal(key, a.shape, jnp.float32), shapes)
    scope = scoped(shapes, cfg, DEFAULT_INCLUDE, None)
    state = importance.init_state(params, cfg, "taylor", len(tok), mesh, scope)
    windows = np.concatenate([tok] * (STEPS + 1)).astype(np.int32)
    states = importance.accumulate(state, params, cfg, windows, mesh, remat=remat)
    jax.block_until_ready(next(states).acc)  # compile + warm-up
    t0 = time.perf_counter()
    for state in states:  # noqa: B007
        pass
    jax.block_until_ready(state.acc)
    return (time.perf_counter() - t0) / STEPS


def main(argv: list[str]) -> int:
    which, layers, batch = argv[0], int(argv[1]), int(argv[2])
    with tempfile.TemporaryDirectory() as d:
        vocab = _write_config(d, layers, argv[3] if len(argv) > 3 else None)
        tok = np.random.default_rng(0).integers(0, vocab, (batch, 128))
        s = torch_seconds(d, tok) if which == "torch" else jax_seconds(d, tok, which != "jax")
    print(json.dumps({"framework": which, "layers": layers, "batch": batch, "seconds": s}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
