#!/usr/bin/env python
"""Peak memory of ``jaxregion regions`` over N languages' score files of a real model's shapes.

Synthesizes (once) ``DIR/LANG.safetensors`` and their split halves ``DIR/.halves/LANG...``
with the tensor names and shapes of ``--model``'s safetensors header and random float32
content (written one tensor at a time), then runs each ``--kinds`` entry as its own
``jaxregion regions KIND`` process under ``/usr/bin/time -v`` (stability included) and
reports its peak RSS next to the goal ``3 x N x largest tensor + 1 GB``.

    python scripts/bench_regions.py --model /work/models/gemma3-270m-hf --langs 6 \\
        --dir /tmp/gemma_scores [--kinds core,bottom,random,monolingual] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import time

import numpy as np

from jaxregion.io import safetensors_io as S

LANGS = ("ar", "de", "en", "es", "fr", "ja", "ru", "sw", "vi", "zh")


def model_shapes(model_dir: str) -> dict[str, tuple[int, ...]]:
    """HF name -> shape of every tensor in the model's safetensors file(s) (headers only)."""
    files = sorted(f for f in os.listdir(model_dir) if f.endswith(".safetensors"))
    out: dict[str, tuple[int, ...]] = {}
    for f in files:
        out.update(
            {n: i.shape for n, i in S.SafetensorsFile(os.path.join(model_dir, f)).tensors.items()}
        )
    return out


def synthesize(directory: str, shapes: dict[str, tuple[int, ...]], langs: list[str]) -> None:
    """Random score files and halves (skipped when present)."""
    os.makedirs(os.path.join(directory, ".halves"), exist_ok=True)
    meta = {
        "format": "jaxregion.scores.v1",
        "estimator": "taylor",
        "seq_len": "128",
        "dtype": "float32",
        "windows": "64",
        "windows_digest": "synthetic",
    }
    for i, lang in enumerate(langs):
        for path, extra in (
            (os.path.join(directory, f"{lang}.safetensors"), {}),
            (
                os.path.join(directory, ".halves", f"{lang}.safetensors"),
                {"half": "even", "windows_even": "32", "windows_odd": "32"},
            ),
        ):
            if os.path.isfile(path):
                continue
            rng = np.random.default_rng([i, len(extra)])
            S.write(
                path,
                {
                    n: (np.float32, s, lambda s=s, r=rng: r.standard_normal(s, dtype=np.float32))
                    for n, s in shapes.items()
                },
                {**meta, **extra},
            )
            print(f"wrote {path}", file=sys.stderr)


def run_kind(kind: str, directory: str, out_dir: str, lang: str) -> dict:
    """One ``jaxregion regions KIND`` process: exit code, wall seconds, peak RSS (GB)."""
    argv = [
        sys.executable,
        "-m",
        "jaxregion.cli.main",
        "regions",
        kind,
        "--importance",
        directory,
        "--ratio",
        "0.01",
        "--out",
        os.path.join(out_dir, f"{kind}.safetensors"),
    ]
    if kind in ("monolingual", "bottom-monolingual", "top"):
        argv += ["--lang", lang]
    t0 = time.time()
    p = subprocess.run(["/usr/bin/time", "-v", *argv], capture_output=True, text=True)
    wall = time.time() - t0
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", p.stderr)
    lines = [ln for ln in p.stderr.splitlines() if ln.startswith((kind, "stability"))]
    return {
        "kind": kind,
        "rc": p.returncode,
        "wall_s": round(wall, 1),
        "peak_rss_gb": round(int(m.group(1)) / 1024**2, 3) if m else None,
        "said": lines,
        "stderr_tail": p.stderr[-600:] if p.returncode else "",
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="HF model directory (shapes only)")
    ap.add_argument("--dir", required=True, help="where the synthetic score files live")
    ap.add_argument("--langs", type=int, default=6)
    ap.add_argument("--kinds", default="core,bottom,random,monolingual")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    shapes = model_shapes(args.model)
    langs = list(LANGS[: args.langs])
    synthesize(args.dir, shapes, langs)
    largest = max(4 * math.prod(s) for s in shapes.values())
    file_gb = sum(4 * math.prod(s) for s in shapes.values()) / 1024**3
    goal = (3 * len(langs) * largest) / 1024**3 + 1.0
    out_dir = os.path.join(args.dir, "..", os.path.basename(args.dir.rstrip("/")) + "_regions")
    os.makedirs(out_dir, exist_ok=True)
    rows = [run_kind(k, args.dir, out_dir, langs[0]) for k in args.kinds.split(",")]
    print(
        f"\n{len(langs)} languages x {file_gb:.2f} GB score files (+ halves), largest tensor "
        f"{largest / 1024**3:.3f} GB; goal: peak RSS <= {goal:.2f} GB\n"
    )
    print("| kind | exit | wall s | peak RSS GB |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['kind']} | {r['rc']} | {r['wall_s']} | {r['peak_rss_gb']} |")
        for line in r["said"]:
            print(f"  {line}")
        if r["rc"]:
            print(r["stderr_tail"])
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "model": args.model,
                    "langs": langs,
                    "file_gb": file_gb,
                    "largest_tensor_gb": largest / 1024**3,
                    "goal_gb": goal,
                    "runs": rows,
                },
                f,
                indent=1,
            )
    return 0 if all(r["rc"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
