#!/usr/bin/env python
"""``bench_importance.py --real``: jaxregion against a plain PyTorch loop on real models.

For each model (HF directories, float32) and each batch size (x 128 tokens), interleaved:
taylor importance (jaxregion: the accumulation that ``jaxregion importance`` runs, default
scope, layer by layer as by default and again with ``--no-remat``, the final scores and both
split halves included once; PyTorch, run once beside both: forward, backward with
``.grad`` accumulating, θ·g/T at the end) and evaluation (jaxregion: the ``jaxregion eval``
step; PyTorch: forward under ``inference_mode``). Every measurement is its own subprocess, so
its peak RSS (model load included) is its own. Token ids are random (speed does not depend
on them). FLOP/s: 6·N·tokens for importance, 2·N·tokens for eval, against the f32 matmul
peak measured by JAX (and PyTorch) on this machine. Goals (issue 20): importance >= 1.2x
PyTorch tokens/s, eval >= 1.5x, peak RSS <= PyTorch's.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time

MODELS = {
    "smollm2-135m": "/work/models/smollm2-135m-hf",
    "gemma3-270m": "/work/models/gemma3-270m-hf",
}
GOALS = {"importance": 1.2, "eval": 1.5}
# jaxregion's side of each pair: importance as `jaxregion importance` runs it (layer by layer,
# the default) and with --no-remat, against the same PyTorch loop; then eval
TASKS = ("importance", "importance-no-remat", "eval")
THREADS = min(2, os.cpu_count() or 1)  # PyTorch's intra-op threads; XLA's pool is one per core


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _windows(n: int, seq: int, vocab: int):
    import numpy as np

    return np.random.default_rng(0).integers(0, vocab, (n, seq)).astype(np.int32)


def _timed(fn, batches) -> float:
    t0 = time.perf_counter()
    for b in batches:
        fn(b)
    return time.perf_counter() - t0


# --- children ------------------------------------------------------------------------------
def jax_child(model: str, task: str, batch: int, seq: int, steps: int) -> dict:
    import jax
    import numpy as np

    from jaxregion import importance, runtime
    from jaxregion.configs import DEFAULT_INCLUDE
    from jaxregion.evaluate import _nll_sum
    from jaxregion.parallel import sharding
    from jaxregion.scorefiles import scoped

    s = runtime.load_session(model, with_tokenizer=False)
    cfg, params, mesh = s.config, s.params, s.mesh
    n = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
    wins = _windows(batch * (steps + 1), seq, cfg.vocab_size)
    toks = [sharding.put_batch(wins[i * batch : (i + 1) * batch], mesh) for i in range(steps + 1)]
    w = sharding.put_batch(np.ones(batch, np.float32), mesh)
    if task == "eval":
        float(_nll_sum(params, toks[0], w, cfg))  # compile
        dt = _timed(lambda t: float(_nll_sum(params, t, w, cfg)), toks[1:])
        return {"params": n, "seconds": dt, "tokens": steps * batch * seq, "rss_mb": _rss_mb()}
    scope = scoped(params, cfg, DEFAULT_INCLUDE, None)  # what `jaxregion importance` scores
    template = importance.init_state(params, cfg, "taylor", batch, mesh, scope, abstract=True)
    # one run, as `jaxregion importance` makes it (so the peak RSS is a real run's): the
    # timed part is the micro-batches after the first (compile + warm-up), then the full
    # scores and both halves
    state = start = importance.init_state(params, cfg, "taylor", batch, mesh, scope)
    t0 = 0.0
    remat = task != "importance-no-remat"  # `jaxregion importance` (--no-remat)
    for state in importance.accumulate(start, params, cfg, wins, mesh, remat=remat):  # noqa: B007
        if state.batches == 1:
            jax.block_until_ready(state.acc)
            t0 = time.perf_counter()
    res = importance.result_of(state, params, cfg, seq, consume=True)
    jax.block_until_ready((res.scores, res.halves))
    dt, rss = time.perf_counter() - t0, _rss_mb()
    # XLA's FLOP count, after the peak is read (lowering again may compile again)
    step = importance.step_function("taylor", cfg, template.acc[0])
    cost = step.lower(template.acc[0], params, toks[0], w).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return {
        "params": n,
        "seconds": dt,
        "tokens": steps * batch * seq,
        "rss_mb": rss,
        "xla_flops_per_step": float((cost or {}).get("flops", 0.0)),
    }


def torch_child(model: str, task: str, batch: int, seq: int, steps: int) -> dict:
    import torch
    import transformers

    torch.set_num_threads(THREADS)
    m = transformers.AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32)
    n = sum(p.numel() for p in m.parameters())
    wins = torch.tensor(_windows(batch * (steps + 1), seq, m.config.vocab_size), dtype=torch.long)
    toks = [wins[i * batch : (i + 1) * batch] for i in range(steps + 1)]

    def nll(ids):
        logits = m(input_ids=ids).logits
        return torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
            ids[:, 1:].reshape(-1),
            reduction="sum",
        )

    if task == "eval":
        m.eval()
        with torch.inference_mode():
            float(nll(toks[0]))
            dt = _timed(lambda t: float(nll(t)), toks[1:])
        return {
            "params": n,
            "seconds": dt,
            "tokens": steps * batch * seq,
            "rss_mb": _rss_mb(),
            "threads": torch.get_num_threads(),
        }
    m.train()
    nll(toks[0]).backward()  # warm-up
    m.zero_grad(set_to_none=True)
    t0 = time.perf_counter()
    for t in toks[1:]:
        nll(t).backward()  # .grad accumulates across micro-batches
    with torch.no_grad():
        scores = {
            k: p.grad / (batch * steps * (seq - 1)) * p
            for k, p in m.named_parameters()
            if p.grad is not None
        }
    dt = time.perf_counter() - t0
    del scores
    return {
        "params": n,
        "seconds": dt,
        "tokens": steps * batch * seq,
        "rss_mb": _rss_mb(),
        "threads": torch.get_num_threads(),
    }


def peak_child() -> dict:
    """f32 matmul peaks (2048² and 4096²) of JAX and PyTorch on this machine."""
    import torch
    from bench_importance import _torch_matmul_peak, matmul_peak

    return {
        "jax": max(matmul_peak(2048), matmul_peak(4096, 3)),
        "torch": max(_torch_matmul_peak(2048), _torch_matmul_peak(4096, 3)),
        "torch_threads": torch.get_num_threads(),
    }


# --- driver ---------------------------------------------------------------------------------
def _child(*argv: str) -> dict:
    p = subprocess.run(
        [sys.executable, os.path.abspath(__file__), *argv], capture_output=True, text=True
    )
    if p.returncode != 0:
        return {"error": p.stderr[-2000:]}
    return json.loads(p.stdout.strip().splitlines()[-1])


def _steps(batch: int, task: str) -> int:
    """Timed micro-batches (after one untimed): 2 at batch 2, 1 at batch 8 (x2 for eval)."""
    return max(1, 4 // batch) * (2 if task == "eval" else 1)


def run(models: dict[str, str], batches: list[int], seq: int) -> dict:
    peak = _child("--child", "peak")
    rows = []
    for name, path in models.items():
        for b in batches:
            torch = {}  # one PyTorch run per task, beside each jaxregion variant of it
            for task in TASKS:
                base = task.split("-")[0]
                steps = str(_steps(b, base))
                if base not in torch:
                    torch[base] = _child("--child", "torch", path, base, str(b), str(seq), steps)
                jax = _child("--child", "jax", path, task, str(b), str(seq), steps)
                rows.append(
                    {
                        "model": name,
                        "batch": b,
                        "seq": seq,
                        "task": task,
                        "jax": jax,
                        "torch": torch[base],
                    }
                )
                print(_row_md(rows[-1], peak), flush=True)
    return {"peak_flops": peak, "rows": rows}


def _tps(r: dict) -> float:
    return r["tokens"] / r["seconds"]


def _row_md(row: dict, peak: dict) -> str:
    j, t = row["jax"], row["torch"]
    if "error" in j or "error" in t:
        return (
            f"| {row['model']} | {row['task']} | {row['batch']} | error: "
            f"{(j.get('error') or t.get('error'))[-300:]!r} |"
        )
    base = row["task"].split("-")[0]
    k = 6.0 if base == "importance" else 2.0
    ratio = _tps(j) / _tps(t)
    fj, ft = k * j["params"] * _tps(j), k * t["params"] * _tps(t)
    ok = ratio >= GOALS[base] and j["rss_mb"] <= t["rss_mb"]
    return (
        f"| {row['model']} | {row['task']} | {row['batch']}x{row['seq']} | {_tps(j):,.0f} | "
        f"{_tps(t):,.0f} | {ratio:.2f}x (goal {GOALS[base]}x) | "
        f"{j['rss_mb'] / 1024:.2f} | {t['rss_mb'] / 1024:.2f} | "
        f"{fj / 1e9:.1f} ({100 * fj / peak['jax']:.0f}%) | "
        f"{ft / 1e9:.1f} ({100 * ft / peak['torch']:.0f}%) | {'yes' if ok else 'no'} |"
    )


HEADER = (
    "| model | task | batch x seq | jaxregion tok/s | PyTorch tok/s | ratio | "
    "jaxregion peak RSS GB | PyTorch peak RSS GB | jaxregion GFLOP/s (% of peak) | "
    "PyTorch GFLOP/s (% of peak) | goals met |\n" + "|---" * 11 + "|"
)


def markdown(res: dict) -> str:
    p = res["peak_flops"]
    lines = [
        f"Measured f32 matmul peak: JAX {p['jax'] / 1e9:.1f} GFLOP/s, PyTorch "
        f"{p['torch'] / 1e9:.1f} GFLOP/s ({p['torch_threads']} threads, "
        f"{os.cpu_count()} cores). FLOPs: 6·N·tokens (importance), 2·N·tokens (eval).",
        "",
        HEADER,
    ]
    lines += [_row_md(r, p) for r in res["rows"]]
    return "\n".join(lines)


def plot(res: dict, path: str) -> None:
    """Bars: jaxregion/PyTorch tokens/s and peak-RSS ratios per row, goals as lines."""
    from jaxregion.report.plots import _plt, _save

    plt = _plt()
    rows = [r for r in res["rows"] if "error" not in r["jax"] and "error" not in r["torch"]]
    labels = [f"{r['model']}\n{r['task']} b{r['batch']}" for r in rows]
    speed = [_tps(r["jax"]) / _tps(r["torch"]) for r in rows]
    rss = [r["jax"]["rss_mb"] / r["torch"]["rss_mb"] for r in rows]
    fig, ax = plt.subplots(1, 2, figsize=(max(8, 1.4 * len(rows)), 4))
    x = range(len(rows))
    ax[0].bar(x, speed, color=["C1" if r["task"] == "eval" else "C0" for r in rows])
    for task, goal in GOALS.items():
        ax[0].axhline(goal, ls="--", lw=1, color="C0" if task == "importance" else "C1")
    ax[0].set_title("tokens/s, jaxregion / PyTorch (dashed: goals)")
    ax[1].bar(x, rss, color="C2")
    ax[1].axhline(1.0, ls="--", lw=1, color="k")
    ax[1].set_title("peak RSS, jaxregion / PyTorch (goal <= 1)")
    for a in ax:
        a.set_xticks(list(x), labels, rotation=60, fontsize=7)
    _save(fig, path)


def main(
    argv: list[str],
    json_out: str | None = None,
    batches: str = "2,8",
    seq: int = 128,
    models: str | None = None,
) -> int:
    if argv and argv[0] == "--child":
        which = argv[1]
        if which == "peak":
            print(json.dumps(peak_child()))
            return 0
        model, task, b, s, steps = argv[2], argv[3], int(argv[4]), int(argv[5]), int(argv[6])
        fn = jax_child if which == "jax" else torch_child
        task = task if which == "jax" else task.split("-")[0]
        print(json.dumps(fn(model, task, b, s, steps)))
        return 0
    chosen = {k: v for k, v in MODELS.items() if models is None or k in models.split(",")}
    print(HEADER, flush=True)
    res = run(chosen, [int(x) for x in batches.split(",")], seq)
    md = markdown(res)
    print("\n" + md)
    if json_out:
        from jaxregion.io import atomic

        base = os.path.splitext(json_out)[0]
        atomic.write_json(json_out, res)
        atomic.write_text(base + ".md", md + "\n")
        plot(res, base + ".png")
    return (
        0 if all("error" not in r["jax"] and "error" not in r["torch"] for r in res["rows"]) else 1
    )


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    sys.exit(main(sys.argv[1:]))
