#!/usr/bin/env python
"""How good jaxregion's importance scores are, and how many windows a stable region needs.

``precision``: taylor scores of a trained model against a float64 PyTorch computation of
the same quantity (same weights, same windows, Σ over micro-batches of ∇ Σ NLL, then
θ ⊙ g / T), for jaxregion float32, PyTorch float32 and jaxregion's bf16 compute path (bf16
params and activations, float32 accumulator), at each ``--windows`` count (one pass; the
smaller counts are snapshots of it). Error = worst over tensors of max|a - ref| / max|ref|.

``stable``: per language, importance over n = b, 2b, 4b, ... windows (one pass with stops)
and the Jaccard of the top-1% per-tensor regions at n and 2n (what ``--until-stable``
uses); prints the windows and seconds at which that Jaccard first reaches each
``--targets`` value, the split-half Jaccard of the full run and its projection, the windows
each target needs as predicted from those split halves (``stability.windows_until_stable``,
for targets beyond the budget), and what a fixed ``--reference-budget`` (default 100k
windows, the paper's) would cost at the measured rate.

    python scripts/bench_importance_quality.py precision --model DIR --text lat=lat.txt
    python scripts/bench_importance_quality.py stable --model DIR --text en=en.txt \
        --text de=de.txt --seq-len 64 --budget 4096
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np


def _windows(model: str, spec: str, seq: int, n: int):
    from jaxregion import runtime

    session = runtime.load_session(model, "float32")
    lang = spec.split("=", 1)[0]
    return session, lang, runtime.load_corpora([spec], session, seq, None)[lang][:n]


# --- precision -----------------------------------------------------------------------------
def _torch_scores(model: str, windows: np.ndarray, counts: list[int], batch: int, dtype):
    """{count: {name: float64 scores}} from one pass in PyTorch ``dtype``."""
    import torch
    import transformers

    m = transformers.AutoModelForCausalLM.from_pretrained(model, attn_implementation="eager").to(
        dtype
    )
    m.model.embed_tokens.padding_idx = None
    ids = torch.tensor(windows, dtype=torch.long)
    out, seq = {}, windows.shape[1]
    for i in range(0, max(counts), batch):
        x = ids[i : i + batch]
        logits = m(input_ids=x).logits
        torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1), reduction="sum"
        ).backward()
        done = min(i + batch, max(counts))
        if done in counts:
            t = done * (seq - 1)
            out[done] = {
                n: (p.grad.double() / t * p.double()).detach().numpy()
                for n, p in m.named_parameters()
            }
    return out


def _jax_scores(model: str, windows: np.ndarray, counts: list[int], batch: int, dtype: str):
    from jaxregion import importance
    from jaxregion import tree as T
    from jaxregion.io import hf

    cfg, params = hf.load(model, dtype)
    mesh = importance.shd.make_mesh()
    params = importance.place_params(params, mesh)
    out = {}
    start = importance.init_state(params, cfg, "taylor", batch, mesh)
    for state in importance.accumulate(
        start, params, cfg, windows[: max(counts)], mesh, stops=counts
    ):
        if state.position in counts:
            res = importance.result_of(state, params, cfg, windows.shape[1])
            out[state.position] = {
                n: np.asarray(v, np.float64) for n, v in T.flatten(res.scores).items()
            }
    return out


def _worst(scores: dict, ref: dict) -> tuple[float, str]:
    errs = {n: float(np.abs(scores[n] - ref[n]).max() / np.abs(ref[n]).max()) for n in ref}
    name = max(errs, key=errs.get)
    return errs[name], name


def precision(args) -> dict:
    counts = sorted(int(x) for x in args.windows.split(","))
    if args.text[0].endswith(".npy"):  # pre-tokenized windows [n, seq] (e.g. a Markov chain)
        w = np.load(args.text[0])[: max(counts), : args.seq_len]
    else:
        _, _, w = _windows(args.model, args.text[0], args.seq_len, max(counts))
    import torch

    t0 = time.perf_counter()
    ref = _torch_scores(args.model, w, counts, args.batch_size, torch.float64)
    runs = {
        "jax f32": _jax_scores(args.model, w, counts, args.batch_size, "float32"),
        "torch f32": _torch_scores(args.model, w, counts, args.batch_size, torch.float32),
        "jax bf16": _jax_scores(args.model, w, counts, args.batch_size, "bfloat16"),
    }
    table = {}
    print(
        f"taylor precision vs float64 (PyTorch), {args.model}, {args.text[0]}, seq "
        f"{args.seq_len}, batch {args.batch_size} ({time.perf_counter() - t0:.0f} s)"
    )
    print("| windows | jax f32 | torch f32 | jax/torch | jax bf16 | worst tensor (jax f32) |")
    print("|---|---|---|---|---|---|")
    for c in counts:
        row = {k: _worst(v[c], ref[c]) for k, v in runs.items()}
        table[c] = {k: e for k, (e, _) in row.items()}
        print(
            f"| {c} | {row['jax f32'][0]:.2e} | {row['torch f32'][0]:.2e} | "
            f"{row['jax f32'][0] / row['torch f32'][0]:.2f}x | {row['jax bf16'][0]:.2e} | "
            f"{row['jax f32'][1]} |"
        )
    return {"precision": table}


# --- time to stable ------------------------------------------------------------------------
def stable(args) -> dict:
    return {"stable": {spec.split("=", 1)[0]: _stable_lang(args, spec) for spec in args.text}}


def _stable_lang(args, spec: str) -> dict:
    from jaxregion import importance, regions, scorefiles
    from jaxregion.analysis import stability

    targets = sorted(float(x) for x in args.targets.split(","))
    session, lang, w = _windows(args.model, spec, args.seq_len, args.budget)
    b = importance.effective_batch_size(args.batch_size, session.mesh)
    params = importance.place_params(session.params, session.mesh)
    hist: list[dict] = []
    prev = {}
    t0 = time.perf_counter()

    def at_stop(state) -> None:
        res = importance.result_of(state, params, session.config, args.seq_len)
        reg = regions.top({lang: res.scores}, lang, args.ratio)
        row = {"windows": state.position, "seconds": time.perf_counter() - t0}
        if "r" in prev:
            row["jaccard"] = regions.jaccard(prev["r"], reg)
        if res.halves is not None:
            row["split_half"] = stability.topk_jaccard(*res.halves, args.ratio)
        prev["r"] = reg
        hist.append(row)

    stops = scorefiles.doubling_points(b, len(w))
    start = importance.init_state(params, session.config, "taylor", b, session.mesh)
    for state in importance.accumulate(start, params, session.config, w, session.mesh, stops=stops):
        if state.position in stops:
            at_stop(state)
    total = time.perf_counter() - t0
    rate = len(w) / total
    reached = {}
    for t in targets:
        hit = next((r for r in hist if r.get("jaccard", 0.0) >= t), None)
        reached[str(t)] = (
            None if hit is None else {"windows": hit["windows"], "seconds": hit["seconds"]}
        )
    last = hist[-1]
    proj = (
        stability.project_jaccard(last["split_half"], args.ratio) if "split_half" in last else None
    )
    print(
        f"\n{lang} ({args.model}, seq {args.seq_len}, batch {b}): {len(w)} windows in "
        f"{total:.1f} s ({rate:,.1f} windows/s, the top-1% checks included)"
    )
    print("| windows | s | Jaccard(n/2, n) | split-half |")
    print("|---|---|---|---|")
    for r in hist:
        j = f"{r['jaccard']:.4f}" if "jaccard" in r else "-"
        sh = f"{r['split_half']:.4f}" if "split_half" in r else "-"
        print(f"| {r['windows']} | {r['seconds']:.1f} | {j} | {sh} |")
    for t, hit in reached.items():
        print(
            f"doubling Jaccard >= {t}: "
            + (
                f"{hit['windows']} windows, {hit['seconds']:.1f} s"
                if hit
                else f"not reached within {len(w)} windows"
            )
        )
    predicted = {}
    if proj is not None:
        print(
            f"split-half Jaccard at {len(w)} windows {last['split_half']:.4f}, projected to "
            f"the full sample {proj:.4f}"
        )
        for t in targets:
            n = stability.windows_until_stable(last["split_half"], len(w), args.ratio, t, b)
            predicted[str(t)] = None if n is None else {"windows": n, "seconds": n / rate}
            print(
                f"predicted from the split halves: doubling Jaccard >= {t} at "
                + (f"{n:,} windows (~{n / rate:,.0f} s at this rate)" if n else "never")
            )
    print(
        f"a fixed {args.reference_budget:,}-window budget at this rate: "
        f"{args.reference_budget / rate:,.0f} s"
    )
    sys.stdout.flush()
    return {
        "history": hist,
        "reached": reached,
        "windows": len(w),
        "seconds": total,
        "windows_per_s": rate,
        "reference_seconds": args.reference_budget / rate,
        "projected": proj,
        "predicted": predicted,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("precision")
    p.add_argument("--windows", default="256,2048")
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=16)
    s = sub.add_parser("stable")
    s.add_argument("--seq-len", type=int, default=64)
    s.add_argument("--batch-size", type=int, default=16)
    s.add_argument("--budget", type=int, default=4096, help="most windows per language")
    s.add_argument("--targets", default="0.95,0.99")
    s.add_argument("--ratio", type=float, default=0.01)
    s.add_argument("--reference-budget", type=int, default=100_000)
    for q in (p, s):
        q.add_argument("--model", required=True)
        q.add_argument(
            "--text",
            action="append",
            required=True,
            metavar="LANG=SOURCE",
            help="a corpus spec (precision also takes a .npy of token windows)",
        )
        q.add_argument("--json", default=None)
    args = ap.parse_args()
    res = precision(args) if args.cmd == "precision" else stable(args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2, allow_nan=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
