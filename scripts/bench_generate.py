#!/usr/bin/env python
"""Benchmark greedy decode tokens/s: jaxregion's cached generator vs transformers' generate.

A random Llama (default ~7M params: hidden 256, 4 layers, vocab 8192, intermediate 688,
4 heads; ``--size small``: hidden 512, 8 layers, vocab 32000, ~58M), float32, prompts of
``--prompt-len`` random tokens, EOS disabled so every row decodes ``--new`` tokens.
Decode tokens/s = ``batch * (new - 1) / (t(new) - t(1))``: the one-token run is the prefill
(plus fixed overhead), so the difference is decode only. Each timing is the best of
``--repeats`` after a warm-up (JAX compiles once per shape). Both run in this process with
the same thread budget, ``--threads`` (default 1: on a shared machine more threads than free
cores make both frameworks spin; XLA's flag must be set before jax is imported).

    python scripts/bench_generate.py [--batches 1,8] [--new 64] [--size tiny|small] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time


def _threads() -> int:
    argv = sys.argv[1:]
    return int(argv[argv.index("--threads") + 1]) if "--threads" in argv else 1


if _threads() == 1:
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false"
        " intra_op_parallelism_threads=1"
    ).strip()

import jax  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

from jaxregion.generate import generate  # noqa: E402
from jaxregion.io import hf  # noqa: E402

SIZES = {
    "tiny": dict(
        vocab_size=8192,
        hidden_size=256,
        intermediate_size=688,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=4,
    ),
    "small": dict(
        vocab_size=32000,
        hidden_size=512,
        intermediate_size=1376,
        num_hidden_layers=8,
        num_attention_heads=8,
        num_key_value_heads=8,
    ),
}


def _best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--new", type=int, default=64)
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--size", choices=sorted(SIZES), default="tiny")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads for both")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    cfg_t = transformers.LlamaConfig(
        **SIZES[args.size],
        max_position_embeddings=512,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    model = transformers.LlamaForCausalLM(cfg_t).eval()
    model.generation_config.eos_token_id = None
    n_params = sum(p.numel() for p in model.parameters())
    with tempfile.TemporaryDirectory() as d:
        model.save_pretrained(d, safe_serialization=True)
        cfg, params = hf.load(d)

    print(
        f"model: llama {args.size}, {n_params / 1e6:.1f}M params, float32; prompt "
        f"{args.prompt_len} tokens, {args.new} new; jax {jax.__version__} "
        f"({jax.devices()[0].platform}), torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), transformers {transformers.__version__}"
    )
    print("| batch | jaxregion tok/s | transformers tok/s | ratio |")
    print("|---|---|---|---|")
    rng = np.random.default_rng(0)
    for b in (int(x) for x in args.batches.split(",")):
        prompts = rng.integers(3, cfg.vocab_size, (b, args.prompt_len)).tolist()
        x = torch.tensor(prompts)

        def ours(n: int, prompts: list = prompts) -> None:
            generate(params, cfg, prompts, n)  # returns host lists: blocks until done

        def theirs(n: int, x: torch.Tensor = x) -> None:
            with torch.no_grad():
                model.generate(
                    x,
                    attention_mask=torch.ones_like(x),
                    max_new_tokens=n,
                    do_sample=False,
                    pad_token_id=0,
                )

        rates = []
        for fn in (ours, theirs):
            fn(1), fn(args.new)  # warm-up: compile / allocate
            t1 = _best(lambda fn=fn: fn(1), args.repeats)
            tn = _best(lambda fn=fn: fn(args.new), args.repeats)
            rates.append(b * (args.new - 1) / (tn - t1))
        print(f"| {b} | {rates[0]:.1f} | {rates[1]:.1f} | {rates[0] / rates[1]:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
