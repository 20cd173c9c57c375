#!/usr/bin/env python
"""Benchmark ``taylor`` importance (θ ⊙ ∇θ L accumulation) and forward-only evaluation in
jaxregion vs PyTorch.

CPU mode (default): Llamas with vocab 8192, ``intermediate = 2.6875 × hidden``, head dim 64,
seq 128, batch 16, random init, float32, at each ``--sizes`` entry HIDDENxLAYERS (default
``256x4,512x8``: ~7M and ~34M params). Each framework runs in its own subprocess per size
(so peak RSS is its own), interleaved with the other ``--repeats`` times (the best of each
is reported, so both see the same machine load): warm-up (compile), then ``--steps`` timed
micro-batch steps of forward + backward + accumulate (the final θ⊙(acc/T) included once),
then ``--steps`` timed forward-only loss evaluations. Reports tokens/s (tokens = batch × seq
processed), the ratios, FLOP/s from XLA's cost_analysis of the compiled step (and 6·N·tokens),
the machine's measured f32 matmul peak, and peak memory (process max RSS; for JAX also XLA's
temp buffer size).

``--real``: Gemma 3 270M and SmolLM2 135M against PyTorch at batch 2 and 8 (see
``scripts/bench_real.py``).

``--device-7b``: a randomly initialised Llama-2-7B-shaped model in bf16 on the accelerator
(params made on device by jax.random inside a jit with the param shardings; no torch),
f32 accumulator, ``--remat`` on by default; prints tokens/s and MFU against
``--peak-tflops`` (default 989: H100/H200 dense bf16).

    python scripts/bench_importance.py [--sizes 256x4,512x8] [--steps 8] [--batch 16] [--seq 128]
    python scripts/bench_importance.py --device-7b [--batch 8 --seq 2048 --steps 5]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

SMALL = dict(
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


def small_shape(hidden: int = 256, layers: int = 4) -> dict:
    """The CPU bench Llama at ``hidden`` x ``layers`` (256x4 is ``SMALL``)."""
    heads = max(1, hidden // 64)
    return {
        **SMALL,
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "intermediate_size": int(round(hidden * 2.6875)),
        "num_attention_heads": heads,
        "num_key_value_heads": heads,
    }


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _windows(n: int, seq: int, vocab: int, seed: int = 0):
    import numpy as np

    return np.random.default_rng(seed).integers(0, vocab, (n, seq)).astype(np.int32)


# --- JAX ---------------------------------------------------------------------------------
def init_params(cfg, mesh, dtype, seed: int = 0):
    """Random params created on device, sharded like the real ones (sharding.param_shardings)."""
    import jax
    import jax.numpy as jnp

    from jaxregion import tree as T
    from jaxregion.models import spec
    from jaxregion.parallel import sharding

    shapes = spec.shapes(cfg)
    shardings = sharding.param_shardings(cfg, mesh)

    def make(key):
        out = {}
        for i, (n, s) in enumerate(shapes.items()):
            if len(s) == 1:
                out[n] = jnp.ones(s, dtype)
            else:
                out[n] = (
                    0.02 * jax.random.normal(jax.random.fold_in(key, i), s, jnp.float32)
                ).astype(dtype)
        return T.unflatten(out)

    return jax.jit(make, out_shardings=shardings)(jax.random.PRNGKey(seed))


def matmul_peak(n: int = 2048, reps: int = 10, dtype: str = "float32") -> float:
    """Measured FLOP/s of a big square matmul (the machine's practical peak)."""
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32).astype(dtype)
    b = jax.random.normal(jax.random.PRNGKey(1), (n, n), jnp.float32).astype(dtype)
    f = jax.jit(lambda x, y: x @ y)
    f(a, b).block_until_ready()
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        f(a, b).block_until_ready()
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def run_jax(args) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from jaxregion import importance, models
    from jaxregion import tree as T
    from jaxregion.models import from_hf_dict
    from jaxregion.parallel import sharding

    big = args.device_7b
    from jaxregion.parallel.plan import PRESETS

    shape = dict(
        PRESETS["llama2-7b"]
        if big
        else {"model_type": "llama", **small_shape(args.hidden, args.layers or 4)}
    )
    if args.layers:
        shape["num_hidden_layers"] = args.layers
    cfg = from_hf_dict(shape)
    dtype = jnp.bfloat16 if big else jnp.float32
    mesh = sharding.make_mesh()
    t0 = time.perf_counter()
    params = init_params(cfg, mesh, dtype)
    jax.block_until_ready(params)
    t_init = time.perf_counter() - t0
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
    remat = args.remat if args.remat is not None else big
    state = importance.init_state(params, cfg, "taylor", args.batch, mesh)
    if remat:  # the scan reads the layers stacked: built once, as compute_importance does
        params = jax.jit(models.stack_layers, static_argnums=1)(params, cfg)
    b = state.batch_size
    windows = _windows(b * (args.steps + args.warmup), args.seq, cfg.vocab_size)
    weights = np.ones(b, np.float32)
    step = importance.step_function("taylor", cfg, state.acc[0], remat)
    tok0 = sharding.put_batch(windows[:b], mesh)
    w = sharding.put_batch(weights, mesh)
    t0 = time.perf_counter()
    compiled = step.lower(state.acc[0], params, tok0, w).compile()
    t_compile = time.perf_counter() - t0
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    flops_step = float((cost or {}).get("flops", float("nan")))
    try:
        mem = compiled.memory_analysis()
        temp_mb = mem.temp_size_in_bytes / 2**20
    except Exception:
        temp_mb = float("nan")
    acc = state.acc[0]
    for i in range(args.warmup):
        acc = step(acc, params, sharding.put_batch(windows[i * b : (i + 1) * b], mesh), w)
    jax.block_until_ready(acc)
    zero = state.acc[1]  # the other half, as a run holds it (zeros: no batch went there)
    batches = [
        sharding.put_batch(windows[(args.warmup + i) * b : (args.warmup + i + 1) * b], mesh)
        for i in range(args.steps)
    ]
    jax.block_until_ready(batches)
    t0 = time.perf_counter()
    for tok in batches:
        acc = step(acc, params, tok, w)
    jax.block_until_ready(acc)
    t_steps = time.perf_counter() - t0
    if remat:
        params = jax.jit(models.unstack_layers, static_argnums=1)(params, cfg)
    final = importance.finalize(
        importance.ImportanceState("taylor", b, (acc, zero), (b * args.steps, 0)),
        params,
        cfg,
        args.seq,
    )
    jax.block_until_ready(final)
    t_total = time.perf_counter() - t0
    tokens = args.steps * b * args.seq
    leaf = T.flatten(final)["model.layers.0.mlp.down_proj.weight"]
    dev = jax.devices()[0]
    stats = {}
    try:
        stats = dev.memory_stats() or {}
    except Exception:
        pass
    out = {
        "framework": "jax",
        "device": str(dev.device_kind),
        "devices": len(jax.devices()),
        "params": n_params,
        "batch": b,
        "seq": args.seq,
        "steps": args.steps,
        "remat": remat,
        "dtype": str(jnp.dtype(dtype)),
        "init_s": t_init,
        "compile_s": t_compile,
        "step_s": t_steps / args.steps,
        "tokens_per_s": tokens / t_total,
        "tokens_per_s_steps_only": tokens / t_steps,
        "flops_per_step_xla": flops_step,
        "flops_per_step_6N": 6.0 * n_params * b * args.seq,
        "xla_temp_mb": temp_mb,
        "peak_rss_mb": _peak_rss_mb(),
        "device_peak_mb": stats.get("peak_bytes_in_use", 0) / 2**20 if stats else None,
        "checksum": float(jnp.sum(jnp.abs(leaf))),
    }
    # steady state: the timed steps (compile and warm-up before; finalize after)
    out["achieved_flops_xla"] = flops_step * args.steps / t_steps
    out["achieved_flops_6N"] = out["flops_per_step_6N"] * args.steps / t_steps
    if not big:
        out["eval"] = _jax_eval(params, cfg, batches, w)
    if big:
        peak = args.peak_tflops * 1e12
        out["peak_flops"] = peak
        out["mfu_6N"] = out["achieved_flops_6N"] / peak
        out["mfu_xla"] = out["achieved_flops_xla"] / peak
        out["matmul_peak_bf16"] = matmul_peak(8192, 10, "bfloat16")
    else:
        out["matmul_peak_f32"] = matmul_peak()
    return out


def _jax_eval(params, cfg, batches, w) -> dict:
    """Forward-only summed NLL (what ``jaxregion eval`` runs per batch), tokens/s."""
    from jaxregion.evaluate import _nll_sum

    for tok in batches[:1]:
        float(_nll_sum(params, tok, w, cfg))
    t0 = time.perf_counter()
    total = 0.0
    for tok in batches:
        total += float(_nll_sum(params, tok, w, cfg))
    dt = time.perf_counter() - t0
    tokens = sum(int(t.shape[0] * t.shape[1]) for t in batches)
    return {"tokens_per_s": tokens / dt, "step_s": dt / len(batches), "loss_sum": total}


# --- PyTorch -----------------------------------------------------------------------------
def run_torch(args) -> dict:
    import torch
    import transformers

    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = transformers.LlamaConfig(**small_shape(args.hidden, args.layers or 4))
    model = transformers.LlamaForCausalLM(cfg)  # default attention (sdpa), float32
    model.train()  # no dropout in Llama; train() only enables autograd bookkeeping paths
    n_params = sum(p.numel() for p in model.parameters())
    b = args.batch
    windows = torch.tensor(
        _windows(b * (args.steps + args.warmup), args.seq, cfg.vocab_size, seed=0), dtype=torch.long
    )

    def step(ids):
        logits = model(input_ids=ids).logits
        nll = torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
            ids[:, 1:].reshape(-1),
            reduction="sum",
        )
        nll.backward()  # grads accumulate in .grad across micro-batches (= our sum)

    for i in range(args.warmup):
        step(windows[i * b : (i + 1) * b])
    model.zero_grad(set_to_none=True)
    t0 = time.perf_counter()
    for i in range(args.steps):
        j = args.warmup + i
        step(windows[j * b : (j + 1) * b])
    t_steps = time.perf_counter() - t0
    total = b * args.steps * (args.seq - 1)
    with torch.no_grad():
        scores = {n: p.grad / total * p for n, p in model.named_parameters()}
    t_total = time.perf_counter() - t0
    tokens = args.steps * b * args.seq
    timed = [windows[(args.warmup + i) * b : (args.warmup + i + 1) * b] for i in range(args.steps)]
    ev = _torch_eval(model, timed)
    return {
        "eval": ev,
        "framework": "torch",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "params": n_params,
        "batch": b,
        "seq": args.seq,
        "steps": args.steps,
        "step_s": t_steps / args.steps,
        "tokens_per_s": tokens / t_total,
        "tokens_per_s_steps_only": tokens / t_steps,
        "peak_rss_mb": _peak_rss_mb(),
        "achieved_flops_6N": 6.0 * n_params * tokens / t_total,
        "checksum": float(scores["model.layers.0.mlp.down_proj.weight"].abs().sum()),
        "matmul_peak_f32": _torch_matmul_peak(),
    }


def _torch_eval(model, batches) -> dict:
    """Forward-only summed NLL under inference_mode (PyTorch's fastest eval), tokens/s."""
    import torch

    model.eval()

    def nll(ids):
        logits = model(input_ids=ids).logits
        return float(
            torch.nn.functional.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
                ids[:, 1:].reshape(-1),
                reduction="sum",
            )
        )

    with torch.inference_mode():
        nll(batches[0])
        t0 = time.perf_counter()
        total = sum(nll(ids) for ids in batches)
        dt = time.perf_counter() - t0
    tokens = sum(int(t.shape[0] * t.shape[1]) for t in batches)
    return {"tokens_per_s": tokens / dt, "step_s": dt / len(batches), "loss_sum": total}


def _torch_matmul_peak(n: int = 2048, reps: int = 10) -> float:
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


# --- driver ------------------------------------------------------------------------------
def _child(which: str, args) -> dict:
    argv = [
        sys.executable,
        os.path.abspath(__file__),
        "--only",
        which,
        "--steps",
        str(args.steps),
        "--warmup",
        str(args.warmup),
        "--batch",
        str(args.batch),
        "--seq",
        str(args.seq),
    ]
    if args.threads:
        argv += ["--threads", str(args.threads)]
    if args.layers:
        argv += ["--layers", str(args.layers)]
    argv += ["--hidden", str(args.hidden)]
    if args.remat is not None:
        argv += ["--remat" if args.remat else "--no-remat"]
    p = subprocess.run(argv, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"{which} benchmark failed:\n{p.stderr[-4000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def _fmt_flops(x: float) -> str:
    return f"{x / 1e9:,.1f} GFLOP/s" if x < 1e12 else f"{x / 1e12:,.1f} TFLOP/s"


def _cpu_size(args) -> dict:
    """One CPU size: interleaved repeats, best of each, printed."""
    runs: dict[str, list[dict]] = {"jax": [], "torch": []}
    for _ in range(args.repeats):  # interleaved, so both see the same machine load
        runs["jax"].append(_child("jax", args))
        runs["torch"].append(_child("torch", args))
    j = max(runs["jax"], key=lambda r: r["tokens_per_s"])
    t = max(runs["torch"], key=lambda r: r["tokens_per_s"])
    je = max(r["eval"]["tokens_per_s"] for r in runs["jax"])
    te = max(r["eval"]["tokens_per_s"] for r in runs["torch"])
    peak = max(r["matmul_peak_f32"] for r in runs["jax"])
    tpeak = max(r["matmul_peak_f32"] for r in runs["torch"])
    print(
        f"\n== Llama hidden {args.hidden} x {args.layers} layers: {j['params'] / 1e6:.2f}M "
        f"params, f32, batch {j['batch']} x seq {j['seq']}, {j['steps']} timed steps "
        f"(+{args.warmup} warm-up), {os.cpu_count()} CPU cores, best of {args.repeats} "
        "interleaved =="
    )
    print(
        "runs taylor (tokens/s): jax "
        + ", ".join(f"{r['tokens_per_s']:,.0f}" for r in runs["jax"])
        + "; torch "
        + ", ".join(f"{r['tokens_per_s']:,.0f}" for r in runs["torch"])
    )
    print(
        "runs eval   (tokens/s): jax "
        + ", ".join(f"{r['eval']['tokens_per_s']:,.0f}" for r in runs["jax"])
        + "; torch "
        + ", ".join(f"{r['eval']['tokens_per_s']:,.0f}" for r in runs["torch"])
    )
    print(
        f"taylor  jaxregion {j['tokens_per_s']:,.0f} tok/s ({j['step_s'] * 1e3:.0f} ms/step, "
        f"compile {j['compile_s']:.1f} s) | pytorch {t['tokens_per_s']:,.0f} tok/s "
        f"({t['step_s'] * 1e3:.0f} ms/step, {t['threads']} threads) | ratio "
        f"{j['tokens_per_s'] / t['tokens_per_s']:.2f}x (target >= 1.0x)"
    )
    print(
        f"eval    jaxregion {je:,.0f} tok/s | pytorch {te:,.0f} tok/s | ratio {je / te:.2f}x "
        "(target >= 1.2x)"
    )
    print(
        f"FLOP/s taylor: jax {_fmt_flops(j['achieved_flops_xla'])} XLA-counted "
        f"({j['flops_per_step_xla'] / 1e9:.2f} GFLOP/step), "
        f"{_fmt_flops(j['achieved_flops_6N'])} by 6·N·tokens; torch "
        f"{_fmt_flops(t['achieved_flops_6N'])} by 6·N·tokens"
    )
    print(
        f"measured f32 matmul peak (2048²): jax {_fmt_flops(peak)}, torch {_fmt_flops(tpeak)}; "
        f"jax taylor at {100 * j['achieved_flops_xla'] / peak:.0f}% (XLA-counted) / "
        f"{100 * j['achieved_flops_6N'] / peak:.0f}% (6N) of it"
    )
    print(
        f"peak RSS: jax {j['peak_rss_mb']:,.0f} MiB (XLA temp buffers "
        f"{j['xla_temp_mb']:,.0f} MiB), torch {t['peak_rss_mb']:,.0f} MiB"
    )
    return {
        "jax": j,
        "torch": t,
        "runs": runs,
        "eval_ratio": je / te,
        "taylor_ratio": j["tokens_per_s"] / t["tokens_per_s"],
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=8, help="timed micro-batches (8)")
    ap.add_argument(
        "--warmup", type=int, default=1, help="untimed micro-batches after compiling (1)"
    )
    ap.add_argument("--batch", type=int, default=None, help="windows per step (16; 7B: 8)")
    ap.add_argument("--seq", type=int, default=None, help="window length (128; 7B: 2048)")
    ap.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch intra-op threads (default: torch's own, = cores)",
    )
    ap.add_argument(
        "--remat",
        dest="remat",
        action="store_true",
        default=None,
        help="recompute layer activations in backward (default: off on CPU, on for --device-7b)",
    )
    ap.add_argument("--no-remat", dest="remat", action="store_false")
    ap.add_argument(
        "--device-7b",
        action="store_true",
        help="Llama-2-7B shape, bf16, on the accelerator (JAX only)",
    )
    ap.add_argument(
        "--peak-tflops",
        type=float,
        default=989.0,
        help="dense bf16 peak for MFU in --device-7b (989: H100/H200)",
    )
    ap.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="interleaved runs per framework on CPU; the best is reported (3)",
    )
    ap.add_argument(
        "--layers",
        type=int,
        default=None,
        help="override the layer count (e.g. --device-7b --layers 1 as a smoke test)",
    )
    ap.add_argument(
        "--sizes",
        default="256x4,512x8",
        help="CPU model sizes HIDDENxLAYERS, comma-separated (256x4,512x8)",
    )
    ap.add_argument("--hidden", type=int, default=256, help=argparse.SUPPRESS)
    ap.add_argument("--only", choices=["jax", "torch"], help=argparse.SUPPRESS)
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument(
        "--real",
        action="store_true",
        help="Gemma 3 270M and SmolLM2 135M vs PyTorch (scripts/bench_real.py)",
    )
    ap.add_argument("--real-models", default=None, help="with --real: a subset, e.g. smollm2-135m")
    ap.add_argument("--real-batches", default="2,8", help="with --real: batch sizes (2,8)")
    args = ap.parse_args()
    if args.real:
        import bench_real

        return bench_real.main([], args.json, args.real_batches, args.seq or 128, args.real_models)
    args.batch = args.batch or (8 if args.device_7b else 16)
    args.seq = args.seq or (2048 if args.device_7b else 128)

    if args.only:
        print(json.dumps(run_jax(args) if args.only == "jax" else run_torch(args)))
        return 0
    if args.device_7b:
        r = run_jax(args)
        print(
            f"device: {r['device']} x{r['devices']}; Llama-2-7B shape, {r['params'] / 1e9:.2f}B "
            f"params, bf16, batch {r['batch']} x seq {r['seq']}, remat={r['remat']}"
        )
        print(f"init on device: {r['init_s']:.1f} s; compile: {r['compile_s']:.1f} s")
        print(
            f"taylor importance: {r['tokens_per_s_steps_only']:,.0f} tokens/s in steady state "
            f"({r['step_s'] * 1e3:.0f} ms/step; {r['tokens_per_s']:,.0f} with finalize)"
        )
        print(
            f"MFU (6·N·tokens): {100 * r['mfu_6N']:.1f}% of {args.peak_tflops:g} TFLOP/s; "
            f"XLA-counted: {_fmt_flops(r['achieved_flops_xla'])} "
            f"({100 * r['mfu_xla']:.1f}%, includes remat recompute)"
        )
        print(f"measured bf16 matmul peak: {_fmt_flops(r['matmul_peak_bf16'])}")
        if r.get("device_peak_mb"):
            print(f"device peak memory: {r['device_peak_mb'] / 1024:.1f} GiB")
        results = {"jax": r}
    else:
        results = {}
        for size in args.sizes.split(","):
            hidden, layers = (int(x) for x in size.lower().split("x"))
            args.hidden, args.layers = hidden, layers
            results[size] = _cpu_size(args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
